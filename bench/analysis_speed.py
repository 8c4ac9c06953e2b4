"""Loading, ranking, importance and report times of the analysis, against Ray's own loader; prints JSON.

    python bench/analysis_speed.py [--ray-trials 400]

Part 1: a store of 10,000 trials x 30 results (5 Parquet parts in the store's own format, built
with bench/store.py's builder): time to load it and rank the trials (``load_experiment`` +
``leaderboard``), to compute fANOVA importance on a study rebuilt from it, and to write the HTML
report (target: load and rank <= 2 s).

Part 2: a real Ray Tune experiment (a trivial function trainable, ``--ray-trials`` trials x 30
reports, with the Arrow store callback) read both ways: Ray's ``ExperimentAnalysis`` (which
parses every trial's result.json) against ``load_experiment`` + ``leaderboard`` on the same
experiment (target: >= 10x faster). Part 2 is smaller than part 1 because creating 10,000 real
Tune trials takes far longer than this benchmark should; the ratio is per experiment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import store as store_bench

from analysis import leaderboard, load_experiment
from analysis._importance import importance, study_from_tables
from analysis._report import write_report


def part_one(tmp: Path) -> dict:
    store_bench.N_TRIALS, store_bench.N_ITERS, store_bench.N_PARTS = 10_000, 30, 5
    exp = tmp / "big"
    built = store_bench.build_big_store(exp / "store")
    built.pop("writer").close()
    start = time.perf_counter()
    loaded = load_experiment(exp)
    rows = leaderboard(loaded, metric="objective", mode="min", top=10)
    load_rank = time.perf_counter() - start
    start = time.perf_counter()
    study = study_from_tables(loaded.trials_pandas(), name="big", mode="min", metric="objective")
    ranks = importance(study, evaluator="fanova")
    importance_s = time.perf_counter() - start
    start = time.perf_counter()
    write_report([loaded], tmp / "report", metric="objective", mode="min")
    report_s = time.perf_counter() - start
    return {"trials": loaded.trials.num_rows, "result_rows": loaded.results.num_rows,
            "load_and_rank_s": round(load_rank, 3), "top_trial": rows[0]["trial_id"],
            "importance_fanova_s": round(importance_s, 2), "importance_params": len(ranks),
            "report_s": round(report_s, 2), "target_load_and_rank_s": 2.0}


def part_two(tmp: Path, n_trials: int) -> dict:
    import ray
    from ray import tune
    from ray.tune import ExperimentAnalysis

    from tuning.store import ArrowStoreCallback

    def trainable(config: dict) -> None:
        for i in range(30):
            tune.report({"objective": config["x"] / (i + 1), "final_epoch": float(i == 29)})

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        tuner = tune.Tuner(
            trainable, param_space={"x": tune.uniform(0, 1)},
            tune_config=tune.TuneConfig(num_samples=n_trials, max_concurrent_trials=2, reuse_actors=True),
            run_config=tune.RunConfig(name="ray", storage_path=str(tmp), verbose=0,
                                      callbacks=[ArrowStoreCallback(tmp / "ray" / "store", experiment="ray")]),
        )
        tuner.fit()
    finally:
        ray.shutdown()
    start = time.perf_counter()
    analysis = ExperimentAnalysis(str(tmp / "ray"))
    frame = analysis.dataframe(metric="objective", mode="min")
    ray_s = time.perf_counter() - start
    start = time.perf_counter()
    rows = leaderboard(load_experiment(tmp / "ray"), metric="objective", mode="min", top=10)
    ours_s = time.perf_counter() - start
    return {"trials": n_trials, "results_per_trial": 30, "ray_experiment_analysis_s": round(ray_s, 3),
            "ray_rows": len(frame), "ours_load_and_rank_s": round(ours_s, 3), "ours_top": rows[0]["trial_id"],
            "speedup": round(ray_s / ours_s, 1), "target_speedup": 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray-trials", type=int, default=400)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with tempfile.TemporaryDirectory() as tmp:
        one = part_one(Path(tmp))
        two = part_two(Path(tmp), args.ray_trials)
    print(json.dumps({"store_10k_trials_x_30": one, "against_ray_loader": two}, indent=2))


if __name__ == "__main__":
    main()
