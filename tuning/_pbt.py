"""Population-based searches (``--scheduler pbt | pb2``): the population, what it perturbs, and
the schedule each trial followed.

Ray Tune's ``PopulationBasedTraining`` and ``PB2`` take no search algorithm: the initial
population is drawn here from the space (seeded, at random, with Optuna's sampler so that
``when`` conditions and off-switches hold) and handed to Tune as fixed configs. Every trial
trains under a ``constant`` curriculum whose rate, ``curriculum.end``, the population perturbs
every ``--perturbation-interval`` epochs, together with the ``--perturb`` fields (loss weights,
``optim.lr``). An exploit restarts the trial from another trial's checkpoint under the perturbed
config (``fsrf.train(retune=...)`` allows exactly those fields to differ), and the checkpoint's
history carries the epochs it inherited, so the *followed schedule* of a trial, from epoch 1, is
the history of its last checkpoint plus what it trained since.

Every result row of a population-based search carries that schedule up to its epoch as
``schedule/<name>/e<epoch>`` columns (``name`` is ``rate`` for the training missing rate, or a
perturbed field's dotted path), so the store's last row of a trial holds its whole followed
schedule (:func:`followed_schedules`). :func:`replay_overrides` turns the rates into a ``replay``
curriculum for ``best.yaml``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fsrf import FSRFError
from fsrf.constants import EPOCH, TRAIN_RATE, retuned_key
from tuning._space_params import Param
from tuning.space import SearchSpace

SCHEDULERS = ("pbt", "pb2")
"""The population-based ``--scheduler`` values."""

RATE_FIELD = "curriculum.end"
"""The field that holds a trial's training missing rate (its curriculum is ``constant``)."""

RATE = "rate"
"""The followed schedule's name for the training missing rate."""

SCHEDULE_PREFIX = "schedule/"
"""Prefix of the followed-schedule columns of a result row: ``schedule/rate/e0003``."""

_SCHEDULE_COLUMN = re.compile(r"^schedule/(.+)/e(\d+)$")

PERTURBABLE = ("model.", "optim.lr", "optim.text_lr")
"""What ``--perturb`` may name besides the rate: loss weights (float fields of the model
section) and learning rates."""


def schedule_key(name: str, epoch: int) -> str:
    """``schedule/rate/e0003``: the value ``name`` had in ``epoch`` (from 1) of a followed schedule."""
    return f"{SCHEDULE_PREFIX}{name}/e{epoch:04d}"


def is_population(scheduler: str | None) -> bool:
    """Whether ``--scheduler`` names a population-based search."""
    return scheduler in SCHEDULERS


def population_overrides() -> dict[str, Any]:
    """Run-level config values every trial of a population-based search gets."""
    return {"curriculum.kind": "constant"}


def _float_param(space: SearchSpace, name: str, flag: str) -> Param:
    params = {p.name: p for p in space.params}
    if name not in params:
        raise FSRFError(f"{flag}: {name} is not a param of {space.source}; the population perturbs searched "
                        "float ranges only")
    param = params[name]
    if param.kind != "float":
        raise FSRFError(f"{flag}: {name} is a {param.kind} param of {space.source}; the population perturbs "
                        "float ranges only")
    if param.when:
        raise FSRFError(f"{flag}: {name} is conditional (`when`) in {space.source}; a perturbed field must "
                        "be sampled in every trial")
    return param


def check_population(
    space: SearchSpace, *, scheduler: str, population: int, interval: int, perturb: Sequence[str],
    multi_objective: bool, checkpoint_every: int, epochs: int, sampler: str, patience: int = 0,
) -> tuple[Param, ...]:
    """Refuse a population-based search the space or the flags do not allow.

    Returns:
        The perturbed params: ``curriculum.end`` first, then ``perturb`` in order.

    Raises:
        FSRFError: one line naming the flag (or the space) and what was expected.
    """
    if multi_objective:
        raise FSRFError(f"--multi-objective: --scheduler {scheduler} optimises one objective (the robust "
                        "one); drop --multi-objective or use --scheduler fifo")
    if population < 2:
        raise FSRFError(f"--population: {population} must be >= 2 (a trial exploits another's checkpoint)")
    if interval < 1:
        raise FSRFError(f"--perturbation-interval: {interval} must be >= 1")
    if interval >= epochs:
        raise FSRFError(f"--perturbation-interval: {interval} must be < the epochs per trial ({epochs}); "
                        "no trial would ever be perturbed")
    if interval % checkpoint_every:
        raise FSRFError(f"--checkpoint-every: {checkpoint_every} must divide --perturbation-interval "
                        f"{interval} (an exploit restores the checkpoint of a perturbation epoch)")
    if patience:
        raise FSRFError(f"--scheduler {scheduler}: train.patience {patience} stops trials early, which stalls a "
                        "synchronous population at its next perturbation; set train.patience=0")
    if sampler not in ("tpe", "random"):
        raise FSRFError(f"--sampler {sampler}: --scheduler {scheduler} draws its population at random "
                        "(seeded by --seed); drop --sampler")
    kind = next((p for p in space.params if p.name == "curriculum.kind"), None)
    if kind is not None and "constant" not in kind.choices:
        raise FSRFError(f"--scheduler {scheduler}: {space.source} searches curriculum.kind without "
                        "`constant`; the population perturbs a constant rate: add constant to its choices")
    try:
        params = [_float_param(space, RATE_FIELD, f"--scheduler {scheduler}")]
    except FSRFError as err:
        raise FSRFError(f"{err} (the training missing rate the population perturbs)") from None
    seen = {RATE_FIELD}
    for name in perturb:
        if name in seen:
            raise FSRFError(f"--perturb: {name} is named twice"
                            + (" (the missing rate is always perturbed)" if name == RATE_FIELD else ""))
        if not name.startswith(PERTURBABLE) or name == "model.name":
            raise FSRFError(f"--perturb: {name} is not a loss weight (model.*) or a learning rate "
                            "(optim.lr, optim.text_lr)")
        params.append(_float_param(space, name, "--perturb"))
        seen.add(name)
    return tuple(params)


def draw_population(space: SearchSpace, size: int, *, seed: int) -> list[dict[str, Any]]:
    """``size`` flat trial configs drawn at random from the space, each with a constant curriculum.

    Every param (and switch) of the space is a key of every config; one that a draw leaves
    unsampled (its ``when`` unmet) is None, which :meth:`SearchSpace.to_config` reads as absent.
    """
    import warnings

    import optuna

    fixed = {"curriculum.kind": "constant"} if "curriculum.kind" in space.param_names() else {}
    sampler = optuna.samplers.RandomSampler(seed=seed)
    if fixed:
        with warnings.catch_warnings():  # "PartialFixedSampler is experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.PartialFixedSampler(fixed, sampler)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler)
    names = [n for p in space.params for n in ((p.switch_name, p.name) if p.has_switch else (p.name,))]
    population = []
    for _ in range(size):
        trial = study.ask()
        constants = space.define_by_run(trial)
        config: dict[str, Any] = dict.fromkeys(names)
        config.update(trial.params)
        config.update(constants)
        space.to_config(config)  # a draw the space cannot rebuild fails here, before Ray
        population.append(config)
    return population


@dataclass(frozen=True)
class KeepInSpace:
    """PBT's ``custom_explore_fn``: a perturbed value back into its searched range, and a
    switched-off loss weight kept at 0 (PBT multiplies or resamples values blindly)."""

    bounds: tuple[tuple[str, float, float, str | None], ...]
    """``(name, low, high, switch name or None)`` per perturbed param."""

    @classmethod
    def of(cls, params: Iterable[Param]) -> KeepInSpace:
        """The explore function for ``params``."""
        return cls(tuple((p.name, float(p.low), float(p.high), p.switch_name if p.has_switch else None)
                         for p in params))

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for name, low, high, switch in self.bounds:
            if switch is not None and config.get(switch):
                config[name] = 0.0
            else:
                config[name] = min(high, max(low, float(config[name])))
        return config


def build_scheduler(kind: str, params: Sequence[Param], *, metric: str, mode: str, interval: int,
                    seed: int) -> Any:
    """Ray Tune's ``PopulationBasedTraining`` (``pbt``) or ``PB2`` over ``params``, stepping in epochs.

    PBT multiplies a value by 0.8 or 1.2, or resamples it from its range (log-uniformly for a
    ``log: true`` range) with probability 1/4; PB2 picks values inside the ranges with a GP bandit.
    Both pass their choice through :class:`KeepInSpace`, and both run synchronously: a trial at
    a perturbation epoch waits for the rest of the population, so every trial of the lower
    quantile (the worst quarter, at least one) exploits one of the upper quantile each interval,
    whatever the trials' speeds (asynchronously, a fast trial meets no scored peer and a small
    population is never perturbed). Neither perturbs at a trial's last epoch, both stay
    synchronous across ``--resume``, and both draw from their own generators seeded by ``seed``
    (the driver's global ``random`` and NumPy generators are left alone; ``tuning._pbt_schedulers``).
    """
    from ray import tune

    from tuning._pbt_schedulers import FinalEpochPBT

    explore = KeepInSpace.of(params)
    common = {"time_attr": "training_iteration", "metric": metric, "mode": mode,
              "perturbation_interval": interval, "custom_explore_fn": explore, "log_config": True,
              "synch": True, "seed": seed}
    if kind == "pb2":
        from tuning._pbt_schedulers import FinalEpochPB2

        return FinalEpochPB2(hyperparam_bounds={p.name: [float(p.low), float(p.high)] for p in params}, **common)
    mutations = {p.name: (tune.loguniform if p.log else tune.uniform)(float(p.low), float(p.high))
                 for p in params}
    return FinalEpochPBT(hyperparam_mutations=mutations, **common)


def schedule_columns(lineage: Sequence[Mapping[str, float]], retune: Sequence[str]) -> dict[str, float]:
    """The ``schedule/...`` columns of a followed schedule given as its epochs' reports.

    Args:
        lineage: the reports of epochs 1.. in order (the inherited history, then this trial's).
        retune: the perturbed fields; each beside the rate contributes ``schedule/<field>/e<n>``.
    """
    columns: dict[str, float] = {}
    extra = [k for k in retune if k != RATE_FIELD and not k.startswith("curriculum.")]
    for record in lineage:
        epoch = int(record[EPOCH])
        columns[schedule_key(RATE, epoch)] = float(record[TRAIN_RATE])
        for key in extra:
            value = record.get(retuned_key(key))
            if value is not None:
                columns[schedule_key(key, epoch)] = float(value)
    return columns


def schedule_of(row: Mapping[str, Any]) -> dict[str, list[float]]:
    """The followed schedule in one store row: ``{name: [value at epoch 1, 2, ...]}``; ``{}`` if none.

    A schedule stops at the first epoch without a value (a row holds epochs 1..its own).
    """
    found: dict[str, dict[int, float]] = {}
    for key, value in row.items():
        match = _SCHEDULE_COLUMN.match(key)
        if match and value is not None and not (isinstance(value, float) and math.isnan(value)):
            found.setdefault(match.group(1), {})[int(match.group(2))] = float(value)
    schedule = {}
    for name, by_epoch in found.items():
        values = []
        while len(values) + 1 in by_epoch:
            values.append(by_epoch[len(values) + 1])
        if values:
            schedule[name] = values
    return schedule


def followed_schedules(store: Any) -> dict[str, dict[str, list[float]]]:
    """Each trial's followed schedule, from its last result row: ``{trial_id: {name: values}}``.

    Trials without schedule columns (every trial of a search that is not population-based) are
    left out.
    """
    from tuning.store import read_trials

    trials = read_trials(store)
    names = [c for c in trials.column_names if c == "trial_id" or c.startswith(SCHEDULE_PREFIX)]
    schedules = {}
    for row in trials.select(names).to_pylist():
        schedule = schedule_of(row)
        if schedule:
            schedules[row["trial_id"]] = schedule
    return schedules


def replay_overrides(rates: Sequence[float], others: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """The config values of a ``replay`` curriculum that follows ``rates`` (one per epoch from 1)
    and, per epoch too, each field in ``others`` (``curriculum.replay_fields``/``replay_values``).

    A segment starts wherever the rate or any other field changes. Each other field's own config
    value is its first epoch's (the value training starts with).

    Raises:
        FSRFError: no rates, or another field with a different number of epochs.
    """
    if not rates:
        raise FSRFError("followed schedule: no rates to replay")
    others = dict(others or {})
    for name, values in others.items():
        if len(values) != len(rates):
            raise FSRFError(f"followed schedule: {len(values)} values of {name} for {len(rates)} epochs of rates")
    fields = sorted(others)
    rows = [(float(rates[e]), *(float(others[f][e]) for f in fields)) for e in range(len(rates))]
    epochs = [e for e in range(len(rows)) if e == 0 or rows[e] != rows[e - 1]]
    overrides: dict[str, Any] = {"curriculum.kind": "replay", "curriculum.replay_epochs": epochs,
                                 "curriculum.replay_rates": [rows[e][0] for e in epochs]}
    if fields:
        overrides["curriculum.replay_fields"] = fields
        overrides["curriculum.replay_values"] = [v for e in epochs for v in rows[e][1:]]
        overrides.update({f: float(others[f][0]) for f in fields})
    return overrides


def winner_overrides(schedule: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Config values that make ``fsrf train`` follow a trial's schedule: its rates and every other
    perturbed field, epoch by epoch, as a ``replay`` curriculum."""
    return replay_overrides(schedule[RATE], {name: values for name, values in schedule.items() if name != RATE})


__all__ = [
    "RATE", "SCHEDULERS", "KeepInSpace", "build_scheduler", "check_population", "draw_population",
    "followed_schedules", "replay_overrides", "schedule_columns", "schedule_key", "schedule_of",
    "winner_overrides",
]
