"""Domain generalisation (DG) data: several datasets (domains) as one, and synthetic domains.

Shape legend: N samples, T_m steps of modality m, D_m its feature dim (D_m^k that of domain k;
the assembled dataset's D_m is the largest over the domains).

Leave-one-domain-out: :func:`assemble_domains` takes one :class:`MultimodalDataset` per domain
and builds the dataset a DG run trains on: ``train`` is the union of the source domains' train
splits, ``valid`` the union of their valid splits (model selection never sees the target) and
``test`` the target's test split. Features are zero-padded to the largest D_m and T_m over the
domains (``valid`` marks real positions; padded feature columns are 0), sample ids become
``<domain>/<id>``, and ``extras["domain"]`` holds each sample's domain index (N,) long: its
position in ``data.domains``.

Synthetic domains (:func:`make_domain`): the built-in generator's structure
(:mod:`fsrf.data._synthetic`: shared sentiment factor z, specific factors u_m, nuisance and frame
noise, the same label) with a planted shift per domain k of K:

* **its own dims**: domain k's features are the first D_m^k columns of projections shared by every
  domain (one feature extractor, truncated: a column means the same in every domain);
* **covariate shift**: each modality's frames of domain k get a constant offset
  ``shift * o_{k,m}`` (o ~ N(0, I / D) per domain, drawn from the domain's own seed);
* **a spurious cue**: vision's valid frames get ``c_k * (y / 1.5) * S`` along a direction S
  (norm 1, shared, within the first ``min_k D_v^k`` columns), a clean copy of the label whose
  strength ``c_k = shift * (1 - 2 k / (K - 1))`` goes from +shift (domain 0) through 0 to
  -shift (domain K-1). Sources that hold it with different strengths make a model that reads it
  have unequal per-domain risks (what an invariance objective such as V-REx sees); on a target
  where it is absent or reversed such a model fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fsrf._constants import MODALITIES, SPLITS
from fsrf._errors import FSRFError
from fsrf.data._synthetic import (
    _LABEL_SCALE,
    _frames,
    _projections,
    sentiment,
    split_extras,
    text_bert,
)
from fsrf.data._types import MultimodalDataset, Split

DOMAIN = "domain"
"""The side input (:attr:`Split.extras`) holding each sample's domain index."""


def spurious_strength(k: int, domains: int, shift: float) -> float:
    """``c_k``: the strength of domain k's spurious cue, +shift at k=0 to -shift at k=K-1."""
    return shift * (1.0 - 2.0 * k / (domains - 1)) if domains > 1 else shift


def make_domain(
    *,
    seed: int,
    k: int,
    dims: Sequence[dict[str, int]],
    shift: float,
    n_train: int,
    n_valid: int,
    n_test: int,
    text_len: int,
    audio_len: int,
    vision_len: int,
) -> dict[str, dict[str, Any]]:
    """Domain k's MMSA dict (see the module docstring).

    Args:
        seed: the data seed shared by every domain (the shared projections come from it; domain
            k's samples and offsets from ``(seed, k)``).
        k: the domain's index.
        dims: per domain, modality -> D_m^k (every domain's, so the shared projections and the
            spurious direction fit all of them).
        shift: the planted shift's strength (0: no offsets and no spurious cue).
    """
    if not 0 <= k < len(dims):
        raise FSRFError(f"make_domain: k={k} is not a domain index (0..{len(dims) - 1})")
    widest = {m: max(d[m] for d in dims) for m in MODALITIES}
    narrowest_vision = min(d["vision"] for d in dims)
    shared = np.random.default_rng([seed, 1 << 20])
    projections = {m: _projections(shared, m, widest[m]) for m in MODALITIES}
    direction = np.zeros(widest["vision"])
    direction[:narrowest_vision] = shared.standard_normal(narrowest_vision)
    direction /= np.linalg.norm(direction)
    own = {m: dims[k][m] for m in MODALITIES}
    proj = {m: {"A": p["A"][: own[m]], "B": p["B"][: own[m]], "C": p["C"][: own[m]]} for m, p in projections.items()}
    rng = np.random.default_rng([seed, k])
    offsets = {m: shift * rng.standard_normal(own[m]) / math.sqrt(own[m]) for m in MODALITIES}
    strength = spurious_strength(k, len(dims), shift)
    steps = {"text": text_len, "audio": audio_len, "vision": vision_len}
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    data: dict[str, dict[str, Any]] = {}
    offset = 100_000 * k
    for split in SPLITS:
        n = sizes[split]
        z, specific, labels = sentiment(rng, n)
        out: dict[str, Any] = {}
        lengths: dict[str, np.ndarray] = {}
        for m in MODALITIES:
            t = steps[m]
            lengths[m] = rng.integers(math.ceil(t / 2), t + 1, size=n).astype(np.int64)
            x = _frames(rng, proj[m], z, specific[m], lengths[m], t)
            cue = offsets[m][None, :]
            if m == "vision":
                cue = cue + strength * (labels / _LABEL_SCALE)[:, None] * direction[None, : own[m]]
            real = np.arange(t)[None, :] < lengths[m][:, None]  # (N, T)
            x += (real[:, :, None] * cue[:, None, :]).astype(np.float32)
            out[m] = x
        out["text_bert"] = text_bert(rng, lengths["text"], steps["text"])
        out["audio_lengths"] = lengths["audio"]
        out["vision_lengths"] = lengths["vision"]
        out.update(split_extras(labels, offset))
        offset += n
        data[split] = out
    return data


def _pad_split(split: Split, dims: dict[str, int], lengths: dict[str, int], domain: int, name: str) -> Split:
    """``split`` zero-padded to (T_m, D_m) per modality, ids prefixed, its domain index recorded."""
    features, valid = {}, {}
    for m in MODALITIES:
        x, v = split.features[m], split.valid[m]
        _, t, d = x.shape
        if t > lengths[m] or d > dims[m]:
            raise FSRFError(f"domain {name!r}: {m} is {t}x{d}, wider than the padded {lengths[m]}x{dims[m]}")
        features[m] = torch.nn.functional.pad(x, (0, dims[m] - d, 0, lengths[m] - t))
        valid[m] = torch.nn.functional.pad(v, (0, lengths[m] - t), value=False)
    return Split(features=features, valid=valid, labels=split.labels, ids=tuple(f"{name}/{i}" for i in split.ids),
                 extras={**split.extras, DOMAIN: torch.full((len(split),), domain, dtype=torch.long)})


def _concat(splits: Sequence[Split]) -> Split:
    return Split(
        features={m: torch.cat([s.features[m] for s in splits]) for m in MODALITIES},
        valid={m: torch.cat([s.valid[m] for s in splits]) for m in MODALITIES},
        labels=torch.cat([s.labels for s in splits]),
        ids=tuple(i for s in splits for i in s.ids),
        extras={k: torch.cat([s.extras[k] for s in splits]) for k in splits[0].extras},
    )


def assemble_domains(
    datasets: Sequence[MultimodalDataset],
    *,
    names: Sequence[str],
    target: str,
    dims: dict[str, int],
    lengths: dict[str, int],
    name: str,
) -> MultimodalDataset:
    """The leave-one-domain-out dataset (see the module docstring).

    Args:
        datasets: one per domain, in the order of ``names`` (a domain's index is its position).
        names: the domain names (``data.domains``).
        target: the held-out domain: only its test split is kept.
        dims: modality -> the padded D_m (at least every domain's).
        lengths: modality -> the padded T_m (at least every domain's).
        name: the assembled dataset's name (the target's metric set).

    Raises:
        FSRFError: mismatched arguments, a target that is not a domain, or a domain wider than the padding.
    """
    if len(datasets) != len(names) or target not in names or len(set(names)) != len(names):
        raise FSRFError(f"domains: {list(names)} with target {target!r} and {len(datasets)} datasets do not agree")
    sources = [(k, d, names[k]) for k, d in enumerate(datasets) if names[k] != target]
    k_target = names.index(target)
    test = datasets[k_target].test
    return MultimodalDataset(
        name=name,
        train=_concat([_pad_split(d.train, dims, lengths, k, n) for k, d, n in sources]),
        valid=_concat([_pad_split(d.valid, dims, lengths, k, n) for k, d, n in sources]),
        test=None if test is None else _pad_split(test, dims, lengths, k_target, target),
        source=" + ".join(f"{n}={d.source or n}" for n, d in zip(names, datasets)) + f" (target {target})",
    )
