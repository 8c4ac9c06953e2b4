"""Final training: one model per seed, selected on validation, evaluated on test, aggregated.

    fsrf final --config best.yaml --seeds 1111 1112 1113 --data /data/MOSI/Processed/unaligned_50.pkl --out final/

Each seed trains the config (``train.seed`` replaced) into ``<out>/seed-<seed>/``; its
``best.pt`` (chosen on validation) is evaluated on the test split under both protocols
(random missing rates 0.0-0.9 with an Average row; the six whole-modality patterns, the
complete input and their Average). The published table is mean ± standard deviation
(sample, ddof=1) over seeds, written as Markdown, CSV and JSON. Seeds run as Ray tasks
(one per seed) when ``--parallel ray`` or, with ``auto``, when a Ray cluster is named by
``RAY_ADDRESS`` or the machine has at least two CPUs per seed; one after another otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fsrf import Config, FSRFError, load_checkpoint, load_config, train, with_overrides
from fsrf._constants import PATTERN_TABLE, RANDOM_TABLE
from fsrf._run_data import load_dataset
from fsrf._yaml import atomic_write_text
from fsrf.evaluate import RobustnessTable, modality_pattern_table, random_missing_table
from fsrf.model import build_model


def train_and_evaluate(config: Config, seed: int, out: str, eval_seed: int = 1111) -> dict[str, Any]:
    """Train one seed and evaluate its validation-selected checkpoint on test; plain-data result."""
    cfg = with_overrides(config, {"train.seed": seed}, source=f"seed {seed}")
    run_dir = Path(out) / f"seed-{seed}"
    dataset = load_dataset(cfg.data)
    result = train(cfg, out_dir=run_dir, dataset=dataset)
    state = load_checkpoint(run_dir / "best.pt")
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    common = {"dataset": dataset.name, "batch_size": cfg.train.eval_batch_size}
    random_rows = random_missing_table(model, dataset.test, split_name="test", seed=eval_seed, **common).rows
    pattern_rows = modality_pattern_table(model, dataset.test, **common).rows
    return {"seed": seed, "best_epoch": result.best_epoch, "random": random_rows, "patterns": pattern_rows}


def aggregate(runs: Sequence[dict[str, Any]], key: str, title: str, *,
              text_protocol: str | None = None) -> tuple[RobustnessTable, dict]:
    """Mean and sample standard deviation over seeds of every row and metric of one table
    (``text_protocol``: ``features-approx`` or ``tokens``, written with the mean table)."""
    rows = runs[0][key]
    mean, spread = {}, {}
    for label, metrics in rows.items():
        mean[label], spread[label] = {}, {}
        for name in metrics:
            values = [r[key][label][name] for r in runs]
            mean[label][name] = statistics.fmean(values)
            spread[label][name] = statistics.stdev(values) if len(values) > 1 else 0.0
    return RobustnessTable(title, mean, text_protocol), spread


def to_markdown(table: RobustnessTable, spread: dict, *, percent: bool = True) -> str:
    """``| 0.0 | 83.12 ± 0.41 | ...``: accuracies and F1 in %, MAE and Corr as they are."""
    names = table.metric_names()
    lines = [f"| {table.title} | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for label, row in table.rows.items():
        cells = []
        for n in names:
            scale = 100.0 if percent and n not in ("MAE", "Corr") else 1.0
            m, s = row[n] * scale, spread[label][n] * scale
            digits = 2 if scale == 100.0 else 4
            cells.append("nan" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _use_ray(mode: str, n_seeds: int) -> bool:
    if mode != "auto":
        return mode == "ray"
    return n_seeds > 1 and (bool(os.environ.get("RAY_ADDRESS")) or (os.cpu_count() or 1) >= 2 * n_seeds)


def run_final(config: Config, seeds: Sequence[int], out: Path, *, parallel: str = "auto") -> dict[str, Any]:
    """Train every seed, aggregate, write ``final.md``, the CSV/JSON tables and ``runs.json``."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise FSRFError(f"--seeds: {list(seeds)} must be distinct and non-empty")
    out.mkdir(parents=True, exist_ok=True)
    if _use_ray(parallel, len(seeds)):
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
        cpus = max(1, int(ray.available_resources().get("CPU", 1)) // len(seeds))
        task = ray.remote(num_cpus=cpus)(train_and_evaluate)
        runs = ray.get([task.remote(with_overrides(config, {"train.num_threads": cpus}), s, str(out)) for s in seeds])
    else:
        runs = [train_and_evaluate(config, s, str(out)) for s in seeds]
    runs = sorted(runs, key=lambda r: r["seed"])
    protocol = config.data.text_protocol()
    random_table, random_std = aggregate(runs, "random", "missing rate", text_protocol=protocol)
    pattern_table, pattern_std = aggregate(runs, "patterns", "available modalities", text_protocol=protocol)
    report = (
        f"# Final results: {config.data.dataset}, test split, seeds {', '.join(map(str, seeds))}\n\n"
        f"Mean ± standard deviation over seeds; accuracies and F1 in %; text protocol: {protocol}.\n\n"
        "## Random missing rates\n\n" + to_markdown(random_table, random_std)
        + "\n## Whole-modality missing\n\n" + to_markdown(pattern_table, pattern_std)
    )
    atomic_write_text(out / "final.md", report)
    for stem, table, spread in ((RANDOM_TABLE, random_table, random_std), (PATTERN_TABLE, pattern_table, pattern_std)):
        table.write(out, f"{stem}_mean")
        RobustnessTable(f"{table.title} (std)", spread).write(out, f"{stem}_std")
    atomic_write_text(out / "runs.json", json.dumps(runs, indent=2, default=float))
    return {"runs": runs, "markdown": report}


def main(argv: Sequence[str] | None = None) -> int:
    """``fsrf final``: returns the exit status."""
    p = argparse.ArgumentParser(prog="fsrf final", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="a training config (e.g. from fsrf export)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1111, 1112, 1113], help="default: 1111 1112 1113")
    p.add_argument("--data", type=Path, default=None, help="MMSA pickle; overrides data.path")
    p.add_argument("--out", type=Path, required=True, help="directory for the runs and the tables")
    p.add_argument("--parallel", choices=("auto", "ray", "serial"), default="auto",
                   help="seeds as Ray tasks or one after another (default: auto)")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.data is not None:
            config = with_overrides(config, {"data.path": str(args.data)}, source="--data")
        result = run_final(config, args.seeds, args.out, parallel=args.parallel)
    except FSRFError as err:
        print(f"fsrf final: error: {err}", file=sys.stderr)
        return 2
    print(result["markdown"])
    print(f"wrote {args.out}/final.md and the CSV/JSON tables")
    return 0
