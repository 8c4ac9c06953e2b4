"""The Arrow trial store: round trip, schema evolution, de-duplication, crashes, plain readers, Ray."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from fsrf import FSRFError
from tuning.store import (
    SCHEMA_VERSION,
    TornSegmentWarning,
    TrialStoreWriter,
    read_events,
    read_results,
    read_trials,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"loss": {"cmd": 0.5, "layers": 3}, "curriculum": {"kind": "step", "warm": True}, "note": None}


def _wal(root: Path) -> list[Path]:
    return sorted((root / "wal").glob("*.arrows"))


def _parts(root: Path) -> list[Path]:
    return sorted((root / "parts").glob("*.parquet"))


def _results(writer: TrialStoreWriter, trial: str, attempt: int, iterations: range, **metrics: float) -> None:
    for it in iterations:
        writer.result(trial_id=trial, attempt=attempt, iteration=it, config=CONFIG,
                      metrics={"objective": it / 10 + attempt, "epoch": it, **metrics})


def test_round_trip_values_and_types(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with TrialStoreWriter(root, experiment="exp") as w:
        w.event(trial_id="a", attempt=1, event="start", config=CONFIG)
        w.result(trial_id="a", attempt=1, iteration=1, config=CONFIG, metrics={
            "valid/robust/MAE": 0.75, "train/loss/task": 2, "epoch": 1, "final_epoch": 0.0,
            "name": "text", "nested": {"x": 1}, "done": False, "checkpoint_dir_name": None,
        })
        w.result(trial_id="a", attempt=1, iteration=2, config=CONFIG,
                 metrics={"valid/robust/MAE": 0.5, "train/loss/task": 1.5, "epoch": 2, "final_epoch": 1.0})
        w.event(trial_id="a", attempt=1, event="complete", iteration=2)
        w.event(trial_id="b", attempt=1, event="start", config={"loss": {"cmd": 2}})
        w.event(trial_id="b", attempt=1, event="error", message="ValueError: boom")
        w.event(trial_id="c", attempt=1, event="start", config={"loss": {"cmd": 1.0}})
        w.result(trial_id="c", attempt=1, iteration=1, config={"loss": {"cmd": 1.0}}, metrics={"epoch": 1})
        w.event(trial_id="c", attempt=1, event="pruned", iteration=1)
        w.event(trial_id="d", attempt=1, event="start", config={})
    assert _wal(root) == [] and _parts(root)  # closed: everything compacted

    events = read_events(root)
    assert events.column_names[:10] == [
        "schema_version", "experiment", "trial_id", "attempt", "iteration", "event", "message",
        "session", "seq", "ts",
    ]
    schema = events.schema
    for name, typ in {
        "schema_version": pa.int64(), "attempt": pa.int64(), "iteration": pa.int64(), "seq": pa.int64(),
        "ts": pa.timestamp("us", tz="UTC"), "event": pa.string(), "config.loss.cmd": pa.float64(),
        "config.loss.layers": pa.int64(), "config.curriculum.kind": pa.string(),
        "config.curriculum.warm": pa.bool_(), "config.note": pa.null(), "train/loss/task": pa.float64(),
        "epoch": pa.float64(),
    }.items():
        assert schema.field(name).type == typ, name
    assert not {"name", "nested", "nested.x", "done", "checkpoint_dir_name"} & set(schema.names)
    assert schema.metadata[b"fsrf.store.schema_version"] == str(SCHEMA_VERSION).encode()
    assert b"pyarrow" in schema.metadata[b"fsrf.store.versions"]
    assert events["seq"].to_pylist() == list(range(1, 11))
    assert events["event"].to_pylist() == [
        "start", "result", "result", "complete", "start", "error", "start", "result", "pruned", "start"]
    assert set(events["schema_version"].to_pylist()) == {SCHEMA_VERSION}
    assert set(events["experiment"].to_pylist()) == {"exp"}
    assert len(set(events["session"].to_pylist())) == 1

    results = read_results(tmp_path)  # the experiment directory works too
    assert results.num_rows == 3 and set(results["event"].to_pylist()) == {"result"}
    first = results.to_pylist()[0]
    assert {k: first[k] for k in ("trial_id", "attempt", "iteration", "config.loss.cmd", "config.loss.layers",
                                  "config.curriculum.kind", "config.curriculum.warm", "config.note",
                                  "valid/robust/MAE", "train/loss/task", "epoch", "final_epoch")} == {
        "trial_id": "a", "attempt": 1, "iteration": 1, "config.loss.cmd": 0.5, "config.loss.layers": 3,
        "config.curriculum.kind": "step", "config.curriculum.warm": True, "config.note": None,
        "valid/robust/MAE": 0.75, "train/loss/task": 2.0, "epoch": 1.0, "final_epoch": 0.0,
    }

    trials = read_trials(root).to_pylist()
    assert [(t["trial_id"], t["status"], t["attempts"], t["iterations"], t["error"]) for t in trials] == [
        ("a", "COMPLETE", 1, 2, None), ("b", "ERROR", 1, None, "ValueError: boom"),
        ("c", "PRUNED", 1, 1, None), ("d", "RUNNING", 1, None, None),
    ]
    assert [t["config.loss.cmd"] for t in trials] == [0.5, 2.0, 1.0, None]
    assert trials[0]["valid/robust/MAE"] == 0.5 and trials[0]["final_epoch"] == 1.0  # the last result
    assert trials[2]["epoch"] == 1.0 and trials[2]["valid/robust/MAE"] is None


def test_schema_unification_across_segments(tmp_path: Path) -> None:
    with TrialStoreWriter(tmp_path, experiment="exp") as w:  # segment A: int config, no "b", no config.new
        w.result(trial_id="t1", attempt=1, iteration=1, config={"lr": 1, "kind": 3}, metrics={"a": 1.0})
    with TrialStoreWriter(tmp_path, experiment="exp") as w:  # segment B: float lr, a new metric and config
        w.result(trial_id="t2", attempt=1, iteration=1, config={"lr": 0.5, "kind": "x", "new": "n"},
                 metrics={"a": 2.0, "b": 3.0})
    assert len(_parts(tmp_path)) == 2
    rows = read_results(tmp_path)
    assert rows.schema.field("config.lr").type == pa.float64()  # int64 + float64 -> float64
    assert rows.schema.field("config.kind").type == pa.string()  # int64 + string -> string (store policy)
    assert rows.select(["trial_id", "config.lr", "config.kind", "config.new", "a", "b"]).to_pylist() == [
        {"trial_id": "t1", "config.lr": 1.0, "config.kind": "3", "config.new": None, "a": 1.0, "b": None},
        {"trial_id": "t2", "config.lr": 0.5, "config.kind": "x", "config.new": "n", "a": 2.0, "b": 3.0},
    ]


def test_new_column_mid_session_rolls_a_segment(tmp_path: Path) -> None:
    w = TrialStoreWriter(tmp_path, experiment="exp")
    w.result(trial_id="t", attempt=1, iteration=1, config={"lr": 1}, metrics={"a": 1.0})
    w.result(trial_id="t", attempt=1, iteration=2, config={"lr": 1}, metrics={"a": 2.0})
    assert len(_wal(tmp_path)) == 1
    w.result(trial_id="t", attempt=1, iteration=3, config={"lr": 1}, metrics={"a": 3.0, "b": 30.0})
    w.result(trial_id="t", attempt=1, iteration=4, config={"lr": 0.5}, metrics={"a": 4.0})  # int -> float
    wal = _wal(tmp_path)
    assert len(wal) == 3 and all(p.name.startswith(w.session) for p in wal)
    live = read_results(tmp_path)  # read while the writer is open: WAL segments only
    w.close()
    assert _wal(tmp_path) == [] and [p.stem for p in _parts(tmp_path)] == [p.stem for p in wal]
    for table in (live, read_results(tmp_path)):
        assert table.select(["iteration", "config.lr", "a", "b"]).to_pylist() == [
            {"iteration": 1, "config.lr": 1.0, "a": 1.0, "b": None},
            {"iteration": 2, "config.lr": 1.0, "a": 2.0, "b": None},
            {"iteration": 3, "config.lr": 1.0, "a": 3.0, "b": 30.0},
            {"iteration": 4, "config.lr": 0.5, "a": 4.0, "b": None},
        ]


def test_large_segments_are_compacted_during_the_session(tmp_path: Path) -> None:
    w = TrialStoreWriter(tmp_path, experiment="exp", segment_bytes=8_000)
    _results(w, "t", 1, range(1, 41))
    assert len(_wal(tmp_path)) <= 1 and len(_parts(tmp_path)) >= 3  # the WAL stays small
    assert read_results(tmp_path)["iteration"].to_pylist() == list(range(1, 41))
    w.close()
    assert _wal(tmp_path) == [] and read_events(tmp_path)["seq"].to_pylist() == list(range(1, 41))


def test_restore_duplicates_are_removed(tmp_path: Path) -> None:
    with TrialStoreWriter(tmp_path, experiment="exp") as w:
        w.event(trial_id="t", attempt=1, event="start", config=CONFIG)
        _results(w, "t", 1, range(1, 5))
        w.event(trial_id="t", attempt=1, event="restore", message="RuntimeError: node lost")
        w.event(trial_id="t", attempt=2, event="start", config=CONFIG)
        _results(w, "t", 2, range(4, 7))
        w.event(trial_id="t", attempt=2, event="complete", iteration=6)
        _results(w, "u", 1, range(1, 3))
    results = read_results(tmp_path)
    assert list(zip(results["trial_id"].to_pylist(), results["iteration"].to_pylist())) == [
        ("t", 1), ("t", 2), ("t", 3), ("t", 4), ("t", 5), ("t", 6), ("u", 1), ("u", 2)]
    assert results["attempt"].to_pylist()[:6] == [1, 1, 1, 2, 2, 2]
    assert results["objective"].to_pylist()[3] == pytest.approx(2.4)  # iteration 4 of attempt 2
    assert read_events(tmp_path).num_rows == 13  # the raw rows keep both copies of iteration 4
    trial = read_trials(tmp_path).to_pylist()[0]
    summary = (trial["status"], trial["attempts"], trial["iterations"], trial["error"])
    assert summary == ("COMPLETE", 2, 6, None)
    assert trial["objective"] == pytest.approx(2.6)


def test_discarded_trials_leave_the_views_but_keep_their_rows(tmp_path: Path) -> None:
    with TrialStoreWriter(tmp_path, experiment="exp") as w:
        for tid in ("kept", "orphan"):
            w.event(trial_id=tid, attempt=1, event="start", config=CONFIG)
            _results(w, tid, 1, range(1, 3))
        w.event(trial_id="orphan", attempt=1, event="discarded", message="absent from the restored experiment")
    assert set(read_results(tmp_path)["trial_id"].to_pylist()) == {"kept"}
    assert read_trials(tmp_path)["trial_id"].to_pylist() == ["kept"]
    assert "orphan" in read_events(tmp_path)["trial_id"].to_pylist()


def test_flush_every_buffers_rows_until_flush(tmp_path: Path) -> None:
    w = TrialStoreWriter(tmp_path, experiment="exp", flush_every=3, fsync=False)
    _results(w, "t", 1, range(1, 3))
    assert _wal(tmp_path) == []  # two rows buffered, nothing written yet
    _results(w, "t", 1, range(3, 5))
    assert read_events(tmp_path).num_rows == 3
    w.close()
    assert read_results(tmp_path)["iteration"].to_pylist() == [1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="closed"):
        _results(w, "t", 1, range(5, 6))


def test_torn_tail_keeps_every_complete_batch(tmp_path: Path) -> None:
    w = TrialStoreWriter(tmp_path / "live", experiment="exp")
    _results(w, "t", 1, range(1, 6))  # five batches of one row
    (wal,) = _wal(tmp_path / "live")
    crashed = tmp_path / "crashed"
    (crashed / "wal").mkdir(parents=True)
    torn = crashed / "wal" / wal.name
    torn.write_bytes(wal.read_bytes()[:-30])  # the driver died while writing the fifth batch
    w.close()
    with pytest.warns(TornSegmentWarning, match=torn.name):
        results = read_results(crashed)
    assert results["iteration"].to_pylist() == [1, 2, 3, 4]
    with pytest.warns(TornSegmentWarning, match=torn.name):  # the next writer keeps the same four rows
        TrialStoreWriter(crashed, experiment="exp").close()
    assert not torn.exists() and read_results(crashed)["iteration"].to_pylist() == [1, 2, 3, 4]


KILLED_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from tuning.store import TrialStoreWriter
    print("ray imported" if "ray" in sys.modules else "no ray", flush=True)  # the writer needs no Ray
    w = TrialStoreWriter(sys.argv[1], experiment="killed")
    i = 0
    while True:
        i += 1
        w.result(trial_id=f"t{i % 3}", attempt=1, iteration=(i + 2) // 3, config={"x": i % 3},
                 metrics={"m": float(i), **({"late": 1.0} if i > 30 else {})})
        print(i, flush=True)  # after the fsync: row i is durable
""")


def test_sigkilled_writer_leaves_a_readable_prefix(tmp_path: Path) -> None:
    root = tmp_path / "store"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root), str(ROOT)],
                             stdout=subprocess.PIPE, text=True)
    try:
        acknowledged = 0
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "no ray"
        while acknowledged < 60:
            line = child.stdout.readline()
            assert line, "the writer died on its own"
            acknowledged = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(_wal(root)) == 2 and _parts(root) == []  # rolled at row 31 ("late"), never compacted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TornSegmentWarning)  # the kill may or may not tear a batch
        events = read_events(root)
        results = read_results(root)
        n = events.num_rows
        assert n >= acknowledged
        assert events["seq"].to_pylist() == list(range(1, n + 1))  # a prefix: nothing missing inside
        assert events["m"].to_pylist() == [float(i) for i in range(1, n + 1)]
        keys = list(zip(results["trial_id"].to_pylist(), results["iteration"].to_pylist()))
        assert len(keys) == len(set(keys)) == n
        TrialStoreWriter(root, experiment="killed").close()  # compacts the stale segments
    assert _wal(root) == [] and len(_parts(root)) == 2
    assert read_events(root).equals(events)


def test_compaction_is_atomic(tmp_path: Path) -> None:
    w = TrialStoreWriter(tmp_path, experiment="exp")
    _results(w, "t", 1, range(1, 4))
    (wal,) = _wal(tmp_path)
    saved = wal.read_bytes()
    w.close()
    (part,) = _parts(tmp_path)
    # A compaction that died before its rename leaves a torn temp file: invisible to every reader.
    tmp = tmp_path / "parts" / ".tmp-x.parquet"
    tmp.write_bytes(part.read_bytes()[:100])
    # One that died between the rename and the WAL delete leaves both: counted once.
    wal.write_bytes(saved)
    assert read_events(tmp_path).num_rows == 3
    assert ds.dataset(tmp_path / "parts", format="parquet").to_table().num_rows == 3
    TrialStoreWriter(tmp_path, experiment="exp").close()  # the next writer cleans both up
    assert not tmp.exists() and not wal.exists() and _parts(tmp_path) == [part]
    assert read_results(tmp_path)["iteration"].to_pylist() == [1, 2, 3]


def test_plain_pyarrow_and_pandas_read_the_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with TrialStoreWriter(root, experiment="exp") as w:
        _results(w, "t", 1, range(1, 3))
    with TrialStoreWriter(root, experiment="exp") as w:
        _results(w, "u", 1, range(1, 3), extra=1.0)
    live = TrialStoreWriter(root, experiment="exp")
    _results(live, "v", 1, range(1, 2))

    # The module docstring's snippets, verbatim.
    import pathlib

    files = sorted(str(p) for p in pathlib.Path(root, "parts").glob("[!._]*.parquet"))
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    df = ds.dataset(files, format="parquet", schema=schema).to_table().to_pandas()
    assert sorted(zip(df["trial_id"], df["iteration"])) == [("t", 1), ("t", 2), ("u", 1), ("u", 2)]
    assert df["extra"].isna().tolist() == [True, True, False, False]
    (wal_file,) = _wal(root)
    with pa.ipc.open_stream(pa.OSFile(str(wal_file))) as reader:
        table = reader.read_all()
    assert table["trial_id"].to_pylist() == ["v"]
    assert ds.dataset(f"{root}/parts", format="parquet").to_table().num_rows == 4
    live.close()


def test_bad_paths_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    for reader in (read_results, read_trials, read_events):
        with pytest.raises(FSRFError, match=f"{missing}: no such directory"):
            reader(missing)
    (tmp_path / "plain").mkdir()
    with pytest.raises(FSRFError, match="no wal/ or parts/ inside"):
        read_results(tmp_path / "plain")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FSRFError, match="not a directory"):
        read_trials(tmp_path / "file")
    (tmp_path / "exp" / "store" / "wal").mkdir(parents=True)
    with pytest.raises(FSRFError, match=r"store: empty; expected rows"):
        read_results(tmp_path / "exp")
    with pytest.raises(FSRFError, match="expected a writable directory"):
        TrialStoreWriter(tmp_path / "file", experiment="exp")
    with TrialStoreWriter(tmp_path / "s", experiment="exp") as w:
        with pytest.raises(FSRFError, match="unknown event 'finished'"):
            w.event(trial_id="t", attempt=1, event="finished")
        with pytest.raises(FSRFError, match="'seq' collides"):
            w.result(trial_id="t", attempt=1, iteration=1, config={}, metrics={"seq": 1.0})


def _trial(trial_id: str) -> SimpleNamespace:
    """The attributes of ``ray.tune.experiment.Trial`` that the callback reads."""
    return SimpleNamespace(trial_id=trial_id, config={"loss": {"cmd": 0.5}}, last_result={},
                           pickled_error_file=None, error_file=None, get_pickled_error=lambda: None,
                           get_error=lambda: None)


def test_callback_numbers_attempts_across_retries_and_driver_restarts(tmp_path: Path) -> None:
    from tuning.store import ArrowStoreCallback

    root = tmp_path / "store"
    cb = ArrowStoreCallback(root, experiment="exp")
    cb = pickle.loads(pickle.dumps(cb))  # Tune pickles its run config into tuner.pkl
    a, b = _trial("a"), _trial("b")
    b.error_file = str(tmp_path / "error.txt")
    Path(b.error_file).write_text("Failure # 1 (occurred at x)\nray::ImplicitFunc.train()\n  File \"x\"\n"
                                  "ValueError: boom\n")
    hooks = {"iteration": 0, "trials": [a, b]}
    cb.setup()
    cb.on_trial_start(trial=a, **hooks)
    cb.on_trial_start(trial=b, **hooks)
    for it in (1, 2):
        cb.on_trial_result(trial=a, result={"training_iteration": it, "objective": it, "config": {"x": 1},
                                            "nested": {"y": 1.0}, "trial_id": "a", "done": False}, **hooks)
    cb.on_trial_recover(trial=b, **hooks)  # retried: its next start is attempt 2
    cb.on_trial_start(trial=b, **hooks)
    cb.on_trial_error(trial=b, **hooks)
    # The driver dies here (no on_experiment_end); Tuner.restore builds a new callback from tuner.pkl.
    cb2 = pickle.loads(pickle.dumps(ArrowStoreCallback(root, experiment="exp")))
    cb2.setup()
    cb2.on_trial_start(trial=a, **hooks)
    a.last_result = {"training_iteration": 3, "final_epoch": 1.0}
    cb2.on_trial_result(trial=a, result={"training_iteration": 2, "objective": 20.0}, **hooks)
    cb2.on_trial_result(trial=a, result={"training_iteration": 3, "objective": 30.0}, **hooks)
    cb2.on_trial_complete(trial=a, **hooks)
    cb2.on_experiment_end(trials=[a, b])
    assert _wal(root) == []

    events = read_events(root).select(["trial_id", "attempt", "iteration", "event", "message"]).to_pylist()
    assert [(e["trial_id"], e["attempt"], e["event"]) for e in events] == [
        ("a", 1, "start"), ("b", 1, "start"), ("a", 1, "result"), ("a", 1, "result"), ("b", 1, "restore"),
        ("b", 2, "start"), ("b", 2, "error"), ("a", 2, "start"), ("a", 2, "result"), ("a", 2, "result"),
        ("a", 2, "complete"),
    ]
    assert events[6]["message"] == "ValueError: boom" and events[4]["message"] == "ValueError: boom"
    results = read_results(root)
    assert results["objective"].to_pylist() == [1.0, 20.0, 30.0]
    assert "config" not in results.column_names and "done" not in results.column_names
    trials = read_trials(root).select(["trial_id", "status", "attempts", "iterations"]).to_pylist()
    assert trials == [{"trial_id": "a", "status": "COMPLETE", "attempts": 2, "iterations": 3},
                      {"trial_id": "b", "status": "ERROR", "attempts": 2, "iterations": None}]


@pytest.mark.slow
def test_real_tune_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from ray import tune

    from tuning.store import ArrowStoreCallback

    def trainable(config: dict[str, Any]) -> None:  # defined here: Ray ships it by value
        width = config["model"]["width"]
        for i in range(1, 4):
            if width == 32 and i == 2:
                raise ValueError(f"trial exploded at width {width}\nsecond line")
            if width == 16 and i == 3:
                return  # stopped before its last epoch: pruned
            tune.report({"objective": width / i, "final_epoch": 1.0 if i == 3 else 0.0, "nested": {"a": 1.0}})

    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        tuner = tune.Tuner(
            trainable,
            param_space={"model": {"width": tune.grid_search([8, 16, 32])}, "lr": 0.1},
            run_config=tune.RunConfig(
                storage_path=str(tmp_path), name="exp", verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
                callbacks=[ArrowStoreCallback(tmp_path / "exp" / "store", experiment="exp")],
            ),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    assert grid.num_errors == 1
    store = tmp_path / "exp" / "store"
    assert _wal(store) == [] and _parts(store)

    results = read_results(tmp_path / "exp")
    width = {r["trial_id"]: r["config.model.width"] for r in results.to_pylist()}
    seen = [(width[t], i) for t, i in zip(results["trial_id"].to_pylist(), results["iteration"].to_pylist())]
    assert sorted(seen) == [(8, 1), (8, 2), (8, 3), (16, 1), (16, 2), (32, 1)]
    assert results.schema.field("config.model.width").type == pa.int64()
    assert "nested" not in results.column_names and "nested/a" not in results.column_names
    assert results.schema.field("training_iteration").type == pa.float64()

    events = read_events(tmp_path / "exp").to_pylist()
    by_width: dict[int, list[tuple[int, str]]] = {}
    trial_width = {e["trial_id"]: e["config.model.width"] for e in events if e["event"] == "start"}
    for e in events:
        if e["event"] != "result":
            by_width.setdefault(trial_width[e["trial_id"]], []).append((e["attempt"], e["event"]))
    assert by_width == {
        8: [(1, "start"), (1, "complete")],
        16: [(1, "start"), (1, "pruned")],
        32: [(1, "start"), (1, "restore"), (2, "start"), (2, "error")],
    }
    trials = {t["config.model.width"]: t for t in read_trials(tmp_path / "exp").to_pylist()}
    assert {w: t["status"] for w, t in trials.items()} == {8: "COMPLETE", 16: "PRUNED", 32: "ERROR"}
    assert trials[32]["error"] == "ValueError: trial exploded at width 32"
    assert trials[32]["attempts"] == 2 and trials[8]["iterations"] == 3


def test_every_part_carries_every_column_so_one_line_readers_see_them_all(tmp_path: Path) -> None:
    """Sessions that brought different columns (a conditional param, a metric of later epochs)
    still give pandas, pyarrow, polars and DuckDB every column from the parts directory alone."""
    import duckdb
    import pandas as pd
    import polars as pl

    root = tmp_path / "store"
    with TrialStoreWriter(root, experiment="e") as w:
        w.result(trial_id="a", attempt=1, iteration=1, config={"curriculum": {"kind": "constant"}},
                 metrics={"objective": 0.5})
    with TrialStoreWriter(root, experiment="e") as w:  # a second session: new columns appear
        w.result(trial_id="b", attempt=1, iteration=1,
                 config={"curriculum": {"kind": "step", "step_size": 0.1}},
                 metrics={"objective": 0.4, "valid/r0.3/MAE": 0.7})
    parts = _parts(root)
    assert len(parts) == 2
    wanted = {"config.curriculum.step_size", "valid/r0.3/MAE", "objective", "trial_id"}
    folder = str(root / "parts")
    glob = f"{folder}/*.parquet"
    assert wanted <= set(pd.read_parquet(folder).columns)
    assert wanted <= set(pq.read_table(folder).column_names)
    assert wanted <= set(ds.dataset(folder).schema.names)
    frame = pl.read_parquet(glob)
    assert wanted <= set(frame.columns) and frame.height == 2
    duck = duckdb.sql(f"SELECT * FROM read_parquet('{glob}')")
    assert wanted <= set(duck.columns) and len(duck.fetchall()) == 2
    values = pd.read_parquet(folder).set_index("trial_id")
    assert pd.isna(values.loc["a", "valid/r0.3/MAE"]) and values.loc["b", "valid/r0.3/MAE"] == 0.7
    assert read_results(root).num_rows == 2  # the store's own reader agrees
