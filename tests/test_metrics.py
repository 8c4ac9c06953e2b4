"""fsrf.metrics against the MMSA toolkit's own metric code, compared with ``==``."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from fsrf._constants import MOSI_METRICS, SIMS_METRICS
from fsrf._errors import FSRFError
from fsrf.metrics import metric_names, regression_metrics, weighted_f1

# --- the reference: thuiar/MMSA src/MMSA/utils/metricsTop.py, without round(x, 4) ----------
# ``f1`` is sklearn's f1_score, or its argument-swapped form for the legacy check.


def _mmsa_multiclass_acc(y_pred, y_true):
    return np.sum(np.round(y_pred) == np.round(y_true)) / float(len(y_true))


def _fixed_f1(y_true, y_pred):
    return f1_score(y_true, y_pred, average="weighted")


def _legacy_f1(y_true, y_pred):
    return f1_score(y_pred, y_true, average="weighted")


def mmsa_eval_mosei_regression(y_pred, y_true, f1=_fixed_f1):
    test_preds = y_pred.view(-1).cpu().detach().numpy()
    test_truth = y_true.view(-1).cpu().detach().numpy()
    test_preds_a7 = np.clip(test_preds, a_min=-3.0, a_max=3.0)
    test_truth_a7 = np.clip(test_truth, a_min=-3.0, a_max=3.0)
    test_preds_a5 = np.clip(test_preds, a_min=-2.0, a_max=2.0)
    test_truth_a5 = np.clip(test_truth, a_min=-2.0, a_max=2.0)
    mae = np.mean(np.absolute(test_preds - test_truth)).astype(np.float64)
    corr = np.corrcoef(test_preds, test_truth)[0][1]
    mult_a7 = _mmsa_multiclass_acc(test_preds_a7, test_truth_a7)
    mult_a5 = _mmsa_multiclass_acc(test_preds_a5, test_truth_a5)
    non_zeros = np.array([i for i, e in enumerate(test_truth) if e != 0])
    non_zeros_binary_truth = test_truth[non_zeros] > 0
    non_zeros_binary_preds = test_preds[non_zeros] > 0
    non_zeros_acc2 = accuracy_score(non_zeros_binary_preds, non_zeros_binary_truth)
    non_zeros_f1_score = f1(non_zeros_binary_truth, non_zeros_binary_preds)
    binary_truth = test_truth >= 0
    binary_preds = test_preds >= 0
    acc2 = accuracy_score(binary_preds, binary_truth)
    f_score = f1(binary_truth, binary_preds)
    return {"Has0_acc_2": acc2, "Has0_F1_score": f_score, "Non0_acc_2": non_zeros_acc2,
            "Non0_F1_score": non_zeros_f1_score, "Mult_acc_5": mult_a5, "Mult_acc_7": mult_a7,
            "MAE": mae, "Corr": corr}


def mmsa_eval_sims_regression(y_pred, y_true, f1=_fixed_f1):
    test_preds = y_pred.view(-1).cpu().detach().numpy()
    test_truth = y_true.view(-1).cpu().detach().numpy()
    test_preds = np.clip(test_preds, a_min=-1.0, a_max=1.0)
    test_truth = np.clip(test_truth, a_min=-1.0, a_max=1.0)
    ms_2 = [-1.01, 0.0, 1.01]
    test_preds_a2 = test_preds.copy()
    test_truth_a2 = test_truth.copy()
    for i in range(2):
        test_preds_a2[np.logical_and(test_preds > ms_2[i], test_preds <= ms_2[i + 1])] = i
    for i in range(2):
        test_truth_a2[np.logical_and(test_truth > ms_2[i], test_truth <= ms_2[i + 1])] = i
    ms_3 = [-1.01, -0.1, 0.1, 1.01]
    test_preds_a3 = test_preds.copy()
    test_truth_a3 = test_truth.copy()
    for i in range(3):
        test_preds_a3[np.logical_and(test_preds > ms_3[i], test_preds <= ms_3[i + 1])] = i
    for i in range(3):
        test_truth_a3[np.logical_and(test_truth > ms_3[i], test_truth <= ms_3[i + 1])] = i
    ms_5 = [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
    test_preds_a5 = test_preds.copy()
    test_truth_a5 = test_truth.copy()
    for i in range(5):
        test_preds_a5[np.logical_and(test_preds > ms_5[i], test_preds <= ms_5[i + 1])] = i
    for i in range(5):
        test_truth_a5[np.logical_and(test_truth > ms_5[i], test_truth <= ms_5[i + 1])] = i
    mae = np.mean(np.absolute(test_preds - test_truth)).astype(np.float64)
    corr = np.corrcoef(test_preds, test_truth)[0][1]
    mult_a2 = _mmsa_multiclass_acc(test_preds_a2, test_truth_a2)
    mult_a3 = _mmsa_multiclass_acc(test_preds_a3, test_truth_a3)
    mult_a5 = _mmsa_multiclass_acc(test_preds_a5, test_truth_a5)
    f_score = f1(test_truth_a2, test_preds_a2)
    return {"Mult_acc_2": mult_a2, "Mult_acc_3": mult_a3, "Mult_acc_5": mult_a5,
            "F1_score": f_score, "MAE": mae, "Corr": corr}


# --- helpers ---------------------------------------------------------------------------------


def mmsa(pred: np.ndarray, truth: np.ndarray, dataset: str, *, legacy: bool = False) -> dict[str, Any]:
    """The reference on float32 tensors; its warnings (constant Corr) are silenced."""
    p = torch.from_numpy(np.asarray(pred, dtype=np.float32))
    t = torch.from_numpy(np.asarray(truth, dtype=np.float32))
    fn = mmsa_eval_sims_regression if dataset == "sims" else mmsa_eval_mosei_regression
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(p, t, f1=_legacy_f1 if legacy else _fixed_f1)


def assert_same(ours: dict[str, float], ref: dict[str, Any]) -> None:
    assert list(ours) == list(ref)
    for key, value in ours.items():
        assert type(value) is float, key
        expected = float(ref[key])
        assert value == expected or (math.isnan(value) and math.isnan(expected)), (key, value, expected)


def check(pred: Any, truth: Any, dataset: str, *, legacy: bool = False) -> dict[str, float]:
    ours = regression_metrics(pred, truth, dataset, legacy_f1=legacy)
    assert_same(ours, mmsa(pred, truth, dataset, legacy=legacy))
    return ours


MOSI_LIKE = ("mosi", "mosei", "synthetic")
HALF_INTEGERS = np.array([-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5], dtype=np.float32)
SIMS_EDGES = np.array([-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0, -1.5, -1.01, 1.01, 1.2, 3.0], dtype=np.float32)


# --- equality with MMSA ------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", [*MOSI_LIKE, "sims"])
@pytest.mark.parametrize("seed", range(25))
def test_random_float32_matches_mmsa(dataset: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    scale = 1.0 if dataset == "sims" else 3.0
    truth = rng.uniform(-scale, scale, n).astype(np.float32)
    pred = (truth + rng.normal(0.0, scale / 2, n)).astype(np.float32)
    for legacy in (False, True):
        check(pred, truth, dataset, legacy=legacy)


@pytest.mark.parametrize("seed", range(10))
def test_half_integers_round_half_to_even(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    truth = rng.choice(HALF_INTEGERS, 200)
    pred = np.concatenate([rng.choice(HALF_INTEGERS, 100), rng.normal(0, 2, 100)]).astype(np.float32)
    check(pred, truth, "mosi")
    check(pred, truth, "mosi", legacy=True)


def test_round_half_to_even_by_hand() -> None:
    # np.round: -2.5 -> -2, -1.5 -> -2, -0.5 -> -0, 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 3 (clipped to 3).
    # Every prediction rounds onto its label; rounding half up would match only -1.5 and 1.5.
    pred = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5], dtype=np.float32)
    truth = np.array([-2.0, -2.0, 0.0, 0.0, 2.0, 2.0, 3.0], dtype=np.float32)
    got = check(pred, truth, "mosi")
    assert got["Mult_acc_7"] == 1.0
    # Acc-5 clips to [-2, 2]: 2.5 and 3.5 become 2.0, the label 3 becomes 2 -> all 7 agree too.
    assert got["Mult_acc_5"] == 1.0


@pytest.mark.parametrize("seed", range(10))
def test_labels_with_zeros(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    truth = np.where(rng.random(150) < 0.3, 0.0, rng.integers(-3, 4, 150)).astype(np.float32)
    pred = np.concatenate([np.zeros(20), rng.normal(0, 1.5, 130)]).astype(np.float32)
    for dataset in MOSI_LIKE:
        check(pred, truth, dataset)
        check(pred, truth, dataset, legacy=True)


@pytest.mark.parametrize("seed", range(10))
def test_mosei_thirds(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    truth = (rng.integers(-9, 10, 300) / 3).astype(np.float32)
    pred = np.concatenate([rng.integers(-12, 13, 100) / 6, rng.normal(0, 1.5, 200)]).astype(np.float32)
    check(pred, truth, "mosei")
    check(pred, truth, "mosei", legacy=True)


@pytest.mark.parametrize("seed", range(10))
def test_sims_steps_and_bin_edges(seed: int) -> None:
    rng = np.random.default_rng(400 + seed)
    steps = np.round(np.arange(-1.0, 1.01, 0.2), 1).astype(np.float32)  # -1.0, -0.8, ..., 1.0
    truth = rng.choice(np.concatenate([steps, SIMS_EDGES]), 250)
    pred = np.concatenate([rng.choice(SIMS_EDGES, 150), rng.uniform(-1.3, 1.3, 100)]).astype(np.float32)
    rng.shuffle(pred)
    check(pred, truth, "sims")
    check(pred, truth, "sims", legacy=True)


def test_every_bin_edge_against_every_other() -> None:
    grid_p, grid_t = np.meshgrid(SIMS_EDGES, SIMS_EDGES)
    check(grid_p.ravel(), grid_t.ravel(), "sims")
    grid_p, grid_t = np.meshgrid(HALF_INTEGERS, HALF_INTEGERS)
    check(grid_p.ravel(), grid_t.ravel(), "mosi")


def test_torch_and_numpy_inputs_agree_and_any_shape_is_flattened() -> None:
    rng = np.random.default_rng(7)
    truth = rng.uniform(-3, 3, 64).astype(np.float32)
    pred = rng.normal(0, 2, 64).astype(np.float32)
    ref = regression_metrics(pred, truth, "mosi")
    as_tensor = torch.from_numpy(pred).reshape(64, 1).requires_grad_(True)
    assert regression_metrics(as_tensor, torch.from_numpy(truth), "mosi") == ref
    assert regression_metrics(pred.reshape(8, 8), truth.reshape(64, 1), "mosi") == ref


def test_float64_input_is_converted_to_float32() -> None:
    rng = np.random.default_rng(8)
    truth, pred = rng.uniform(-3, 3, 90), rng.normal(0, 2, 90)
    ours = regression_metrics(pred, truth, "mosi")
    assert_same(ours, mmsa(pred.astype(np.float32), truth.astype(np.float32), "mosi"))
    assert regression_metrics(torch.from_numpy(pred), torch.from_numpy(truth), "mosi") == ours


# --- hand-worked cases -------------------------------------------------------------------------


def test_mosi_by_hand() -> None:
    # truth  1.0  -1.0   0.0  2.0
    # pred   0.5   0.4  -0.2  2.6
    # Has0 (>= 0): truth T F T T, pred T T F T -> samples 0 and 3 agree: Acc-2 = 2/4.
    #   class T: tp 2, true 3, pred 3 -> F1 4/6; class F: tp 0 -> F1 0.
    #   weighted by true support (F 1, T 3): (1*0 + 3*2/3) / 4 = 0.5.
    # Non0 (samples 0, 1, 3; > 0): truth T F T, pred T T T -> Acc-2 = 2/3.
    #   class T: tp 2, true 2, pred 3 -> F1 4/5; class F: 0. Weighted: (2*0.8 + 1*0) / 3 = 1.6/3.
    # Acc-5 (clip +-2, round half to even): pred 0 0 -0 2 vs truth 1 -1 0 2 -> 2/4.
    # Acc-7 (clip +-3): pred 0 0 -0 3 vs truth 1 -1 0 2 -> 1/4.
    # MAE: (0.5 + 1.4 + 0.2 + 0.6) / 4 = 0.675.
    # Corr: deviations p (-0.325, -0.425, -1.025, 1.775), t (0.5, -1.5, -0.5, 1.5):
    #   sum p*t = 3.65, sum p^2 = 4.4875, sum t^2 = 5 -> 3.65 / sqrt(22.4375).
    truth = np.array([1.0, -1.0, 0.0, 2.0], dtype=np.float32)
    pred = np.array([0.5, 0.4, -0.2, 2.6], dtype=np.float32)
    got = check(pred, truth, "mosi")
    assert tuple(got) == MOSI_METRICS
    assert got["Has0_acc_2"] == 0.5
    assert got["Has0_F1_score"] == 0.5
    assert got["Non0_acc_2"] == 2 / 3
    assert got["Non0_F1_score"] == pytest.approx(1.6 / 3, rel=1e-15)
    assert got["Mult_acc_5"] == 0.5
    assert got["Mult_acc_7"] == 0.25
    assert got["MAE"] == pytest.approx(0.675, rel=1e-6)
    assert got["Corr"] == pytest.approx(3.65 / math.sqrt(22.4375), rel=1e-6)


def test_sims_by_hand() -> None:
    # truth -0.8  -0.2   0.0   0.6
    # pred  -0.7  -0.1   0.1   1.4  (clipped to 1.0)
    # 2 classes (> 0.0):              truth 0 0 0 1, pred 0 0 1 1 -> 3/4
    # 3 classes (edges -0.1, 0.1):    truth 0 0 1 2, pred 0 0 1 2 -> 4/4 (-0.1 is not > -0.1)
    # 5 classes (-0.7, -0.1, 0.1, 0.7): truth 0 1 2 3, pred 0 1 2 4 -> 3/4 (-0.7 stays class 0)
    # F1 on 2 classes: class 0 tp 2, true 3, pred 2 -> 4/5; class 1 tp 1, true 1, pred 2 -> 2/3;
    #   weighted (3*4/5 + 1*2/3) / 4 = 23/30.
    # MAE on clipped values: (0.1 + 0.1 + 0.1 + 0.4) / 4 = 0.175.
    truth = np.array([-0.8, -0.2, 0.0, 0.6], dtype=np.float32)
    pred = np.array([-0.7, -0.1, 0.1, 1.4], dtype=np.float32)
    got = check(pred, truth, "sims")
    assert tuple(got) == SIMS_METRICS
    assert got["Mult_acc_2"] == 0.75
    assert got["Mult_acc_3"] == 1.0
    assert got["Mult_acc_5"] == 0.75
    assert got["F1_score"] == pytest.approx(23 / 30, rel=1e-15)
    assert got["MAE"] == pytest.approx(0.175, rel=1e-6)


# --- weighted F1 -------------------------------------------------------------------------------


def test_legacy_f1_swaps_arguments_and_differs_on_imbalance() -> None:
    # truth >= 0: T T T T F; pred >= 0: T T F F F.
    # class T: tp 2, true 4, pred 2 -> F1 2/3; class F: tp 1, true 1, pred 3 -> F1 1/2.
    # fixed (true support 4, 1):  (4*2/3 + 1*1/2) / 5 = 19/30
    # legacy (pred support 2, 3): (2*2/3 + 3*1/2) / 5 = 17/30
    truth = np.array([1.0, 1.0, 1.0, 1.0, -1.0], dtype=np.float32)
    pred = np.array([1.0, 1.0, -1.0, -1.0, -1.0], dtype=np.float32)
    fixed = check(pred, truth, "mosi")
    legacy = check(pred, truth, "mosi", legacy=True)
    assert fixed["Has0_F1_score"] == pytest.approx(19 / 30, rel=1e-15)
    assert legacy["Has0_F1_score"] == pytest.approx(17 / 30, rel=1e-15)
    assert legacy["Has0_F1_score"] == f1_score(pred >= 0, truth >= 0, average="weighted")
    assert legacy["Has0_F1_score"] != fixed["Has0_F1_score"]
    for key in ("Has0_acc_2", "Non0_acc_2", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"):
        assert legacy[key] == fixed[key]


def test_legacy_f1_on_sims() -> None:
    truth = np.array([-0.8, -0.4, -0.2, 0.2, 0.4], dtype=np.float32)
    pred = np.array([0.5, 0.6, 0.7, 0.8, -0.1], dtype=np.float32)
    legacy = check(pred, truth, "sims", legacy=True)
    assert legacy["F1_score"] != regression_metrics(pred, truth, "sims")["F1_score"]


@pytest.mark.parametrize("seed", range(20))
def test_weighted_f1_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(500 + seed)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        truth = rng.random(n) < rng.random()
        pred = rng.random(n) < rng.random()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = f1_score(truth, pred, average="weighted")
        assert weighted_f1(truth, pred) == expected


def test_weighted_f1_emits_no_warning_when_a_class_is_never_hit() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert weighted_f1(np.array([True, True]), np.array([False, False])) == 0.0


# --- degenerate inputs and errors ------------------------------------------------------------


@pytest.mark.parametrize("dataset", [*MOSI_LIKE, "sims"])
def test_constant_predictions_give_nan_corr_without_warning(dataset: str) -> None:
    truth = np.array([-0.8, -0.2, 0.4, 0.6, 1.0], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = regression_metrics(np.full(5, 0.5, dtype=np.float32), truth, dataset)
        single = regression_metrics(np.array([0.3]), np.array([0.2]), dataset)
    assert math.isnan(got["Corr"]) and math.isnan(single["Corr"])
    assert_same(got, mmsa(np.full(5, 0.5), truth, dataset))


def test_all_zero_labels_give_nan_non0_metrics() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = regression_metrics(np.array([0.5, -0.5, 1.0]), np.zeros(3), "mosi")
    assert math.isnan(got["Non0_acc_2"]) and math.isnan(got["Non0_F1_score"])
    assert got["Has0_acc_2"] == 2 / 3


def test_metric_names() -> None:
    assert metric_names("mosi") == metric_names("mosei") == metric_names("synthetic") == MOSI_METRICS
    assert metric_names("sims") == SIMS_METRICS
    with pytest.raises(FSRFError, match="'iemocap'"):
        metric_names("iemocap")


def test_unknown_dataset() -> None:
    with pytest.raises(FSRFError, match=r"dataset: 'MOSI' is not one of mosi, mosei, synthetic, sims"):
        regression_metrics(np.zeros(3), np.zeros(3), "MOSI")


@pytest.mark.parametrize(
    ("pred", "truth", "match"),
    [
        (np.zeros(3), np.zeros(4), "3 values but truth has 4"),
        (np.zeros(0), np.zeros(0), "empty"),
        (np.array([0.1, np.nan]), np.zeros(2), "pred: 1 of 2 values are NaN"),
        (np.zeros(2), np.array([np.nan, 0.0]), "truth: 1 of 2 values are NaN"),
        (np.array(["a", "b"]), np.zeros(2), "pred: cannot be read as float32"),
    ],
)
def test_bad_inputs(pred: Any, truth: Any, match: str) -> None:
    with pytest.raises(FSRFError, match=match):
        regression_metrics(pred, truth, "mosi")
