"""A dataset shipped to trials through Ray's object store without copies.

Ray stores numpy arrays so that every worker on a node reads the one shared
copy (read-only, zero-copy); torch tensors would be unpickled into a private
copy per trial. The driver turns the loaded :class:`fsrf.data.MultimodalDataset`
into numpy arrays once; each trial wraps them back with ``torch.from_numpy``,
which shares memory. fsrf never writes into its input features in place.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from fsrf import MODALITIES
from fsrf.data import MultimodalDataset, Split

_SPLITS = ("train", "valid", "test")


def to_arrays(dataset: MultimodalDataset) -> dict[str, Any]:
    """Plain numpy arrays and strings (views of the tensors' memory, not copies)."""
    out: dict[str, Any] = {"name": dataset.name, "source": dataset.source}
    for name in _SPLITS:
        split = dataset.split(name)
        out[name] = {
            "features": {m: split.features[m].numpy() for m in MODALITIES},
            "valid": {m: split.valid[m].numpy() for m in MODALITIES},
            "labels": split.labels.numpy(),
            "ids": list(split.ids),
        }
    return out


def _tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # object-store arrays are read-only; fsrf only reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def from_arrays(arrays: dict[str, Any]) -> MultimodalDataset:
    """The dataset again, its tensors sharing the arrays' memory."""
    splits = {
        name: Split(
            features={m: _tensor(arrays[name]["features"][m]) for m in MODALITIES},
            valid={m: _tensor(arrays[name]["valid"][m]) for m in MODALITIES},
            labels=_tensor(arrays[name]["labels"]),
            ids=tuple(arrays[name]["ids"]),
        )
        for name in _SPLITS
    }
    return MultimodalDataset(name=arrays["name"], source=arrays["source"], **splits)
