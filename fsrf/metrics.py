"""The MMSA toolkit's regression metrics, reproduced value for value.

:func:`regression_metrics` gives exactly (``==``) what ``eval_mosei_regression`` and
``eval_sims_regression`` of thuiar/MMSA (``src/MMSA/utils/metricsTop.py``) give for
float32 inputs, without their ``round(x, 4)``: the same numpy dtypes, the same
round-half-to-even class rounding and the same float32-against-Python-float bin
edges. Weighted F1 is sklearn's ``f1_score(..., average="weighted")`` computed
here with numpy (per-class F1 over the union of labels, weighted by the support of
the true classes), so :mod:`fsrf` does not depend on scikit-learn.

Where MMSA would fail or warn, these return ``nan`` quietly: ``Corr`` of a
constant input or of fewer than two samples, and the ``Non0`` metrics when every
label is 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fsrf._constants import DATASET_METRICS
from fsrf._errors import FSRFError

# Inner edges of MMSA's SIMS bins ms_2, ms_3, ms_5 (the outer -1.01 and 1.01 hold
# every value once predictions and labels are clipped to [-1, 1]).
_SIMS_EDGES_2 = (0.0,)
_SIMS_EDGES_3 = (-0.1, 0.1)
_SIMS_EDGES_5 = (-0.7, -0.1, 0.1, 0.7)


def metric_names(dataset: str) -> tuple[str, ...]:
    """The metric names :func:`regression_metrics` returns for ``dataset``, in order.

    Args:
        dataset: ``mosi``, ``mosei``, ``synthetic`` or ``sims``.

    Raises:
        FSRFError: an unknown dataset.
    """
    if dataset not in DATASET_METRICS:
        raise FSRFError(f"dataset: {dataset!r} is not one of {', '.join(DATASET_METRICS)}")
    return DATASET_METRICS[dataset]


def regression_metrics(
    pred: Any, truth: Any, dataset: str, *, legacy_f1: bool = False
) -> dict[str, float]:
    """MMSA's regression metrics of predictions against labels.

    Args:
        pred: predicted sentiment scores, a numpy array or torch tensor of any shape
            (flattened; tensors are detached and moved to the CPU); converted to float32.
        truth: the labels, as ``pred``, with as many elements.
        dataset: ``mosi``, ``mosei`` or ``synthetic`` (MOSI-style metrics) or ``sims``.
        legacy_f1: reproduce the old MMSA/LNLN bug that swapped the arguments of
            ``f1_score``, so classes are weighted by their predicted support.

    Returns:
        ``{name: value}`` for the names of :func:`metric_names`, in that order, as
        unrounded Python floats.

    Raises:
        FSRFError: an unknown dataset, empty or differently sized inputs, or NaN values.
    """
    names = metric_names(dataset)
    p = _as_float32(pred, "pred")
    t = _as_float32(truth, "truth")
    if p.size != t.size:
        raise FSRFError(f"pred: {p.size} values but truth has {t.size}, expected one prediction per label")
    if t.size == 0:
        raise FSRFError("pred: is empty, expected at least one sample")
    values = _sims(p, t, legacy_f1) if dataset == "sims" else _mosi(p, t, legacy_f1)
    return {name: float(values[name]) for name in names}


def _as_float32(x: Any, name: str) -> np.ndarray:
    """Flatten ``x`` into a float32 numpy array, as ``tensor.view(-1).numpy()`` would."""
    try:
        if isinstance(x, torch.Tensor):
            arr = x.detach().to(device="cpu", dtype=torch.float32).reshape(-1).numpy()
        else:
            arr = np.asarray(x, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise FSRFError(f"{name}: cannot be read as float32 numbers ({exc})") from None
    bad = int(np.count_nonzero(np.isnan(arr)))
    if bad:
        raise FSRFError(f"{name}: {bad} of {arr.size} values are NaN, expected numbers")
    return arr


def _mosi(p: np.ndarray, t: np.ndarray, legacy_f1: bool) -> dict[str, Any]:
    """``eval_mosei_regression`` (used for MOSI and MOSEI alike)."""
    nonzero = t != 0
    if nonzero.any():
        nz_truth, nz_pred = t[nonzero] > 0, p[nonzero] > 0
        non0_acc: Any = _accuracy(nz_pred, nz_truth)
        non0_f1: Any = _f1(nz_truth, nz_pred, legacy_f1)
    else:
        non0_acc = non0_f1 = np.nan
    has0_truth, has0_pred = t >= 0, p >= 0
    return {
        "Has0_acc_2": _accuracy(has0_pred, has0_truth),
        "Has0_F1_score": _f1(has0_truth, has0_pred, legacy_f1),
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": _multiclass_acc(np.clip(p, a_min=-2.0, a_max=2.0), np.clip(t, a_min=-2.0, a_max=2.0)),
        "Mult_acc_7": _multiclass_acc(np.clip(p, a_min=-3.0, a_max=3.0), np.clip(t, a_min=-3.0, a_max=3.0)),
        "MAE": _mae(p, t),
        "Corr": _corr(p, t),
    }


def _sims(p: np.ndarray, t: np.ndarray, legacy_f1: bool) -> dict[str, Any]:
    """``eval_sims_regression``."""
    p = np.clip(p, a_min=-1.0, a_max=1.0)
    t = np.clip(t, a_min=-1.0, a_max=1.0)
    p2, t2 = _bins(p, _SIMS_EDGES_2), _bins(t, _SIMS_EDGES_2)
    return {
        "Mult_acc_2": _multiclass_acc(p2, t2),
        "Mult_acc_3": _multiclass_acc(_bins(p, _SIMS_EDGES_3), _bins(t, _SIMS_EDGES_3)),
        "Mult_acc_5": _multiclass_acc(_bins(p, _SIMS_EDGES_5), _bins(t, _SIMS_EDGES_5)),
        "F1_score": _f1(t2, p2, legacy_f1),
        "MAE": _mae(p, t),
        "Corr": _corr(p, t),
    }


def _bins(x: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Class index of each value of ``x`` (in [-1, 1]): how many inner edges it exceeds.

    Equals MMSA's ``ms[i] < x <= ms[i + 1]`` assignment, compared the same way
    (a float32 array against a Python float).
    """
    classes = np.zeros(x.shape, dtype=np.int64)
    for edge in edges:
        classes += x > edge
    return classes


def _multiclass_acc(p: np.ndarray, t: np.ndarray) -> float:
    """MMSA's ``__multiclass_acc``: share of equal ``np.round`` (half to even) values."""
    return np.count_nonzero(np.round(p) == np.round(t)) / float(t.size)


def _accuracy(p: np.ndarray, t: np.ndarray) -> float:
    """sklearn's ``accuracy_score``: share of equal labels."""
    return np.count_nonzero(p == t) / t.size


def _mae(p: np.ndarray, t: np.ndarray) -> np.float64:
    """Mean absolute error, averaged in float32 as MMSA does, then widened."""
    return np.mean(np.absolute(p - t)).astype(np.float64)


def _corr(p: np.ndarray, t: np.ndarray) -> float:
    """Pearson correlation via ``np.corrcoef``; ``nan`` when undefined, without warnings."""
    if p.size < 2 or bool(np.all(p == p[0])) or bool(np.all(t == t[0])):
        return float("nan")
    with np.errstate(all="ignore"):
        return float(np.corrcoef(p, t)[0][1])


def _f1(truth: np.ndarray, pred: np.ndarray, legacy: bool) -> float:
    """MMSA's weighted F1 call, with the arguments swapped when ``legacy``."""
    return weighted_f1(pred, truth) if legacy else weighted_f1(truth, pred)


def weighted_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """sklearn's ``f1_score(truth, pred, average="weighted")``, bit for bit.

    The classes are the sorted union of the labels in ``truth`` and ``pred``; each
    class's F1 is ``2 tp / (true support + predicted support)`` (0 when it has no
    true positive, without a warning), and the classes are averaged with their true
    support as weights.

    Args:
        truth: the reference labels (any comparable dtype, 1-D).
        pred: the predicted labels, as many as ``truth``.
    """
    n = truth.size
    _, inverse = np.unique(np.concatenate([truth, pred]), return_inverse=True)
    inverse = inverse.reshape(-1)
    k = int(inverse.max()) + 1
    t_idx, p_idx = inverse[:n], inverse[n:]
    true_sum = np.bincount(t_idx, minlength=k)
    pred_sum = np.bincount(p_idx, minlength=k)
    tp_sum = np.bincount(t_idx[t_idx == p_idx], minlength=k)
    # sklearn: (1 + beta**2) tp / (beta**2 true + pred) in float64, beta = 1.
    f_score = (2.0 * tp_sum.astype(np.float64)) / (
        1.0 * true_sum.astype(np.float64) + pred_sum.astype(np.float64)
    )
    return float(np.average(f_score, weights=true_sum))


__all__ = ["metric_names", "regression_metrics", "weighted_f1"]
