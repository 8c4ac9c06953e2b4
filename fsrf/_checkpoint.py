"""Checkpoints: plain tensors and Python values, written atomically, read with weights_only.

A checkpoint is a dict with ``format`` and ``version``, the run's ``config``
(nested plain dict), the ``epoch`` it ends (1-based), the ``model`` state, and
for resumable checkpoints the optimiser, scheduler, curriculum and generator
states, the best-so-far record, the early-stopping counter and the history.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fsrf._config import Config, config_from_dict
from fsrf._errors import FSRFError
from fsrf._yaml import atomic_write

FORMAT = "fsrf-checkpoint"
VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    atomic_write(path, lambda handle: torch.save({"format": FORMAT, "version": VERSION, **state}, handle))
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with ``torch.load(weights_only=True)``.

    Raises:
        FSRFError: the file is missing, not a torch file, or not an fsrf checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FSRFError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign or torn files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FSRFError(f"{path}: not a readable checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FSRFError(f"{path}: not an fsrf checkpoint (no 'format: {FORMAT}' entry)")
    if state.get("version") != VERSION:
        raise FSRFError(f"{path}: checkpoint version {state.get('version')!r}, expected {VERSION}")
    for key in ("config", "model", "epoch"):
        if key not in state:
            raise FSRFError(f"{path}: checkpoint lacks the {key!r} entry")
    return state


def checkpoint_config(state: dict[str, Any], *, source: str) -> Config:
    """The run config stored in a checkpoint."""
    return config_from_dict(state["config"], source=f"{source} (stored config)")
