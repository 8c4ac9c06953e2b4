"""Population-based searches (--scheduler pbt | pb2): retunable resumes, the population, followed
schedules, best.yaml's replay curriculum, and the bad inputs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fsrf import Config, FSRFError, load_config, train, with_overrides
from fsrf._constants import LEARNING_RATE, TRAIN_RATE, retuned_key
from fsrf.data import MultimodalDataset
from tuning._pbt import (
    KeepInSpace,
    check_population,
    draw_population,
    replay_overrides,
    schedule_columns,
    schedule_key,
    schedule_of,
    winner_overrides,
)
from tuning.cli import main
from tuning.space import load_space

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "tuning" / "spaces" / "default.yaml"


# -- fsrf.train(retune=...) ---------------------------------------------------------------------
def test_a_resume_may_change_exactly_the_retuned_fields(
    tiny_config: Config, tiny_dataset: MultimodalDataset, tmp_path: Path
) -> None:
    from fsrf.train import _lr_schedule

    first = with_overrides(tiny_config, {"curriculum.kind": "constant", "curriculum.end": 0.3, "train.epochs": 1})
    train(first, dataset=tiny_dataset, out_dir=tmp_path, tensorboard=False, retune=("curriculum.end", "optim.lr"))
    later = with_overrides(first, {"curriculum.end": 0.6, "optim.lr": 1e-3, "train.epochs": 3})
    with pytest.raises(FSRFError, match="curriculum.end"):  # without retune: the stored config wins
        train(later, dataset=tiny_dataset, resume_from=tmp_path / "last.pt")
    result = train(later, dataset=tiny_dataset, resume_from=tmp_path / "last.pt",
                   retune=("curriculum.end", "optim.lr"))
    assert [r[TRAIN_RATE] for r in result.history] == [0.3, 0.6, 0.6]  # the inherited epoch, then the new rate
    assert [r[retuned_key("optim.lr")] for r in result.history] == [3e-3, 1e-3, 1e-3]
    # the restored optimiser takes the new peak at the same point of its warm-up and decay
    steps = len(tiny_dataset.train) // later.optim.batch_size
    factor = _lr_schedule(steps * 3, later.optim.warmup_fraction)(steps * 2)
    assert result.history[1][LEARNING_RATE] == pytest.approx(1e-3 * factor)


def test_retune_refuses_architecture_fields(tiny_config: Config, tiny_dataset: MultimodalDataset) -> None:
    with pytest.raises(FSRFError, match="model.hidden"):
        train(tiny_config, dataset=tiny_dataset, retune=("model.hidden",))
    with pytest.raises(FSRFError, match="train.seed"):
        train(tiny_config, dataset=tiny_dataset, retune=("train.seed",))


# -- the population and its schedules ---------------------------------------------------------------
def test_population_draws_constant_curricula_the_space_rebuilds() -> None:
    space = load_space(SPACE)
    population = draw_population(space, 3, seed=0)
    assert population == draw_population(space, 3, seed=0)  # seeded
    for config in population:
        assert config["curriculum.kind"] == "constant"
        assert config["curriculum.start"] is None  # unsampled (its `when` is unmet), read as absent
        assert space.to_config(config).curriculum.kind == "constant"


def test_check_population_names_the_flag() -> None:
    space = load_space(SPACE)
    ok = {"scheduler": "pbt", "population": 2, "interval": 2, "perturb": (), "multi_objective": False,
          "checkpoint_every": 1, "epochs": 8, "sampler": "tpe"}
    assert [p.name for p in check_population(space, **{**ok, "perturb": ("optim.lr", "model.homo")})] == [
        "curriculum.end", "optim.lr", "model.homo"]
    for bad, flag in (({"interval": 8}, "--perturbation-interval"), ({"checkpoint_every": 3}, "--checkpoint-every"),
                      ({"perturb": ("optim.batch_size",)}, "--perturb"), ({"perturb": ("model.distill_margin",)},
                                                                           "--perturb"),
                      ({"sampler": "gp"}, "--sampler"), ({"population": 1}, "--population")):
        with pytest.raises(FSRFError, match=flag):
            check_population(space, **{**ok, **bad})


def test_explore_keeps_values_in_the_space() -> None:
    space = load_space(SPACE)
    params = check_population(space, scheduler="pbt", population=2, interval=2, perturb=("model.homo",),
                              multi_objective=False, checkpoint_every=1, epochs=8, sampler="tpe")
    keep = KeepInSpace.of(params)
    assert keep({"curriculum.end": 1.2, "model.homo": 5.0, "model.homo:off": False}) == {
        "curriculum.end": 0.9, "model.homo": 3.0, "model.homo:off": False}
    assert keep({"curriculum.end": 0.1, "model.homo": 0.4, "model.homo:off": True})["model.homo"] == 0.0


def test_schedulers_are_pbt_and_pb2_stepping_in_epochs() -> None:
    from tuning._pbt import build_scheduler
    from tuning._pbt_schedulers import FinalEpochPB2, FinalEpochPBT

    space = load_space(SPACE)
    params = check_population(space, scheduler="pb2", population=2, interval=2, perturb=("optim.lr",),
                              multi_objective=False, checkpoint_every=1, epochs=8, sampler="tpe")
    pbt = build_scheduler("pbt", params, metric="objective", mode="min", interval=2, seed=0)
    pb2 = build_scheduler("pb2", params, metric="objective", mode="min", interval=2, seed=0)
    assert isinstance(pbt, FinalEpochPBT) and isinstance(pb2, FinalEpochPB2)
    for scheduler in (pbt, pb2):
        assert scheduler._perturbation_interval == 2 and scheduler._synch
        assert set(scheduler._hyperparam_mutations) == {"curriculum.end", "optim.lr"}


def test_a_seed_fixes_pbt_perturbations_without_touching_the_global_generators() -> None:
    """PBT's explore (a resample through Tune's domain uses NumPy, the factor and the resample
    coin use ``random``) draws from the scheduler's own generators: the same seed gives the same
    perturbations, another seed others, and the driver's global generators are left as they were."""
    import random
    from types import SimpleNamespace

    import numpy as np

    from tuning._pbt import build_scheduler

    space = load_space(SPACE)
    params = check_population(space, scheduler="pbt", population=2, interval=2, perturb=("optim.lr",),
                              multi_objective=False, checkpoint_every=1, epochs=8, sampler="tpe")
    clone = SimpleNamespace(config={"curriculum.end": 0.5, "optim.lr": 1e-3})

    def perturbations(seed: int) -> list[tuple[float, float]]:
        scheduler = build_scheduler("pbt", params, metric="objective", mode="min", interval=2, seed=seed)
        out = []
        for _ in range(24):
            config, _ops = scheduler._get_new_config(clone, clone)
            out.append((config["curriculum.end"], config["optim.lr"]))
        return out

    random.seed(7)
    np.random.seed(7)
    outer = (random.random(), float(np.random.random_sample()))
    random.seed(7)
    np.random.seed(7)
    first = perturbations(3)
    assert (random.random(), float(np.random.random_sample())) == outer  # the globals untouched
    assert perturbations(3) == first
    assert perturbations(4) != first
    assert len(set(first)) > 2  # multiplied by 0.8 / 1.2 and resampled: not one value


def test_followed_schedule_columns_round_trip_to_a_replay_curriculum() -> None:
    lineage = [{"epoch": 1.0, TRAIN_RATE: 0.5, retuned_key("optim.lr"): 1e-3},
               {"epoch": 2.0, TRAIN_RATE: 0.5, retuned_key("optim.lr"): 1e-3},
               {"epoch": 3.0, TRAIN_RATE: 0.6, retuned_key("optim.lr"): 8e-4}]
    columns = schedule_columns(lineage, ("curriculum.end", "optim.lr"))
    assert columns[schedule_key("rate", 3)] == 0.6 and schedule_key("curriculum.end", 1) not in columns
    schedule = schedule_of({"trial_id": "t", "objective": 1.0, **columns})
    assert schedule == {"rate": [0.5, 0.5, 0.6], "optim.lr": [1e-3, 1e-3, 8e-4]}
    assert replay_overrides(schedule["rate"]) == {
        "curriculum.kind": "replay", "curriculum.replay_epochs": [0, 2], "curriculum.replay_rates": [0.5, 0.6]}
    assert winner_overrides(schedule) == {
        "curriculum.kind": "replay", "curriculum.replay_epochs": [0, 2], "curriculum.replay_rates": [0.5, 0.6],
        "curriculum.replay_fields": ["optim.lr"], "curriculum.replay_values": [1e-3, 8e-4], "optim.lr": 1e-3}
    # a segment starts where any field changes, not only the rate
    both = replay_overrides([0.5, 0.5, 0.5], {"optim.lr": [1e-3, 5e-4, 5e-4], "model.distill": [1.0, 1.0, 2.0]})
    assert both["curriculum.replay_epochs"] == [0, 1, 2] and both["curriculum.replay_rates"] == [0.5] * 3
    assert both["curriculum.replay_fields"] == ["model.distill", "optim.lr"]
    assert both["curriculum.replay_values"] == [1.0, 1e-3, 1.0, 5e-4, 2.0, 5e-4]


def test_a_replayed_schedule_trains_exactly_as_the_perturbed_resume_it_replays(
    tiny_config: Config, tiny_dataset: MultimodalDataset, tmp_path: Path
) -> None:
    """What a population-based search did (train 2 epochs, stop, resume with a perturbed rate,
    learning rate and loss weight) and its ``replay`` in one uninterrupted run give the same
    epochs, loss for loss."""
    fields = ("curriculum.end", "optim.lr", "model.distill")
    first = with_overrides(tiny_config, {"curriculum.kind": "constant", "curriculum.end": 0.3, "train.epochs": 4,
                                         "optim.lr": 3e-3, "model.distill": 1.0})

    class Pause(Exception):
        pass

    def pause_after_two(metrics: dict, _checkpoint: object) -> None:
        if metrics["epoch"] == 2.0:
            raise Pause

    with pytest.raises(Pause):
        train(first, dataset=tiny_dataset, out_dir=tmp_path / "pbt", report=pause_after_two, tensorboard=False,
              retune=fields)
    later = with_overrides(first, {"curriculum.end": 0.6, "optim.lr": 1e-3, "model.distill": 0.4})
    resumed = train(later, dataset=tiny_dataset, resume_from=tmp_path / "pbt" / "last.pt", retune=fields).history

    followed = {"rate": [r[TRAIN_RATE] for r in resumed],
                **{k: [r[retuned_key(k)] for r in resumed] for k in ("optim.lr", "model.distill")}}
    replay = with_overrides(first, winner_overrides(followed))
    assert replay.curriculum.replay_epochs == (0, 2) and replay.optim.lr == 3e-3
    replayed = train(replay, dataset=tiny_dataset).history
    for a, b in zip(resumed, replayed, strict=True):
        for key in (TRAIN_RATE, LEARNING_RATE, retuned_key("optim.lr"), retuned_key("model.distill"), "objective"):
            assert a[key] == b[key], (a["epoch"], key)
        assert {k: v for k, v in a.items() if k.startswith("train/loss/")} == \
            {k: v for k, v in b.items() if k.startswith("train/loss/")}


@pytest.mark.parametrize(("changes", "needle"), [
    ({"curriculum.replay_fields": ["optim.lr"], "curriculum.replay_values": [1e-3]}, "needs curriculum.kind"),
    ({"curriculum.kind": "replay", "curriculum.replay_epochs": [0, 2], "curriculum.replay_rates": [0.1, 0.2],
      "curriculum.replay_fields": ["optim.lr"], "curriculum.replay_values": [1e-3]}, "expected 2"),
    ({"curriculum.kind": "replay", "curriculum.replay_epochs": [0], "curriculum.replay_rates": [0.1],
      "curriculum.replay_fields": ["optim.lr", "optim.lr"], "curriculum.replay_values": [1e-3, 1e-3]}, "twice"),
])
def test_bad_replayed_fields_are_refused_when_the_config_is_built(tiny_config: Config, changes: dict,
                                                                   needle: str) -> None:
    with pytest.raises(FSRFError, match=needle):
        with_overrides(tiny_config, changes)


@pytest.mark.parametrize(("fields", "values", "needle"), [
    (["model.hidden"], [16], "model.hidden"),
    (["train.seed"], [3], "train.seed"),
    (["curriculum.end"], [0.5], "curriculum.end"),
    (["model.distill"], [0.0], "stay 0 or stay > 0"),
    (["optim.lr"], [-1.0], "optim.lr"),
])
def test_train_refuses_fields_that_cannot_be_replayed(tiny_config: Config, tiny_dataset: MultimodalDataset,
                                                      fields: list, values: list, needle: str) -> None:
    config = with_overrides(tiny_config, {"curriculum.kind": "replay", "curriculum.replay_epochs": [0],
                                          "curriculum.replay_rates": [0.2], "curriculum.replay_fields": fields,
                                          "curriculum.replay_values": values})
    with pytest.raises(FSRFError, match=needle):
        train(config, dataset=tiny_dataset)


# -- bad inputs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "flag"), [
    (["--scheduler", "pbt", "--multi-objective"], "--multi-objective"),
    (["--scheduler", "pb2", "--multi-objective"], "--multi-objective"),
    (["--scheduler", "pbt", "--population", "1"], "--population"),
    (["--scheduler", "pbt", "--num-samples", "1"], "--population"),
    (["--population", "4"], "--population"),
    (["--perturbation-interval", "2"], "--perturbation-interval"),
    (["--perturb", "optim.lr"], "--perturb"),
    (["--scheduler", "pbt", "--perturbation-interval", "0"], "--perturbation-interval"),
    (["--scheduler", "pbt", "--perturbation-interval", "8"], "--perturbation-interval"),
    (["--scheduler", "pbt", "--perturb", "model.hidden"], "--perturb"),
    (["--scheduler", "pbt", "--grace-period", "2"], "--grace-period"),
    (["--scheduler", "pbt", "--set", "train.patience=2"], "train.patience"),
])
def test_bad_population_input_is_one_line_and_exit_2(args: list[str], flag: str, tmp_path: Path, capsys) -> None:
    assert main([*args, "--storage", str(tmp_path), "--name", "bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fsrf tune: error: ") and flag in err[0], err
    assert not (tmp_path / "bad").exists()  # refused before any Ray work


# -- a real search ------------------------------------------------------------------------------------
TINY_SEARCH = ["--set", "data.synthetic_train=160", "--set", "data.synthetic_valid=64", "--set",
               "data.synthetic_test=64", "--set", "model.hidden=32", "--set", "model.heads=2",
               "--set", "missing.valid_rates=[0.0,0.5]"]


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["pbt", "pb2"])
def test_a_population_search_records_followed_schedules_and_best_yaml_replays_the_winners(
    scheduler: str, tmp_path: Path
) -> None:
    """Population 2, 4 epochs, perturbed every 2: synchronous PBT (and PB2, which explores with a
    GP instead of random perturbation) exploits once (the worse of the two at epoch 2), so one
    trial's followed schedule starts with the other's epochs."""
    import yaml

    from tuning._pbt import followed_schedules
    from tuning.store import read_results

    ray_tmp = tempfile.mkdtemp(prefix="fp", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    try:
        run = subprocess.run(
            [sys.executable, str(ROOT / "tune.py"), "--num-cpus", "2", "--scheduler", scheduler, "--population", "2",
             "--perturbation-interval", "2", "--perturb", "optim.lr", "--max-epochs", "4", "--seed", "1",
             "--storage", str(tmp_path), "--name", "pbt", *TINY_SEARCH],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=540, check=False,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    exp = tmp_path / "pbt"
    schedules = followed_schedules(exp / "store")
    assert len(schedules) == 2
    for schedule in schedules.values():
        assert len(schedule["rate"]) == 4 and len(schedule["optim.lr"]) == 4
    assert "[Exploit]" in run.stdout + run.stderr
    # the exploited trial inherited the other's first two epochs, then trained perturbed values
    results = read_results(exp / "store").to_pandas()
    own = {t: results[results.trial_id == t].sort_values("iteration")[TRAIN_RATE].tolist() for t in schedules}
    inherited = [t for t, s in schedules.items() if s["rate"][:2] != own[t][:2]]
    assert len(inherited) == 1, (schedules, own)
    (loser,) = inherited
    (winner,) = set(schedules) - {loser}
    assert schedules[loser]["rate"][:2] == schedules[winner]["rate"][:2]
    assert schedules[loser]["rate"][2:] == own[loser][2:]

    best = load_config(exp / "best.yaml")  # fsrf train --config reads it exactly so
    assert best.curriculum.kind == "replay"
    best_trial = yaml.safe_load((exp / "best.yaml").read_text())["provenance"]["trial_id"]
    curriculum = best.curriculum.build()
    assert [curriculum.rate(e) for e in range(4)] == schedules[best_trial]["rate"]
    assert best.curriculum.replay_fields == ("optim.lr",)  # the learning rate is replayed epoch by epoch too
    assert [best.curriculum.replayed_at(e)["optim.lr"] for e in range(4)] == schedules[best_trial]["optim.lr"]
    assert best.train.epochs == 4

    from analysis._report import write_report

    index = write_report(exp, tmp_path / "report")  # the report draws the learned schedules
    assert (tmp_path / "report" / "1-pbt-schedules.png").stat().st_size > 0
    assert "1-pbt-schedules.png" in index.read_text()


def _perturbed_after_epochs_2_and_4_only(schedules: dict[str, dict[str, list[float]]]) -> bool:
    """Every followed rate of a 6-epoch population perturbed every 2 epochs is constant inside each interval."""
    return all(s["rate"][0] == s["rate"][1] and s["rate"][2] == s["rate"][3] and s["rate"][4] == s["rate"][5]
               for s in schedules.values())


def _restored_config_mismatches(exp: Path) -> list[tuple[str, str, float, object]]:
    """``(trial, key, config value, checkpoint value)`` where a trial of Tune's newest experiment
    snapshot would restart from a checkpoint trained under another config (the perturbed
    ``curriculum.*`` fields excepted: an exploit restores another trial's checkpoint under them)."""
    from ray.tune import register_trainable
    from ray.tune.experiment import Trial
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    from fsrf import load_checkpoint

    register_trainable("fsrf_trainable", lambda config: None)  # Trial() checks the name is known
    newest = max(exp.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    out = []
    for trial_json, run_json in _loads_with_cloudpickle(newest.read_text())["trial_data"]:
        trial = Trial.from_json_state(trial_json)
        trial.restore_run_metadata(run_json)
        restored = trial.latest_checkpoint_result
        if restored is None:
            continue
        stored = load_checkpoint(Path(restored.checkpoint.path) / "last.pt")["config"]
        for key, value in trial.config.items():
            if ":" in key or key.startswith("curriculum.") or isinstance(value, bool) or not isinstance(value, float):
                continue
            section, name = key.split(".", 1)
            want = 0.0 if trial.config.get(f"{key}:off") else value
            got = stored.get(section, {}).get(name)
            if not isinstance(got, (int, float)) or abs(float(got) - want) > 1e-12:
                out.append((trial.trial_id, key, want, got))
    return out


@pytest.mark.slow
def test_a_pbt_search_killed_mid_run_resumes_to_whole_followed_schedules(tmp_path: Path) -> None:
    """SIGKILL the driver (and its Ray) while the two trials stand at different epochs (one
    waiting at a perturbation epoch for the other), then ``--resume``: the population perturbs
    at the same epochs as an uninterrupted search (every followed rate changes only after epochs
    2 and 4), both trials end complete with 6 epochs, no (trial, epoch) result is stored twice,
    and best.yaml replays the winner's schedule.

    Tune keeps no scheduler state across a restore: before ``tuning._pbt_schedulers`` gave
    restored trials their PBT clock back, the resumed population perturbed at the first result
    of each trial (epochs 3 and 5, comparing scores of different epochs), and from these
    positions it either hung (both trials paused past the next synchronisation point) or handed
    one trial the other's last-epoch checkpoint, which ended it pruned at epoch 4. And Tune's
    snapshot taken after an exploit, before the exploited trial's next result, paired its new
    config with its own old checkpoint (Tune caches the trial's checkpoint bookkeeping as JSON),
    so the resumed trial failed on a checkpoint of another config; the snapshot is checked right
    after the kill."""
    import psutil

    from tuning._pbt import followed_schedules
    from tuning.store import read_results, read_trials

    ray_tmp = tempfile.mkdtemp(prefix="fq", dir="/tmp")
    # Tune saves its experiment state at every step, so the trials restore where the store has them
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    exp = tmp_path / "pbt"
    args = [sys.executable, str(ROOT / "tune.py"), "--num-cpus", "2"]
    try:
        proc = subprocess.Popen(
            [*args, "--scheduler", "pbt", "--population", "2", "--perturbation-interval", "2", "--max-epochs", "6",
             "--seed", "1", "--storage", str(tmp_path), "--name", "pbt", *TINY_SEARCH],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # past the first perturbation, the trials at different epochs
            assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
            try:
                stored = read_results(exp / "store")
            except Exception:  # noqa: BLE001 - the store does not exist yet
                time.sleep(0.2)
                continue
            epochs: dict[str, int] = {}
            for trial_id, it in zip(stored.column("trial_id").to_pylist(), stored.column("iteration").to_pylist()):
                epochs[trial_id] = max(it, epochs.get(trial_id, 0))
            if stored.num_rows >= 5 and len(set(epochs.values())) == 2 and max(epochs.values()) < 6:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the search produced too few results before the deadline")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for child in psutil.process_iter(["cmdline"]):  # the Ray processes the killed driver left
            try:
                if any(ray_tmp in part for part in child.info["cmdline"] or []):
                    child.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        before = read_results(exp / "store").num_rows
        assert not _restored_config_mismatches(exp)  # Tune would restore each trial with its own checkpoint
        resumed = subprocess.run([*args, "--name", "pbt", "--storage", str(tmp_path), "--resume"], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=540, check=False)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = read_trials(exp / "store").to_pylist()
    assert len(trials) == 2 and {t["status"] for t in trials} == {"COMPLETE"}
    results = read_results(exp / "store")
    pairs = list(zip(results.column("trial_id").to_pylist(), results.column("iteration").to_pylist()))
    assert len(pairs) == len(set(pairs)) >= before
    schedules = followed_schedules(exp / "store")
    assert set(schedules) == {t["trial_id"] for t in trials}
    assert all(len(s["rate"]) == 6 for s in schedules.values()), schedules
    assert _perturbed_after_epochs_2_and_4_only(schedules), schedules  # as without the kill
    best = load_config(exp / "best.yaml")
    assert best.curriculum.kind == "replay" and best.train.epochs == 6


@pytest.mark.slow
def test_a_population_trial_whose_worker_dies_is_retried_and_the_population_stays_synchronous(
    tmp_path: Path,
) -> None:
    """SIGKILL the Ray worker of one trial after the first perturbation: Tune retries that trial
    from its checkpoint (the scheduler gives it its PBT clock back without setting it paused,
    which would trip Tune's bookkeeping of a trial it has already queued), both trials end
    complete with 6 epochs, and every followed rate changes only after epochs 2 and 4."""
    import psutil

    from tuning._pbt import followed_schedules
    from tuning.store import read_results, read_trials

    ray_tmp = tempfile.mkdtemp(prefix="fw", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    exp = tmp_path / "pbt"
    log = (tmp_path / "search.log").open("w")
    try:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tune.py"), "--num-cpus", "2", "--scheduler", "pbt", "--population", "2",
             "--perturbation-interval", "2", "--max-epochs", "6", "--seed", "1", "--storage", str(tmp_path),
             "--name", "pbt", *TINY_SEARCH],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        killed = None
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                done = read_results(exp / "store").num_rows >= 5  # past the perturbation at epoch 2
            except Exception:  # noqa: BLE001 - the store does not exist yet
                done = False
            if done:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    try:
                        title = " ".join(child.cmdline())
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    if title.startswith("ray::ImplicitFunc.train"):  # the actor of a training trial
                        child.kill()
                        killed = title
                        break
            time.sleep(0.2)
        proc.wait(timeout=540)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = (tmp_path / "search.log").read_text(errors="replace")
    assert killed, "no trial worker was found to kill"
    assert proc.returncode == 0, out[-3000:]
    trials = read_trials(exp / "store").to_pylist()
    assert len(trials) == 2 and {t["status"] for t in trials} == {"COMPLETE"}, trials
    assert max(t["attempts"] for t in trials) >= 2  # the killed trial started again
    schedules = followed_schedules(exp / "store")
    assert all(len(s["rate"]) == 6 for s in schedules.values()), schedules
    assert _perturbed_after_epochs_2_and_4_only(schedules), schedules
