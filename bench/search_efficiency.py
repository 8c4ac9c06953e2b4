"""Search methods at an equal budget of trial-epochs, judged on test; prints (or writes) JSON.

    python bench/search_efficiency.py [--seeds 0 1 2 3 4] [--trials 12] [--epochs 8]
        [--final-seeds 1111 1112 1113] [--methods random_fifo,tpe_asha,pbt,pb2,gp_asha]
        [--out bench/results/search-efficiency.json]    # also writes <out>.png
    python bench/search_efficiency.py --quick --out /tmp/se.json   # checks that it runs

Every search runs on the recovery benchmark's data (``configs/recovery.yaml``; tune.py's
default space, ``tuning/spaces/default.yaml``, with its ``base`` swapped for that config,
written to a temporary file). The budget is B = trials x epochs trial-epochs:

* ``random_fifo``: random sampling, FIFO, ``trials`` full trials (exactly B);
* ``tpe_asha``: TPE with ASHA (grace 1, reduction 3) from a pool of ``--pool-factor`` x
  ``trials`` (default 4: with 8 epochs, 3 x would stop ASHA short of B: about 36 + 12 x 2 + 4 x 5
  = 80 trial-epochs); only the first B result rows (in the order written) count, for the curve
  and for the choice (``trial_epochs_run`` says how many the search ran; a search that ran out
  of trials before B keeps its last best for the rest of the curve);
* ``pbt`` / ``pb2``: a population of ``trials`` drawn from the space, ``epochs`` each (P x
  epochs = B), perturbing the training missing rate every ``--perturbation-interval`` epochs;
  the chosen config is the search's ``best.yaml`` (the winner's followed schedule as a
  ``replay`` curriculum);
* ``gp_asha``: Optuna's GP with ASHA as ``tpe_asha``, over ``bench/spaces/recovery-numeric.yaml``
  (the default space has conditional params, which GP cannot model; that space is narrower);
* ``tpe_asha_g4`` (opt-in, not in the default ``--methods``): ``tpe_asha`` with ASHA's grace
  period 4 (one rung, at epoch 4, keeping the best third): a diagnostic variant, since an early
  epoch's objective ranks this task's trials poorly (``rung_rank_correlation`` below).

Per method and search seed: the curve of the best validation objective (``valid/robust/MAE``,
min) against trial-epochs spent; (a) the fraction of B at which the curve first reaches random
+ FIFO's final best of the same seed (null if never); (b) the chosen config trained afresh with
each ``--final-seeds`` seed (``train.seed``; the data as in the search) and evaluated on test
as ``bench/ablation.py`` does: ``rand_mae`` (rates 0.0-0.9), ``high_mae`` (0.5-0.9), ``pat_mae``
(the six modality patterns), averaged over the final seeds. Across search seeds: the median
fraction (a seed that never reached counts as infinite, so the median is null when half or more
never reached), mean and SD of each test metric, and per-seed paired differences against
``tpe_asha`` and against ``random_fifo`` (method - reference; negative = the method is better)
with a two-sided paired t-test's p (``p_paired_t``). ``targets`` checks the
issue's two targets. With ``--out``, a figure is written beside the JSON (``.png``): median
best-so-far curves per method and a dot plot of test High MAE per method.

With ``--out``, every finished search (its curve and chosen config) and every final run is also
appended, one JSON line each, to ``<out>.runs.jsonl`` as it ends. Running the same command again
after a stop (a kill, a full session) reuses those lines and runs only what is missing; a file
written with other settings is refused with one line. The work goes seed by seed (each seed's
searches, then their final runs), so a stopped run holds whole seeds.

Optuna's TPE draws its first 10 trials at random, from the same seed as the random sampler: at
a budget of fewer trials TPE + ASHA differs from random + FIFO only by ASHA's stopping.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _search_runs import ROOT, SPACE, base_options, results_in_time_order, run_quietly
from ablation import run_one

from fsrf import FSRFError, config_from_dict, config_to_dict, load_config, parse_overrides, with_overrides
from tuning import STORE_DIR, trial_config
from tuning.space import load_space
from tuning.store import read_trials

CONFIG = ROOT / "configs" / "recovery.yaml"
NUMERIC_SPACE = ROOT / "bench" / "spaces" / "recovery-numeric.yaml"
METHODS = ("random_fifo", "tpe_asha", "pbt", "pb2", "gp_asha")
VARIANTS = ("tpe_asha_g4",)
"""Opt-in methods (``--methods``), run after the default ones."""
BASELINE, REFERENCE = "random_fifo", "tpe_asha"
TEST = ("rand_mae", "high_mae", "pat_mae")
QUICK_SETS = ("data.synthetic_train=256", "data.synthetic_valid=96", "data.synthetic_test=128",
              "model.hidden=32", "missing.valid_rates=[0.0,0.5,0.9]")


def recovery_space(tmp: Path) -> str:
    """tune.py's default space with its base swapped for configs/recovery.yaml (a temporary copy)."""
    lines = Path(SPACE).read_text().splitlines()
    swapped = [f"base: {CONFIG}" if line.startswith("base:") else line for line in lines]
    path = tmp / "default-on-recovery.yaml"
    path.write_text("\n".join(swapped) + "\n")
    return str(path)


def best_curve(rows: list[dict], budget: int) -> list[float | None]:
    """best[k] = best objective after k+1 trial-epochs (min), up to ``budget``; None before any."""
    best, curve = math.inf, []
    for row in rows[:budget]:
        if row["objective"] is not None and not math.isnan(row["objective"]):
            best = min(best, row["objective"])
        curve.append(best)
    curve += [best] * (budget - len(curve))
    return [None if math.isinf(v) else round(v, 5) for v in curve]


def trial_objectives(rows: list[dict]) -> dict[str, list[float | None]]:
    """Each trial's validation objective per epoch (its rows in epoch order; None where not finite)."""
    out: dict[str, list[float | None]] = {}
    for row in sorted(rows, key=lambda r: (r["trial_id"], r["iteration"])):
        v = row["objective"]
        out.setdefault(row["trial_id"], []).append(None if v is None or math.isnan(v) else round(v, 5))
    return out


def rung_rank_correlation(trials: dict[str, list[float | None]], epochs: int) -> dict[str, float | None]:
    """Spearman's rho, over trials that ran every epoch, between the objective after e epochs and
    the trial's best over all: how well an early rung (what ASHA keeps or stops on) ranks trials."""
    full = [t for t in trials.values() if len(t) >= epochs and all(v is not None for v in t[:epochs])]
    if len(full) < 4:
        return {}
    def ranks(values: list[float]) -> list[float]:  # ties share their mean rank
        return [sum((w < v) + 0.5 * (w == v) for w in values) for v in values]
    final = ranks([min(t[:epochs]) for t in full])
    return {str(e): round(statistics.correlation(ranks([t[e - 1] for t in full]), final), 3)
            for e in range(1, epochs)}


def chosen_in_budget(exp: Path, space_path: str, rows: list[dict], overrides: dict[str, Any]) -> Any:
    """The config of the trial with the best objective among the first ``budget`` rows."""
    valid = [r for r in rows if r["objective"] is not None and not math.isnan(r["objective"])]
    if not valid:
        raise FSRFError(f"{exp.name}: no finite objective within the budget")
    best = min(valid, key=lambda r: r["objective"])
    trial = next(t for t in read_trials(exp / STORE_DIR).to_pylist() if t["trial_id"] == best["trial_id"])
    space = load_space(space_path)
    return with_overrides(space.to_config(trial_config(trial)), overrides, source=f"{exp.name} (chosen)")


def run_method(method: str, seed: int, args: argparse.Namespace, tmp: Path, space: str) -> dict[str, Any]:
    """One search; its curve, trial-epochs run, and the chosen config (a Config) under ``config``."""
    budget = args.trials * args.epochs
    common: dict[str, Any] = {"max_epochs": args.epochs, "seed": seed, "max_concurrent": 2,
                              "overrides": tuple(args.set), "verbosity": 0}
    if method == "random_fifo":
        opts = base_options(tmp, f"{method}-{seed}", space=space, num_samples=args.trials, sampler="random",
                            scheduler="fifo", **common)
    elif method in ("tpe_asha", "gp_asha", "tpe_asha_g4"):
        opts = base_options(tmp, f"{method}-{seed}", space=str(NUMERIC_SPACE) if method == "gp_asha" else space,
                            num_samples=args.pool_factor * args.trials, sampler=method.split("_")[0], scheduler="asha",
                            grace_period=4 if method == "tpe_asha_g4" else 1, reduction_factor=3, **common)
    else:
        opts = base_options(tmp, f"{method}-{seed}", space=space, num_samples=args.trials, population=args.trials,
                            scheduler=method, perturbation_interval=args.perturbation_interval,
                            perturb=tuple(args.perturb), **common)
    exp, seconds = run_quietly(opts)
    rows = results_in_time_order(exp)
    in_budget = rows[:budget]
    overrides = {"train.checkpoint_every": 1, **parse_overrides(opts.overrides), "train.epochs": args.epochs}
    if method in ("pbt", "pb2"):
        if not (exp / "best.yaml").is_file():
            raise FSRFError(f"{exp.name}: the search wrote no best.yaml")
        config = load_config(exp / "best.yaml", [])
    else:
        config = chosen_in_budget(exp, opts.space, in_budget, overrides)
    return {"curve": best_curve(rows, budget), "trial_epochs_run": len(rows), "spent_budget": len(rows) >= budget,
            "trials": trial_objectives(rows),
            "search_seconds": round(seconds, 1),
            "chosen": {"curriculum.kind": config.curriculum.kind, "curriculum.end": config.curriculum.end,
                       "missing.simulator": config.missing.simulator,
                       "replay_rates": list(config.curriculum.replay_rates)},
            "config": config}


def final_config(raw: dict[str, Any], final_seed: int) -> Any:
    """A searched method's chosen config (as stored) for one final training run, on one thread."""
    return with_overrides(config_from_dict(raw, source="chosen config"),
                          {"train.seed": final_seed, "train.num_threads": 1})


def append_line(path: Path | None, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it, so a stopped run keeps every finished search and final run."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def load_runs(path: Path | None, settings: dict[str, Any]) -> tuple[dict, dict]:
    """The searches and final runs a stopped run of the same settings already wrote (``<out>.runs.jsonl``).

    Raises:
        FSRFError: the file was written with other settings (a different budget, data or seeds).
    """
    searched: dict[tuple[str, int], dict[str, Any]] = {}
    finals: dict[tuple[str, int, int], dict[str, Any]] = {}
    if path is None or not path.exists():
        return searched, finals
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a torn last line (a kill mid-write): that record is redone
                break
            raise FSRFError(f"{path}:{number}: not a JSON line") from None
        if "settings" in record:
            if record["settings"] != settings:
                changed = sorted(k for k in settings if record["settings"].get(k) != settings[k])
                raise FSRFError(f"{path}: written with other settings ({', '.join(changed)}); "
                                "expected the same as this run, or pass another --out")
        elif "search" in record:
            searched[(record["method"], record["seed"])] = record["search"]
        else:
            finals[(record["method"], record["seed"], record["final_seed"])] = record["final"]
    return searched, finals


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _median_by_key(dicts: list[dict[str, float | None]]) -> dict[str, float]:
    """Per key, the median of the values the dicts give for it (keys of none: left out)."""
    keys = sorted({k for d in dicts for k in d}, key=int)
    return {k: statistics.median(v) for k in keys if (v := [d[k] for d in dicts if d.get(k) is not None])}


def reached_fraction(curve: list[float | None], target: float | None, budget: int) -> float | None:
    if target is None:
        return None
    k = next((i + 1 for i, v in enumerate(curve) if v is not None and v <= target), None)
    return None if k is None else round(k / budget, 4)


def summarise(per_method: dict[str, dict[str, Any]], seeds: list[int], budget: int) -> dict[str, Any]:
    """Across search seeds: median fraction, test means/SDs, paired differences, the targets."""
    out: dict[str, Any] = {}
    for method, runs in per_method.items():
        fractions = [runs[str(s)]["fraction_reaching_random_final"] for s in seeds
                     if str(s) in runs and "curve" in runs[str(s)]]
        ranked = [math.inf if f is None else f for f in fractions]
        median = statistics.median(ranked) if ranked else None
        out[method] = {
            "median_fraction_reaching_random_final": None if median is None or math.isinf(median) else median,
            "seeds_reaching": sum(f is not None for f in fractions), "seeds_run": len(fractions),
            **({"rung_rank_correlation_median": _median_by_key(
                [runs[str(s)].get("rung_rank_correlation", {}) for s in seeds if str(s) in runs])}
               if method == BASELINE else {}),
            **{m: _stats([runs[str(s)]["test"][m] for s in seeds if "test" in runs.get(str(s), {})]) for m in TEST},
        }
    paired: dict[str, Any] = {}
    for reference in (REFERENCE, BASELINE):  # every method against TPE + ASHA, then against random + FIFO
        ref = per_method.get(reference, {})
        for method, runs in per_method.items():
            if method in (reference, REFERENCE):  # TPE + ASHA - random is random - TPE + ASHA negated
                continue
            both = [s for s in seeds if "test" in runs.get(str(s), {}) and "test" in ref.get(str(s), {})]
            paired[f"{method}-{reference}"] = {m: _paired([runs[str(s)]["test"][m] for s in both],
                                                          [ref[str(s)]["test"][m] for s in both], both) for m in TEST}
    return {"summary": out, "paired": paired}


def _paired(values: list[float], reference: list[float], seeds: list[int]) -> dict[str, Any]:
    """Per-seed differences, their mean and SD, and a two-sided paired t-test's p (None under 2 seeds)."""
    diffs = [v - r for v, r in zip(values, reference)]
    p = None
    if len(diffs) > 1 and any(d != diffs[0] for d in diffs):
        p = float(stats.ttest_rel(values, reference).pvalue)
    return {"per_seed": diffs, "seeds": seeds, **_stats(diffs), "p_paired_t": p}


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    tpe = summary.get(REFERENCE, {})
    frac = tpe.get("median_fraction_reaching_random_final")
    learned = {m: summary[m]["high_mae"]["mean"] for m in ("pbt", "pb2")
               if m in summary and summary[m]["high_mae"]["mean"] is not None}
    fixed = tpe.get("high_mae", {}).get("mean")
    best_learned = min(learned, key=learned.get) if learned else None
    return {
        "tpe_asha_reaches_random_final_at_most_0.35": {
            "median_fraction": frac, "met": None if frac is None and not tpe else (frac is not None and frac <= 0.35)},
        "learned_curriculum_matches_fixed_on_test_high_mae": {
            "best_learned": best_learned, "best_learned_high_mae": learned.get(best_learned),
            "tpe_asha_high_mae": fixed,
            "met": None if best_learned is None or fixed is None else learned[best_learned] <= fixed},
    }


def figure(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = report["budget_trial_epochs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = list(report["methods"])
    for method in methods:
        curves = [r["curve"] for r in report["methods"][method].values() if "curve" in r]
        if not curves:
            continue
        median = []
        for k in range(budget):
            values = [c[k] for c in curves if c[k] is not None]
            median.append(statistics.median(values) if values else math.nan)
        left.plot([(k + 1) / budget for k in range(budget)], median, label=method)
    left.set_xlabel("fraction of the budget (trial-epochs)")
    left.set_ylabel("best validation MAE so far (median over seeds)")
    left.legend(fontsize=8)
    for i, method in enumerate(methods):
        runs = report["methods"][method]
        values = [r["test"]["high_mae"] for r in runs.values() if "test" in r]
        right.plot([i] * len(values), values, "o", alpha=0.6)
        if values:
            right.plot([i - 0.2, i + 0.2], [statistics.fmean(values)] * 2, "k-")
    right.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
    right.set_ylabel("test High MAE of the chosen config (rates 0.5-0.9)")
    fig.suptitle(f"search methods at {budget} trial-epochs on configs/recovery.yaml")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="search seeds (>= 5 for the issue)")
    p.add_argument("--trials", type=int, default=12, help="B / epochs: random's trials, the PBT/PB2 population")
    p.add_argument("--epochs", type=int, default=8, help="epochs per trial (and of the final training)")
    p.add_argument("--final-seeds", type=int, nargs="+", default=[1111, 1112, 1113], help="train.seed of the final runs")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, of {', '.join(METHODS + VARIANTS)}")
    p.add_argument("--pool-factor", type=int, default=4, help="tpe/gp + ASHA: trials in the pool per random trial")
    p.add_argument("--perturbation-interval", type=int, default=2, help="pbt/pb2: epochs between perturbations")
    p.add_argument("--perturb", nargs="*", default=[], help="pbt/pb2: float params perturbed besides the rate")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every search")
    p.add_argument("--jobs", type=int, default=2, help="final trainings in parallel (1 thread each)")
    p.add_argument("--quick", action="store_true",
                   help="tiny: 2 seeds, 4 trials x 2 epochs, 1 final seed, smaller data and model (checks it runs)")
    p.add_argument("--note", default=None, help="a note stored in the JSON (e.g. what machine ran it)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here and the figure beside it (.png)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.trials, args.epochs, args.final_seeds = args.seeds[:2], 4, 2, args.final_seeds[:1]
        args.perturbation_interval, args.pool_factor = 1, 3  # with 2 epochs ASHA stops few: 3 x overspends B
        args.set = [*QUICK_SETS, *args.set]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m not in METHODS + VARIANTS for m in methods) or BASELINE not in methods:
        print(f"search_efficiency: error: --methods {args.methods!r}: names from {', '.join(METHODS + VARIANTS)}, "
              f"with {BASELINE}", file=sys.stderr)
        return 2
    budget = args.trials * args.epochs
    started = time.perf_counter()
    settings = {
        "config": str(CONFIG.relative_to(ROOT)), "budget_trial_epochs": budget, "trials": args.trials,
        "epochs": args.epochs, "final_seeds": args.final_seeds, "pool_factor": args.pool_factor,
        "perturbation_interval": args.perturbation_interval, "perturb": args.perturb, "overrides": args.set,
        "quick": args.quick, "metric": "valid/robust/MAE (min)",
    }
    report: dict[str, Any] = {**settings, "search_seeds": args.seeds, **({"note": args.note} if args.note else {}),
                              "methods": {m: {} for m in methods}}
    runs_path = args.out.with_suffix(".runs.jsonl") if args.out is not None else None
    try:
        searched, finals = load_runs(runs_path, settings)
    except FSRFError as err:
        print(f"search_efficiency: error: {err}", file=sys.stderr)
        return 2
    if runs_path is not None and not runs_path.exists():
        append_line(runs_path, {"settings": settings})
    with tempfile.TemporaryDirectory(prefix="fsrf-search-eff-") as tmp_name:
        tmp = Path(tmp_name)
        space = recovery_space(tmp)
        ctx = multiprocessing.get_context("spawn")
        for seed in args.seeds:
            for method in methods:
                if (method, seed) in searched:
                    continue
                try:
                    run = run_method(method, seed, args, tmp, space)
                except Exception as err:  # noqa: BLE001 (one failed search (e.g. all trials errored) is reported, not fatal)
                    run = {"error": f"{type(err).__name__}: {err}"}
                    print(f"search_efficiency: {method} seed {seed}: {err}", file=sys.stderr)
                else:
                    run["config"] = config_to_dict(run["config"])
                    print(f"search_efficiency: {method} seed {seed}: {run['search_seconds']} s", file=sys.stderr)
                searched[(method, seed)] = run
                append_line(runs_path, {"method": method, "seed": seed, "search": run})
            todo = [(m, seed, f) for m in methods if "config" in searched[(m, seed)] for f in args.final_seeds
                    if (m, seed, f) not in finals]
            with futures.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
                jobs = {(m, s, f): pool.submit(run_one, final_config(searched[(m, s)]["config"], f),
                                               str(tmp / "final" / f"{m}-{s}-{f}")) for m, s, f in todo}
                for (m, s, f), job in jobs.items():
                    try:
                        result = job.result()
                        result = {k: result[k] for k in (*TEST, "valid_objective", "best_epoch")}
                    except Exception as err:  # noqa: BLE001 (a failed final run is reported, not fatal)
                        result = {"error": f"{type(err).__name__}: {err}"}
                    finals[(m, s, f)] = result
                    append_line(runs_path, {"method": m, "seed": s, "final_seed": f, "final": result})
    for seed in args.seeds:
        random_run = searched.get((BASELINE, seed), {})
        target = random_run["curve"][-1] if "curve" in random_run else None
        for method in methods:
            if (method, seed) not in searched:
                continue
            run = {k: v for k, v in searched[(method, seed)].items() if k != "config"}
            if "curve" in run:
                run["fraction_reaching_random_final"] = reached_fraction(run["curve"], target, budget)
                trials = run.pop("trials", None)  # recorded from session 20 on (older records lack it)
                if trials is not None and method == BASELINE:  # FIFO: every trial runs every epoch, unselected
                    run["rung_rank_correlation"] = rung_rank_correlation(trials, args.epochs)
                got = [finals.get((method, seed, f)) for f in args.final_seeds]
                run["final"] = {str(f): r for f, r in zip(args.final_seeds, got) if r is not None}
                if all(r is not None and "error" not in r for r in got):
                    run["test"] = {m: statistics.fmean(r[m] for r in got) for m in TEST}
            report["methods"][method][str(seed)] = run
    report.update(summarise(report["methods"], args.seeds, budget))
    report["targets"] = targets(report["summary"])
    report["search_seconds_total"] = round(sum(r.get("search_seconds", 0.0) for r in searched.values()), 1)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)  # this invocation only (a resume redoes nothing)
    text = json.dumps(report, indent=2)
    if args.out is None:
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        figure(report, args.out.with_suffix(".png"))
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
