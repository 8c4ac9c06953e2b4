"""The recovery benchmark's planted structure, the probes, and a short full-versus-plain check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fsrf import FSRFError, load_config, with_overrides
from fsrf.cli import main
from fsrf.data import load_mmsa, make_recovery, save_mmsa
from fsrf.probe import planted_factors, ridge_r2

ROOT = Path(__file__).resolve().parents[1]


def _means(split: dict, modalities: tuple[str, ...]) -> np.ndarray:
    """Per-sample mean over valid frames, concatenated over ``modalities``: (N, sum D_m)."""
    out = []
    for m in modalities:
        x = np.asarray(split[m], dtype=np.float64)
        lengths = split[f"{m}_lengths"] if m != "text" else split["text_bert"][:, 1].sum(axis=1)
        out.append(x.sum(axis=1) / np.asarray(lengths, dtype=np.float64)[:, None])
    return np.concatenate(out, axis=1)


def _r2(data: dict, modalities: tuple[str, ...], target: str) -> float:
    fit, score = data["valid"], data["test"]
    if target == "label":
        y_fit, y_score = fit["regression_labels"], score["regression_labels"]
    else:
        y_fit, y_score = planted_factors(data, "valid")[target], planted_factors(data, "test")[target]
    return ridge_r2(_means(fit, modalities), np.asarray(y_fit, np.float64),
                    _means(score, modalities), np.asarray(y_score, np.float64))


@pytest.fixture(scope="module")
def benchmark() -> dict:
    return make_recovery(seed=0, n_train=64, n_valid=800, n_test=800)


def test_each_planted_factor_is_recovered_by_a_fresh_probe_of_the_complete_data(benchmark: dict) -> None:
    everything = ("text", "audio", "vision")
    assert _r2(benchmark, everything, "shared") > 0.6
    assert _r2(benchmark, everything, "label") > 0.5
    for m in everything:
        assert _r2(benchmark, (m,), f"own_{m}") > 0.3  # each modality holds its own factor...
        assert _r2(benchmark, (m,), f"nuisance_{m}") > 0.5
        assert _r2(benchmark, (m,), "shared") > 0.3  # ...and part of the shared one
    assert _r2(benchmark, ("audio", "vision"), "own_text") < 0.05  # text's own factor is only in text


def test_the_specific_control_puts_the_label_in_text_alone() -> None:
    data = make_recovery(seed=0, n_train=64, n_valid=800, n_test=800, label="specific")
    assert _r2(data, ("text",), "label") > 0.3
    assert _r2(data, ("audio", "vision"), "label") < 0.05


def test_the_benchmark_is_an_mmsa_file_and_a_seed_fixes_it(tmp_path: Path, benchmark: dict) -> None:
    save_mmsa(tmp_path / "r.pkl", benchmark)
    dataset = load_mmsa(tmp_path / "r.pkl", name="synthetic")
    assert len(dataset.valid) == 800 and dataset.train.dims() == {"text": 32, "audio": 12, "vision": 16}
    again = make_recovery(seed=0, n_train=64, n_valid=800, n_test=800)
    assert np.array_equal(again["test"]["audio"], benchmark["test"]["audio"])
    with pytest.raises(FSRFError, match="label='both'"):
        make_recovery(seed=0, label="both")
    with pytest.raises(FSRFError, match="audio_dim=2"):
        make_recovery(seed=0, audio_dim=2)


@pytest.mark.slow
def test_full_beats_plain_at_high_rates_on_a_short_run_and_the_probe_reads_it(tmp_path: Path) -> None:
    """A smoke check with one fixed seed, not the benchmark (bench/ablation.py is)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import ablation  # bench/ablation.py: the same variants and test summary as the benchmark

    config = with_overrides(load_config(ROOT / "configs" / "recovery.yaml"), {
        "train.epochs": 8, "model.hidden": 32, "train.num_threads": 2,
    })
    full = ablation.run_one(config, str(tmp_path / "full"))
    plain = ablation.run_one(with_overrides(config, ablation.VARIANTS["plain"]), str(tmp_path / "plain"))
    assert full["high_mae"] < plain["high_mae"]

    assert main(["probe", "--checkpoint", str(tmp_path / "full" / "best.pt")]) == 0
    report = json.loads((tmp_path / "full" / "probe.json").read_text())
    assert set(report["recovery"]) == {"text", "audio", "vision"}
    assert report["readout"]["c_text"]["shared"] > report["readout"]["n_text"]["label"]


@pytest.mark.parametrize("recovery", [True, False])
def test_fsrf_probe_writes_the_r2_table_of_a_checkpoint(tmp_path: Path, recovery: bool, capsys) -> None:
    from tests_support import TINY

    from fsrf import config_from_dict, train

    config = with_overrides(config_from_dict(TINY), {
        "train.epochs": 1, "data.synthetic_kind": "recovery", "model.recovery": recovery,
        "data.text_dim": 8, "data.audio_dim": 8, "data.vision_dim": 8,
    })
    train(config, out_dir=tmp_path / "run", tensorboard=False)
    assert main(["probe", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "p.json")]) == 0
    report = json.loads((tmp_path / "p.json").read_text())
    assert set(report["readout"]["n_audio"]) == {"label", "shared", *(f"{k}_{m}" for k in ("own", "nuisance")
                                                                    for m in ("text", "audio", "vision"))}
    assert ("r_text" in report["readout"]) == recovery and bool(report["recovery"]) == recovery
    assert all(-10 < v <= 1 for row in report["readout"].values() for v in row.values())
    assert "R^2 of linear probes fitted on valid, scored on test" in capsys.readouterr().out
