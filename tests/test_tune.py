"""Searches end to end: real Ray (local, 2 CPUs), real Optuna, real Arrow store, real TensorBoard files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fsrf import load_config
from tuning._searcher import PruneAwareOptunaSearch
from tuning.store import read_base_config, read_results, read_trials

ROOT = Path(__file__).resolve().parents[1]


def _ray_env(tmp_dir: str) -> dict[str, str]:
    """A child environment whose Ray lives under its own short temp dir (sockets need short paths)."""
    env = dict(os.environ)
    env["RAY_TMPDIR"] = tmp_dir
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _kill_ray_under(tmp_dir: str) -> None:
    """End every process of the Ray instance rooted at ``tmp_dir`` (left behind by a SIGKILLed driver)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(tmp_dir in part for part in proc.info["cmdline"] or []):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@pytest.fixture()
def ray_tmp():
    path = tempfile.mkdtemp(prefix="fr", dir="/tmp")
    yield path
    _kill_ray_under(path)


def _tune(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tune.py"), "--num-cpus", "2", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_pruned_trials_reach_optuna_as_pruned_with_their_intermediate_values() -> None:
    def space(trial: optuna.Trial) -> None:
        trial.suggest_float("model.homo", 0.1, 1.0)

    searcher = PruneAwareOptunaSearch(space, metric="objective", mode="min",
                                      sampler=optuna.samplers.RandomSampler(seed=0), study_name="t")
    for tid in ("stopped", "finished", "failed"):
        searcher.suggest(tid)
    for step in (1, 2):
        searcher.on_trial_result("stopped", {"objective": 1.0 / step, "training_iteration": step})
        searcher.on_trial_result("finished", {"objective": 0.5 / step, "training_iteration": step})
    # ASHA stops "stopped" at its 3rd report: Tune passes that result to on_trial_complete only
    searcher.on_trial_complete("stopped", result={"objective": 0.3, "training_iteration": 3, "final_epoch": 0.0})
    searcher.on_trial_complete("finished", result={"objective": 0.2, "training_iteration": 3, "final_epoch": 1.0})
    searcher.on_trial_complete("failed", result=None, error=True)
    trials = {t.number: t for t in searcher.study.trials}
    stopped, finished, failed = trials[0], trials[1], trials[2]
    assert stopped.state == TrialState.PRUNED  # Optuna keeps the last intermediate value as its value
    assert stopped.intermediate_values == {1: 1.0, 2: 0.5, 3: 0.3}
    assert finished.state == TrialState.COMPLETE and finished.value == 0.2
    assert failed.state == TrialState.FAIL


def _check_live_journal(exp: Path, trials, results) -> None:
    """The journal the driver wrote as trials ended, as optuna-dashboard serves it."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from tests_support import dashboard_study

    served = dashboard_study(JournalStorage(JournalFileBackend(str(exp / "optuna.journal"))), "smoke")
    assert served["objective_names"] == ["objective"]
    assert len(served["trials"]) == trials.num_rows
    frame = results.to_pandas()
    by_id = {next(a["value"] for a in t["user_attrs"] if a["key"] == "trial_id"): t for t in served["trials"]}
    for trial_id, status in zip(trials.column("trial_id").to_pylist(), trials.column("status").to_pylist()):
        shown = by_id[trial_id]
        assert shown["state"].upper() == status  # COMPLETE / PRUNED
        mine = frame[frame["trial_id"] == trial_id]
        assert shown["values"] == pytest.approx([mine["objective"].min()])  # the best epoch's objective
        assert [v["value"] for v in shown["intermediate_values"]] == pytest.approx(list(mine["objective"]))
        assert shown["datetime_start"] < shown["datetime_complete"]


def _check_tensorboard(exp: Path, trials) -> None:
    """One folder per trial with fsrf train's tags only, pruned marked, HParams over the whole space."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    from tuning.space import load_space

    root = exp / "tensorboard"
    acc = EventAccumulator(str(root))
    acc.Reload()
    experiment = metadata.parse_experiment_plugin_data(
        acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG])
    columns = [h.name for h in experiment.hparam_infos]
    space = load_space(ROOT / "tuning" / "spaces" / "default.yaml")
    assert columns == list(space.param_names())  # conditional ones too (curriculum.step_size, ...)
    assert [m.name.tag for m in experiment.metric_infos][:2] == ["best_objective", "objective"]
    for trial_id, status in zip(trials.column("trial_id").to_pylist(), trials.column("status").to_pylist()):
        run = EventAccumulator(str(root / f"trial_{trial_id}"))
        run.Reload()
        tags = run.Tags()["scalars"]
        assert {"objective", "best_objective", "valid/robust/MAE", "train/missing_rate"} <= set(tags)
        assert not [t for t in tags if t.startswith("ray/") or "time_" in t or t == "training_iteration"]
        pruned = [e.value for e in run.Scalars("trial/pruned")]
        assert pruned == [1.0 if status == "PRUNED" else 0.0]
        start = metadata.parse_session_start_info_plugin_data(
            run.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG])
        assert "model.homo" in start.hparams and "curriculum.kind" in start.hparams
    assert not list(exp.glob("trial_*/events.out.tfevents.*"))  # Ray's own TensorBoard logger is off


@pytest.mark.slow
def test_smoke_test_finishes_and_writes_store_best_config_and_tensorboard(tmp_path: Path, ray_tmp: str) -> None:
    proc = _tune(["--smoke-test", "--storage", str(tmp_path), "--name", "smoke"], _ray_env(ray_tmp))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "top trials by best validation objective" in out
    assert out.startswith("fsrf tune: starting search 'smoke': model fsrf, ")  # the start summary comes first
    for noise in ("Checkpoint successfully created", "snapshotting", "Token authentication", "A new study created"):
        assert noise not in out  # Ray's and Optuna's bookkeeping stays out unless -v
    exp = tmp_path / "smoke"
    trials = read_trials(exp)
    assert trials.num_rows == 4
    assert set(trials.column("status").to_pylist()) <= {"COMPLETE", "PRUNED"}
    results = read_results(exp)
    pairs = list(zip(results.column("trial_id").to_pylist(), results.column("iteration").to_pylist()))
    assert len(pairs) == len(set(pairs)) > 0
    assert "valid/robust/MAE" in results.column_names and "train/loss/distill" in results.column_names
    base = read_base_config(exp)  # the base and fixed configuration, kept in the store's metadata
    assert base["base_config"]["model.name"] == "fsrf" and base["run_overrides"]["train.epochs"] == 2
    assert base["run_overrides"]["model.hidden"] == 32  # --smoke-test shrinks the model on top of the base
    assert base["space"].endswith("default.yaml") and isinstance(base["fixed"], dict)
    config = load_config(exp / "best.yaml")  # a full training config, as `fsrf train --config` takes it
    assert config.train.epochs == 2 and config.model.hidden == 32
    _check_tensorboard(exp, trials)
    _check_live_journal(exp, trials, read_results(exp))
    state = json.loads((exp / "fsrf_search.json").read_text())  # what the search was made with
    assert state["provenance"]["versions"]["optuna"] and state["provenance"]["data"]["generated"] == "basic"
    assert len(list(exp.rglob("provenance.json"))) >= 4  # each trial's run directory records its own


@pytest.mark.slow
def test_nan_trials_are_recorded_as_errors_and_the_search_goes_on(tmp_path: Path, ray_tmp: str) -> None:
    space = tmp_path / "nan.yaml"
    space.write_text(
        f"base: {ROOT / 'configs' / 'synthetic.yaml'}\n"
        "fixed: {train.epochs: 2, optim.grad_clip: 0.0, optim.warmup_fraction: 0.0}\n"
        "objective: {metric: MAE, mode: min}\n"
        "scheduler: {grace_period: 2, reduction_factor: 3}\n"
        "params:\n  optim.lr: {choice: [0.001, 1.0e+12]}\n"
    )
    proc = _tune(["--smoke-test", "--space", str(space), "--storage", str(tmp_path), "--name", "nan",
                  "--max-failures", "2", "--scheduler", "fifo"], _ray_env(ray_tmp))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    trials = read_trials(tmp_path / "nan").to_pylist()
    assert len(trials) == 4
    errored = [t for t in trials if t["status"] == "ERROR"]
    assert all(t["config.optim.lr"] == 1e12 for t in errored)
    assert errored and all("loss term" in t["error"] for t in errored)
    # Tune's retries (--max-failures 2) did not train it again: they failed at once with the recorded error
    assert all("not trained again" in t["error"] for t in errored)
    for t in errored:
        assert (tmp_path / "nan" / f"trial_{t['trial_id']}" / "nonfinite.txt").is_file()
    assert all(t["status"] == "COMPLETE" for t in trials if t["config.optim.lr"] == 0.001)


@pytest.mark.slow
def test_a_search_whose_every_trial_fails_ends_in_one_line_naming_the_error(tmp_path: Path, ray_tmp: str) -> None:
    """Every trial fails before its first epoch (mmslf needs a teacher and a student epoch): the
    summary prints, then one line with the first trial's error and exit 2, no traceback."""
    space = tmp_path / "fails.yaml"
    space.write_text(
        f"base: {ROOT / 'configs' / 'synthetic.yaml'}\n"
        "fixed: {train.epochs: 1, model.name: mmslf, data.synthetic_train: 64, data.synthetic_valid: 16,"
        " data.synthetic_test: 16}\n"
        "objective: {metric: MAE, mode: min}\n"
        "params:\n  optim.lr: {float: [0.001, 0.01]}\n"
    )
    proc = _tune(["--space", str(space), "--num-samples", "2", "--max-epochs", "1", "--storage", str(tmp_path),
                  "--name", "fails", "-q"], _ray_env(ray_tmp))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("fsrf tune: error: every trial of fails failed") and "needs at least 2 epochs" in last
    assert "Traceback (most recent call last)" not in out.split("trials: 2 error")[-1]
    assert [t["status"] for t in read_trials(tmp_path / "fails").to_pylist()] == ["ERROR", "ERROR"]


def _wait_for_results(exp: Path, at_least: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
        try:
            if read_results(exp).num_rows >= at_least:
                return
        except Exception:  # noqa: BLE001, S110 (the store does not exist yet)
            pass
        time.sleep(0.5)
    raise AssertionError("the search produced too few results before the deadline")


@pytest.mark.slow
def test_a_sigkilled_driver_resumes_to_exactly_num_samples_trials(tmp_path: Path, ray_tmp: str) -> None:
    env = _ray_env(ray_tmp)
    args = ["--smoke-test", "--num-samples", "6", "--max-epochs", "3", "--storage", str(tmp_path), "--name", "kill"]
    proc = _tune(args, env, start_new_session=True)
    exp = tmp_path / "kill"
    _wait_for_results(exp, 5, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything in its session die at once
    proc.wait()
    _kill_ray_under(ray_tmp)
    before = read_results(exp).num_rows
    resumed = _tune(["--name", "kill", "--storage", str(tmp_path), "--resume"], env)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    trials = read_trials(exp)
    assert trials.num_rows == 6
    assert set(trials.column("status").to_pylist()) <= {"COMPLETE", "PRUNED"}
    results = read_results(exp)
    pairs = list(zip(results.column("trial_id").to_pylist(), results.column("iteration").to_pylist()))
    assert len(pairs) == len(set(pairs)) >= before


def test_the_pending_trials_limit_is_max_concurrent_while_a_search_runs(monkeypatch) -> None:
    """A model-based sampler draws trial k + N only after trial k's results (N = --max-concurrent)."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials

    from tuning._run import PENDING_TRIALS_ENV, pending_trials_limit

    monkeypatch.delenv(PENDING_TRIALS_ENV, raising=False)
    with pending_trials_limit(3):
        assert _get_max_pending_trials(None) == 3  # what Tune's controller reads when the search starts
    assert PENDING_TRIALS_ENV not in os.environ
    with pending_trials_limit(None):  # a population: left to Tune (it must exist whole)
        assert PENDING_TRIALS_ENV not in os.environ
    monkeypatch.setenv(PENDING_TRIALS_ENV, "7")  # the user's own setting wins
    with pending_trials_limit(3):
        assert _get_max_pending_trials(None) == 7
    assert os.environ[PENDING_TRIALS_ENV] == "7"


def test_resume_errors(tmp_path: Path) -> None:
    from tuning.cli import main

    assert main(["--name", "nothing", "--storage", str(tmp_path), "--resume"]) == 2
    assert main(["--space", str(tmp_path / "missing.yaml"), "--storage", str(tmp_path)]) == 2


@pytest.mark.slow
def test_a_request_no_node_can_hold_fails_at_start(tmp_path: Path, ray_tmp: str) -> None:
    proc = _tune(["--smoke-test", "--cpus-per-trial", "8", "--storage", str(tmp_path), "--name", "big"],
                 _ray_env(ray_tmp))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "fsrf tune: error: --cpus-per-trial 8 but the largest node has 2 CPUs" in out


def test_resuming_with_another_space_is_refused(tmp_path: Path) -> None:
    import json

    from fsrf import FSRFError
    from tuning._run import STATE_FILE, SearchOptions, resolve_options
    from tuning.space import load_space

    default = ROOT / "tuning" / "spaces" / "default.yaml"
    exp = tmp_path / "exp"
    exp.mkdir()
    stored = SearchOptions(space=str(default), name="exp", storage=str(tmp_path))
    state = {"space_fingerprint": load_space(default).fingerprint(), "options": stored.__dict__}
    (exp / STATE_FILE).write_text(json.dumps(state))
    resumed = resolve_options(SearchOptions(space="", name="exp", storage=str(tmp_path), resume=True))
    assert resumed.space == str(default) and resumed.resume
    other = ROOT / "tuning" / "spaces" / "mosi.yaml"
    with pytest.raises(FSRFError, match="is not the space search 'exp' started with"):
        resolve_options(SearchOptions(space=str(other), name="exp", storage=str(tmp_path), resume=True))
    with pytest.raises(FSRFError, match="already exists"):
        resolve_options(SearchOptions(space=str(default), name="exp", storage=str(tmp_path)))
    assert resolve_options(SearchOptions(space=str(default), name="exp", storage=str(tmp_path),
                                         restore_or_start=True)).resume


def test_a_checkpoint_that_is_gone_or_torn_restarts_the_trial_instead_of_failing_it(tmp_path: Path) -> None:
    import ray.tune
    import torch

    from fsrf._checkpoint import save_checkpoint
    from fsrf._constants import LAST_CHECKPOINT
    from tuning.trainable import _resume_file

    good = tmp_path / "checkpoint_000001"
    good.mkdir()
    save_checkpoint({"config": {}, "model": {"w": torch.zeros(2)}, "epoch": 1}, good / LAST_CHECKPOINT)
    out = tmp_path / "out"
    out.mkdir()
    resumed = _resume_file(ray.tune.Checkpoint.from_directory(good), out, "t1")
    assert resumed == out / "resume.pt" and torch.load(resumed, weights_only=True)["epoch"] == 1

    torn = tmp_path / "checkpoint_000002"
    torn.mkdir()
    (torn / LAST_CHECKPOINT).write_bytes((good / LAST_CHECKPOINT).read_bytes()[:100])
    with pytest.warns(UserWarning, match="t1: checkpoint .*checkpoint_000002 cannot be read .*again from epoch 1"):
        assert _resume_file(ray.tune.Checkpoint.from_directory(torn), out, "t1") is None
    assert not (out / "resume.pt").exists()

    gone = ray.tune.Checkpoint(path=str(tmp_path / "checkpoint_000003"))  # deleted by Tune's num_to_keep
    with pytest.warns(UserWarning, match="checkpoint_000003 cannot be read"):
        assert _resume_file(gone, out, "t1") is None


@pytest.mark.slow
def test_a_resume_whose_recorded_checkpoints_are_gone_trains_those_trials_again(tmp_path: Path, ray_tmp: str) -> None:
    # Tune deletes a trial's old checkpoints (num_to_keep) before its next snapshot reaches storage, so a
    # driver killed in between is restored pointing at deleted checkpoints. Here a Ctrl-C stops the search
    # with a consistent snapshot, and the checkpoints of its running trials are deleted behind its back.
    env = _ray_env(ray_tmp)
    args = ["--smoke-test", "--num-samples", "4", "--max-epochs", "3", "--scheduler", "fifo",
            "--storage", str(tmp_path), "--name", "gone"]
    proc = _tune(args, env)
    exp = tmp_path / "gone"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # until a trial is mid-way, with a checkpoint behind it
        assert proc.poll() is None
        try:
            trials = read_trials(exp).to_pylist()
        except Exception:  # noqa: BLE001 (the store does not exist yet)
            trials = []
        if any(t["status"] == "RUNNING" and t["iterations"] in (1, 2) for t in trials):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    interrupted, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--name gone" in interrupted and "--resume" in interrupted, interrupted[-3000:]
    running = [t["trial_id"] for t in read_trials(exp).to_pylist() if t["status"] == "RUNNING"]
    gone = [d for trial_id in running for d in (exp / f"trial_{trial_id}").glob("checkpoint_*")]
    assert gone, interrupted[-3000:]
    for directory in gone:
        shutil.rmtree(directory)
    resumed = _tune(["--name", "gone", "--storage", str(tmp_path), "--resume"], env)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    assert "is gone; restarting from epoch 1" in out, out[-3000:]
    trials = read_trials(exp)
    assert trials.num_rows == 4 and set(trials.column("status").to_pylist()) == {"COMPLETE"}
    results = read_results(exp)
    pairs = list(zip(results.column("trial_id").to_pylist(), results.column("iteration").to_pylist()))
    assert sorted(pairs) == sorted((t, i) for t in trials.column("trial_id").to_pylist() for i in (1, 2, 3))
    assert results.column("iteration").to_pylist() == [int(e) for e in results.column("epoch").to_pylist()]


@pytest.mark.parametrize(("args", "needle"), [
    (["--grace-period", "-1"], "--grace-period: -1 must be >= 1"),
    (["--reduction-factor", "1"], "--reduction-factor: 1 must be >= 2"),
    (["--num-cpus", "-1"], "--num-cpus: -1 must be >= 1"),
    (["--num-cpus", "0"], "--num-cpus: 0 must be >= 1"),
    (["--max-failures", "-5"], "--max-failures: -5 must be >= 0"),
    (["--max-epochs", "-3"], "--max-epochs: -3 must be >= 1"),
    (["--name", "../escape"], "--name: '../escape' must be a plain folder name under --storage"),
    (["--sampler", "gp"], "--sampler gp: parameter model.homo is conditional (off_switch)"),
])
def test_bad_flags_are_one_line_errors_before_ray_starts(tmp_path: Path, capsys, args, needle) -> None:
    from tuning.cli import main

    assert main([*args, "--storage", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "store").exists() and not (tmp_path / "escape").exists()  # nothing written


def test_a_storage_that_is_a_file_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    from tuning.cli import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    for storage, needle in ((afile, "is a file, expected a directory"), (afile / "sub", "lies under a file")):
        assert main(["--storage", str(storage)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--storage: {storage} {needle}" in err[0], err
