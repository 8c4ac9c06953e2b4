"""Shared fixtures: a tiny synthetic dataset and a tiny config, loaded once per session."""

from __future__ import annotations

import pytest
from tests_support import TINY

from fsrf import Config, config_from_dict
from fsrf._run_data import load_dataset
from fsrf.data import MultimodalDataset


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    """A seconds-long run on small synthetic data."""
    return config_from_dict(TINY, source="tests/conftest.py")


@pytest.fixture(scope="session")
def tiny_dataset(tiny_config: Config) -> MultimodalDataset:
    return load_dataset(tiny_config.data)
