"""Tiny MMSA feature files in the exact layouts of thuiar/MMSA's processed pickles.

Shape legend: N samples, L text positions, T_m steps of modality m, D_m its
feature dimension. The dims are the real ones (text 768; MOSI audio 5 and vision
20; SIMS audio 33 and vision 709); N, L and T are small. Each builder returns the
dict so that a test can break one key before writing it with :func:`write`.

As in the real files, BERT ``text`` features are non-zero at padding positions,
so only ``text_bert``'s attention mask (row 1) tells which positions are valid.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_SIZES = {"train": 6, "valid": 4, "test": 5}
TEXT_DIM = 768
MOSI_DIMS = {"text": TEXT_DIM, "audio": 5, "vision": 20}
SIMS_DIMS = {"text": TEXT_DIM, "audio": 33, "vision": 709}

Data = dict[str, dict[str, Any]]
"""``{"train"|"valid"|"test": {key: array}}``."""


def mosi_unaligned(
    *, seed: int = 0, text_len: int = 8, audio_len: int = 12, vision_len: int = 10
) -> Data:
    """MOSI ``unaligned_50.pkl`` layout: lengths keys, audio (N, T_a, 5), vision (N, T_v, 20)."""
    rng = np.random.default_rng(seed)
    data: Data = {}
    offset = 0
    for split, n in SPLIT_SIZES.items():
        labels = np.round(rng.uniform(-3, 3, n) * 5) / 5
        data[split] = _split(rng, n, offset, labels, text_len=text_len)
        for m, steps in (("audio", audio_len), ("vision", vision_len)):
            lengths = rng.integers(1, steps + 1, n)
            lengths[0] = steps  # one full-length sample per split
            data[split][m] = _padded(rng, n, steps, MOSI_DIMS[m], lengths)
            data[split][f"{m}_lengths"] = lengths.astype(np.int64)
        offset += n
    return data


def mosi_aligned(*, seed: int = 0, text_len: int = 8) -> Data:
    """MOSI ``aligned_50.pkl`` layout: audio and vision (N, L, D), no lengths keys."""
    rng = np.random.default_rng(seed)
    data: Data = {}
    offset = 0
    for split, n in SPLIT_SIZES.items():
        labels = np.round(rng.uniform(-3, 3, n) * 5) / 5
        data[split] = _split(rng, n, offset, labels, text_len=text_len)
        for m in ("audio", "vision"):
            full = np.full(n, text_len)
            data[split][m] = _padded(rng, n, text_len, MOSI_DIMS[m], full)
        offset += n
    return data


def sims_unaligned(
    *, seed: int = 0, text_len: int = 6, audio_len: int = 10, vision_len: int = 7
) -> Data:
    """SIMS ``unaligned_39.pkl`` layout: audio 33, vision 709, labels in steps of 0.2."""
    rng = np.random.default_rng(seed)
    data: Data = {}
    offset = 0
    for split, n in SPLIT_SIZES.items():
        labels = rng.integers(-5, 6, n) / 5.0
        data[split] = _split(rng, n, offset, labels, text_len=text_len)
        for m, steps in (("audio", audio_len), ("vision", vision_len)):
            lengths = rng.integers(1, steps + 1, n)
            data[split][m] = _padded(rng, n, steps, SIMS_DIMS[m], lengths)
            data[split][f"{m}_lengths"] = lengths.astype(np.int64)
        for unimodal in "TAV":
            data[split][f"regression_labels_{unimodal}"] = rng.integers(-5, 6, n) / 5.0
        offset += n
    return data


def write(path: Path, data: Any, *, protocol: int = 4) -> Path:
    """Pickle ``data`` to ``path`` as MMSA does, and return the path."""
    with open(path, "wb") as file:
        pickle.dump(data, file, protocol=protocol)
    return path


def text_lengths(split: dict[str, Any]) -> np.ndarray:
    """(N,) valid text positions, read from the attention mask."""
    return split["text_bert"][:, 1, :].sum(axis=1).astype(np.int64)


def _split(
    rng: np.random.Generator, n: int, offset: int, labels: np.ndarray, *, text_len: int
) -> dict[str, Any]:
    """The keys every MMSA split has, text included."""
    lengths = rng.integers(3, text_len + 1, n)
    position = np.arange(text_len)[None, :]
    mask = position < lengths[:, None]
    ids = rng.integers(1000, 30000, (n, text_len))
    ids[:, 0] = 101
    ids[position == lengths[:, None] - 1] = 102
    ids[~mask] = 0
    bert = np.stack([ids, mask, np.zeros_like(ids)], axis=1).astype(np.float64)
    clips = offset + np.arange(n)
    return {
        "raw_text": np.array([f"utterance number {k}" for k in clips]),
        "text": rng.standard_normal((n, text_len, TEXT_DIM)).astype(np.float32),
        "text_bert": bert,
        "id": np.array([f"vid{k // 3}$_${k % 3}" for k in clips]),
        "annotations": np.where(
            labels > 0, "Positive", np.where(labels < 0, "Negative", "Neutral")
        ),
        "classification_labels": (np.sign(labels) + 1).astype(np.float32),
        "regression_labels": labels.astype(np.float32),
    }


def _padded(
    rng: np.random.Generator, n: int, steps: int, dim: int, lengths: np.ndarray
) -> np.ndarray:
    """(N, T, D) float32 frames, zero past each sample's length."""
    x = rng.standard_normal((n, steps, dim)).astype(np.float32) + 0.5
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    return x
