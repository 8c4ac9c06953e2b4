"""Simulators by name (the ``missing.simulator`` config key)."""

from __future__ import annotations

from typing import Any

from fsrf._errors import FSRFError
from fsrf.missing._base import BaseMissingness
from fsrf.missing._mixed import MixedDrop
from fsrf.missing._modality_drop import ModalityDrop
from fsrf.missing._random_drop import RandomDrop

SIMULATORS: dict[str, type[BaseMissingness]] = {
    RandomDrop.name: RandomDrop,
    ModalityDrop.name: ModalityDrop,
    MixedDrop.name: MixedDrop,
}
"""Registry name -> simulator class: ``random``, ``modality``, ``mixed``."""


def build_simulator(name: str, **kwargs: Any) -> BaseMissingness:
    """Construct the simulator registered as ``name`` with keyword arguments.

    Raises:
        FSRFError: an unknown name (the message lists the known ones) or a bad argument.
    """
    if name not in SIMULATORS:
        raise FSRFError(f"simulator: {name!r} is not one of {', '.join(SIMULATORS)}")
    try:
        return SIMULATORS[name](**kwargs)
    except TypeError as exc:
        raise FSRFError(f"simulator {name!r}: {exc}") from None
