"""Cost of the Arrow trial store: per-result write latency and reading a large store; prints JSON.

    python bench/store.py                       # temp dir on the default temp filesystem
    python bench/store.py --dir /mnt/nfs/tmp    # measure on another filesystem

Reports

* per-result write cost of :class:`TrialStoreWriter.result` (median, p95, max over
  ``--results`` results with 60 metric columns and 40 config columns, 20 trials
  interleaved, ``flush_every=1``), with fsync on and off (target: median <= 1 ms);
  the same through ``ArrowStoreCallback.on_trial_result`` with a Tune-shaped result;
  and the one slow call per WAL segment (the result that fills ``segment_bytes``
  closes the segment and compacts it to Parquet);
* time of ``read_results`` (and ``read_trials``, ``read_events``) on a store of
  5,000 trials x 100 iterations = 500,000 result rows (target: <= 2 s). The big store
  is built quickly: five Parquet parts of 100,000 result rows (+ start/complete events)
  written with numpy columns in the store's schema through the writer's own helpers
  (``BASE_FIELDS``, ``schema_metadata``, ``publish_part``), plus one live WAL segment
  written by a real ``TrialStoreWriter`` in which 500 trials re-report 5 iterations
  under attempt 2 (the de-duplication has real work to do).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsrf._constants import EVAL_RATES, loss_key, rate_key, robust_key
from tuning._store_write import (
    BASE_FIELDS,
    CONFIG_PREFIX,
    PART_SUFFIX,
    PARTS_DIR,
    SCHEMA_VERSION,
    TS_TYPE,
    new_session_id,
    publish_part,
    schema_metadata,
)
from tuning.store import TrialStoreWriter, read_events, read_results, read_trials

N_TRIALS, N_ITERS, N_PARTS = 5_000, 100, 5


def metric_names() -> list[str]:
    """60 keys shaped like the trainer's report."""
    mmsa = ("MAE", "Corr", "Has0_acc_2", "Non0_F1_score")
    names = [rate_key("valid", r, m) for r in EVAL_RATES for m in mmsa]
    names += [robust_key("valid", m) for m in mmsa]
    names += [loss_key(t) for t in ("task", "homo", "diff", "recon", "noise", "distill", "align", "total")]
    names += ["objective", "epoch", "final_epoch", "train/missing_rate", "train/lr", "training_iteration",
              "time_total_s", "time_this_iter_s"]
    return names[:60]


def config(trial: int) -> dict[str, Any]:
    """40 nested config values: floats, ints, strings, bools."""
    cfg: dict[str, Any] = {"loss": {f"w{i}": 0.1 * (trial % 7 + i) for i in range(20)}}
    cfg["model"] = {f"n{i}": 16 * (i + 1) for i in range(8)}
    cfg["curriculum"] = {f"kind{i}": ("linear", "step")[trial % 2] for i in range(6)}
    cfg["train"] = {f"flag{i}": bool((trial + i) % 2) for i in range(6)}
    return cfg


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in seconds)
    return {"median_ms": round(statistics.median(ms), 4), "p95_ms": round(ms[int(0.95 * len(ms))], 4),
            "max_ms": round(ms[-1], 3)}


def bench_writes(base: Path, n: int, *, fsync: bool) -> dict[str, float]:
    names = metric_names()
    cfgs = [config(t) for t in range(20)]
    times: list[float] = []
    with TrialStoreWriter(base / f"write-fsync{int(fsync)}", experiment="bench", fsync=fsync) as w:
        for t in range(20):
            w.event(trial_id=f"t{t}", attempt=1, event="start", config=cfgs[t])
        for i in range(n):
            t = i % 20
            metrics = {k: 0.001 * i + j for j, k in enumerate(names)}
            start = time.perf_counter()
            w.result(trial_id=f"t{t}", attempt=1, iteration=i // 20 + 1, config=cfgs[t], metrics=metrics)
            times.append(time.perf_counter() - start)
    return _stats(times)


def bench_roll(base: Path) -> dict[str, Any]:
    """The one slow call per segment: the result that fills a segment also compacts it."""
    names = metric_names()
    cfgs = [config(t) for t in range(20)]
    root = base / "roll"
    with TrialStoreWriter(root, experiment="bench", fsync=False) as w:
        i = 0
        while not any((root / PARTS_DIR).iterdir()):
            metrics = {k: 0.001 * i + j for j, k in enumerate(names)}
            start = time.perf_counter()
            w.result(trial_id=f"t{i % 20}", attempt=1, iteration=i // 20 + 1, config=cfgs[i % 20],
                     metrics=metrics)
            took = time.perf_counter() - start
            i += 1
    return {"segment_bytes": w.segment_bytes, "rows_per_segment": i,
            "wal_bytes_per_row_approx": round(w.segment_bytes / i), "roll_and_compact_s": round(took, 3)}


def bench_callback(base: Path, n: int) -> dict[str, float]:
    from tuning.store import ArrowStoreCallback

    names = metric_names()
    cb = ArrowStoreCallback(base / "callback", experiment="bench")
    trials = [SimpleNamespace(trial_id=f"t{t}", config=config(t), last_result={}) for t in range(20)]
    cb.setup()
    for trial in trials:
        cb.on_trial_start(iteration=0, trials=trials, trial=trial)
    times: list[float] = []
    for i in range(n):
        trial = trials[i % 20]
        result = {k: 0.001 * i + j for j, k in enumerate(names)}
        result.update(training_iteration=i // 20 + 1, trial_id=trial.trial_id, date="2025-01-01_00-00-00",
                      hostname="node", node_ip="10.0.0.1", done=False, config=trial.config,
                      checkpoint_dir_name=None, pid=123)
        start = time.perf_counter()
        cb.on_trial_result(iteration=i, trials=trials, trial=trial, result=result)
        times.append(time.perf_counter() - start)
    cb.on_experiment_end(trials=trials)
    return _stats(times)


def build_big_store(root: Path) -> dict[str, Any]:
    """5 Parquet parts x 1,000 trials x 100 iterations, plus a live WAL with re-reported rows."""
    rng = np.random.default_rng(0)
    names = metric_names()
    cfgs = [config(t) for t in range(20)]
    flat = {f"{CONFIG_PREFIX}{s}.{k}": None for s, d in cfgs[0].items() for k in d}
    (root / PARTS_DIR).mkdir(parents=True)
    (root / "wal").mkdir()
    per_part = N_TRIALS // N_PARTS
    start_build = time.perf_counter()
    for p in range(N_PARTS):
        session = new_session_id()
        trial_ids = np.array([f"trial_{p * per_part + t:05d}" for t in range(per_part)], dtype=object)
        # Per trial: start, N_ITERS results, complete; rows of all trials interleaved by iteration.
        n_res = per_part * N_ITERS
        tid = np.concatenate([trial_ids, np.tile(trial_ids, N_ITERS), trial_ids])
        it = np.concatenate([np.full(per_part, -1), np.repeat(np.arange(1, N_ITERS + 1), per_part),
                             np.full(per_part, N_ITERS)])
        event = np.array(["start"] * per_part + ["result"] * n_res + ["complete"] * per_part, dtype=object)
        n = len(tid)
        cols: dict[str, pa.Array] = {
            "schema_version": pa.array(np.full(n, SCHEMA_VERSION)),
            "experiment": pa.array(np.full(n, "bench", dtype=object), pa.string()),
            "trial_id": pa.array(tid, pa.string()),
            "attempt": pa.array(np.ones(n, dtype=np.int64)),
            "iteration": pa.array(it, mask=it < 0),
            "event": pa.array(event, pa.string()),
            "message": pa.nulls(n, pa.string()),
            "session": pa.array(np.full(n, session, dtype=object), pa.string()),
            "seq": pa.array(np.arange(1, n + 1)),
            "ts": pa.array(np.arange(n, dtype=np.int64) + 1_700_000_000_000_000, TS_TYPE),
        }
        trials = np.arange(per_part)
        idx = np.concatenate([trials, np.tile(trials, N_ITERS), trials])
        for c in flat:
            section, key = c[len(CONFIG_PREFIX):].split(".")
            values = [cfgs[(p * per_part + t) % 20][section][key] for t in range(per_part)]
            cols[c] = pa.array(values).take(pa.array(idx))
        is_result = event == "result"
        for m in names:
            v = rng.random(n)
            cols[m] = pa.array(v, mask=~is_result)
        fields = [*BASE_FIELDS, *(pa.field(c, cols[c].type) for c in list(cols)[len(BASE_FIELDS):])]
        schema = pa.schema(fields, metadata=schema_metadata(experiment="bench", session=session))
        table = pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)
        publish_part(table, root / PARTS_DIR / f"{session}-0001{PART_SUFFIX}")
    parts_s = time.perf_counter() - start_build
    # A live session: 500 trials restarted, re-reporting their last 5 iterations under attempt 2.
    writer = TrialStoreWriter(root, experiment="bench", flush_every=500, fsync=False)
    for t in range(500):
        trial = f"trial_{t * 10:05d}"
        writer.event(trial_id=trial, attempt=2, event="start", config=cfgs[(t * 10) % 20])
        for i in range(N_ITERS - 4, N_ITERS + 1):
            writer.result(trial_id=trial, attempt=2, iteration=i, config=cfgs[(t * 10) % 20],
                          metrics={m: float(i) for m in names})
    writer.flush()
    return {"writer": writer, "build_parts_s": round(parts_s, 2),
            "build_total_s": round(time.perf_counter() - start_build, 2)}


def bench_reads(base: Path, repeats: int) -> dict[str, Any]:
    root = base / "big" / "store"
    built = build_big_store(root)
    writer = built.pop("writer")
    out: dict[str, Any] = {"store": {
        "trials": N_TRIALS, "iterations": N_ITERS, "parquet_parts": N_PARTS, "live_wal_segments": 1,
        "re_reported_rows": 2_500,
        "bytes_on_disk": sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
        "how_built": "numpy columns in the store schema via BASE_FIELDS/schema_metadata/publish_part "
                     "(5 Parquet parts), plus a live TrialStoreWriter session (flush_every=500)",
        **built,
    }}
    for fn in (read_results, read_trials, read_events):
        name = fn.__name__
        times: list[float] = []
        for _ in range(repeats):
            start = time.perf_counter()
            table = fn(root)
            times.append(time.perf_counter() - start)
        out[name] = {"rows": table.num_rows, "columns": table.num_columns, "first_s": round(times[0], 3),
                     "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}
    writer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to build the stores (default: temp)")
    parser.add_argument("--results", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        report: dict[str, Any] = {
            "machine": {"python": platform.python_version(), "pyarrow": pa.__version__,
                        "cpus": os.cpu_count(), "dir": str(base)},
            "write_per_result": {
                "columns": {"metrics": len(metric_names()), "config": 40, "trials_interleaved": 20},
                "results": args.results, "flush_every": 1,
                "fsync_on": bench_writes(base, args.results, fsync=True),
                "fsync_off": bench_writes(base, args.results, fsync=False),
                "callback_on_trial_result_fsync_on": bench_callback(base, args.results),
                "segment_roll": bench_roll(base),
                "target_median_ms": 1.0,
            },
        }
        reads = bench_reads(base, args.repeats)
        reads["target_read_results_s"] = 2.0
        report["read_500k"] = reads
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
