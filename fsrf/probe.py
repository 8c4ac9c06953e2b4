"""Linear probes of a trained model's parts: does the factorization factorise, does recovery recover?

Shape legend: N samples of a split, H hidden dim, K a planted factor's size, M = 3 modalities.

For each modality m the model's parts on the complete input, c_m (homogeneous), s_m
(heterogeneous) and n_m (noise), and r_m (the homogeneous part recovered from the
other two modalities when m is removed), are read on two held-out splits. A fresh
ridge probe is fitted on one (``fit``, validation by default) and scored by R^2 on the
other (``score``, test), so no number is a training-set fit:

* ``<part> -> <target>``: how much of a target (the label, and on the recovery benchmark
  each planted factor: ``shared`` z, each modality's own ``u_m`` and nuisance ``w_m``)
  a linear read-out of the part recovers;
* ``shared -> <part>``: the share of the part's variance the shared factor explains
  (the converse probe, factor to part);
* ``recovery``: per modality, R^2 of r_m (m removed) against c_m (m present) on the same
  samples, with no fitting: how close the recovered part is to the real one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fsrf._constants import MODALITIES
from fsrf.data import Split
from fsrf.missing import apply_keep, pattern_keep
from fsrf.model import FSRF

PARTS = ("c", "s", "n", "r")
"""c: homogeneous, s: heterogeneous, n: noise (complete input); r: recovered (modality removed)."""

_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class ProbeReport:
    """R^2 of fresh linear probes, part by part.

    Attributes:
        readout: ``"<part>_<m>"`` -> target name -> held-out R^2 of the ridge probe part -> target.
        explained: ``"<part>_<m>"`` -> held-out R^2 of the ridge probe shared factor -> part
            (empty without planted factors).
        recovery: modality -> R^2 of r_m (m removed) against c_m (complete input); empty
            without a recovery path.
        fit_split: where the probes were fitted; ``score_split``: where they were scored.
    """

    readout: dict[str, dict[str, float]]
    explained: dict[str, float]
    recovery: dict[str, float]
    fit_split: str
    score_split: str

    def to_text(self) -> str:
        targets = list(next(iter(self.readout.values())))
        header = ["part", *targets] + (["shared->part"] if self.explained else [])
        rows = [header]
        for part, values in self.readout.items():
            row = [part, *(f"{values[t]:.3f}" for t in targets)]
            if self.explained:
                row.append(f"{self.explained.get(part, float('nan')):.3f}")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        recovered = ", ".join(f"{m} {v:.3f}" for m, v in self.recovery.items()) or "no recovery path"
        return (f"R^2 of linear probes fitted on {self.fit_split}, scored on {self.score_split} "
                f"(part -> target)\n" + "\n".join(lines)
                + f"\nrecovered vs real homogeneous part (R^2, modality removed): {recovered}")

    def to_dict(self) -> dict:
        return {"readout": self.readout, "explained": self.explained, "recovery": self.recovery,
                "fit_split": self.fit_split, "score_split": self.score_split}


@torch.no_grad()
def representations(model: FSRF, split: Split, *, batch_size: int = 256,
                    device: torch.device | None = None) -> dict[str, np.ndarray]:
    """``{"c_text": (N, H), ..., "r_vision": (N, H)}`` float64: the parts of every sample of a split.

    Without a recovery path (``model.recovery: false``) there is no r_m.
    """
    recovers = bool(getattr(model, "recovery", False))
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    for index, batch in split.batches(batch_size):
        x = {m: f.to(device) for m, f in batch.features.items()}
        valid = {m: v.to(device) for m, v in batch.valid.items()}
        out = model(x, valid)
        for m in MODALITIES:
            for part, value in (("c", out.homo[m]), ("s", out.hetero[m]), ("n", out.noise[m])):
                chunks.setdefault(f"{part}_{m}", []).append(value.float().cpu())
            if recovers:
                keep = pattern_keep(valid, tuple(k for k in MODALITIES if k != m))
                removed = model(apply_keep(x, keep), valid, keep=keep)
                chunks.setdefault(f"r_{m}", []).append(removed.used[m].float().cpu())
    model.train(was_training)
    ordered = [f"{p}_{m}" for m in MODALITIES for p in PARTS if p != "r" or recovers]
    return {k: torch.cat(chunks[k]).double().numpy() for k in ordered}


def _standardize(fit: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    std = np.where(std > 1e-12 * max(float(std.max()), 1e-300), std, 1.0)
    return (fit - mean) / std, (score - mean) / std


def _r2(pred: np.ndarray, target: np.ndarray) -> float:
    """Pooled R^2 over target columns: 1 - SSE / SST (SST about the target's own mean)."""
    sst = ((target - target.mean(axis=0)) ** 2).sum()
    return float(1.0 - ((pred - target) ** 2).sum() / sst) if sst > 0 else float("nan")


def ridge_r2(x_fit: np.ndarray, y_fit: np.ndarray, x_score: np.ndarray, y_score: np.ndarray,
             *, folds: int = 5) -> float:
    """Held-out R^2 of a ridge regression y ~ x, its penalty chosen by k-fold CV on the fit split.

    Args:
        x_fit: (N1, F) inputs; ``y_fit``: (N1,) or (N1, K) targets (likewise ``*_score``).
    """
    y_fit, y_score = y_fit.reshape(len(y_fit), -1), y_score.reshape(len(y_score), -1)
    x_fit, x_score = _standardize(x_fit, x_score)
    order = np.arange(len(x_fit))
    best, best_alpha = -np.inf, _ALPHAS[0]
    for alpha in _ALPHAS:
        scores = []
        for k in range(folds):
            held = order % folds == k
            w, b = _ridge(x_fit[~held], y_fit[~held], alpha)
            scores.append(-(((x_fit[held] @ w + b) - y_fit[held]) ** 2).sum())
        if sum(scores) > best:
            best, best_alpha = sum(scores), alpha
    w, b = _ridge(x_fit, y_fit, best_alpha)
    return _r2(x_score @ w + b, y_score)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - xm, y - ym
    w = np.linalg.solve(xc.T @ xc + alpha * len(x) * np.eye(x.shape[1]), xc.T @ yc)
    return w, ym - xm @ w


def probe(
    model: FSRF,
    fit: Split,
    score: Split,
    *,
    fit_factors: Mapping[str, np.ndarray] | None = None,
    score_factors: Mapping[str, np.ndarray] | None = None,
    fit_split: str = "valid",
    score_split: str = "test",
    device: torch.device | None = None,
) -> ProbeReport:
    """Fit fresh ridge probes on ``fit``'s representations and score them on ``score``'s.

    Args:
        model: a trained FSRF with the recovery path.
        fit: the split the probes are fitted on (held out from training).
        score: the split they are scored on.
        fit_factors: planted factors of ``fit`` by name (``shared``, ``text``, ...), each (N, K);
            None on real data.
        score_factors: the same for ``score``.
    """
    reps_fit = representations(model, fit, device=device)
    reps_score = representations(model, score, device=device)
    targets_fit = {"label": fit.labels.double().numpy(), **dict(fit_factors or {})}
    targets_score = {"label": score.labels.double().numpy(), **dict(score_factors or {})}
    readout = {
        part: {t: ridge_r2(reps_fit[part], targets_fit[t], reps_score[part], targets_score[t]) for t in targets_fit}
        for part in reps_fit
    }
    explained = {}
    if fit_factors and "shared" in fit_factors:
        explained = {part: ridge_r2(np.asarray(fit_factors["shared"]), reps_fit[part],
                                    np.asarray(targets_score["shared"]), reps_score[part])
                     for part in reps_fit}
    recovery = {m: _r2(reps_score[f"r_{m}"], reps_score[f"c_{m}"]) for m in MODALITIES if f"r_{m}" in reps_score}
    return ProbeReport(readout, explained, recovery, fit_split, score_split)


def planted_factors(data: Mapping[str, Mapping[str, np.ndarray]], split: str) -> dict[str, np.ndarray]:
    """The planted factors of one split of a generated dataset (``factor_*`` keys), by short name."""
    raw = data[split]
    out = {}
    if "factor_shared" in raw:
        out["shared"] = np.asarray(raw["factor_shared"], dtype=np.float64)
    for m in MODALITIES:
        for key, name in ((f"factor_{m}", f"own_{m}"), (f"factor_nuisance_{m}", f"nuisance_{m}")):
            if key in raw:
                out[name] = np.asarray(raw[key], dtype=np.float64)
    return out
