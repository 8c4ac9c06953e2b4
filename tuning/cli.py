"""Command line of a search: ``python tune.py ...`` and ``fsrf tune ...`` (the same arguments).

    python tune.py                                   # built-in default: local Ray, synthetic data, small search
    python tune.py --smoke-test                      # seconds-long check that everything runs
    python tune.py --space tuning/spaces/mosi.yaml --data /data/MOSI/Processed/unaligned_50.pkl \\
        --name mosi-robust --num-samples 200 --max-concurrent 8 --gpus-per-trial 0.5 --storage /shared/ray_results
    python tune.py --name mosi-robust --storage /shared/ray_results --resume
    python tune.py --scheduler pbt --population 8 --perturbation-interval 2 --perturb optim.lr   # tuning/_pbt.py

Without ``RAY_ADDRESS`` or ``--address`` a local Ray is started on this machine
(``--num-cpus``, dashboard off, token authentication on); with one, the search
joins that cluster. Bad input prints one line ``fsrf tune: error: ...`` and exits 2, and so does
a disk that refuses a write (read-only, full: the search stops with its trials checkpointed, and
``--resume`` continues it once that is fixed); a search stopped by Ctrl-C says how to continue it
and exits 130.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fsrf import FSRFError, version_line

DEFAULT_SPACE = Path(__file__).resolve().parent / "spaces" / "default.yaml"
SMOKE = {
    "num_samples": 4, "max_concurrent": 2, "max_epochs": 2, "grace_period": 1,
    "overrides": ("data.synthetic_train=160", "data.synthetic_valid=64", "data.synthetic_test=64",
                  "model.hidden=32", "model.heads=2", "missing.valid_rates=[0.0,0.5]"),
}


def build_parser(prog: str = "tune.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Ray Tune x Optuna search over FSRF's loss weights "
                                "and missing-rate curricula; every trial goes to an Arrow store.")
    what = p.add_argument_group("what to search")
    what.add_argument("--space", default=None, help="search space YAML (default: tuning/spaces/default.yaml; "
                      "with --resume: the experiment's own)")
    what.add_argument("--data", default=None, help="MMSA pickle for the space's dataset (default: the base config's)")
    what.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="fixed training config value for every trial, e.g. --set train.epochs=20")
    where = p.add_argument_group("where results go")
    where.add_argument("--name", default=None, help="experiment name = Optuna study name (default: <space>-<time>)")
    where.add_argument("--storage", default=str(Path("~/ray_results").expanduser()),
                       help="experiment root (default: ~/ray_results); the experiment is <storage>/<name>")
    where.add_argument("--resume", action="store_true", help="continue the experiment <storage>/<name>")
    where.add_argument("--restore-or-start", action="store_true",
                       help="continue <storage>/<name> if it exists, else start it (re-submittable as is)")
    budget = p.add_argument_group("budget and resources")
    budget.add_argument("--num-samples", type=int, default=16, help="trials in total (default: 16)")
    budget.add_argument("--max-concurrent", type=int, default=2, help="trials running at once (default: 2)")
    budget.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default: 1)")
    budget.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial, fractions allowed (default: 0)")
    budget.add_argument("--max-epochs", type=int, default=None, help="epochs per trial (default: the space's train.epochs)")
    budget.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    budget.add_argument("--address", default=None, help="join this Ray cluster (default: RAY_ADDRESS, else local)")
    sched = p.add_argument_group("scheduling")
    sched.add_argument("--scheduler", choices=("asha", "fifo", "pbt", "pb2"), default="asha",
                       help="asha (early stopping), fifo, or population-based training that learns the missing-"
                            "rate schedule: pbt (Ray's PopulationBasedTraining) or pb2 (its GP-bandit variant) "
                            "(default: asha)")
    sched.add_argument("--sampler", choices=("tpe", "random", "gp", "cmaes"), default="tpe",
                       help="Optuna sampler: tpe, random (a baseline), gp or cmaes (numeric spaces without "
                            "conditional parameters only) (default: tpe)")
    sched.add_argument("--grace-period", type=int, default=None, help="ASHA: epochs before a stop (default: the space's)")
    sched.add_argument("--reduction-factor", type=int, default=None, help="ASHA: rung reduction (default: the space's)")
    sched.add_argument("--multi-objective", action="store_true",
                       help="optimise complete and robust objectives together (Pareto front; FIFO)")
    sched.add_argument("--population", type=int, default=None,
                       help="pbt/pb2: trials in the population, drawn at random from the space (default: "
                            "--num-samples)")
    sched.add_argument("--perturbation-interval", type=int, default=None,
                       help="pbt/pb2: epochs between perturbations of a trial (default: 2)")
    sched.add_argument("--perturb", action="append", default=[], metavar="PARAM",
                       help="pbt/pb2: also perturb this float param of the space, a loss weight (model.*) or "
                            "optim.lr; repeatable or comma-separated (the missing rate, curriculum.end, always is)")
    sched.add_argument("--checkpoint-every", type=int, default=1, help="checkpoint every k epochs (default: 1)")
    sched.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial (default: 2)")
    sched.add_argument("--retry-nan", action="store_true",
                       help="train a trial again after its loss turned NaN/inf (default: its retries fail at once "
                            "with the recorded error: the NaN repeats under the trial's seed)")
    sched.add_argument("--seed", type=int, default=0, help="seed of the Optuna sampler (default: 0)")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="print the start summary and the final leaderboard only")
    talk.add_argument("-v", "--verbose", action="store_true",
                      help="also Tune's per-result lines and Ray's own log lines (left out by default)")
    p.add_argument("--version", action="version", version=version_line())
    p.add_argument("--smoke-test", action="store_true",
                   help="a tiny search: 4 trials of 2 epochs on small data, unless flags say otherwise")
    return p


def options_from_args(args: argparse.Namespace):
    from tuning._run import SearchOptions

    space = str(Path(args.space).resolve()) if args.space else ("" if args.resume else str(DEFAULT_SPACE))
    data = str(Path(args.data).resolve()) if args.data else None
    name = args.name or f"{Path(space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (args.resume or args.restore_or_start) and not args.name:
        raise FSRFError("--resume and --restore-or-start need --name (the experiment to continue)")
    for flag in ("num_samples", "max_concurrent", "checkpoint_every"):
        if getattr(args, flag) < 1:
            raise FSRFError(f"--{flag.replace('_', '-')}: {getattr(args, flag)} must be >= 1")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise FSRFError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    _check_flags(args, name)
    population = _population_flags(args)
    values = dict(  # noqa: C408 (keyword form, as SearchOptions' fields)
        space=space, name=name, storage=args.storage, data=data, num_samples=args.num_samples,
        max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        scheduler=args.scheduler, sampler=args.sampler, grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        max_epochs=args.max_epochs, checkpoint_every=args.checkpoint_every, max_failures=args.max_failures,
        multi_objective=args.multi_objective, resume=args.resume, restore_or_start=args.restore_or_start, seed=args.seed, num_cpus=args.num_cpus,
        address=args.address, overrides=tuple(args.set), verbosity=0 if args.quiet else 2 if args.verbose else 1,
        retry_nan=args.retry_nan,
    )
    if args.smoke_test:  # smoke values replace defaults, never flags given explicitly
        parser = build_parser()
        for key, value in SMOKE.items():
            if key != "overrides" and getattr(args, key) == parser.get_default(key):
                values[key] = value
        values["overrides"] = _smoke_overrides(space) + tuple(args.set)
        if population and args.population is None and args.num_samples == parser.get_default("num_samples"):
            population.update(population=values["num_samples"], num_samples=values["num_samples"])
    values.update(population)
    return SearchOptions(**values)


def _check_flags(args: argparse.Namespace, name: str) -> None:
    """Each numeric flag in its range and ``--name``/``--storage`` usable, before Ray starts.

    Raises:
        FSRFError: one line naming the flag, the value and what was expected.
    """
    at_least = {"num_cpus": 1, "max_epochs": 1, "grace_period": 1, "reduction_factor": 2, "max_failures": 0}
    for flag, low in at_least.items():
        value = getattr(args, flag)
        if value is not None and value < low:
            raise FSRFError(f"--{flag.replace('_', '-')}: {value} must be >= {low}"
                            + (" (each rung keeps 1/reduction-factor of the trials)" if flag == "reduction_factor" else ""))
    if name in ("", ".", "..") or "/" in name or "\\" in name or name.startswith("~"):
        raise FSRFError(f"--name: {name!r} must be a plain folder name under --storage (no '/', '..' or '~')")
    if "://" not in args.storage:
        storage = Path(args.storage).expanduser()
        if storage.exists() and not storage.is_dir():
            raise FSRFError(f"--storage: {storage} is a file, expected a directory (created if missing)")
        if any(parent.exists() and not parent.is_dir() for parent in storage.parents):
            raise FSRFError(f"--storage: {storage} lies under a file, expected a directory path")


def _population_flags(args: argparse.Namespace) -> dict:
    """``--population``, ``--perturbation-interval`` and ``--perturb`` as options; the population
    is also ``num_samples``.

    Raises:
        FSRFError: one line naming the flag: one given without ``--scheduler pbt|pb2``, a
            population below 2, an interval below 1, ``--multi-objective`` with pbt/pb2.
    """
    perturb = tuple(p.strip() for item in args.perturb for p in item.split(",") if p.strip())
    if args.scheduler not in ("pbt", "pb2"):
        for flag, value in (("--population", args.population), ("--perturbation-interval",
                                                                 args.perturbation_interval),
                            ("--perturb", perturb or None)):
            if value is not None:
                raise FSRFError(f"{flag}: only for --scheduler pbt or pb2 (got --scheduler {args.scheduler})")
        return {}
    if args.multi_objective:
        raise FSRFError(f"--multi-objective: --scheduler {args.scheduler} optimises one objective (the robust "
                        "one); drop --multi-objective or use --scheduler fifo")
    population = args.num_samples if args.population is None else args.population
    if population < 2:
        raise FSRFError(f"--population: {population} must be >= 2 (a trial exploits another's checkpoint)")
    interval = 2 if args.perturbation_interval is None else args.perturbation_interval
    if interval < 1:
        raise FSRFError(f"--perturbation-interval: {interval} must be >= 1")
    if args.grace_period is not None or args.reduction_factor is not None:
        raise FSRFError(f"--{'grace-period' if args.grace_period is not None else 'reduction-factor'}: "
                        f"ASHA's; --scheduler {args.scheduler} stops no trial")
    return {"population": population, "num_samples": population, "perturbation_interval": interval,
            "perturb": perturb}


def _smoke_overrides(space: str) -> tuple[str, ...]:
    """The smoke test's overrides that the space's model has (``model.hidden`` is not every model's)."""
    if not space:
        return SMOKE["overrides"]
    from tuning.space import load_space

    fields = set(vars(load_space(space).base.model))
    return tuple(o for o in SMOKE["overrides"] if not o.startswith("model.") or o.split("=")[0].removeprefix("model.") in fields)


def main(argv: Sequence[str] | None = None, *, prog: str = "tune.py") -> int:
    """Parse arguments and run the search; returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    try:
        from tuning._run import SearchStopped, run_search

        run_search(options_from_args(args))
    except SearchStopped as stop:
        print(f"fsrf tune: {stop}", file=sys.stderr)
        return 130
    except FSRFError as err:
        print(f"fsrf tune: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:  # the disk refused a write outside the trial store (a full disk, read-only)
        where = f"{err.filename}: " if err.filename else ""
        print(f"fsrf tune: error: {where}{err.strerror or err} (Errno {err.errno}); expected a writable "
              f"directory with free space", file=sys.stderr)
        return 2
    return 0


__all__ = ["build_parser", "main"]
