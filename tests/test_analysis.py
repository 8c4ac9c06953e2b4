"""analysis/: loading, leaderboards, export, the Optuna bridge and the CLI.

On stores written by the real writer (tests/analysis_stores.py).
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import optuna
import pytest
from analysis_stores import ERROR_MESSAGES, write_store
from tests_support import TINY, dashboard_study

from analysis import (
    Experiment,
    differing_params,
    error_messages,
    export_config,
    leaderboard,
    load_experiment,
    load_experiments,
    metric_mode,
    status_counts,
    to_optuna,
)
from analysis.cli import main
from fsrf import FSRFError, load_config, train, with_overrides
from fsrf._yaml import read_yaml
from tuning._summary import ranked_trials
from tuning.space import load_space
from tuning.store import TrialStoreWriter

N_TRIALS, EPOCHS = 18, 4


@pytest.fixture(scope="module")
def exp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("runs") / "synth", n_trials=N_TRIALS, epochs=EPOCHS, seed=3,
                       n_running=1)


@pytest.fixture(scope="module")
def exp(exp_dir: Path) -> Experiment:
    return load_experiment(exp_dir)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fsrf {argv[0]}: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


# -- loading ----------------------------------------------------------------------------------
def test_load_reads_the_experiment_and_never_writes(exp_dir: Path, exp: Experiment) -> None:
    before = sorted((p.relative_to(exp_dir), p.stat().st_mtime_ns) for p in exp_dir.rglob("*"))
    again = load_experiment(exp_dir / "store")  # the store itself works too
    assert sorted((p.relative_to(exp_dir), p.stat().st_mtime_ns) for p in exp_dir.rglob("*")) == before
    assert exp.name == again.name == "synth"
    assert exp.trials.num_rows == N_TRIALS and exp.space is not None and exp.space.endswith("default.yaml")
    assert exp.results.num_rows == sum(r["iterations"] or 0 for r in exp.trials.to_pylist())
    frame = exp.to_pandas("trials")
    assert list(frame["trial_id"]) == sorted(frame["trial_id"]) and "config.optim.lr" in frame
    assert {"objective", "valid/robust/MAE", "valid/r0.9/MAE", "train/loss/task"} <= set(exp.metrics)
    assert [e.name for e in load_experiments([exp_dir, exp_dir / "store"])] == ["synth", "synth"]


def test_missing_empty_and_torn_stores_give_one_line_errors(tmp_path: Path, exp_dir: Path) -> None:
    with pytest.raises(FSRFError, match="no such directory"):
        load_experiment(tmp_path / "nope")
    TrialStoreWriter(tmp_path / "empty" / "store", experiment="empty").close()
    with pytest.raises(FSRFError, match="empty"):
        load_experiment(tmp_path / "empty")
    torn = tmp_path / "torn"
    shutil.copytree(exp_dir, torn)
    for part in (torn / "store" / "parts").glob("*.parquet"):
        part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(FSRFError, match="damaged") as info:
        load_experiment(torn)
    assert "\n" not in str(info.value)
    with pytest.raises(FSRFError):
        load_experiments([])


# -- leaderboard ------------------------------------------------------------------------------
def test_leaderboard_ranks_by_best_value_and_agrees_with_the_search_summary(
    exp_dir: Path, exp: Experiment
) -> None:
    assert metric_mode(exp, "objective") == "min"  # the objective is valid/robust/MAE, minimised
    rows = leaderboard(exp, top=None)
    values = [r["value"] for r in rows if r["value"] is not None]
    assert values == sorted(values) and len(rows) == N_TRIALS
    assert rows[-1]["value"] is None and rows[-1]["status"] == "ERROR"  # errored before any result: last
    summary = [t["trial_id"] for t in ranked_trials(exp_dir / "store", mode="min")]
    assert [r["trial_id"] for r in rows] == summary  # one ranking: tune.py's summary and best.yaml, the leaderboard
    best = exp.results.to_pandas().groupby("trial_id")["objective"].min()
    assert rows[0]["value"] == pytest.approx(best.min()) and rows[0]["rank"] == 1
    assert [r["rank"] for r in rows] == list(range(1, N_TRIALS + 1))
    top = leaderboard(exp, top=3)
    assert [r["trial_id"] for r in top] == [r["trial_id"] for r in rows[:3]]
    assert all(r["epochs"] == EPOCHS for r in top if r["status"] == "COMPLETE")


def test_leaderboard_shows_the_parameters_that_differ(exp: Experiment) -> None:
    params = differing_params(exp)
    assert params[0] == "curriculum.kind" and "optim.lr" in params and "model.homo:off" in params
    assert "missing.simulator" in params
    row = leaderboard(exp, top=1)[0]
    assert set(params) <= set(row)
    # the planted parameter decides the ranking: the best trial has a small learning rate
    lrs = sorted(r["optim.lr"] for r in leaderboard(exp, top=None))
    assert row["optim.lr"] <= lrs[len(lrs) // 2]


def test_leaderboard_filters_direction_metric_and_last(exp: Experiment) -> None:
    complete = leaderboard(exp, top=None, status="complete")
    assert complete and {r["status"] for r in complete} == {"COMPLETE"}
    both = leaderboard(exp, top=None, status=["pruned", "ERROR"])
    assert {r["status"] for r in both} == {"PRUNED", "ERROR"}
    worst_first = leaderboard(exp, mode="max", top=None)
    values = [r["value"] for r in worst_first if r["value"] is not None]
    assert values == sorted(values, reverse=True)
    rate = leaderboard(exp, metric="valid/r0.9/MAE", top=None)
    rated = [r["value"] for r in rate if r["value"] is not None]
    assert rated == sorted(rated)
    last = leaderboard(exp, top=None, reduce="last")
    frame = exp.results.to_pandas().groupby("trial_id")["objective"].last()
    assert all(r["value"] == pytest.approx(frame[r["trial_id"]]) for r in last if r["value"] is not None)
    with pytest.raises(FSRFError, match="'finished' is not a trial status"):
        leaderboard(exp, status="finished")


def test_status_counts_and_error_messages(exp: Experiment) -> None:
    counts = status_counts(exp)
    assert list(counts) == ["COMPLETE", "PRUNED", "ERROR", "RUNNING"]
    assert sum(counts.values()) == N_TRIALS and counts["RUNNING"] == 1
    assert counts["ERROR"] == 2  # trials 5 and 11 (i % 6 == 5; 17 runs)
    errors = error_messages(exp)
    assert len(errors) == counts["ERROR"] and set(errors.values()) <= set(ERROR_MESSAGES)


def test_unknown_metric_names_it_and_lists_known_ones(exp: Experiment) -> None:
    with pytest.raises(FSRFError) as info:
        leaderboard(exp, metric="valid/robust/MAX")
    message = str(info.value)
    assert "\n" not in message and "'valid/robust/MAX'" in message and "objective" in message
    assert "valid/robust/MAE" in message


# -- export ---------------------------------------------------------------------------------
def test_export_writes_the_complete_config_that_fsrf_train_takes(
    tmp_path: Path, exp_dir: Path, exp: Experiment
) -> None:
    out = export_config(exp, rank=1, out=tmp_path / "best.yaml")
    best = leaderboard(exp, top=1)[0]
    raw = read_yaml(out)
    provenance = raw["provenance"]
    assert provenance["experiment"] == "synth" and provenance["trial_id"] == best["trial_id"]
    assert provenance["metric"] == "objective" and provenance["value"] == pytest.approx(best["value"])
    assert provenance["store"] == str(exp_dir)
    config = load_config(out)
    space = load_space(exp.space)
    assert config.optim.lr == pytest.approx(best["optim.lr"])
    assert config.curriculum.kind == best["curriculum.kind"]
    assert config.train.epochs == EPOCHS and config.train.checkpoint_every == 1  # the search's --max-epochs
    assert config.train.select_metric == space.metric and config.train.patience == 0  # the space's `fixed`
    assert config.model.hidden == space.base.model.hidden  # not only the searched fields
    if best["model.homo:off"]:
        assert config.model.homo == 0.0
    # fsrf train takes it: one epoch on small synthetic data
    small = with_overrides(config, {  # sizes only; every searched and fixed value stays as exported
        "data.text_len": 12, "data.audio_len": 16, "data.vision_len": 16, "data.synthetic_train": 64,
        "data.synthetic_valid": 32, "data.synthetic_test": 32, "model.hidden": 16, "model.heads": 2,
        "train.epochs": 1, "train.device": "cpu", "train.num_threads": 2,
        "missing.valid_rates": TINY["missing"]["valid_rates"],
    })
    result = train(small, out_dir=tmp_path / "run", tensorboard=False)
    assert result.best_epoch == 1 and math.isfinite(result.best_objective)
    assert (tmp_path / "run" / "best.pt").exists()


def test_export_rank_and_cli(
    tmp_path: Path, exp_dir: Path, exp: Experiment, capsys: pytest.CaptureFixture[str]
) -> None:
    second = leaderboard(exp, top=2)[1]
    assert main(["export", str(exp_dir), "--rank", "2", "-o", str(tmp_path / "second.yaml")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert read_yaml(tmp_path / "second.yaml")["provenance"]["trial_id"] == second["trial_id"]
    x = str(tmp_path / "x.yaml")
    _one_line_error(capsys, ["export", str(exp_dir), "--rank", "999", "-o", x], "--rank")
    _one_line_error(capsys, ["export", str(exp_dir), "-o", x, "--metric", "nope"], "'nope'")
    assert not (tmp_path / "x.yaml").exists()


# -- Optuna bridge ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_optuna_bridge_reads_back_with_optuna(tmp_path: Path, exp: Experiment, kind: str) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else str(tmp_path / "study.log")
    to_optuna(exp, storage)
    to_optuna(exp, storage)  # a second export replaces the study
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        storage = JournalStorage(JournalFileBackend(storage))
    study = optuna.load_study(study_name="synth", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    trials = {t.user_attrs["trial_id"]: t for t in study.trials}
    assert len(trials) == N_TRIALS
    frame = exp.results.to_pandas()
    states = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED", "ERROR": "FAIL", "RUNNING": "RUNNING"}
    space = load_space(exp.space)
    for stored in exp.trials.to_pylist():
        trial = trials[stored["trial_id"]]
        assert trial.state.name == states[stored["status"]]
        mine = frame[frame["trial_id"] == stored["trial_id"]]
        assert trial.intermediate_values == pytest.approx(dict(zip(mine["iteration"], mine["objective"])))
        if stored["status"] == "COMPLETE":  # one definition of a trial's value: its best epoch, as the leaderboard
            assert trial.value == pytest.approx(mine["objective"].min())
            assert trial.user_attrs["last_objective"] == pytest.approx(mine["objective"].iloc[-1])
        if stored["status"] == "ERROR":
            assert trial.value is None and trial.user_attrs["error"] == stored["error"]
        assert trial.params["optim.lr"] == pytest.approx(stored["config.optim.lr"])
        # switches always, conditional params only where sampled, the config rebuilds from the params
        assert "model.homo:off" in trial.params
        assert ("model.homo" in trial.params) != trial.params["model.homo:off"]
        assert ("curriculum.sharpness" in trial.params) == (trial.params["curriculum.kind"] == "exponential")
        space.to_config(trial.params)
    assert study.best_trial.user_attrs["trial_id"] == leaderboard(exp, top=1, status="complete")[0]["trial_id"]
    assert study.metric_names == ["objective"]
    # trials in the order they ran, with their real times (first and last report)
    firsts = frame.groupby("trial_id")["ts"].min()
    ordered = [t.user_attrs["trial_id"] for t in sorted(study.trials, key=lambda t: t.number)]
    reported = [t for t in ordered if t in firsts.index]
    assert reported == sorted(reported, key=lambda t: (firsts[t], t))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert all(t.datetime_complete >= t.datetime_start for t in done)
    assert any(t.datetime_complete > t.datetime_start for t in done)
    # what optuna-dashboard itself serves from that storage
    served = dashboard_study(storage, "synth")
    assert served["objective_names"] == ["objective"] and served["has_intermediate_values"]
    assert [t["number"] for t in served["trials"]] == list(range(N_TRIALS))
    by_id = {t.number: t for t in study.trials}
    for shown in served["trials"]:
        mine = by_id[shown["number"]]
        assert shown["state"].upper() == mine.state.name
        if mine.state.name == "COMPLETE":
            assert shown["values"] == pytest.approx([mine.value])
            assert shown["datetime_start"] <= shown["datetime_complete"]


# -- CLI -------------------------------------------------------------------------------------
def test_cli_analyze_prints_the_leaderboard_and_counts(
    exp_dir: Path, exp: Experiment, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "cli.db"
    url = f"sqlite:///{db}"
    assert main(["analyze", str(exp_dir), str(exp_dir / "store"), "--top", "3", "--to-optuna", url]) == 0
    out = capsys.readouterr().out
    assert out.count("top 3 trials by objective (min") == 2
    assert leaderboard(exp, top=1)[0]["trial_id"] in out
    assert "complete" in out and "1 running" in out and ERROR_MESSAGES[0] in out
    assert len(optuna.load_study(study_name="synth", storage=url).trials) == N_TRIALS
    argv = ["analyze", str(exp_dir), "--metric", "valid/r0.5/MAE", "--mode", "max", "--status", "complete"]
    assert main(argv) == 0
    assert "(max" in capsys.readouterr().out
    from fsrf.cli import main as fsrf_main  # the `fsrf` console script routes here

    assert fsrf_main(["analyze", str(exp_dir), "--top", "1"]) == 0
    assert "top 1 trials" in capsys.readouterr().out


def test_cli_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, exp_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _one_line_error(capsys, ["analyze", str(tmp_path / "missing")], "no such directory")
    TrialStoreWriter(tmp_path / "empty" / "store", experiment="empty").close()
    _one_line_error(capsys, ["analyze", str(tmp_path / "empty")], "empty")
    _one_line_error(capsys, ["analyze", str(exp_dir), "--metric", "valid/robust/MAX"],
                    "'valid/robust/MAX'", "known:")
    _one_line_error(capsys, ["analyze", str(exp_dir), "--top", "0"], "--top")
    _one_line_error(capsys, ["analyze"], "PATH")
    _one_line_error(capsys, ["export", str(exp_dir)], "-o")


def test_cli_report_says_not_available_without_the_report_module(
    tmp_path: Path, exp_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "analysis._report", None)  # as if analysis/_report.py were absent
    _one_line_error(capsys, ["analyze", str(exp_dir), "--report", str(tmp_path / "r")],
                    "--report", "not available")
    assert not (tmp_path / "r").exists()
