"""Search spaces: which config fields a search samples, and how a trial's values become a config.

A space is a commented YAML file (``tuning/spaces/*.yaml``; ``default.yaml`` documents
every key). :func:`load_space` parses and validates it completely, so a bad space fails
with one line naming the file and the key before any Ray work. Then:

* :meth:`SearchSpace.define_by_run` is Optuna's define-by-run function (for Ray's
  ``OptunaSearch(space=...)``): it samples each param under its dotted name, in
  declaration order, skipping params whose ``when`` conditions are unmet;
* :meth:`SearchSpace.to_config` turns the flat Tune config of a trial back into the
  full :class:`fsrf.Config` (the only place this happens).

Off-switches: a param declared with ``off_switch: true`` (``model.homo``) is preceded by the
categorical ``model.homo:off`` in ``[False, True]``; on ``True`` the weight is 0 and the
value is not sampled (define-by-run returns ``{"model.homo": 0.0}`` as a constant, so the
trial config shows the effective weight).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsrf import Config, FSRFError, flatten_config, load_config, read_yaml, with_overrides
from fsrf.constants import DATASET_METRICS, direction
from tuning._space_checks import check_feasible, check_readers
from tuning._space_params import OFF, Param, parse_param

TOP_KEYS = ("base", "fixed", "objective", "scheduler", "params", "columns")
"""The keys a space file may hold."""

RESERVED = {
    "data.dataset": "the base config's dataset decides the metric set",
    "data.path": "the data file is the run's, not a trial's",
    "train.select_metric": "it is objective.metric",
    "train.epochs": "it is ASHA's max_t; set it under `fixed`",
}
"""Config fields a space may not search, and why."""

RUNTIME_FIELDS = ("data.path", "train.device", "train.num_threads", "train.tf32", "train.compile",
                  "train.deterministic")
"""Where and on what a trial runs: left out of the fingerprint (moving data or hardware is no new space;
a search started before these keys existed keeps its fingerprint)."""

DEFAULT_COLUMNS = 6
"""How many params :meth:`SearchSpace.key_columns` names when the file has no ``columns``."""


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """A validated search space.

    Attributes:
        source: the space file, as given to :func:`load_space`.
        base: the base training config with ``fixed`` applied and ``train.select_metric``
            set to :attr:`metric`; every trial config is this plus its sampled values.
        params: the searched fields, in declaration (and sampling) order.
        metric: the MMSA metric whose validation mean over ``missing.valid_rates`` is the
            objective (the trainer reports it as ``objective``).
        mode: ``min`` or ``max``.
        grace_period: ASHA's epochs before a trial can be stopped.
        reduction_factor: ASHA's reduction factor.
        fixed: the file's ``fixed`` values as ``(path, value)`` pairs.
        columns: the file's ``columns`` (may be empty); see :meth:`key_columns`.
    """

    source: str
    base: Config
    params: tuple[Param, ...]
    metric: str
    mode: str
    grace_period: int
    reduction_factor: int
    fixed: tuple[tuple[str, Any], ...] = ()
    columns: tuple[str, ...] = ()

    def param_names(self) -> tuple[str, ...]:
        """The searched dotted paths, in declaration order (switch names not included)."""
        return tuple(p.name for p in self.params)

    def key_columns(self) -> tuple[str, ...]:
        """The params worth a progress-table column: the file's ``columns``, else the first
        :data:`DEFAULT_COLUMNS` params that are always sampled."""
        if self.columns:
            return self.columns
        return tuple(p.name for p in self.params if not p.when)[:DEFAULT_COLUMNS]

    def define_by_run(self, trial: Any) -> dict[str, Any]:
        """Sample one trial's values from an Optuna trial (Ray's captor or ``study.ask()``).

        Returns:
            Constants for the Tune config: ``{name: 0.0}`` for each param switched off.
        """
        decided: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for param in self.params:
            if not param.active(decided):
                continue
            if param.has_switch and trial.suggest_categorical(param.switch_name, [False, True]):
                decided[param.name] = OFF
                constants[param.name] = param.off_value
                continue
            decided[param.name] = param.suggest(trial)
        return constants

    def to_config(self, trial_config: Mapping[str, Any]) -> Config:
        """The full training config of a trial: :attr:`base` plus its values.

        Args:
            trial_config: the flat Tune config (``{"model.homo:off": False, "model.homo": 0.4, ...}``).
                A switch is read as on (off) when absent and its value is given (0 or absent);
                None or NaN values count as absent (store round trips).

        Raises:
            FSRFError: unknown keys, a missing value, a value outside the space, or an
                inconsistent switch.
        """
        where = f"{self.source}: trial config"
        names = {n for p in self.params for n in (p.name, p.switch_name)}
        unknown = sorted(k for k in trial_config if k not in names)
        if unknown:
            listed = ", ".join(map(repr, unknown))
            raise FSRFError(f"{where}: unknown keys {listed} (not params of this space)")
        given = {k: v for k, v in trial_config.items() if not _absent(v)}
        decided: dict[str, Any] = {}
        overrides: dict[str, Any] = {}
        for param in self.params:
            keys = [k for k in (param.name, param.switch_name) if k in given]
            if not param.active(decided):
                if keys:
                    raise FSRFError(f"{where}: {keys[0]} is given but its `when` condition is unmet")
                continue
            off = self.switched_off(param, given, where)
            if off:
                decided[param.name] = OFF
                overrides[param.name] = param.off_value
            elif param.name not in given:
                raise FSRFError(f"{where}: {param.name} is missing (the trial samples it)")
            else:
                decided[param.name] = overrides[param.name] = param.normalize(given[param.name], where)
        return with_overrides(self.base, overrides, source=where)

    def optuna_params(self, trial_config: Mapping[str, Any], where: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The Optuna params and distributions of one trial config, walked as :meth:`define_by_run` draws.

        The one translation of a stored or live trial into Optuna's terms (the live journal and
        ``analysis.to_optuna`` both use it). A value a hair outside its range (``normalize``'s
        slack) is clipped into it, since Optuna refuses it.

        Raises:
            FSRFError: the config is not one the space can draw (see :meth:`to_config`).
        """
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        where = where or f"{self.source}: trial config"
        self.to_config(trial_config)  # validates: unknown keys, missing values, out-of-range values
        given = {k: v for k, v in trial_config.items() if not _absent(v)}
        params: dict[str, Any] = {}
        dists: dict[str, Any] = {}
        decided: dict[str, Any] = {}
        for param in self.params:
            if not param.active(decided):
                continue
            if param.has_switch:
                off = self.switched_off(param, given, where)
                params[param.switch_name] = off
                dists[param.switch_name] = CategoricalDistribution([False, True])
                if off:
                    decided[param.name] = OFF
                    continue
            value = param.normalize(given[param.name], where)
            if param.kind == "choice":
                dists[param.name] = CategoricalDistribution(list(param.choices))
            else:
                value = type(value)(min(max(value, param.low), param.high))
                dists[param.name] = (
                    IntDistribution(int(param.low), int(param.high), log=param.log, step=int(param.step or 1))
                    if param.kind == "int" else
                    FloatDistribution(float(param.low), float(param.high), log=param.log, step=param.step))
            decided[param.name] = params[param.name] = value
        return params, dists

    @staticmethod
    def switched_off(param: Param, given: Mapping[str, Any], where: str) -> bool:
        """Whether ``param`` is off in ``given``."""
        if not param.has_switch:
            return False
        value = given.get(param.name)
        if param.switch_name not in given:
            return value is None or value == param.off_value
        switch = given[param.switch_name]
        if not isinstance(switch, bool) and type(switch).__name__ != "bool_":  # numpy bools from a store
            raise FSRFError(f"{where}: {param.switch_name}: {switch!r} is not true or false")
        if switch and value is not None and value != param.off_value:
            raise FSRFError(f"{where}: {param.name} is {value!r} but {param.switch_name} is true")
        return bool(switch)

    def fingerprint(self) -> str:
        """sha256 hex of the canonical content: params, fixed, base config, objective, scheduler.

        Stable across loads and file moves; fields in :data:`RUNTIME_FIELDS` are left out.
        """
        base = {k: v for k, v in flatten_config(self.base).items() if k not in RUNTIME_FIELDS}
        payload = {
            "params": [p.to_dict() for p in self.params],
            "fixed": {k: v for k, v in self.fixed if k not in RUNTIME_FIELDS},
            "base": base,
            "objective": {"metric": self.metric, "mode": self.mode},
            "scheduler": {"grace_period": self.grace_period, "reduction_factor": self.reduction_factor},
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=list)
        return hashlib.sha256(text.encode()).hexdigest()


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def load_space(path: str | Path, *, base_override: str | Path | None = None) -> SearchSpace:
    """Read and validate a space file.

    Args:
        path: the space YAML.
        base_override: a training config to use instead of the file's ``base`` (relative to
            the working directory; the file's ``base`` is relative to the file).

    Raises:
        FSRFError: one line naming the file and the offending key.
    """
    source = str(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise FSRFError(f"{source}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise FSRFError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(TOP_KEYS)})")
    base = _load_base(raw, Path(path), base_override, source)
    fixed = _section(raw, "fixed", source)
    base = _apply_fixed(base, fixed, source)
    metric, mode = _objective(_section(raw, "objective", source), base, source)
    base = with_overrides(base, {"train.select_metric": metric}, source=f"{source}: objective")
    grace_period, reduction_factor = _scheduler(_section(raw, "scheduler", source), base, source)
    params = _params(raw.get("params"), base, fixed, source)
    check_readers(params, base, source)
    check_feasible(params, base, source)
    return SearchSpace(
        source=source, base=base, params=params, metric=metric, mode=mode, grace_period=grace_period,
        reduction_factor=reduction_factor, fixed=tuple(fixed.items()),
        columns=_columns(raw.get("columns"), params, source),
    )


def _section(raw: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise FSRFError(f"{source}: {key}: expected a mapping, got {value!r}")
    return value


def _load_base(raw: Mapping[str, Any], path: Path, override: str | Path | None, source: str) -> Config:
    if override is not None:
        base_path = Path(override)
    elif isinstance(raw.get("base"), str):
        base_path = path.parent / raw["base"]
    else:
        raise FSRFError(f"{source}: base: expected the path of a training config, got {raw.get('base')!r}")
    try:
        return load_config(base_path)
    except FSRFError as err:
        raise FSRFError(f"{source}: base: {err}") from None


def _known_path(name: Any, base: Config, where: str) -> None:
    flat = flatten_config(base)
    if isinstance(name, str) and name in flat:
        return
    close = difflib.get_close_matches(str(name), list(flat), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "e.g. model.homo, curriculum.end, optim.lr"
    raise FSRFError(f"{where}: {name!r} is not a config path ({hint}; all are in fsrf/_config.py)")


def _apply_fixed(base: Config, fixed: Mapping[str, Any], source: str) -> Config:
    for name in fixed:
        _known_path(name, base, f"{source}: fixed")
        if name == "train.select_metric":
            raise FSRFError(f"{source}: fixed: train.select_metric: {RESERVED[name]}; remove it here")
    try:
        return with_overrides(base, fixed, source="value")
    except FSRFError as err:
        raise FSRFError(f"{source}: fixed: {str(err).removeprefix('value: ')}") from None


def _objective(section: Mapping[str, Any], base: Config, source: str) -> tuple[str, str]:
    where = f"{source}: objective"
    unknown = [k for k in section if k not in ("metric", "mode")]
    if unknown:
        raise FSRFError(f"{where}: unknown key {unknown[0]!r} (known: metric, mode)")
    metrics = DATASET_METRICS[base.data.dataset]
    metric = section.get("metric")
    if metric not in metrics:
        raise FSRFError(f"{where}: metric: {metric!r} is not a {base.data.dataset} metric "
                        f"({', '.join(metrics)})")
    mode = section.get("mode", direction(metric))
    if mode not in ("min", "max"):
        raise FSRFError(f"{where}: mode: {mode!r} is not min or max")
    if mode != direction(metric):
        raise FSRFError(f"{where}: mode: {mode!r} contradicts {metric}, which is "
                        f"{'minimised' if direction(metric) == 'min' else 'maximised'}")
    return metric, mode


def _scheduler(section: Mapping[str, Any], base: Config, source: str) -> tuple[int, int]:
    where = f"{source}: scheduler"
    unknown = [k for k in section if k not in ("grace_period", "reduction_factor")]
    if unknown:
        raise FSRFError(f"{where}: unknown key {unknown[0]!r} (known: grace_period, reduction_factor)")
    grace, factor = section.get("grace_period", 1), section.get("reduction_factor", 3)
    for key, value, low in (("grace_period", grace, 1), ("reduction_factor", factor, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise FSRFError(f"{where}: {key}: {value!r} is not an integer >= {low}")
    if grace > base.train.epochs:
        raise FSRFError(f"{where}: grace_period: {grace} exceeds train.epochs={base.train.epochs}")
    return grace, factor


def _params(raw: Any, base: Config, fixed: Mapping[str, Any], source: str) -> tuple[Param, ...]:
    if not isinstance(raw, dict) or not raw:
        raise FSRFError(f"{source}: params: expected a non-empty mapping of dotted config paths")
    params: dict[str, Param] = {}
    for name, spec in raw.items():
        where = f"{source}: params: {name}"
        _known_path(name, base, f"{source}: params")
        if name in RESERVED:
            raise FSRFError(f"{where}: cannot be searched ({RESERVED[name]})")
        if name in fixed:
            raise FSRFError(f"{where}: is also under `fixed`; keep one")
        section, key = name.split(".")
        hint = typing.get_type_hints(type(getattr(base, section)))[key]
        params[name] = parse_param(name, spec, hint=hint, earlier=params, declared=list(raw), where=where)
    return tuple(params.values())


def _columns(raw: Any, params: tuple[Param, ...], source: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    names = {p.name for p in params}
    if not isinstance(raw, list) or any(c not in names for c in raw):
        bad = raw if not isinstance(raw, list) else next(c for c in raw if c not in names)
        raise FSRFError(f"{source}: columns: {bad!r} is not a list of params of this space")
    return tuple(raw)


__all__ = ["Param", "SearchSpace", "load_space"]
