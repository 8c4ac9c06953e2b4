"""Faults of the disk and the trial store (issue 12): full disk, read-only store, torn WAL, damaged parts.

How the faults are made (real ones wherever this machine allows):

* full disk: a real 1 MiB tmpfs mounted under the test's directory and filled with a
  file (root and ``mount`` available). Elsewhere the ``disk_full`` fixture makes the
  writer's ``os.fsync`` raise ``OSError(ENOSPC)`` (the one call every flushed batch
  passes through), and says so in the test's name.
* read-only store: ``chmod 0555`` does not stop root, so as root the directory is made
  immutable (``chattr +i``: no new file may be created in it); as another user ``chmod``.
* a torn WAL segment and a damaged Parquet part: the files are cut or overwritten.

Tune's own files (``result.json``, ``experiment_state-*.json``) come from a real small
Tune run (Ray with 2 CPUs), made once per module.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet
import pytest

from fsrf import FSRFError
from tuning._store_repair import check_store, reconcile, repair_store
from tuning._store_repair import main as store_main
from tuning.store import (
    StoreWriteError,
    TornSegmentWarning,
    TrialStoreWriter,
    read_events,
    read_results,
    read_trials,
)

ROOT = Path(__file__).resolve().parents[1]


# --- making faults -------------------------------------------------------------------------
def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False)
    return done.returncode == 0


def _fill(directory: Path) -> Path:
    """Write a file into ``directory`` until its filesystem is full; returns it."""
    filler = directory / f".filler-{uuid.uuid4().hex}"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.fixture()
def disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Callable[[], None]]]:
    """(directory for a store, ``fill()``): after ``fill()``, writes there fail with ENOSPC."""
    mount = tmp_path / "small-disk"
    real = _mount_tmpfs(mount, "1m")

    def fill() -> None:
        if real:
            _fill(mount)
        else:  # no small filesystem can be mounted here: the fsync of every batch reports ENOSPC
            import tuning._store_write as store_write

            def fsync(fd: int) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(store_write.os, "fsync", fsync)

    try:
        yield mount, fill
    finally:
        if real:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def _read_only(directory: Path) -> Callable[[], None]:
    """Make ``directory`` refuse new files; returns the undo."""
    if os.geteuid() == 0:  # root writes through chmod: the directory is made immutable instead
        done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False) \
            if shutil.which("chattr") else None
        if done is None or done.returncode != 0:
            pytest.skip(f"as root a read-only store needs chattr +i, which {directory}'s filesystem refuses")
        return lambda: subprocess.run(["chattr", "-i", str(directory)], check=True)
    directory.chmod(0o555)
    return lambda: directory.chmod(0o755)


def _one_line(message: str, *names: object) -> None:
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, (name, message)


# --- 1. a full disk or a read-only store while writing -------------------------------------
def test_a_full_disk_fails_one_line_naming_the_file_and_loses_no_written_row(disk_full) -> None:
    mount, fill = disk_full
    root = mount / "store"
    writer = TrialStoreWriter(root, experiment="exp")
    for it in (1, 2, 3):
        writer.result(trial_id="t", attempt=1, iteration=it, config={"x": 1}, metrics={"objective": float(it)})
    fill()
    acknowledged = 3
    with pytest.raises(StoreWriteError) as caught:  # the page the segment ends in may hold a few more rows
        for it in range(4, 200):
            writer.result(trial_id="t", attempt=1, iteration=it, config={"x": 1}, metrics={"objective": float(it)})
            acknowledged = it
    _one_line(str(caught.value), root / "wal", "Errno 28", "No space left on device")
    assert caught.value.errno == errno.ENOSPC and writer.failed is caught.value
    with pytest.raises(StoreWriteError):  # nothing more is written into a segment that may be torn
        writer.result(trial_id="t", attempt=1, iteration=999, config={"x": 1}, metrics={"objective": 5.0})
    with pytest.raises(StoreWriteError):
        writer.close()
    assert writer.closed
    for filler in mount.glob(".filler-*"):
        filler.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TornSegmentWarning)  # the refused batch may be half written
        kept = read_results(root)["iteration"].to_pylist()
    assert kept[:acknowledged] == list(range(1, acknowledged + 1)) and 999 not in kept


def test_a_read_only_store_fails_one_line_naming_the_file(tmp_path: Path) -> None:
    root = tmp_path / "store"
    writer = TrialStoreWriter(root, experiment="exp")
    writer.event(trial_id="t", attempt=1, event="start", config={"x": 1})
    undo = _read_only(root / "wal")
    try:  # a new column rolls to a new segment: a new file in wal/
        with pytest.raises(StoreWriteError) as caught:
            writer.result(trial_id="t", attempt=1, iteration=1, config={"x": 1}, metrics={"objective": 1.0})
        _one_line(str(caught.value), root / "wal", "cannot write")
        assert caught.value.errno in (errno.EPERM, errno.EACCES)
        with pytest.raises(StoreWriteError) as early:  # the search's check before any Ray work
            from tuning._store_repair import preflight

            preflight(root)
        _one_line(str(early.value), root / "wal")
        with pytest.raises(StoreWriteError):  # releases the files, writes nothing more
            writer.close()
    finally:
        undo()
    TrialStoreWriter(root, experiment="exp").close()  # writable again: the next writer compacts
    assert read_events(root)["event"].to_pylist() == ["start"]


def _trial(trial_id: str) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(trial_id=trial_id, config={"x": 1}, last_result={}, error_file=None,
                           get_error=lambda: None)


def test_the_callback_records_a_refused_write_and_stops_the_search_like_ctrl_c(disk_full) -> None:
    from tuning.store import ArrowStoreCallback, write_fault

    mount, fill = disk_full
    root = mount / "store"
    signals: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda sig, frame: signals.append(sig))  # Tune's interrupt handler
    try:
        cb = ArrowStoreCallback(root, experiment="exp")
        cb.setup()
        t = _trial("a")
        cb.on_trial_start(iteration=0, trials=[t], trial=t)
        cb.on_trial_result(iteration=0, trials=[t], trial=t, result={"training_iteration": 1, "objective": 1.0})
        fill()
        for it in (2, 3):  # the first refused write is recorded; then the callback is inert, never raising
            cb.on_trial_result(iteration=0, trials=[t], trial=t, result={"training_iteration": it, "objective": 1.0})
        cb.on_experiment_end(trials=[t])
    finally:
        signal.signal(signal.SIGUSR1, previous)
    fault = write_fault(root)
    assert fault is not None and fault.errno == errno.ENOSPC
    assert signals == [signal.SIGUSR1]


# --- Tune's own files, from a real small Tune run --------------------------------------------
@pytest.fixture(scope="module")
def tune_experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished real Tune experiment with its store: widths 1 (complete), 2 (pruned), 3 (error)."""
    ray = pytest.importorskip("ray")
    from ray import tune

    from tuning.store import ArrowStoreCallback

    def trainable(config: dict[str, Any]) -> None:  # defined here: Ray ships it by value
        width = config["width"]
        for i in range(1, 5):
            if width == 3 and i == 3:
                raise ValueError("boom at width 3")
            if width == 2 and i == 3:
                return  # stopped early: pruned
            tune.report({"objective": width / i, "final_epoch": 1.0 if i == 4 else 0.0})

    base = tmp_path_factory.mktemp("tune")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tune.Tuner(
            trainable,
            param_space={"width": tune.grid_search([1, 2, 3])},
            tune_config=tune.TuneConfig(trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
            run_config=tune.RunConfig(storage_path=str(base), name="exp", verbose=0,
                                      callbacks=[ArrowStoreCallback(base / "exp" / "store", experiment="exp")]),
        ).fit()
    finally:
        ray.shutdown()
    return base / "exp"


@pytest.fixture()
def experiment(tune_experiment: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "exp"
    shutil.copytree(tune_experiment, copy)
    return copy


def _widths(exp: Path) -> dict[str, int]:
    return {t["trial_id"]: t["config.width"] for t in read_trials(exp).to_pylist()}


def _as_torn_wal(exp: Path, keep: float, drop: Callable[[dict[str, Any]], bool] = lambda row: False) -> Path:
    """Turn the store's rows (less those ``drop`` picks) into one WAL segment (one batch per row, as
    the writer writes) cut at ``keep`` of its length: what a SIGKILLed driver leaves when its newest
    segment is torn."""
    store = exp / "store"
    events = read_events(exp)
    events = events.filter(pa.array([not drop(row) for row in events.to_pylist()]))
    parts = sorted((store / "parts").glob("*.parquet"))
    wal = store / "wal" / f"{parts[-1].stem}.arrows"
    with open(wal, "wb") as f, pa.ipc.new_stream(f, events.schema) as stream:
        for batch in events.to_batches(max_chunksize=1):
            stream.write_batch(batch)
    for part in parts:
        part.unlink()
    data = wal.read_bytes()
    wal.write_bytes(data[: int(len(data) * keep)])
    return wal


# --- 2. a torn WAL segment: recovered from Tune's files, statuses agree with Tune's ----------
def test_a_torn_wal_segment_is_recovered_from_tunes_result_files(experiment: Path) -> None:
    before = read_results(experiment).select(["trial_id", "iteration", "objective"]).to_pylist()
    statuses = {t["trial_id"]: t["status"] for t in read_trials(experiment).to_pylist()}
    assert sorted(statuses.values()) == ["COMPLETE", "ERROR", "PRUNED"]
    torn = _as_torn_wal(experiment, keep=0.5)
    with pytest.warns(TornSegmentWarning):
        damaged = read_results(experiment).num_rows
    assert damaged < len(before)  # the torn half held results (and terminal events)

    report = check_store(experiment)
    assert report.torn and report.recoverable and report.status
    assert store_main(["check", str(experiment)]) == 1

    done = repair_store(experiment)
    assert any("recovered iterations" in line for line in done), done
    assert not torn.exists() and list((experiment / "store" / "quarantine" / "wal").glob("*.arrows"))
    after = read_results(experiment).select(["trial_id", "iteration", "objective"]).to_pylist()
    assert after == before  # every result back, values equal
    assert {t["trial_id"]: t["status"] for t in read_trials(experiment).to_pylist()} == statuses
    error = next(t for t in read_trials(experiment).to_pylist() if t["status"] == "ERROR")
    assert "boom at width 3" in error["error"]
    assert check_store(experiment).problems() == []
    assert store_main(["check", str(experiment)]) == 0
    assert reconcile(experiment, experiment="exp") == []  # idempotent: nothing more to write


def test_a_gap_neither_the_store_nor_tune_holds_is_named(experiment: Path) -> None:
    complete = next(t for t, w in _widths(experiment).items() if w == 1)
    result_file = experiment / f"trial_{complete}" / "result.json"
    lines = result_file.read_text().splitlines()
    result_file.write_text("\n".join(line for line in lines if json.loads(line)["training_iteration"] != 2) + "\n")
    _as_torn_wal(experiment, keep=1.0, drop=lambda row: row["trial_id"] == complete and row["iteration"] == 2
                 and row["event"] == "result")
    done = repair_store(experiment)  # compacts the WAL; nothing to recover: Tune lacks iteration 2 as well
    assert done == ["compacted 1 WAL segment(s) of stopped sessions"]
    assert check_store(experiment).problems() == [
        f"gap: trial {complete}: iterations 2 are neither in the store nor in Tune's result.json"]
    assert read_results(experiment).filter(pa.compute.equal(read_results(experiment)["trial_id"], complete))[
        "iteration"].to_pylist() == [1, 3, 4]


# --- 3. a damaged Parquet part ----------------------------------------------------------------
def test_a_damaged_part_is_one_line_then_quarantined_and_rebuilt_from_tune(experiment: Path, capsys) -> None:
    before = read_results(experiment).select(["trial_id", "iteration", "objective"]).to_pylist()
    statuses = {t["trial_id"]: t["status"] for t in read_trials(experiment).to_pylist()}
    parts = sorted((experiment / "store" / "parts").glob("*.parquet"))
    part = max(parts, key=lambda f: pa.parquet.read_metadata(f).num_rows)  # the one with the results
    data = bytearray(part.read_bytes())
    data[len(data) // 3: len(data) // 3 + 64] = b"\xff" * 64  # the middle of a column chunk
    data[-12:-8] = b"\x00\x00\x00\x00"  # and the footer's length
    part.write_bytes(bytes(data))
    for reader in (read_results, read_trials, read_events):
        with pytest.raises(FSRFError) as caught:
            reader(experiment)
        _one_line(str(caught.value), part, "fsrf store repair")

    assert store_main(["check", str(experiment)]) == 1
    assert f"damaged: {part}" in capsys.readouterr().out
    assert store_main(["repair", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert f"quarantined {part}" in out
    assert not part.exists() and (experiment / "store" / "quarantine" / "parts" / part.name).exists()
    after = read_results(experiment).select(["trial_id", "iteration", "objective"]).to_pylist()
    assert after == before
    assert {t["trial_id"]: t["status"] for t in read_trials(experiment).to_pylist()} == statuses


def test_fsrf_store_cli_is_dispatched_without_ray_and_bad_paths_exit_2(tmp_path: Path) -> None:
    code = ("import sys; from fsrf.cli import main; rc = main(['store', 'check', sys.argv[1]]); "
            "print('ray' in sys.modules); raise SystemExit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nope")], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert done.returncode == 2 and done.stdout.strip() == "False"
    assert done.stderr.count("\n") == 1 and "fsrf store: error: trial store" in done.stderr
    assert "store" in subprocess.run([sys.executable, "-m", "fsrf.cli", "--help"], capture_output=True, text=True,
                                     cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False).stdout
