"""Ablation of FSRF's parts over training seeds, evaluated on test; prints JSON.

    python bench/ablation.py --config configs/recovery.yaml \
        --variants full,plain,plain-mixed,no-distill,no-factor \
        --seeds 1111 1112 1113 1114 1115 --data-seed 0 --epochs 20 [--out runs/ablation]

Each variant is the config plus ordinary ``--set`` overrides (listed in ``VARIANTS``);
each (variant, seed) trains with ``train.seed`` = seed and ``data.synthetic_seed`` =
``--data-seed``, its checkpoint is chosen on validation, and the test split is
evaluated under both protocols:

* ``rand_mae``: mean MAE over random-missing rates 0.0 ... 0.9 (LNLN's protocol);
* ``high_mae``: mean MAE over rates 0.5 ... 0.9;
* ``pat_mae``: mean MAE over the six whole-modality patterns (CorrKD's ``Avg``);
* ``rand_f1`` / ``pat_f1``: the same means of ``Non0_F1_score`` (F1 without zero labels).

The JSON holds ``variants.<variant>.per_seed.<seed>.{rand_mae, high_mae, pat_mae, rand_f1,
pat_f1}`` (every run's test values, plus ``valid_objective``, the validation objective that
selected its checkpoint), per-variant mean and SD, and ``paired.<full>-<other>``:
per-seed differences (negative MAE = the first variant is better), their mean, SD and
mean/SD. Variants whose resolved configs are identical (``plain-mixed`` on a config that
already trains with ``mixed``) are trained once and reported under both names.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsrf import (
    Config,
    FSRFError,
    build_model,
    config_to_dict,
    load_checkpoint,
    load_config,
    load_dataset,
    train,
    with_overrides,
)
from fsrf.evaluate import modality_pattern_table, random_missing_table

_PLAIN = {
    "model.homo": 0.0, "model.diff": 0.0, "model.recon": 0.0, "model.noise": 0.0,
    "model.recover": 0.0, "model.distill": 0.0, "model.align": 0.0, "model.recovery": False,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    # a plain encoder + fusion trained with the same missing data: every auxiliary weight 0
    "plain": _PLAIN,
    "plain-mixed": {**_PLAIN, "missing.simulator": "mixed"},
    # no self-distillation between the views (factorization and recovery kept)
    "no-distill": {"model.distill": 0.0, "model.align": 0.0},
    # no factorization constraints (homo, diff, recon, noise); recovery and distillation kept
    "no-factor": {"model.homo": 0.0, "model.diff": 0.0, "model.recon": 0.0, "model.noise": 0.0},
    # no recovery path (plain fusion of whatever is left); every loss term kept but recover
    "no-recover": {"model.recovery": False, "model.recover": 0.0},
    # one factorization term off at a time (which of them costs or helps)
    "no-homo": {"model.homo": 0.0},
    "no-diff": {"model.diff": 0.0},
    "no-recon": {"model.recon": 0.0},
    "no-noise": {"model.noise": 0.0},
}
METRICS = ("rand_mae", "high_mae", "pat_mae", "rand_f1", "pat_f1")
F1 = "Non0_F1_score"


def _summary(random_rows: dict, pattern_rows: dict) -> dict[str, float]:
    rates = [k for k in random_rows if k != "Average"]
    high = [k for k in rates if float(k) >= 0.5 - 1e-9]
    return {
        "rand_mae": random_rows["Average"]["MAE"],
        "high_mae": statistics.fmean(random_rows[k]["MAE"] for k in high),
        "pat_mae": pattern_rows["Average"]["MAE"],
        "rand_f1": random_rows["Average"][F1],
        "pat_f1": pattern_rows["Average"][F1],
        "complete_mae": pattern_rows["complete"]["MAE"],
    }


def run_one(config: Config, out_dir: str) -> dict[str, Any]:
    """Train one config into ``out_dir`` and evaluate its validation-selected checkpoint on test."""
    import torch

    torch.set_num_threads(max(1, config.train.num_threads))
    start = time.perf_counter()
    dataset = load_dataset(config.data)
    result = train(config, out_dir=out_dir, dataset=dataset, tensorboard=False)
    model = build_model(config)
    model.load_state_dict(load_checkpoint(Path(out_dir) / "best.pt")["model"])
    common = {"dataset": dataset.name, "batch_size": config.train.eval_batch_size}
    random_rows = random_missing_table(
        model, dataset.test, split_name="test", seed=config.missing.eval_seed, **common
    ).rows
    pattern_rows = modality_pattern_table(model, dataset.test, **common).rows
    return {**_summary(random_rows, pattern_rows), "best_epoch": result.best_epoch,
            "valid_objective": result.best_objective, "seconds": time.perf_counter() - start}


def _stats(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "sd": sd}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "recovery.yaml")
    p.add_argument("--variants", default="full,plain,plain-mixed,no-distill,no-factor",
                   help=f"comma-separated, of {', '.join(VARIANTS)}; the first is compared with the rest")
    p.add_argument("--seeds", type=int, nargs="+", default=[1111, 1112, 1113, 1114, 1115])
    p.add_argument("--data-seed", type=int, default=0, help="data.synthetic_seed (the generated data)")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override applied to every variant, e.g. model.hidden=32 (repeatable)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel (1 thread each)")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = p.parse_args(argv)

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        unknown = [v for v in names if v not in VARIANTS]
        if unknown or len(names) < 1:
            raise FSRFError(f"--variants: {unknown or names!r}, expected names from {', '.join(VARIANTS)}")
        base = load_config(args.config, args.set)
        common: dict[str, Any] = {"data.synthetic_seed": args.data_seed, "train.num_threads": 1}
        if args.epochs is not None:
            common["train.epochs"] = args.epochs
        configs = {v: with_overrides(base, {**common, **VARIANTS[v]}, source=f"variant {v}") for v in names}
    except FSRFError as err:
        print(f"ablation: error: {err}", file=sys.stderr)
        return 2
    keys = {v: json.dumps(config_to_dict(c), sort_keys=True) for v, c in configs.items()}
    unique = {}
    for v in names:
        unique.setdefault(keys[v], v)
    scratch = None if args.out else tempfile.TemporaryDirectory(prefix="fsrf-ablation-")
    out_root = args.out or Path(scratch.name)
    jobs = {}
    started = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        for owner in unique.values():
            for seed in args.seeds:
                cfg = with_overrides(configs[owner], {"train.seed": seed})
                jobs[(owner, seed)] = pool.submit(run_one, cfg, str(out_root / owner / f"seed-{seed}"))
        done = {k: f.result() for k, f in jobs.items()}
    if scratch is not None:
        scratch.cleanup()
    report: dict[str, Any] = {
        "config": str(args.config), "data_seed": args.data_seed, "seeds": args.seeds,
        "epochs": configs[names[0]].train.epochs, "overrides": args.set, "f1": F1,
        "wall_seconds": round(time.perf_counter() - started, 1), "variants": {}, "paired": {},
    }
    for v in names:
        owner = unique[keys[v]]
        per_seed = {str(s): done[(owner, s)] for s in args.seeds}
        report["variants"][v] = {
            "overrides": VARIANTS[v],
            "same_runs_as": owner if owner != v else None,
            "per_seed": per_seed,
            **{m: _stats([r[m] for r in per_seed.values()]) for m in (*METRICS, "complete_mae", "valid_objective")},
        }
    first = names[0]
    for other in names[1:]:
        diffs = {}
        for m in METRICS:
            per = [report["variants"][first]["per_seed"][str(s)][m] - report["variants"][other]["per_seed"][str(s)][m]
                   for s in args.seeds]
            st = _stats(per)
            st["mean_over_sd"] = st["mean"] / st["sd"] if st["sd"] > 0 else None
            diffs[m] = {"per_seed": per, **st}
        report["paired"][f"{first}-{other}"] = diffs
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
