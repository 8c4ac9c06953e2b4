"""Final training: one model per seed, selected on validation, evaluated on test, aggregated.

    fsrf final --config best.yaml --seeds 1111 1112 1113 --data /data/MOSI/Processed/unaligned_50.pkl --out final/

Each seed trains the config (``train.seed`` replaced) into ``<out>/seed-<seed>/``; its
``best.pt`` (chosen on validation) is evaluated on the test split under both protocols
(random missing rates 0.0-0.9 with an Average row; the six whole-modality patterns, the
complete input and their Average). The published table is mean ± standard deviation
(sample, ddof=1) over seeds, written as Markdown, CSV and JSON. Seeds run as Ray tasks
(one per seed) when ``--parallel ray`` or, with ``auto``, when a Ray cluster is named by
``RAY_ADDRESS``, the machine has at least two CPUs per seed, or ``--gpus-per-run`` asks for
GPUs; one after another otherwise. As Ray tasks, the dataset goes into Ray's object store
once for every seed, and each task asks Ray for ``--gpus-per-run`` GPUs (a fraction shares one
GPU between seeds; more than the largest node has is refused before anything runs); a task
given a GPU trains and evaluates on it.

Domain generalisation (a config with ``data.domains`` / ``data.target``, midg's protocol,
:mod:`fsrf.data._domains`): the test split is the held-out target domain's, and each seed also
reports the DG table of ``fsrf evaluate`` (:func:`fsrf.evaluate.domain_table`: the target's
complete-input row and its averages under both missing protocols), written as its own section of
``final.md`` and as ``robustness_domain_mean`` / ``_std`` tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fsrf import (
    Config,
    DataConfig,
    FSRFError,
    atomic_write_text,
    load_checkpoint,
    load_config,
    load_dataset,
    load_weights,
    resolve_device,
    train,
    with_overrides,
)
from fsrf.constants import DOMAIN_TABLE, PATTERN_TABLE, RANDOM_TABLE
from fsrf.data import MultimodalDataset
from fsrf.evaluate import (
    RobustnessTable,
    domain_table,
    modality_pattern_table,
    protocol_line,
    random_missing_table,
)
from fsrf.model import build_model


def train_and_evaluate(config: Config, seed: int, out: str, eval_seed: int | None = None, *,
                       dataset: MultimodalDataset | None = None) -> dict[str, Any]:
    """Train one seed and evaluate its validation-selected checkpoint on test; plain-data result.

    Args:
        dataset: the loaded dataset (shared by every seed); loaded as ``config.data`` says if None.
    """
    cfg = with_overrides(config, {"train.seed": seed}, source=f"seed {seed}")
    run_dir = Path(out) / f"seed-{seed}"
    dataset = load_dataset(cfg.data) if dataset is None else dataset
    result = train(cfg, out_dir=run_dir, dataset=dataset)
    state = load_checkpoint(run_dir / "best.pt")
    device = resolve_device(cfg.train.device)
    model = build_model(cfg)
    load_weights(model, state, source=str(run_dir / "best.pt"))
    model.to(device)
    common = {"dataset": dataset.name, "batch_size": cfg.train.eval_batch_size, "device": device}
    seed_of_masks = cfg.missing.eval_seed if eval_seed is None else eval_seed  # the config's, as fsrf evaluate
    random_rows = random_missing_table(model, dataset.split("test"), split_name="test", seed=seed_of_masks, **common).rows
    pattern_rows = modality_pattern_table(model, dataset.split("test"), **common).rows
    run = {"seed": seed, "best_epoch": result.best_epoch, "text_protocol": cfg.data.text_protocol(),
           "random": random_rows, "patterns": pattern_rows}
    return with_domain(run, cfg.data)


def dg_info(data: DataConfig) -> dict[str, Any] | None:
    """``{"target": ..., "sources": [...]}`` of a domain-generalisation config; None without ``data.domains``."""
    if not data.domains:
        return None
    return {"target": data.target, "sources": list(data.source_domains())}


def with_domain(run: dict[str, Any], data: DataConfig) -> dict[str, Any]:
    """A seed's result with its DG rows (``run["domain"]``, ``run["dg"]``) under a DG config.

    The rows are :func:`fsrf.evaluate.domain_table`'s over the seed's test tables (the target
    domain's): ``<target> complete``, ``<target> random avg``, ``<target> modality avg``; a
    result written before they existed gets them from its own tables. Without DG, ``run`` as it is.
    """
    dg = dg_info(data)
    if dg is None or "domain" in run:
        return run
    table = domain_table(RobustnessTable("missing rate", run["random"]),
                         RobustnessTable("available modalities", run["patterns"]),
                         target=dg["target"], sources=dg["sources"])
    return {**run, "dg": dg, "domain": table.rows}


def domain_title(dg: dict[str, Any]) -> str:
    """The DG section's heading: the target domain and the sources trained on."""
    return f"Domain generalisation (DG): target domain {dg['target']}, trained on {'+'.join(dg['sources'])}"


def check_gpus_per_run(gpus: float) -> float:
    """``--gpus-per-run`` must be >= 0, and a whole number above 1 (Ray shares a GPU in fractions).

    Raises:
        FSRFError: one line naming the flag.
    """
    if not math.isfinite(gpus) or gpus < 0:
        raise FSRFError(f"--gpus-per-run: {gpus:g} must be >= 0 (0: no GPU)")
    if gpus > 1 and gpus != int(gpus):
        raise FSRFError(f"--gpus-per-run: {gpus:g} must be at most 1 or a whole number (Ray shares a GPU "
                        "in fractions of one)")
    return float(gpus)


def start_ray(*, num_cpus: int | None = None) -> bool:
    """Join the cluster ``RAY_ADDRESS`` names or start a local Ray (``num_cpus`` CPUs, default all),
    unless this process is connected already; returns whether it started one here."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    cpus = {"num_cpus": num_cpus} if num_cpus and not address else {}
    ray.init(address=address, include_dashboard=False, **cpus)
    return True


def check_gpu_capacity(gpus: float) -> None:
    """Refuse a per-seed GPU request that no node of the connected Ray cluster can hold.

    Raises:
        FSRFError: ``gpus`` exceeds the GPUs of the largest live node.
    """
    import ray

    most = max((n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if gpus > most:
        raise FSRFError(f"--gpus-per-run: {gpus:g} GPUs per seed, but the largest node of the Ray cluster "
                        f"has {most:g}")


def _seed_task(config: Config, seed: int, out: str, data: dict[str, Any], gpus: float) -> dict[str, Any]:
    """One seed as a Ray task: the dataset from the object store, on the GPU Ray gave it, if any."""
    import ray
    import torch

    from tuning._shared_data import from_arrays

    if gpus > 0:
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            warnings.warn(f"seed {seed}: given {gpus:g} GPU(s) but torch sees no CUDA device; training on the CPU",
                          stacklevel=1)
        config = with_overrides(config, {"train.device": device}, source=f"seed {seed}")
    return train_and_evaluate(config, seed, out, dataset=from_arrays(data))


def run_seeds(config: Config, seeds: Sequence[int], out: Path, *, gpus_per_run: float = 0.0,
              on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Every seed as a Ray task on the connected Ray (:func:`start_ray`), in parallel.

    The dataset is loaded once and put into Ray's object store once for all seeds. Each task
    asks for the CPUs available divided by the seeds, and ``gpus_per_run`` GPUs.

    Args:
        on_result: called in the driver with each seed's result as it finishes.

    Returns:
        The seeds' results, in the order of ``seeds``.
    """
    import ray

    from tuning._shared_data import ALL_SPLITS, to_arrays

    data = ray.put(to_arrays(load_dataset(config.data), splits=ALL_SPLITS))
    cpus = max(1, int(ray.available_resources().get("CPU", 1)) // len(seeds))
    task = ray.remote(num_cpus=cpus, num_gpus=gpus_per_run)(_seed_task)
    per_seed = with_overrides(config, {"train.num_threads": cpus})
    pending = {task.remote(per_seed, s, str(out), data, gpus_per_run): s for s in seeds}
    runs: dict[int, dict[str, Any]] = {}
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        runs[pending.pop(ref)] = run = ray.get(ref)
        if on_result is not None:
            on_result(run)
    return [runs[s] for s in seeds]


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


def _use_ray(mode: str, n_seeds: int, gpus: float = 0.0) -> bool:
    if mode != "auto":
        return mode == "ray"
    if gpus > 0:
        return True
    return n_seeds > 1 and (bool(os.environ.get("RAY_ADDRESS")) or (os.cpu_count() or 1) >= 2 * n_seeds)


def run_final(config: Config, seeds: Sequence[int], out: Path, *, parallel: str = "auto",
              gpus_per_run: float = 0.0) -> dict[str, Any]:
    """Train every seed, aggregate, write ``final.md``, the CSV/JSON tables and ``runs.json``.

    Args:
        parallel: ``ray``, ``serial`` or ``auto`` (see the module docstring).
        gpus_per_run: GPUs each seed's Ray task asks for (fractions share a GPU); 0: none.

    Raises:
        FSRFError: repeated seeds, a bad ``gpus_per_run``, GPUs with ``parallel='serial'``, or more
            GPUs per seed than any node of the Ray cluster has.
    """
    if len(set(seeds)) != len(seeds) or not seeds:
        raise FSRFError(f"--seeds: {list(seeds)} must be distinct and non-empty")
    gpus = check_gpus_per_run(gpus_per_run)
    if gpus > 0 and parallel == "serial":
        raise FSRFError(f"--gpus-per-run: {gpus:g} asks Ray for GPUs, but --parallel serial runs no Ray tasks; "
                        "use --parallel ray or auto (serial seeds use train.device)")
    if _use_ray(parallel, len(seeds), gpus):
        start_ray()
        check_gpu_capacity(gpus)
        out.mkdir(parents=True, exist_ok=True)
        runs = run_seeds(config, seeds, out, gpus_per_run=gpus)
    else:
        out.mkdir(parents=True, exist_ok=True)
        dataset = load_dataset(config.data)  # once for every seed
        runs = [train_and_evaluate(config, s, str(out), dataset=dataset) for s in seeds]
    runs = sorted(runs, key=lambda r: r["seed"])
    protocol = config.data.text_protocol()
    dg = dg_info(config.data)
    runs = [with_domain(r, config.data) for r in runs]
    random_table, random_std = aggregate(runs, "random", "missing rate", text_protocol=protocol)
    pattern_table, pattern_std = aggregate(runs, "patterns", "available modalities", text_protocol=protocol)
    split = "test split" if dg is None else f"test split of the target domain {dg['target']} (DG)"
    report = (
        f"# Final results: {config.data.dataset}, {split}, seeds {', '.join(map(str, seeds))}\n\n"
        f"Mean ± standard deviation over seeds; accuracies and F1 in %; text protocol: {protocol}.\n\n"
        "## Random missing rates\n\n" + to_markdown(random_table, random_std) + f"\n{protocol_line(protocol)}\n"
        + "\n## Whole-modality missing\n\n" + to_markdown(pattern_table, pattern_std) + f"\n{protocol_line(protocol)}\n"
    )
    tables = [(RANDOM_TABLE, random_table, random_std), (PATTERN_TABLE, pattern_table, pattern_std)]
    if dg is not None:
        title = f"target (sources {'+'.join(dg['sources'])})"
        domain, domain_std = aggregate(runs, "domain", title, text_protocol=protocol)
        report += (f"\n## {domain_title(dg)}\n\nThe held-out target's test split under both missing protocols "
                   "(selected on the sources' validation splits).\n\n" + to_markdown(domain, domain_std)
                   + f"\n{protocol_line(protocol)}\n")
        tables.append((DOMAIN_TABLE, domain, domain_std))
    atomic_write_text(out / "final.md", report)
    for stem, table, spread in tables:
        table.write(out, f"{stem}_mean")
        RobustnessTable(f"{table.title} (std)", spread, protocol).write(out, f"{stem}_std")
    atomic_write_text(out / "runs.json", json.dumps(runs, indent=2, default=float))
    return {"runs": runs, "markdown": report, **({"dg": dg} if dg is not None else {})}


def main(argv: Sequence[str] | None = None) -> int:
    """``fsrf final``: returns the exit status."""
    p = argparse.ArgumentParser(prog="fsrf final", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="a training config (e.g. from fsrf export)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1111, 1112, 1113], help="default: 1111 1112 1113")
    p.add_argument("--data", type=Path, default=None, help="MMSA pickle; overrides data.path")
    p.add_argument("--out", type=Path, required=True, help="directory for the runs and the tables")
    p.add_argument("--parallel", choices=("auto", "ray", "serial"), default="auto",
                   help="seeds as Ray tasks or one after another (default: auto)")
    p.add_argument("--gpus-per-run", type=float, default=0.0,
                   help="GPUs each seed's Ray task asks for; fractions share a GPU (default: 0)")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.data is not None:
            config = with_overrides(config, {"data.path": str(args.data)}, source="--data")
        result = run_final(config, args.seeds, args.out, parallel=args.parallel, gpus_per_run=args.gpus_per_run)
    except FSRFError as err:
        print(f"fsrf final: error: {err}", file=sys.stderr)
        return 2
    print(result["markdown"])
    print(f"wrote {args.out}/final.md and the CSV/JSON tables")
    return 0
