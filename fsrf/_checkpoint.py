"""Checkpoints: plain tensors and Python values, written atomically, read with weights_only.

A checkpoint is a dict with ``format`` and ``version``, the run's ``config``
(nested plain dict), the ``epoch`` it ends (1-based), the ``model`` state, and
for resumable checkpoints the optimiser, scheduler, curriculum and generator
states, the best-so-far record, the early-stopping counter and the history.
"""

from __future__ import annotations

import os
import re
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


def _refusal(err: Exception) -> str:
    """Why ``torch.load`` refused a file, as one whole sentence (torch's own messages run to many lines)."""
    text = " ".join(str(err).split())
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)|Unsupported operand (\d+)", text)
        what = f" ({found.group(0)})" if found else ""
        return ("refused: the file holds Python objects beyond tensors and plain containers" + what
                + ", which weights-only loading never unpickles; fsrf checkpoints hold none, so it was not "
                  "written by fsrf or was altered")
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0] if text else type(err).__name__
    return f"not a readable checkpoint, expected a file written by fsrf ({first})"


def load_weights(model: torch.nn.Module, state: dict[str, Any], *, source: str) -> None:
    """``model.load_state_dict(state["model"])`` with a one-line error when the weights do not fit.

    Raises:
        FSRFError: missing, unexpected or differently shaped tensors (naming the first of each).
    """
    weights = state["model"]
    own = model.state_dict()
    shaped = [k for k, v in weights.items() if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    if shaped or missing or extra:
        parts = []
        if shaped:
            k = shaped[0]
            parts.append(f"{len(shaped)} tensor(s) of another shape, e.g. {k} {tuple(weights[k].shape)} in the file "
                         f"vs {tuple(own[k].shape)} built")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if extra:
            parts.append(f"{len(extra)} unexpected, e.g. {extra[0]}")
        raise FSRFError(f"{source}: the weights do not fit the model its stored config builds ({'; '.join(parts)}); "
                        "expected a checkpoint written by fsrf with this config, unedited")
    model.load_state_dict(weights)


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
    except Exception as err:  # noqa: BLE001 (torch raises several types for foreign or torn files)
        raise FSRFError(f"{path}: {_refusal(err)}") from None
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
