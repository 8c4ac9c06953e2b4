"""Slot utilisation and per-trial start-up latency of a search on 2 slots; prints JSON.

    python bench/tune_overhead.py

A FIFO search of 16 trials (``--trials``) of about 10 s each (the default space's synthetic
data, a few epochs per trial) on a local Ray with 2 CPUs and 2 concurrent
slots. From the trial store:

* utilisation = sum over trials of Tune's ``time_total_s`` (time inside the
  trainable) / (wall time of the trial phase x 2 slots), the wall time running
  from the first trial start event to the last trial end event; target >= 0.9;
* start-up latency of a trial = its first result's timestamp - its start event's
  timestamp - that first epoch's own duration (actor start, data fetch, setup).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _search_runs import base_options, events, results_in_time_order, run_quietly


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trial (8: about 10 s here)")
    args = parser.parse_args()
    epochs = args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        options = base_options(
            Path(tmp), "overhead", num_samples=args.trials, max_concurrent=2, scheduler="fifo", max_epochs=epochs,
            overrides=("data.synthetic_train=600", "missing.valid_rates=[0.0,0.3,0.6,0.9]"),
        )
        exp, total_wall = run_quietly(options)
        rows = results_in_time_order(exp)
        evs = events(exp)
    starts = {e["trial_id"]: e["ts"] for e in evs if e["event"] == "start"}
    ends = [e["ts"] for e in evs if e["event"] in ("complete", "pruned", "error")]
    busy = {}
    first = {}
    for r in rows:
        busy[r["trial_id"]] = max(busy.get(r["trial_id"], 0.0), r["time_total_s"])
        if r["iteration"] == 1:
            first[r["trial_id"]] = r
    phase = (max(ends) - min(starts.values())).total_seconds()
    latencies = [
        (first[t]["ts"] - starts[t]).total_seconds() - first[t]["time_this_iter_s"] for t in first if t in starts
    ]
    end_times = sorted(ends)
    gaps = []
    for t, start in sorted(starts.items(), key=lambda kv: kv[1])[2:]:  # trials that waited for a free slot
        before = [e for e in end_times if e <= start]
        if before:
            gaps.append((start - before[-1]).total_seconds())
    last_result = {}
    for r in rows:
        last_result[r["trial_id"]] = r["ts"]
    end_of = {e["trial_id"]: e["ts"] for e in evs if e["event"] in ("complete", "pruned", "error")}
    teardown = [(end_of[t] - last_result[t]).total_seconds() for t in end_of if t in last_result]
    print(json.dumps({
        "trials": len(busy),
        "epochs_per_trial": epochs,
        "mean_trial_busy_s": round(statistics.mean(busy.values()), 2),
        "slots": 2,
        "trial_phase_wall_s": round(phase, 2),
        "whole_run_wall_s_including_ray_start": round(total_wall, 2),
        "slot_utilisation": round(sum(busy.values()) / (phase * 2), 3),
        "startup_latency_s_median": round(statistics.median(latencies), 3),
        "startup_latency_s_max": round(max(latencies), 3),
        "slot_handover_s_median": round(statistics.median(gaps), 3) if gaps else None,
        "last_result_to_end_event_s_median": round(statistics.median(teardown), 3),
        "tail_idle_s": round((max(ends) - sorted(ends)[-2]).total_seconds(), 2),
        "target": {"slot_utilisation": ">= 0.9"},
    }, indent=2))


if __name__ == "__main__":
    main()
