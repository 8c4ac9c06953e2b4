"""Searches on a simulated multi-node cluster (``ray.cluster_utils.Cluster``: a head and two workers
on this machine) survive losing a worker in the middle of a trial."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tuning._run import SearchOptions, run_search
from tuning.store import read_events, read_results, read_trials

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


def _remove_when_running(cluster, node, exp: Path, after_results: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if read_results(exp).num_rows >= after_results:
                break
        except Exception:  # noqa: BLE001, S110 (no store yet)
            pass
        time.sleep(0.2)
    cluster.remove_node(node, allow_graceful=False)


@pytest.mark.slow
def test_a_lost_worker_resumes_its_trial_from_the_checkpoint_on_the_survivor(cluster, tmp_path: Path) -> None:
    c, workers = cluster
    options = SearchOptions(
        space=str(ROOT / "tuning" / "spaces" / "default.yaml"), name="lost", storage=str(tmp_path),
        num_samples=3, max_concurrent=2, scheduler="fifo", max_epochs=4, max_failures=3,
        address=c.address,
        overrides=("data.synthetic_train=160", "data.synthetic_valid=64", "data.synthetic_test=64",
                   "model.hidden=32", "model.heads=2", "missing.valid_rates=[0.0,0.5]"),
    )
    exp = tmp_path / "lost"
    killer = threading.Thread(target=_remove_when_running, args=(c, workers[0], exp, 3))
    killer.start()
    run_search(options)
    killer.join()
    trials = read_trials(exp)
    assert trials.num_rows == 3
    assert set(trials.column("status").to_pylist()) == {"COMPLETE"}
    assert max(trials.column("attempts").to_pylist()) >= 2  # the trial on the lost node started again
    restores = [e for e in read_events(exp).to_pylist() if e["event"] == "restore"]
    assert restores
    rows = [e for e in read_events(exp).to_pylist() if e["event"] == "result"]
    for trial_id in {r["trial_id"] for r in rows}:
        first = [r["iteration"] for r in rows if r["trial_id"] == trial_id and r["attempt"] == 1]
        again = [r["iteration"] for r in rows if r["trial_id"] == trial_id and r["attempt"] == 2]
        if first and again:  # resumed from its checkpoint (one per epoch), not from epoch 1
            assert min(again) > 1
    results = read_results(exp)
    pairs = list(zip(results.column("trial_id").to_pylist(), results.column("iteration").to_pylist()))
    assert len(pairs) == len(set(pairs)) == 3 * 4


@pytest.mark.slow
def test_a_driver_killed_mid_search_on_a_cluster_resumes_to_completion(cluster, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    c, _ = cluster
    args = [sys.executable, str(ROOT / "tune.py"), "--smoke-test", "--num-samples", "5", "--max-epochs", "3",
            "--scheduler", "fifo", "--storage", str(tmp_path), "--name", "driver", "--address", c.address]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    exp = tmp_path / "driver"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if read_results(exp).num_rows >= 4:
                break
        except Exception:  # noqa: BLE001, S110 (no store yet)
            pass
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # the driver dies; the cluster lives on
    proc.wait()
    resumed = subprocess.run(
        [sys.executable, str(ROOT / "tune.py"), "--name", "driver", "--storage", str(tmp_path), "--resume",
         "--address", c.address],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = read_trials(exp)
    errors = [e for e in trials.column("error").to_pylist() if e]
    assert trials.num_rows == 5 and set(trials.column("status").to_pylist()) == {"COMPLETE"}, errors
    results = read_results(exp)
    pairs = list(zip(results.column("trial_id").to_pylist(), results.column("iteration").to_pylist()))
    assert len(pairs) == len(set(pairs)) == 5 * 3


@pytest.mark.slow
def test_fractional_gpus_pack_two_trials_per_gpu_and_checkpoints_load_on_cpu(tmp_path: Path) -> None:
    import ray
    import torch
    from ray.cluster_utils import Cluster

    from fsrf import load_checkpoint

    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False})
    try:
        options = SearchOptions(
            space=str(ROOT / "tuning" / "spaces" / "default.yaml"), name="gpu", storage=str(tmp_path),
            num_samples=2, max_concurrent=2, scheduler="fifo", max_epochs=2, address=c.address,
            cpus_per_trial=1, gpus_per_trial=0.5,
            overrides=("data.synthetic_train=160", "model.hidden=32", "model.heads=2", "missing.valid_rates=[0.0]"),
        )
        run_search(options)
    finally:
        ray.shutdown()
        c.shutdown()
    events = read_events(tmp_path / "gpu").to_pylist()
    starts = sorted(e["ts"] for e in events if e["event"] == "start")
    ends = sorted(e["ts"] for e in events if e["event"] == "complete")
    assert len(starts) == 2 and starts[1] < ends[0]  # both trials held half of the one GPU at once
    checkpoints = sorted((tmp_path / "gpu").rglob("checkpoint_*/last.pt"))
    state = load_checkpoint(checkpoints[-1])  # torch.load(weights_only=True, map_location="cpu")
    assert all(t.device == torch.device("cpu") for t in state["model"].values())
