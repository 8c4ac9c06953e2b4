"""In-memory containers for multimodal splits.

Shape legend: N samples in a split, B samples in a batch, T_m time steps of
modality m, D_m its feature dimension. Modalities are ordered text, audio,
vision everywhere (see :data:`fsrf.MODALITIES`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from fsrf._constants import MODALITIES
from fsrf._errors import FSRFError


@dataclass(frozen=True, eq=False)
class Batch:
    """A batch: per-modality features and validity masks, plus labels.

    Attributes:
        features: modality -> (B, T_m, D_m) float32.
        valid: modality -> (B, T_m) bool, True at real (non-padding) positions.
        labels: (B,) float32 regression labels.
        extras: side inputs by name, each (B, ...) (see :attr:`Split.extras`).
    """

    features: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    labels: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """Return a copy on ``device`` (non-blocking where possible)."""
        return Batch(
            features={m: x.to(device, non_blocking=True) for m, x in self.features.items()},
            valid={m: v.to(device, non_blocking=True) for m, v in self.valid.items()},
            labels=self.labels.to(device, non_blocking=True),
            extras={k: x.to(device, non_blocking=True) for k, x in self.extras.items()},
        )


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset as in-memory tensors.

    Attributes:
        features: modality -> (N, T_m, D_m) float32, finite.
        valid: modality -> (N, T_m) bool, True at real (non-padding) positions.
        labels: (N,) float32.
        ids: N sample ids (``video_id$_$clip_id`` in MMSA files).
        extras: per-sample side inputs that are not a modality, by name, each (N, ...) (e.g. a
            prompt's token ids, a sample's domain); a model names those it reads in
            :attr:`fsrf.model.BaseModel.extras`. Empty for plain MMSA data.
    """

    features: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    labels: torch.Tensor
    ids: tuple[str, ...]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index: torch.Tensor) -> Batch:
        """Slice a batch by sample indices (one tensor op per field, no per-sample work)."""
        return Batch(
            features={m: self.features[m].index_select(0, index) for m in MODALITIES},
            valid={m: self.valid[m].index_select(0, index) for m in MODALITIES},
            labels=self.labels.index_select(0, index),
            extras={k: x.index_select(0, index) for k, x in self.extras.items()},
        )

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, Batch]]:
        """Yield ``(indices, batch)`` pairs; shuffled when a generator is given."""
        n = len(self)
        if generator is None:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=generator)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            yield index, self.take(index)

    def dims(self) -> dict[str, int]:
        """Feature dimension D_m per modality."""
        return {m: int(self.features[m].shape[-1]) for m in MODALITIES}

    def lengths(self) -> dict[str, int]:
        """Padded length T_m per modality."""
        return {m: int(self.features[m].shape[1]) for m in MODALITIES}


@dataclass(frozen=True, eq=False)
class MultimodalDataset:
    """The three splits of one dataset.

    Attributes:
        name: ``synthetic``, ``mosi``, ``mosei`` or ``sims`` (selects the metrics).
        train: training split.
        valid: validation split (model selection and early stopping).
        test: test split (reported, never used for selection); None where it was left out on
            purpose (a search's trials get train and valid only).
        source: the file it was read from.
    """

    name: str
    train: Split
    valid: Split
    test: Split | None
    source: str = ""

    def split(self, name: str) -> Split:
        """Return the split called ``train``, ``valid`` or ``test``.

        Raises:
            FSRFError: ``test`` of a dataset loaded without it.
        """
        split = {"train": self.train, "valid": self.valid, "test": self.test}[name]
        if split is None:
            raise FSRFError(f"split: dataset {self.name!r} holds no {name!r} split here "
                            "(a search's trials get train and valid only)")
        return split
