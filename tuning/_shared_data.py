"""A dataset shipped to trials through Ray's object store without copies.

Ray stores numpy arrays so that every worker on a node reads the one shared
copy (read-only, zero-copy); torch tensors would be unpickled into a private
copy per trial. The driver turns the loaded :class:`fsrf.data.MultimodalDataset`
into numpy arrays once; each trial wraps them back with ``torch.from_numpy``,
which shares memory. fsrf never writes into its input features in place.

Trials train and validate only, so a search ships the train and valid splits
(:data:`TRIAL_SPLITS`); the test split never reaches a trial's worker. ``fsrf
final``, which evaluates on test, ships all three (:data:`ALL_SPLITS`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from fsrf import MODALITIES
from fsrf.data import MultimodalDataset, Split

TRIAL_SPLITS = ("train", "valid")
"""What a search's trials receive: never the test split."""
ALL_SPLITS = ("train", "valid", "test")
"""What a final run (trained, then evaluated on test) receives."""


def to_arrays(dataset: MultimodalDataset, *, splits: tuple[str, ...] = TRIAL_SPLITS) -> dict[str, Any]:
    """Plain numpy arrays and strings (views of the tensors' memory, not copies) of ``splits``.

    Args:
        dataset: the loaded dataset.
        splits: the splits to ship: :data:`TRIAL_SPLITS` (a search's trials) by default, or
            :data:`ALL_SPLITS`.
    """
    out: dict[str, Any] = {"name": dataset.name, "source": dataset.source}
    for name in splits:
        split = dataset.split(name)
        out[name] = {
            "features": {m: split.features[m].numpy() for m in MODALITIES},
            "valid": {m: split.valid[m].numpy() for m in MODALITIES},
            "labels": split.labels.numpy(),
            "ids": list(split.ids),
            "extras": {k: x.numpy() for k, x in split.extras.items()},
        }
    return out


def trial_data(dataset: MultimodalDataset) -> dict[str, Any]:
    """The object a search puts in Ray's object store for its trials: train and valid only."""
    return to_arrays(dataset, splits=TRIAL_SPLITS)


def _tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # object-store arrays are read-only; fsrf only reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def from_arrays(arrays: dict[str, Any]) -> MultimodalDataset:
    """The dataset again, its tensors sharing the arrays' memory (``test`` None when not shipped)."""
    splits: dict[str, Split | None] = {
        name: Split(
            features={m: _tensor(arrays[name]["features"][m]) for m in MODALITIES},
            valid={m: _tensor(arrays[name]["valid"][m]) for m in MODALITIES},
            labels=_tensor(arrays[name]["labels"]),
            ids=tuple(arrays[name]["ids"]),
            extras={k: _tensor(x) for k, x in arrays[name].get("extras", {}).items()},
        ) if name in arrays else None
        for name in ALL_SPLITS
    }
    return MultimodalDataset(name=arrays["name"], source=arrays["source"], **splits)
