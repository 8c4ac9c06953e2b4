"""``fsrf compare``: every model tuned with the same budget, final-trained over the same seeds,
and compared in one table.

    fsrf compare --models fsrf plain lf_dnn --config configs/recovery.yaml --budget 120 --final-seeds 3 --out compare/demo
    fsrf compare --models fsrf misa tfn --data /data/MOSI/Processed/unaligned_50.pkl --config configs/mosi.yaml \\
        --budget 400 --final-seeds 5 --storage ~/ray_results --out compare/mosi

For each model: its base is ``--config`` with ``model.name`` switched (the model's own defaults
for the dataset); its search runs the model's shipped space (``tuning/spaces/<model>.yaml``,
FSRF's ``default.yaml``) on that base with the same budget of trial-epochs (``--budget`` //
epochs per trial = trials; ASHA may stop some early, so the budget is an upper bound, the same
for every model), the same scheduler, sampler and seed, as experiment ``<name>-<model>`` in
``--storage`` (``fsrf analyze`` reads it); then its best configuration (selected on the
validation objective) is trained with every ``--final-seeds`` seed and evaluated on test.
``--budget 0`` skips the searches and compares the models' default configs.

Besides registered models, ``--models`` takes the named variants of :data:`VARIANTS` (e.g.
``plain-mixed``: the plain model trained with the mixed simulator): a variant is its model's
config with fixed overrides, searched in its model's space with those keys held fixed.

The table holds both protocols (random missing rates with their Average, the six
whole-modality patterns with complete input and their Average), mean ± SD over seeds per
model, and a paired t-test (two-sided, n = number of seeds, same seeds for every model) of
each model against the first named on the Average rows.

Domain generalisation: with ``data.domains`` / ``data.target`` in ``--config`` (midg's protocol,
:mod:`fsrf.data._domains`; every model trains on the sources and is selected on their validation
splits), the test split is the held-out target domain's, and the table adds a DG section: each
model's target rows of ``fsrf evaluate``'s DG table (complete input, random-rate average,
modality average) in ``compare.md`` / ``compare.csv`` (protocol ``domain``) / ``results.json``
(``table["domain"]``, ``table["dg"]``: target and sources), with paired tests on the target's
complete-input row.

``--gpus-per-run N`` gives every search trial and every final seed N GPUs from Ray (fractions
share a GPU); the final seeds then run as Ray tasks in parallel, the dataset in Ray's object
store once. More than the largest node has is refused before anything runs.

Running the same command again continues what is unfinished (searches restore, seeds whose
``runs.json`` exists are not retrained) and redoes nothing finished. An ``--out`` folder that
holds another comparison is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from fsrf import (
    Config,
    FSRFError,
    atomic_write_text,
    config_to_dict,
    load_config,
    load_dataset,
    model_names,
    read_yaml,
    save_config,
    with_overrides,
)
from fsrf.constants import TEXT_PROTOCOLS
from fsrf.evaluate import protocol_line

SPEC_FILE = "compare.json"
SPACES = Path(__file__).resolve().parents[1] / "tuning" / "spaces"
METRICS = ("MAE", "Corr", "Non0_F1_score")
"""The metrics of the comparison table (MMSA's; SIMS has no ``Non0_F1_score`` and shows F1_score)."""
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain-mixed": ("plain", {"missing.simulator": "mixed"}),
}
"""Comparison entries that are a registered model with fixed overrides: name -> (model, overrides)."""


def _model_of(entry: str) -> tuple[str, dict[str, Any]]:
    """A ``--models`` entry -> (registered model, fixed overrides)."""
    return VARIANTS.get(entry, (entry, {}))


def hold_fixed(space: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A raw space with ``overrides`` moved into ``fixed``: their params are no longer searched,
    and a param conditioned (``when``) on one of them is kept only if the fixed value satisfies it."""
    params = {}
    for key, spec in (space.get("params") or {}).items():
        if key in overrides:
            continue
        when = dict(spec.get("when") or {}) if isinstance(spec, dict) else {}
        held = {k: v for k, v in when.items() if k in overrides}
        if any(overrides[k] not in (v if isinstance(v, list) else [v]) for k, v in held.items()):
            continue  # its condition can never hold: the field keeps its base value
        if held:
            spec = {**spec, "when": {k: v for k, v in when.items() if k not in held}}
            if not spec["when"]:
                del spec["when"]
        params[key] = spec
    held_space = {**space, "fixed": {**(space.get("fixed") or {}), **overrides}, "params": params}
    if space.get("columns"):
        held_space["columns"] = [c for c in space["columns"] if c in params]
    return held_space


@dataclass(frozen=True)
class CompareOptions:
    """One comparison, as parsed from the command line."""

    models: tuple[str, ...]
    out: str
    config: str | None = None
    data: str | None = None
    budget: int = 0
    epochs: int | None = None
    final_seeds: tuple[int, ...] = (1111, 1112, 1113)
    storage: str = str(Path("~/ray_results").expanduser())
    name: str | None = None
    max_concurrent: int = 2
    num_cpus: int | None = None
    scheduler: str = "asha"
    sampler: str = "tpe"
    seed: int = 0
    gpus_per_run: float = 0.0


_HOW_IT_RUNS = ("tf32", "compile", "deterministic")
"""``train`` keys left out of ``compare.json``: a comparison may continue with other values."""


def space_file(model: str) -> Path:
    """The shipped search space of ``model``."""
    return SPACES / ("default.yaml" if model == "fsrf" else f"{model}.yaml")


def _base(options: CompareOptions) -> Config:
    config = load_config(options.config) if options.config else Config()
    if options.data:
        config = with_overrides(config, {"data.path": str(Path(options.data).resolve())}, source="--data")
    return config


def _check(options: CompareOptions, base: Config) -> None:
    known = model_names()
    unknown = [m for m in options.models if _model_of(m)[0] not in known]
    if unknown:
        raise FSRFError(f"--models: {', '.join(unknown)} not registered (registered: {', '.join(known)}; "
                        f"variants: {', '.join(VARIANTS)})")
    if len(set(options.models)) != len(options.models) or not options.models:
        raise FSRFError(f"--models: {list(options.models)} must be distinct and non-empty")
    if len(set(options.final_seeds)) != len(options.final_seeds) or len(options.final_seeds) < 2:
        raise FSRFError(f"--final-seeds: {list(options.final_seeds)} must be at least 2 distinct seeds (paired test)")
    if options.budget < 0:
        raise FSRFError(f"--budget: {options.budget} must be >= 0 trial-epochs (0: no search)")
    if options.budget:
        for entry in options.models:
            if not space_file(_model_of(entry)[0]).is_file():
                raise FSRFError(f"--models: {entry} has no search space {space_file(_model_of(entry)[0])}")
        epochs = options.epochs or base.train.epochs
        if options.budget < epochs:
            raise FSRFError(f"--budget: {options.budget} trial-epochs is smaller than one trial ({epochs} epochs)")


def _spec(options: CompareOptions, base: Config) -> dict[str, Any]:
    spec = asdict(options)
    for key in ("out", "storage", "max_concurrent", "num_cpus", "config", "data", "gpus_per_run"):
        spec.pop(key)
    spec["base"] = config_to_dict(base)
    for key in _HOW_IT_RUNS:  # how a run executes, not what is compared (and absent from older compare.json)
        spec["base"]["train"].pop(key)
    return json.loads(json.dumps(spec))


def _claim(out: Path, spec: dict[str, Any]) -> None:
    """Write ``compare.json``, or check that the folder holds this very comparison."""
    path = out / SPEC_FILE
    if path.exists():
        try:
            held = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise FSRFError(f"--out: {path} is unreadable ({err}); choose another folder") from None
        if held != spec:
            differ = sorted(k for k in set(held) | set(spec) if held.get(k) != spec.get(k))
            raise FSRFError(f"--out: {out} holds another comparison (differs in {', '.join(differ)}); "
                            "choose another folder")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(spec, indent=2))


def _model_base(base: Config, entry: str) -> Config:
    """The base config of a ``--models`` entry: ``base`` with its model (its own defaults) and fixed overrides."""
    model, overrides = _model_of(entry)
    model_base = base if model == base.model.name else with_overrides(base, {"model.name": model})
    if overrides:
        model_base = with_overrides(model_base, overrides, source=f"variant {entry}")
    return model_base


def _write_space(entry: str, base_file: Path) -> Path:
    """Write the search space of a ``--models`` entry next to its ``base_file``: its model's shipped
    space on that base, the entry's fixed overrides held fixed; returns its path.

    The comparison's config owns the data: a shipped space's fixed ``data.*`` values (e.g. mmslf's
    ``data.prompts``, for running that space on its own) are left out, so every model is searched
    on the data (and prompt file) it is compared on.
    """
    model, overrides = _model_of(entry)
    shipped = read_yaml(space_file(model))
    shipped["fixed"] = {k: v for k, v in (shipped.get("fixed") or {}).items() if not k.startswith("data.")}
    raw = hold_fixed(shipped, overrides)
    raw["base"] = base_file.name
    space = base_file.parent / "space.yaml"
    atomic_write_text(space, yaml.safe_dump(raw, sort_keys=False))
    return space


def _check_spaces(options: CompareOptions, base: Config) -> None:
    """Every entry's space loads on its base and suits ``--sampler`` (``tune.py``'s check), before any work.

    Raises:
        FSRFError: a space that does not load, or one the sampler does not suit (``check_sampler``'s
            one line, naming the entry's space).
    """
    import tempfile

    from tuning import check_sampler
    from tuning.space import load_space

    with tempfile.TemporaryDirectory(prefix="fsrf-compare-") as tmp:
        for entry in options.models:
            folder = Path(tmp) / entry
            folder.mkdir()
            base_file = folder / "base.yaml"
            save_config(_model_base(base, entry), base_file)
            space = load_space(_write_space(entry, base_file))
            try:
                check_sampler(options.sampler, space)
            except FSRFError as err:
                raise FSRFError(f"{err} (space of {entry}: {space_file(_model_of(entry)[0])})") from None


def _search(options: CompareOptions, entry: str, base_file: Path, name: str) -> Config:
    """Run (or continue) the search of a ``--models`` entry; its best configuration."""
    from tuning import BEST_FILE, SearchOptions, experiment_path, run_search

    space = _write_space(entry, base_file)
    epochs = options.epochs or load_config(base_file).train.epochs
    search = SearchOptions(
        space=str(space), name=name, storage=options.storage, num_samples=max(1, options.budget // epochs),
        max_concurrent=options.max_concurrent, scheduler=options.scheduler, sampler=options.sampler,
        max_epochs=epochs, restore_or_start=True, seed=options.seed, num_cpus=options.num_cpus,
        grace_period=min(2, epochs), gpus_per_trial=options.gpus_per_run,
    )
    run_search(search)
    best = experiment_path(search) / BEST_FILE
    if not best.is_file():
        raise FSRFError(f"search {name}: no trial reached a validation objective ({best} missing)")
    return load_config(best)


def _final(config: Config, seeds: Sequence[int], out: Path, *, gpus_per_run: float = 0.0,
           num_cpus: int | None = None) -> list[dict[str, Any]]:
    """Each seed's test tables, training the seeds that have no result yet (in the order of ``seeds``).

    Without GPUs they train one after another here, the dataset loaded once; with
    ``gpus_per_run`` > 0 as Ray tasks asking for that many GPUs each, the dataset in Ray's
    object store once (:func:`tuning.run_seeds`).
    """
    from tuning import check_gpu_capacity, run_seeds, start_ray, train_and_evaluate

    done: dict[int, dict[str, Any]] = {}
    todo = []
    for seed in seeds:
        result = out / f"seed-{seed}" / "result.json"
        if result.is_file():
            done[seed] = json.loads(result.read_text())
        else:
            shutil.rmtree(result.parent, ignore_errors=True)  # a seed stopped midway starts again
            todo.append(seed)

    def keep(run: dict[str, Any]) -> None:
        atomic_write_text(out / f"seed-{run['seed']}" / "result.json", json.dumps(run, default=float))
        done[run["seed"]] = run

    if todo and gpus_per_run > 0:
        import ray

        started = start_ray(num_cpus=num_cpus)
        try:
            check_gpu_capacity(gpus_per_run)
            run_seeds(config, todo, out, gpus_per_run=gpus_per_run, on_result=keep)
        finally:
            if started:
                ray.shutdown()  # the next model's search starts its own
    elif todo:
        dataset = load_dataset(config.data)  # once for every seed
        for seed in todo:
            keep(train_and_evaluate(config, seed, str(out), dataset=dataset))
    return [done[s] for s in seeds]


def _check_gpus(options: CompareOptions) -> None:
    """A bad ``--gpus-per-run``, or more GPUs per run than any node has, fails before any work."""
    from tuning import check_gpu_capacity, check_gpus_per_run, start_ray

    if check_gpus_per_run(options.gpus_per_run) == 0:
        return
    import ray

    started = start_ray(num_cpus=options.num_cpus)
    try:
        check_gpu_capacity(options.gpus_per_run)
    finally:
        if started:
            ray.shutdown()  # searches and final seeds start their own


def paired_t(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided paired t-test of a - b: (t, p). Identical samples give (0, 1)."""
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b)]
    if all(d == diffs[0] for d in diffs):
        return (0.0, 1.0) if diffs[0] == 0 else (math.copysign(math.inf, diffs[0]), 0.0)
    result = stats.ttest_rel(a, b)
    return float(result.statistic), float(result.pvalue)


def summarize(runs: dict[str, list[dict[str, Any]]], models: Sequence[str], *,
              dg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mean ± SD per model of every row of both tables, and paired tests against the first model.

    Args:
        dg: ``{"target", "sources"}`` of a domain-generalisation comparison
            (:func:`tuning.dg_info`): the runs then hold DG rows (``run["domain"]``), which
            get a table of their own (``domain``) and paired tests on the target's complete row.
    """
    first = models[0]
    keys = ("random", "patterns", *(("domain",) if dg is not None else ()))
    table: dict[str, Any] = {key: {} for key in keys}
    table["paired"] = {}
    metrics = [m for m in METRICS if m in runs[first][0]["random"]["Average"]] or ["MAE", "Corr", "F1_score"]
    for key in keys:
        for model in models:
            rows = runs[model][0][key]
            table[key][model] = {
                label: {m: {"mean": statistics.fmean(r[key][label][m] for r in runs[model]),
                            "sd": statistics.stdev(r[key][label][m] for r in runs[model])} for m in metrics}
                for label in rows
            }
    rows_of = {"random": "Average", "patterns": "Average"}
    if dg is not None:
        rows_of["domain"] = f"{dg['target']} complete"
    for model in models[1:]:
        table["paired"][model] = {}
        for key, label in rows_of.items():
            for m in metrics:
                a = [float(r[key][label][m]) for r in runs[model]]
                b = [float(r[key][label][m]) for r in runs[first]]
                t, p = paired_t(a, b)
                diffs = [x - y for x, y in zip(a, b)]
                table["paired"][model][f"{key}/{m}"] = {
                    "mean_diff": statistics.fmean(diffs), "sd_diff": statistics.stdev(diffs), "t": t, "p": p,
                    "n": len(diffs)}
    table["metrics"] = metrics
    table["text_protocol"] = {model: _text_protocol(runs[model]) for model in models}
    if dg is not None:
        table["dg"] = dg
    return table


def _text_protocol(runs: Sequence[dict[str, Any]]) -> str:
    """The seeds' text protocol (results written before the field existed used features)."""
    found = {r.get("text_protocol", TEXT_PROTOCOLS["features"]) for r in runs}
    return found.pop() if len(found) == 1 else "mixed"


def _protocol_lines(table: dict[str, Any], models: Sequence[str]) -> list[str]:
    """The line(s) under a table saying how each model's missing text was simulated."""
    protocols = table.get("text_protocol", {})
    found = {protocols.get(m, TEXT_PROTOCOLS["features"]) for m in models}
    if len(found) == 1:
        return [protocol_line(found.pop())]
    return [f"{m}: {protocol_line(protocols.get(m, TEXT_PROTOCOLS['features']))}" for m in models]


def to_markdown(table: dict[str, Any], models: Sequence[str], seeds: Sequence[int], title: str) -> str:
    metrics = table["metrics"]
    dg = table.get("dg")
    split = "Test split" if dg is None else f"Test split of the held-out target domain {dg['target']} (DG)"
    intro = f"{split}, mean ± SD over seeds {', '.join(map(str, seeds))}; models selected on validation only."
    lines = [f"# {title}", "", intro, ""]
    sections = [("random", "Random missing rates"), ("patterns", "Whole-modality missing")]
    if dg is not None:
        from tuning import domain_title

        sections.append(("domain", domain_title(dg)))
    for key, heading in sections:
        lines += [f"## {heading}", "", "| condition | " + " | ".join(f"{m} {x}" for m in models for x in metrics) + " |",
                  "|" + "---|" * (1 + len(models) * len(metrics))]
        for label in table[key][models[0]]:
            cells = [f"{table[key][m][label][x]['mean']:.4f} ± {table[key][m][label][x]['sd']:.4f}"
                     for m in models for x in metrics]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", *_protocol_lines(table, models), ""]
    n = len(seeds)
    rows = "Average rows" if dg is None else f"Average rows (domain: the target's complete row, {dg['target']} complete)"
    lines += [f"## Paired differences against {models[0]}", "",
              f"{rows}, other − {models[0]} per seed; two-sided paired t-test, n = {n} seeds.", "",
              "| model | measure | mean diff ± SD | t | p |", "|---|---|---|---|---|"]
    for model, rows in table["paired"].items():
        for measure, r in rows.items():
            lines.append(f"| {model} | {measure} | {r['mean_diff']:+.4f} ± {r['sd_diff']:.4f} | {r['t']:.2f} | "
                         f"{r['p']:.3f} |")
    return "\n".join(lines) + "\n"


def to_csv(table: dict[str, Any], models: Sequence[str]) -> str:
    """One row per protocol, condition, model and metric (protocol ``domain``: the DG rows)."""
    rows = ["protocol,condition,model,metric,mean,sd,text_protocol"]
    protocols = table.get("text_protocol", {})
    for key in ("random", "patterns", "domain"):
        if key not in table:
            continue
        for model in models:
            text = protocols.get(model, TEXT_PROTOCOLS["features"])
            for label, metrics in table[key][model].items():
                rows += [f"{key},{label},{model},{m},{v['mean']!r},{v['sd']!r},{text}" for m, v in metrics.items()]
    return "\n".join(rows) + "\n"


def figure(table: dict[str, Any], models: Sequence[str], path: Path) -> None:
    """Robustness curves: MAE per random missing rate and per pattern, one panel per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, xlabel in ((axes[0], "random", "missing rate"), (axes[1], "patterns", "available modalities")):
        for model in models:
            rows = {k: v for k, v in table[key][model].items() if k != "Average"}
            means = [v["MAE"]["mean"] for v in rows.values()]
            sds = [v["MAE"]["sd"] for v in rows.values()]
            ax.errorbar(range(len(rows)), means, yerr=sds, marker="o", capsize=3, label=model)
            ax.set_xticks(range(len(rows)), list(rows), rotation=45 if key == "patterns" else 0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test MAE (lower is better)")
    axes[0].legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def run_compare(options: CompareOptions) -> dict[str, Any]:
    """Search (unless ``budget`` is 0), final-train and compare every model; write the outputs."""
    from tuning import dg_info, with_domain

    out = Path(options.out)
    base = _base(options)
    _check(options, base)
    if options.budget:
        _check_spaces(options, base)
    _check_gpus(options)
    _claim(out, _spec(options, base))
    name = options.name or out.resolve().name
    runs: dict[str, list[dict[str, Any]]] = {}
    for entry in options.models:
        folder = out / entry
        folder.mkdir(parents=True, exist_ok=True)
        model_base = _model_base(base, entry)
        base_file = folder / "base.yaml"
        save_config(model_base, base_file)
        chosen = _search(options, entry, base_file, f"{name}-{entry}") if options.budget else model_base
        save_config(chosen, folder / "chosen.yaml")
        runs[entry] = [with_domain(r, chosen.data) for r in _final(
            chosen, options.final_seeds, folder / "final", gpus_per_run=options.gpus_per_run,
            num_cpus=options.num_cpus)]
    dg = dg_info(base.data)
    table = summarize(runs, options.models, dg=dg)
    where = base.data.dataset if dg is None else f"{base.data.dataset}, DG target {dg['target']}"
    title = f"Comparison on {where}: {', '.join(options.models)} (budget {options.budget} trial-epochs)"
    atomic_write_text(out / "compare.md", to_markdown(table, options.models, options.final_seeds, title))
    atomic_write_text(out / "compare.csv", to_csv(table, options.models))
    atomic_write_text(out / "results.json", json.dumps({"table": table, "runs": runs}, indent=2, default=float))
    figure(table, options.models, out / "compare.png")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """``fsrf compare``: returns the exit status."""
    from tuning import SAMPLERS

    p = argparse.ArgumentParser(prog="fsrf compare", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True, help="registered model names or variants "
                   f"({', '.join(VARIANTS)}); the first is the reference")
    p.add_argument("--config", default=None, help="the dataset/training config every model starts from "
                   "(default: the built-in synthetic defaults)")
    p.add_argument("--data", default=None, help="MMSA pickle; overrides data.path")
    p.add_argument("--budget", type=int, default=0, help="trial-epochs of each model's search (0: no search)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the config's train.epochs)")
    p.add_argument("--final-seeds", type=int, default=3, help="seeds of the final training (1111, 1112, ...)")
    p.add_argument("--storage", default=str(Path("~/ray_results").expanduser()), help="where the searches go")
    p.add_argument("--name", default=None, help="experiment name prefix (default: the --out folder's name)")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once (default: 2)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                   help="Optuna sampler of every search, as tune.py's: tpe, random, gp or cmaes (numeric spaces "
                        "without conditions only; a space they do not suit is refused before any work)")
    p.add_argument("--seed", type=int, default=0, help="seed of every model's sampler (default: 0)")
    p.add_argument("--gpus-per-run", type=float, default=0.0,
                   help="GPUs of each search trial and each final seed, asked from Ray (fractions share a "
                        "GPU; default: 0, final seeds then run one after another)")
    p.add_argument("--out", required=True, help="folder of the comparison")
    args = p.parse_args(argv)
    options = CompareOptions(
        models=tuple(args.models), out=args.out, config=args.config, data=args.data, budget=args.budget,
        epochs=args.epochs, final_seeds=tuple(1111 + i for i in range(args.final_seeds)), storage=args.storage,
        name=args.name, max_concurrent=args.max_concurrent, num_cpus=args.num_cpus, scheduler=args.scheduler,
        sampler=args.sampler, seed=args.seed, gpus_per_run=args.gpus_per_run,
    )
    try:
        run_compare(options)
    except FSRFError as err:
        print(f"fsrf compare: error: {err}", file=sys.stderr)
        return 2
    print((Path(args.out) / "compare.md").read_text())
    print(f"wrote {args.out}/compare.md, compare.csv, results.json, compare.png")
    return 0
