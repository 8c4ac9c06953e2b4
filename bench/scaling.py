"""Trials per minute on one and on two simulated nodes (``ray.cluster_utils.Cluster``); prints JSON.

    python bench/scaling.py [--cpus-per-node 1] [--trials 8]

A head without CPUs plus N worker nodes of ``--cpus-per-node`` CPUs each, all on
this machine; a FIFO search of ``--trials`` small synthetic trials with one CPU
each, run once with N = 1 and once with N = 2. Reported: trials completed per
minute over the trial phase (first start to last end in the trial store), the
scaling efficiency (ratio of the two rates; target >= 1.8 when the machine has
the cores for two nodes), and the scheduling overhead per trial, the slot time
not spent inside trials: (phase x slots - sum of trial busy time) / trials
(target < 1 s). The machine's core count is reported: with fewer cores than the
two nodes' CPUs, the nodes share cores and the ratio measures the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _search_runs import base_options, events, results_in_time_order, run_quietly

OVERRIDES = ("data.synthetic_train=320", "missing.valid_rates=[0.0,0.5]")


def measure(nodes: int, cpus: int, trials: int, tmp: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus)
    cluster.wait_for_nodes()
    try:
        options = base_options(tmp, f"nodes{nodes}", num_samples=trials, max_concurrent=nodes * cpus,
                               scheduler="fifo", max_epochs=3, address=cluster.address, num_cpus=None,
                               overrides=OVERRIDES)
        exp, wall = run_quietly(options)
    finally:
        ray.shutdown()
        cluster.shutdown()
    evs = events(exp)
    starts = [e["ts"] for e in evs if e["event"] == "start"]
    ends = [e["ts"] for e in evs if e["event"] in ("complete", "pruned", "error")]
    busy: dict[str, float] = {}
    for r in results_in_time_order(exp):
        busy[r["trial_id"]] = max(busy.get(r["trial_id"], 0.0), r["time_total_s"])
    phase = (max(ends) - min(starts)).total_seconds()
    slots = nodes * cpus
    return {
        "nodes": nodes,
        "slots": slots,
        "trials": len(busy),
        "trial_phase_s": round(phase, 2),
        "whole_run_s": round(wall, 2),
        "trials_per_minute": round(60 * len(busy) / phase, 2),
        "mean_trial_busy_s": round(sum(busy.values()) / len(busy), 2),
        "scheduling_overhead_s_per_trial": round((phase * slots - sum(busy.values())) / len(busy), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = measure(1, args.cpus_per_node, args.trials, Path(tmp))
        two = measure(2, args.cpus_per_node, args.trials, Path(tmp))
    print(json.dumps({
        "machine_cores": os.cpu_count(),
        "cpus_per_node": args.cpus_per_node,
        "one_node": one,
        "two_nodes": two,
        "scaling_efficiency": round(two["trials_per_minute"] / one["trials_per_minute"], 3),
        "targets": {"scaling_efficiency": ">= 1.8 when the machine has the cores",
                    "scheduling_overhead_s_per_trial": "< 1"},
    }, indent=2))


if __name__ == "__main__":
    main()
