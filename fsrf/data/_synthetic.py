"""The built-in synthetic dataset, written in the MMSA unaligned layout.

Shape legend: N samples, T_m steps of modality m (L for text), D_m its feature
dimension. Every draw comes from one ``numpy.random.Generator`` seeded by the
caller, so a seed fixes the file bit for bit.

Generative structure, per sample:

* a shared sentiment factor ``z ~ N(0, 1)``, expressed in every modality;
* a specific factor ``u_m ~ N(0, 1)`` per modality; text's and audio's carry
  sentiment (weights 0.6 and 0.4), vision's does not;
* a sample-level nuisance ``w_m ~ N(0, 3^2 I_k)`` per modality (k <= 4
  components, no sentiment) and independent per-frame noise;
* the label ``y = clip(1.5 (z + 0.6 u_text + 0.4 u_audio) / 1.233 + 0.1 e, -3, 3)``
  rounded to a multiple of 1/3 (MOSI's scale; about 9% of labels are exactly 0).

Frames of modality m at valid step t:
``x_t = (A_m z + B_m u_m) g_t + C_m w_m + n_t``, with fixed random projections
A_m, B_m (D_m,) and C_m (D_m, k) drawn once per dataset, a positive log-normal
gain ``g_t`` (mean 1) and ``n_t ~ N(0, s_m^2 I)``, ``s_m = 2 sqrt(T_m / 40)``.
Along the sentiment directions, at T_m = 40, a frame's signal power is at most a
quarter of its noise power; the noise grows with sqrt(T_m) so that the average
over a whole sequence has the same SNR at any length: averaging many frames
matters, and dropping most of them hurts at MOSI's lengths too. Each modality
alone carries part of ``z``, so a missing modality can be partly recovered from
the others, while ``u_text`` and ``u_audio`` are only in their own modality.

Valid lengths are uniform in [ceil(T_m / 2), T_m]; padding frames are exactly 0
and every value is finite. Text has BERT-style ``text_bert`` rows: ids with
[CLS] = 101 first and [SEP] = 102 at the last valid position, the attention
mask, and zero segment ids.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from fsrf._constants import MODALITIES, SPLITS
from fsrf._errors import FSRFError
from fsrf.data._mmsa import save_mmsa

_SENTIMENT_WEIGHT = {"text": 0.6, "audio": 0.4, "vision": 0.0}
"""Weight of each modality's specific factor u_m in the label."""
_SHARED_SCALE = {"text": 1.0, "audio": 0.8, "vision": 0.8}
"""Norm of A_m: how strongly each modality expresses z."""
_SPECIFIC_SCALE = {"text": 1.0, "audio": 0.8, "vision": 0.8}
"""Norm of B_m: how strongly each modality expresses u_m."""
_NUISANCE_STD = 3.0
_FRAME_NOISE_STD = 2.0
_REFERENCE_STEPS = 40
"""T at which the per-frame noise std is ``_FRAME_NOISE_STD``; it grows as sqrt(T)."""
_GAIN_SIGMA = 0.5
_LABEL_SCALE = 1.5
_LABEL_NOISE_STD = 0.1
_LABEL_BOUND = 3.0
_CLIPS_PER_VIDEO = 8
_CLS, _SEP = 101, 102
_VOCAB = (1000, 30000)


def make_synthetic(
    *,
    seed: int,
    n_train: int = 600,
    n_valid: int = 150,
    n_test: int = 150,
    text_len: int = 24,
    audio_len: int = 40,
    vision_len: int = 40,
    text_dim: int = 32,
    audio_dim: int = 12,
    vision_dim: int = 16,
) -> dict[str, dict[str, Any]]:
    """Generate a synthetic dataset as an MMSA unaligned dict (see the module docstring).

    Vectorised over samples: MOSI's shapes (1284/229/686 samples, text 50x768,
    audio 375x5, vision 500x20) take a few seconds.

    Args:
        seed: seeds the one generator behind every draw.
        n_train: N of the train split (``n_valid``, ``n_test`` likewise).
        text_len: L, the padded text length (at least 2, for [CLS] and [SEP]).
        audio_len: T_a (``vision_len``: T_v).
        text_dim: D_t (``audio_dim``: D_a, ``vision_dim``: D_v).

    Returns:
        ``{"train"|"valid"|"test": split}``, each split holding ``text`` (N, L, D_t),
        ``text_bert`` (N, 3, L), ``audio`` (N, T_a, D_a), ``vision`` (N, T_v, D_v)
        float32, ``audio_lengths``/``vision_lengths`` (N,) int64,
        ``regression_labels`` and ``classification_labels`` (N,) float32, and
        ``id``, ``raw_text``, ``annotations`` (N,) object arrays of str.
    """
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    steps = {"text": text_len, "audio": audio_len, "vision": vision_len}
    dims = {"text": text_dim, "audio": audio_dim, "vision": vision_dim}
    check_layout("make_synthetic", sizes, steps, dims)
    rng = np.random.default_rng(seed)
    projections = {m: _projections(rng, m, dims[m]) for m in MODALITIES}
    data: dict[str, dict[str, Any]] = {}
    offset = 0
    for split in SPLITS:
        data[split] = _make_split(rng, projections, steps, n=sizes[split], offset=offset)
        offset += sizes[split]
    return data


def check_layout(
    caller: str,
    sizes: dict[str, Any],
    steps: dict[str, Any],
    dims: dict[str, Any],
    *,
    extra: tuple[tuple[str, Any, int], ...] = (),
    min_dim: int = 1,
) -> None:
    """Split sizes, lengths, ``extra`` (key, value, least) and dims must be integers at least their least.

    Raises:
        FSRFError: ``<caller>: <key>=<value>, expected an integer >= <least>`` for the first that is not.
    """
    for key, value, low in (
        *((f"n_{s}", n, 1) for s, n in sizes.items()),
        *((f"{m}_len", t, 2 if m == "text" else 1) for m, t in steps.items()),
        *extra,
        *((f"{m}_dim", d, min_dim) for m, d in dims.items()),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise FSRFError(f"{caller}: {key}={value!r}, expected an integer >= {low}")


def write_synthetic(path: str | os.PathLike[str], **kwargs: int) -> Path:
    """Generate a synthetic dataset and save it as an MMSA pickle.

    Args:
        path: the destination ``.pkl`` (written atomically).
        **kwargs: the keyword arguments of :func:`make_synthetic` (``seed`` required).

    Returns:
        The path written.
    """
    save_mmsa(path, make_synthetic(**kwargs))
    return Path(path)


def _projections(rng: np.random.Generator, modality: str, dim: int) -> dict[str, np.ndarray]:
    """A (D,), B (D,) and C (D, k): the fixed projections of one modality."""

    def direction(scale: float) -> np.ndarray:
        v = rng.standard_normal(dim)
        return scale * v / np.linalg.norm(v)

    k = max(1, min(4, dim // 4))
    return {
        "A": direction(_SHARED_SCALE[modality]),
        "B": direction(_SPECIFIC_SCALE[modality]),
        "C": rng.standard_normal((dim, k)) / math.sqrt(dim),
    }


def _make_split(
    rng: np.random.Generator,
    projections: dict[str, dict[str, np.ndarray]],
    steps: dict[str, int],
    *,
    n: int,
    offset: int,
) -> dict[str, Any]:
    """One split's MMSA dict; ``offset`` numbers its samples after earlier splits'."""
    z, specific, labels = sentiment(rng, n)

    split: dict[str, Any] = {}
    lengths: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        t = steps[m]
        lengths[m] = rng.integers(math.ceil(t / 2), t + 1, size=n).astype(np.int64)
        split[m] = _frames(rng, projections[m], z, specific[m], lengths[m], t)
    split["text_bert"] = text_bert(rng, lengths["text"], steps["text"])
    split["audio_lengths"] = lengths["audio"]
    split["vision_lengths"] = lengths["vision"]
    split.update(split_extras(labels, offset))
    return split


def mmsa_labels(raw: np.ndarray) -> np.ndarray:
    """Raw scores as MOSI-style labels (N,): clipped to [-3, 3], in steps of 1/3 (three raters' mean)."""
    return (np.round(3.0 * np.clip(raw, -_LABEL_BOUND, _LABEL_BOUND)) / 3.0).astype(np.float32)


def sentiment(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The shared latent z (N,), the modality-specific u_m (N,) and the labels they make (N,).

    The label is a unit-variance mix of z and the u_m (weights ``_SENTIMENT_WEIGHT``), scaled,
    with a little noise; the draws come in this order: z, u_m per modality, the noise.
    """
    z = rng.standard_normal(n)
    specific = {m: rng.standard_normal(n) for m in MODALITIES}
    score = z + sum(_SENTIMENT_WEIGHT[m] * specific[m] for m in MODALITIES)
    norm = math.sqrt(1.0 + sum(w * w for w in _SENTIMENT_WEIGHT.values()))
    raw = _LABEL_SCALE * score / norm + _LABEL_NOISE_STD * rng.standard_normal(n)
    return z, specific, mmsa_labels(raw)


def split_extras(labels: np.ndarray, offset: int) -> dict[str, np.ndarray]:
    """Labels, ids, raw text and annotations of one split (N,), samples numbered from ``offset``."""
    index = offset + np.arange(labels.shape[0])
    video, clip = index // _CLIPS_PER_VIDEO, index % _CLIPS_PER_VIDEO
    return {
        "regression_labels": labels,
        "classification_labels": (np.sign(labels) + 1.0).astype(np.float32),
        "id": np.array([f"synvid{k}$_${j}" for k, j in zip(video, clip)], dtype=object),
        "raw_text": np.array([f"synthetic clip {j} of video {k}" for k, j in zip(video, clip)], dtype=object),
        "annotations": np.where(labels > 0, "Positive", np.where(labels < 0, "Negative", "Neutral")).astype(object),
    }


def _frames(
    rng: np.random.Generator,
    proj: dict[str, np.ndarray],
    z: np.ndarray,
    u: np.ndarray,
    lengths: np.ndarray,
    steps: int,
) -> np.ndarray:
    """(N, T, D) float32 frames ``(A z + B u) g_t + C w + noise``, zero past each length."""
    n, dim = z.shape[0], proj["A"].shape[0]
    x = rng.standard_normal((n, steps, dim), dtype=np.float32)
    x *= np.float32(_FRAME_NOISE_STD * math.sqrt(steps / _REFERENCE_STEPS))
    gain = rng.standard_normal((n, steps), dtype=np.float32)
    gain = np.exp(_GAIN_SIGMA * gain - _GAIN_SIGMA**2 / 2, dtype=np.float32)
    signal = (np.outer(z, proj["A"]) + np.outer(u, proj["B"])).astype(np.float32)
    nuisance = _NUISANCE_STD * rng.standard_normal((n, proj["C"].shape[1])) @ proj["C"].T
    x += gain[:, :, None] * signal[:, None, :]
    x += nuisance.astype(np.float32)[:, None, :]
    padding = np.arange(steps)[None, :] >= lengths[:, None]
    x[padding] = 0.0
    return x


def text_bert(rng: np.random.Generator, lengths: np.ndarray, steps: int) -> np.ndarray:
    """(N, 3, L) float32: token ids ([CLS] ... [SEP], 0 padding), attention mask, segment ids."""
    n = lengths.shape[0]
    position = np.arange(steps)[None, :]
    mask = position < lengths[:, None]
    ids = rng.integers(*_VOCAB, size=(n, steps))
    ids[:, 0] = _CLS
    ids[position == lengths[:, None] - 1] = _SEP
    ids[~mask] = 0
    bert = np.zeros((n, 3, steps), dtype=np.float32)
    bert[:, 0] = ids
    bert[:, 1] = mask
    return bert
