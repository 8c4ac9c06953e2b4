"""One search: validate, start or join Ray, run or restore the Tuner, summarise.

The data flow is that of ``ARCHITECTURE.md``: the space is validated before any
Ray work; the dataset is loaded once by the driver and shared through the
object store; each trial calls ``fsrf.train`` with a report callback; a store
callback in the driver appends every result and event to Arrow files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from fsrf import OBJECTIVE, FSRFError, atomic_write_text, load_dataset, provenance, with_overrides
from fsrf.constants import BEST_OBJECTIVE, COMPLETE_OBJECTIVE
from tuning._console import quiet_internals, ray_log_level, start_summary
from tuning._pbt import check_population, is_population
from tuning._remote import download, is_uri, mirror, resolve, staging_dir
from tuning._store_write import STORE_DIR
from tuning.space import SearchSpace, load_space

STATE_FILE = "fsrf_search.json"
BEST_FILE = "best.yaml"
WORK_DIR = ".fsrf-work"
"""A trial's scratch directory inside its trial directory (``tuning.trainable.work_dir``)."""


@dataclass(frozen=True)
class SearchOptions:
    """Everything a search run needs, as parsed from the command line."""

    space: str
    """Search space YAML; empty with --resume (the experiment's own is used)."""
    name: str
    storage: str
    data: str | None = None
    num_samples: int = 16
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    scheduler: str = "asha"
    """``asha``, ``fifo``, or a population-based one, ``pbt`` or ``pb2`` (see ``tuning._pbt``)."""
    sampler: str = "tpe"
    grace_period: int | None = None
    reduction_factor: int | None = None
    max_epochs: int | None = None
    checkpoint_every: int = 1
    max_failures: int = 2
    multi_objective: bool = False
    resume: bool = False
    restore_or_start: bool = False
    seed: int = 0
    num_cpus: int | None = None
    address: str | None = None
    overrides: tuple[str, ...] = ()
    verbosity: int = 1
    retry_nan: bool = False
    population: int | None = None
    """pbt/pb2: trials in the population (then also ``num_samples``)."""
    perturbation_interval: int = 2
    """pbt/pb2: epochs between a trial's perturbations."""
    perturb: tuple[str, ...] = ()
    """pbt/pb2: float params perturbed besides the training missing rate (loss weights, optim.lr)."""


def trial_name(trial: Any) -> str:
    """Short trial names and directories (``trial_<id>``); the store keys rows by the same id."""
    return f"trial_{trial.trial_id}"


def experiment_uri(options: SearchOptions) -> str | None:
    """``<storage>/<name>`` when the storage is an object-store URI, else None."""
    return f"{options.storage.rstrip('/')}/{options.name}" if is_uri(options.storage) else None


def experiment_path(options: SearchOptions) -> Path:
    """Where our files of ``<storage>/<name>`` live on this machine: the directory itself, or for
    an object-store URI its local staging mirror (see ``tuning._remote``)."""
    uri = experiment_uri(options)
    if uri is not None:
        return staging_dir(uri)
    return Path(options.storage).expanduser().resolve() / options.name


def _fetch_remote_state(options: SearchOptions) -> None:
    """For a URI, refresh the staging mirror with the experiment's state file and trial store."""
    uri = experiment_uri(options)
    if uri is None:
        return
    local = experiment_path(options)
    shutil.rmtree(local, ignore_errors=True)
    fs, base = resolve(uri)
    local.mkdir(parents=True)
    if fs.get_file_info(f"{base}/{STATE_FILE}").type == pafs.FileType.File:
        with fs.open_input_stream(f"{base}/{STATE_FILE}") as src:
            (local / STATE_FILE).write_bytes(src.read())
    if fs.get_file_info(f"{base}/{STORE_DIR}").type == pafs.FileType.Directory:
        download(f"{uri}/{STORE_DIR}", local / STORE_DIR)


RUNTIME_FIELDS = ("name", "storage", "resume", "restore_or_start", "num_cpus", "address", "verbosity")
"""Options a resumed search takes from its command line; the rest come from the stored state."""


def resolve_options(options: SearchOptions) -> SearchOptions:
    """For ``--resume``, the options the search started with (its space, data, budget, overrides).

    Raises:
        FSRFError: no search of that name, or a new search over an existing name.
    """
    exp = experiment_path(options)
    state_file = exp / STATE_FILE
    if options.restore_or_start:
        options = replace(options, resume=state_file.is_file())
    if not options.resume:
        if state_file.exists():
            raise FSRFError(f"--name: a search {options.name!r} already exists in {exp}; pass --resume to continue it")
        return options
    if not state_file.is_file():
        raise FSRFError(f"--resume: no search named {options.name!r} under {exp.parent} ({state_file} missing)")
    state = json.loads(state_file.read_text())
    if options.space and load_space(options.space).fingerprint() != state["space_fingerprint"]:
        raise FSRFError(
            f"--space: {options.space} is not the space search {options.name!r} started with "
            f"({state['options']['space']}); resume without --space or start a new --name"
        )
    stored = state["options"]
    stored["overrides"] = tuple(stored.get("overrides", ()))
    stored["perturb"] = tuple(stored.get("perturb", ()))
    return SearchOptions(**{**stored, **{k: getattr(options, k) for k in RUNTIME_FIELDS}})


def _check_space(space: SearchSpace, exp: Path) -> None:
    """A resumed search must run over the space it started with."""
    stored = json.loads((exp / STATE_FILE).read_text())
    if stored.get("space_fingerprint") != space.fingerprint():
        raise FSRFError(
            f"--resume: {space.source} has changed since search {exp.name!r} started; restore that file "
            "or start a new --name"
        )


SAMPLERS = ("tpe", "random", "gp", "cmaes")
"""``--sampler`` values: Optuna's TPE (default), random (the baseline), GP and CMA-ES (numeric
spaces without conditions only)."""


def check_sampler(name: str, space: SearchSpace) -> None:
    """Refuse a sampler the space does not suit, naming the first parameter in the way.

    GP and CMA-ES model one fixed vector of numbers: a conditional parameter (``when``, or a
    weight's ``off_switch``) would be sampled independently (at random) behind their backs, and
    CMA-ES also samples every categorical one at random.

    Raises:
        FSRFError: one line naming the sampler, the parameter and why.
    """
    if name not in SAMPLERS:
        raise FSRFError(f"--sampler: {name!r} is not one of {', '.join(SAMPLERS)}")
    if name not in ("gp", "cmaes"):
        return
    for param in space.params:
        if param.when or param.has_switch:
            raise FSRFError(f"--sampler {name}: parameter {param.name} is conditional "
                            f"({'when' if param.when else 'off_switch'}), which {name} samples at random; use "
                            "--sampler tpe, or a space whose parameters are all unconditional")
        if name == "cmaes" and param.kind == "choice":
            raise FSRFError(f"--sampler cmaes: parameter {param.name} is categorical, which CMA-ES samples at "
                            "random; use --sampler tpe or gp, or a space of numeric parameters")


def build_sampler(name: str, space: SearchSpace, *, seed: int):
    """The Optuna sampler ``--sampler`` names, seeded (after :func:`check_sampler`)."""
    import optuna

    check_sampler(name, space)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, deterministic_objective=False)
    return optuna.samplers.CmaEsSampler(seed=seed, consider_pruned_trials=True)


def _check_population(options: SearchOptions, space: SearchSpace, run_base: Any) -> tuple[Any, ...]:
    """The params a pbt/pb2 search perturbs (after its checks, see ``tuning._pbt``); () for others."""
    if not is_population(options.scheduler):
        return ()
    return check_population(
        space, scheduler=options.scheduler, population=options.population or options.num_samples,
        interval=options.perturbation_interval, perturb=options.perturb, multi_objective=options.multi_objective,
        checkpoint_every=options.checkpoint_every, epochs=run_base.train.epochs, sampler=options.sampler,
        patience=run_base.train.patience,
    )


def _write_state(options: SearchOptions, space: SearchSpace, exp: Path) -> None:
    state = {"space_fingerprint": space.fingerprint(), "options": asdict(options),
             "provenance": provenance(space.base.data if options.data is None
                                      else with_overrides(space.base, {"data.path": options.data}).data)}
    atomic_write_text(exp / STATE_FILE, json.dumps(state, indent=2, default=str))


def _started_cluster() -> str | None:
    """The address of a cluster that ``ray start`` started on this machine and that still runs.

    This is how a search submitted with ``ray submit`` finds the cluster of the head it runs on.
    """
    try:
        from ray._private.services import find_bootstrap_address, find_gcs_addresses

        address = find_bootstrap_address(None)
        return address if address and address in find_gcs_addresses() else None
    except Exception:  # noqa: BLE001 (a private API of Ray's: on any change, fall back to a local Ray)
        return None


def _start_ray(options: SearchOptions) -> bool:
    """Join a cluster (``--address``, ``RAY_ADDRESS``, or one ``ray start`` runs here), else start
    a local Ray; returns whether it is a local Ray of this process."""
    import ray

    address = options.address or os.environ.get("RAY_ADDRESS")
    found = None if address else _started_cluster()
    if address or found:
        print(f"fsrf tune: joining the Ray cluster at {address or found}")
        # "auto" (not the address spelled out) lets Ray turn its token authentication on by itself
        ray.init(address=address or "auto", log_to_driver=True, logging_level=ray_log_level(options.verbosity))
        return False
    cpus = options.num_cpus or os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True, logging_level=ray_log_level(options.verbosity))
    return True


def _check_shared_storage(exp: Path) -> None:
    """With several nodes, the experiment directory must be the same directory on every node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    marker = exp / f".storage-check-{uuid.uuid4().hex}"
    marker.write_text("fsrf")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        checks = {
            n["NodeManagerAddress"]: sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker))
            for n in nodes
        }
        blind = [ip for ip, ref in checks.items() if not ray.get(ref, timeout=60)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise FSRFError(
            f"--storage: {exp.parent} is not shared: node(s) {', '.join(sorted(blind))} do not see it; "
            "give a path every node mounts (NFS)"
        )


def _check_resources(options: SearchOptions, *, local: bool) -> None:
    """Refuse a per-trial request that no node can ever hold (instead of pending forever)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    max_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    max_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    problems = []
    if options.cpus_per_trial > max_cpu:
        problems.append(f"--cpus-per-trial {options.cpus_per_trial:g} but the largest node has {max_cpu:g} CPUs")
    if options.gpus_per_trial > max_gpu:
        problems.append(f"--gpus-per-trial {options.gpus_per_trial:g} but the largest node has {max_gpu:g} GPUs")
    if problems and local:
        raise FSRFError("; ".join(problems) + " (local Ray: no node can ever run a trial)")
    for problem in problems:
        print(f"fsrf tune: warning: {problem}; trials wait until the autoscaler adds such a node")


def _population_search(options: SearchOptions, space: SearchSpace, perturbed: tuple[Any, ...]) -> dict[str, Any]:
    """The Tuner arguments of a population-based search: its drawn population and PBT/PB2."""
    from ray.tune.search import BasicVariantGenerator

    from tuning._pbt import build_scheduler, draw_population

    size = options.population or options.num_samples
    population = draw_population(space, size, seed=options.seed)
    scheduler = build_scheduler(options.scheduler, perturbed, metric=OBJECTIVE, mode=space.mode,
                                interval=options.perturbation_interval, seed=options.seed)
    print(f"fsrf tune: {options.scheduler.upper()} over a population of {size} drawn at random (seed "
          f"{options.seed}), constant curriculum; every {options.perturbation_interval} epoch(s) it perturbs "
          f"{', '.join(p.name for p in perturbed)}")
    return {"search_alg": BasicVariantGenerator(points_to_evaluate=population), "scheduler": scheduler,
            "num_samples": size, "param_space": dict.fromkeys(population[0])}


def _store_base(options: SearchOptions, space: SearchSpace) -> dict[str, Any]:
    """What the store keeps of the search's configuration besides each trial's sampled values."""
    from fsrf import flatten_config
    from tuning._summary import run_overrides

    return {"base_config": flatten_config(space.base), "fixed": dict(space.fixed),
            "run_overrides": run_overrides(asdict(options)), "space": space.source}


def _build_tuner(options: SearchOptions, space: SearchSpace, exp: Path, trainable: Any,
                 perturbed: tuple[Any, ...] = ()) -> Any:
    from ray import tune
    from ray.tune import CLIReporter
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tuning._lost_checkpoints import LostCheckpointGuard
    from tuning._optuna_journal import JOURNAL_FILE, OptunaJournalCallback
    from tuning._searcher import PruneAwareOptunaSearch
    from tuning._tensorboard import TensorBoardCallback, hparams_domains, tensorboard_root
    from tuning.store import ArrowStoreCallback

    epochs = options.max_epochs or space.base.train.epochs
    param_space: dict[str, Any] | None = None
    keep = 2
    if perturbed:
        chosen = _population_search(options, space, perturbed)
        searcher, scheduler, param_space = chosen["search_alg"], chosen["scheduler"], chosen["param_space"]
        # a trial restores another's checkpoint of a perturbation epoch: keep those of two intervals
        keep = max(4, 2 * options.perturbation_interval // options.checkpoint_every + 2)
    elif options.multi_objective:
        sampler = build_sampler(options.sampler, space, seed=options.seed)
        searcher = PruneAwareOptunaSearch(
            space.define_by_run, metric=[COMPLETE_OBJECTIVE, OBJECTIVE], mode=[space.mode, space.mode],
            sampler=sampler, study_name=options.name,
        )
        scheduler = FIFOScheduler()
        print("fsrf tune: multi-objective (complete vs robust): Optuna's multi-objective TPE, FIFO scheduling")
    else:
        sampler = build_sampler(options.sampler, space, seed=options.seed)
        searcher = PruneAwareOptunaSearch(
            space.define_by_run, metric=OBJECTIVE, mode=space.mode, sampler=sampler, study_name=options.name
        )
        scheduler = (
            ASHAScheduler(
                time_attr="training_iteration", metric=OBJECTIVE, mode=space.mode, max_t=epochs,
                grace_period=min(epochs, options.grace_period or space.grace_period),
                reduction_factor=options.reduction_factor or space.reduction_factor,
            )
            if options.scheduler == "asha"
            else FIFOScheduler()
        )
    reporter = CLIReporter(
        metric_columns={BEST_OBJECTIVE: "best objective", OBJECTIVE: "last objective", "training_iteration": "epochs"},
        parameter_columns={k: k.split(".", 1)[1] for k in space.key_columns()},
        max_report_frequency=15,
        metric=BEST_OBJECTIVE,
        mode=space.mode,
        sort_by_metric=True,
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=options.num_samples,
            # a synchronous population waits for all its members: it runs as the resources allow
            max_concurrent_trials=None if perturbed else options.max_concurrent, reuse_actors=True,
            trial_name_creator=trial_name, trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=options.name,
            storage_path=options.storage if is_uri(options.storage) else str(exp.parent),
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
            callbacks=[
                LostCheckpointGuard(),
                ArrowStoreCallback(exp / STORE_DIR, experiment=options.name, base=_store_base(options, space),
                                   mirror_to=f"{experiment_uri(options)}/{STORE_DIR}"
                                   if is_uri(options.storage) else None),
                TensorBoardCallback(tensorboard_root(exp), params=hparams_domains(space)),
                OptunaJournalCallback(exp / JOURNAL_FILE, space=space, study_name=options.name,
                                      multi_objective=options.multi_objective),
            ],
            progress_reporter=reporter,
            verbose={0: 0, 1: 1}.get(options.verbosity, 2),
        ),
    )


def _store_rows(store: Path) -> int:
    """Rows in the store at ``store`` (0 when there is none yet)."""
    from tuning.store import read_events

    try:
        return read_events(store).num_rows
    except FSRFError:
        return 0


class SearchStopped(FSRFError):
    """The search was stopped (Ctrl-C) before every trial finished; ``--resume`` continues it."""


def _resume_hint(options: SearchOptions) -> str:
    return f"python tune.py --name {options.name} --storage {options.storage} --resume"


def _store_fault(options: SearchOptions, store: Path) -> None:
    """Raise the write the store's disk refused during the search, as one line with the way on."""
    from tuning.store import write_fault

    fault = write_fault(store)
    if fault is not None:
        raise FSRFError(f"{fault}; the search stopped with its trials checkpointed; once that is fixed, "
                        f"continue it with: {_resume_hint(options)}")


def _reconcile(options: SearchOptions, exp: Path) -> None:
    """Write what the store lost and Tune holds (torn WAL, refused writes): rows and statuses."""
    from tuning._store_repair import reconcile
    from tuning._store_write import StoreWriteError

    if not (exp / STORE_DIR).is_dir():
        return
    try:
        for line in reconcile(exp / STORE_DIR, experiment=options.name):
            print(f"fsrf tune: trial store: {line}")
    except StoreWriteError as err:
        raise FSRFError(f"{err}; every trial is checkpointed; once that is fixed, continue with: "
                        f"{_resume_hint(options)}") from None


PENDING_TRIALS_ENV = "TUNE_MAX_PENDING_TRIALS_PG"


@contextlib.contextmanager
def pending_trials_limit(limit: int | None) -> Iterator[None]:
    """Tune's pending-trials limit pinned to ``limit`` (``--max-concurrent``) while a search runs.

    With at most ``limit`` trials in existence (running or waiting for resources), the sampler
    draws trial k + limit only after trial k's results were told to it: a model-based sampler
    (TPE, GP) sees results before it samples again, instead of drawing a backlog from its prior.
    Ray 2.60's ``auto`` gives the same when ``max_concurrent_trials`` wraps the searcher in a
    ``ConcurrencyLimiter``; the pin keeps it if that rule changes (it was 1, or 200 for random
    search, in other releases). A value the user set in the environment is kept; ``None`` (a
    population, which must exist whole) leaves the environment as it is.
    """
    if limit is None or PENDING_TRIALS_ENV in os.environ:
        yield
        return
    os.environ[PENDING_TRIALS_ENV] = str(limit)
    try:
        yield
    finally:
        os.environ.pop(PENDING_TRIALS_ENV, None)


def run_search(options: SearchOptions) -> Path:
    """Run (or resume) a search; returns the experiment directory.

    Faults of the disk and store: a store that cannot be written or read is
    refused before any Ray work (one line; a damaged part says to run ``fsrf
    store repair``); a write the disk refuses mid-search stops the search like
    Ctrl-C (trials checkpointed) and is raised as one line naming the file. At
    the end, results and statuses the store lost (a torn WAL segment, a refused
    write) are recovered from Tune's own per-trial files, so the store agrees
    with Tune. An experiment holding this project's state but no Tune state (a
    driver killed before Tune saved any) is started afresh in place on resume.

    Raises:
        SearchStopped: a Ctrl-C stopped it; the summary and best config so far were written.
        FSRFError: a bad space, data file, resource request or experiment name; a store that
            cannot be written or read.
    """
    from fsrf import with_overrides
    from tuning._store_repair import preflight
    from tuning._summary import run_overrides
    from tuning.store import clear_write_fault

    _fetch_remote_state(options)
    options = resolve_options(options)
    space = load_space(options.space)
    check_sampler(options.sampler, space)  # before any Ray work
    exp, uri = experiment_path(options), experiment_uri(options)
    tune_path = uri or str(exp)
    if options.resume:
        _check_space(space, exp)
    preflight(exp / STORE_DIR)  # one line for a read-only or damaged store, before any Ray work
    clear_write_fault(exp / STORE_DIR)
    for stale in exp.glob(f"*/{WORK_DIR}"):  # scratch of trials a killed driver left (no trial runs now)
        shutil.rmtree(stale, ignore_errors=True)
    # the trials' run-level values (--data goes in with the dataset loaded below, and into best.yaml)
    overrides = {k: v for k, v in run_overrides(asdict(options)).items() if k != "data.path"}
    run_base = with_overrides(space.base, overrides, source="--set")  # a bad --set fails before any Ray work
    perturbed = _check_population(options, space, run_base)
    dataset = load_dataset(run_base.data, path=options.data)

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's classic table, with our columns
    quiet_internals(options.verbosity)
    print(start_summary(options, space, run_base, dataset, exp), flush=True)
    import ray
    from ray import tune

    from tuning._shared_data import trial_data
    from tuning.trainable import fsrf_trainable

    local = _start_ray(options)
    try:
        _check_resources(options, local=local)
        exp.mkdir(parents=True, exist_ok=True)
        if uri is None:
            _check_shared_storage(exp)  # an object store is reached by every node alike
        if not options.resume:
            _write_state(options, space, exp)
            if uri is not None:
                mirror(exp, uri)
        trainable = tune.with_resources(
            tune.with_parameters(fsrf_trainable, space=space, data=trial_data(dataset), overrides=overrides,
                                 experiment_dir=None if uri else str(exp), quiet=options.verbosity < 2,
                                 retry_nan=options.retry_nan, retune=tuple(p.name for p in perturbed)),
            {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
        )
        if options.resume and tune.Tuner.can_restore(tune_path):
            tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_errored=True)
        else:
            if options.resume:  # our state was written, Tune's was not: nothing to restore, nothing lost
                print(f"fsrf tune: {tune_path} holds this search's {STATE_FILE} but no Tune state (tuner.pkl; "
                      f"the driver was stopped before Tune saved any): starting it afresh in place, "
                      f"keeping {_store_rows(exp / STORE_DIR)} row(s) already in its store")
            tuner = _build_tuner(options, space, exp, trainable, perturbed)
        with pending_trials_limit(None if perturbed else options.max_concurrent):
            tuner.fit()
    finally:
        ray.shutdown()
    _store_fault(options, exp / STORE_DIR)
    _reconcile(options, exp)
    from tuning._summary import print_summary, write_best

    counts = print_summary(exp / STORE_DIR, space, mode=space.mode)
    stopped = counts.get("RUNNING", 0)  # Ctrl-C: Tune saved the experiment and stopped its trials
    if not stopped and sum(counts.values()) < options.num_samples:  # seen once after a SIGKILLed driver
        print(f"fsrf tune: warning: the experiment holds {sum(counts.values())} of {options.num_samples} "
              "trials: Tune drew no more after the resume (trials a killed driver had started but not "
              "saved are marked discarded; their rows stay in the store's events)")
    # best.yaml holds everything `fsrf train --config best.yaml` needs, the data file too (fsrf export's builder)
    best = write_best(exp / STORE_DIR, space, options=asdict(options), path=exp / BEST_FILE,
                      experiment=options.name, population=bool(perturbed))
    if uri is not None:
        mirror(exp, uri)
        print(f"mirrored the trial store and {BEST_FILE} to {uri}")
    if best is not None:
        if perturbed:
            print(f"{BEST_FILE}: the trial whose followed schedule ended best (at its last epoch), that schedule "
                  "as a replay curriculum")
        print(f"wrote {best}; train it with: fsrf train --config {best} --out runs/{options.name}-best")
    if stopped:
        raise SearchStopped(f"the search stopped with {stopped} trial(s) unfinished; continue it with: "
                            f"{_resume_hint(options)}")
    if best is None and counts and set(counts) == {"ERROR"}:
        raise FSRFError(f"every trial of {options.name} failed, none reached a validation objective; the first "
                        f"error: {_first_error(exp / STORE_DIR)}")
    return exp


def _first_error(store: Path) -> str:
    """The first errored trial's message (one line), as the store keeps it."""
    from tuning.store import read_trials

    errors = [t.get("error") or "" for t in read_trials(store).to_pylist() if t.get("error")]
    return errors[0].strip().splitlines()[-1] if errors else "(no message stored)"
