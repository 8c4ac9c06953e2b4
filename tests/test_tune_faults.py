"""Searches meeting faults of the disk and the store (issue 12), end to end: real Ray, Optuna, Arrow.

The faults are made as in ``test_store_faults``: a full disk is a real tmpfs mounted on the
experiment's ``store/`` and filled (skipped where no filesystem can be mounted: the fault has to
reach a separate driver process), a read-only store is ``chattr +i`` as root (``chmod`` otherwise),
a torn WAL segment is cut in half, a damaged part overwritten.
"""

from __future__ import annotations

import os
import signal
import subprocess
import warnings
from pathlib import Path

import pytest
from test_store_faults import _fill, _mount_tmpfs, _read_only, tune_experiment  # noqa: F401 - a fixture
from test_tune import _kill_ray_under, _ray_env, _tune, _wait_for_results, ray_tmp  # noqa: F401 - a fixture

from tuning._store_repair import check_store
from tuning.store import TornSegmentWarning, read_results, read_trials

SMALL = ["--smoke-test", "--num-samples", "4", "--max-epochs", "3", "--scheduler", "fifo"]


def _no_traceback(out: str) -> None:
    assert "Traceback" not in out, out[-3000:]


def _last_error(out: str) -> str:
    return [line for line in out.splitlines() if line.startswith("fsrf tune: error:")][-1]


@pytest.mark.slow
def test_a_full_disk_mid_search_stops_it_in_one_line_and_resume_loses_nothing(tmp_path: Path, ray_tmp: str) -> None:  # noqa: F811 - the fixture
    exp = tmp_path / "full"
    store = exp / "store"
    if not _mount_tmpfs(store, "2m"):
        pytest.skip("no small filesystem can be mounted here (needs root and mount)")
    try:
        env = _ray_env(ray_tmp)
        proc = _tune([*SMALL, "--storage", str(tmp_path), "--name", "full"], env)
        _wait_for_results(exp, 2, proc)
        filler = _fill(store)
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 2, out[-3000:]
        line = _last_error(out)
        assert "cannot write" in line and "Errno 28" in line and str(store) in line and "--resume" in line, line
        _no_traceback(out)
        filler.unlink()
        resumed = _tune(["--name", "full", "--storage", str(tmp_path), "--resume"], env)
        out, _ = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, out[-3000:]
        trials = read_trials(exp)
        assert trials.num_rows == 4 and set(trials["status"].to_pylist()) == {"COMPLETE"}
        assert check_store(exp).problems() == []  # every result Tune holds is in the store
        assert sorted(zip(read_results(exp)["trial_id"].to_pylist(), read_results(exp)["iteration"].to_pylist())) \
            == sorted((t, i) for t in trials["trial_id"].to_pylist() for i in (1, 2, 3))
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


@pytest.mark.slow
def test_a_torn_wal_after_a_kill_resumes_with_nothing_lost_no_loop_no_stale_temp(tmp_path: Path, ray_tmp: str) -> None:  # noqa: F811 - the fixture
    env = _ray_env(ray_tmp)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)  # the system temp folder of the driver and its workers
    storage = tmp_path / "runs"
    proc = _tune([*SMALL, "--storage", str(storage), "--name", "torn"], env, start_new_session=True)
    exp = storage / "torn"
    _wait_for_results(exp, 5, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _kill_ray_under(ray_tmp)
    newest = max((exp / "store" / "wal").glob("*.arrows"))
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # cut in half
    assert not list(scratch.glob("fsrf-*")), list(scratch.iterdir())  # scratch lives in the trial dirs
    resumed = _tune(["--name", "torn", "--storage", str(storage), "--resume"], env)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    assert not list(exp.glob("*/.fsrf-work")) and not list(scratch.glob("fsrf-*"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TornSegmentWarning)
        assert check_store(exp).problems() == []  # no gap, statuses agree with Tune's
    trials = read_trials(exp)
    assert trials.num_rows == 4 and set(trials["status"].to_pylist()) == {"COMPLETE"}
    again = _tune(["--name", "torn", "--storage", str(storage), "--resume"], env)  # nothing left: no loop
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_a_search_killed_before_tune_saved_its_state_resumes_afresh_in_place(tmp_path: Path, ray_tmp: str) -> None:  # noqa: F811 - the fixture
    from tuning._run import STATE_FILE, SearchOptions, _write_state
    from tuning.cli import DEFAULT_SPACE, SMOKE
    from tuning.space import load_space

    exp = tmp_path / "early"
    exp.mkdir()
    options = SearchOptions(space=str(DEFAULT_SPACE), name="early", storage=str(tmp_path), num_samples=2,
                            max_epochs=1, grace_period=1, scheduler="fifo", overrides=SMOKE["overrides"])
    _write_state(options, load_space(DEFAULT_SPACE), exp)  # the driver died right after this
    blocked = _tune(["--name", "early", "--storage", str(tmp_path)], _ray_env(ray_tmp))
    out, _ = blocked.communicate(timeout=120)
    assert blocked.returncode == 2 and "pass --resume" in out, out[-3000:]
    resumed = _tune(["--name", "early", "--storage", str(tmp_path), "--resume"], _ray_env(ray_tmp))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    assert f"holds this search's {STATE_FILE} but no Tune state" in out and "starting it afresh in place" in out
    assert read_trials(exp).num_rows == 2 and (exp / "tuner.pkl").is_file()


def _resumable(exp: Path) -> None:
    """Give a finished Tune experiment this project's state file, as a search would have."""
    from tuning._run import SearchOptions, _write_state
    from tuning.cli import DEFAULT_SPACE
    from tuning.space import load_space

    _write_state(SearchOptions(space=str(DEFAULT_SPACE), name=exp.name, storage=str(exp.parent)),
                 load_space(DEFAULT_SPACE), exp)


def test_resume_over_a_damaged_or_read_only_store_is_one_line_before_any_ray_work(
    tune_experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811 - fixture
) -> None:
    import shutil
    import sys

    from tuning.cli import main

    exp = tmp_path / "exp"
    shutil.copytree(tune_experiment, exp)
    _resumable(exp)
    undo = _read_only(exp / "store" / "parts")
    try:
        assert main(["--name", "exp", "--storage", str(tmp_path), "--resume"]) == 2
    finally:
        undo()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write {exp / 'store' / 'parts'}" in err, err

    part = max((exp / "store" / "parts").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:40])
    assert main(["--name", "exp", "--storage", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{part} is damaged" in err and f"fsrf store repair {exp}" in err, err
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()
