"""TPE + ASHA against random search + FIFO on the same budget of trial-epochs; prints JSON.

    python bench/search_efficiency.py [--seeds 0 1 2] [--trials 12] [--epochs 6]

On the synthetic data with the default space, for each seed: random search
with FIFO runs ``trials`` full trials (budget B = trials x epochs trial-epochs);
TPE with ASHA runs from a larger pool of trials until it has spent B. For
both, the best validation objective reached is tracked as a function of the
trial-epochs spent (results in the order they were written). Reported per seed
and on average: both curves at B/4, B/2, B, and the smallest budget at which
TPE + ASHA reaches random search's final best (target: <= B/2).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _search_runs import base_options, results_in_time_order, run_quietly  # noqa: E402

OVERRIDES = ("data.synthetic_train=400", "missing.valid_rates=[0.0,0.3,0.6,0.9]")


def best_curve(exp: Path, budget: int) -> list[float]:
    """best[k] = best objective after k+1 trial-epochs (minimised), up to ``budget``."""
    best, curve = math.inf, []
    for row in results_in_time_order(exp)[:budget]:
        if row["objective"] is not None and not math.isnan(row["objective"]):
            best = min(best, row["objective"])
        curve.append(best)
    return curve + [best] * (budget - len(curve))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    budget = args.trials * args.epochs
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            common = dict(max_epochs=args.epochs, seed=seed, max_concurrent=2, overrides=OVERRIDES)
            rnd, _ = run_quietly(base_options(Path(tmp), f"random-{seed}", num_samples=args.trials,
                                              sampler="random", scheduler="fifo", **common))
            tpe, _ = run_quietly(base_options(Path(tmp), f"tpe-{seed}", num_samples=3 * args.trials,
                                              sampler="tpe", scheduler="asha", grace_period=1,
                                              reduction_factor=3, **common))
            r_curve, t_curve = best_curve(rnd, budget), best_curve(tpe, budget)
            reached = next((k + 1 for k, v in enumerate(t_curve) if v <= r_curve[-1]), None)
            per_seed.append({
                "seed": seed,
                "random_fifo_best_at": {f"{f}B": round(r_curve[int(f * budget) - 1], 4) for f in (0.25, 0.5, 1)},
                "tpe_asha_best_at": {f"{f}B": round(t_curve[int(f * budget) - 1], 4) for f in (0.25, 0.5, 1)},
                "tpe_asha_epochs_to_reach_random_final": reached,
                "fraction_of_budget": None if reached is None else round(reached / budget, 3),
            })
    fractions = [s["fraction_of_budget"] if s["fraction_of_budget"] is not None else math.inf for s in per_seed]
    print(json.dumps({
        "budget_trial_epochs": budget,
        "metric": "valid/robust/MAE (min)",
        "seeds": per_seed,
        "median_fraction_of_budget": statistics.median(fractions),
        "target": "TPE + ASHA reaches random + FIFO's final best with <= 0.5 of the budget",
    }, indent=2))


if __name__ == "__main__":
    main()
