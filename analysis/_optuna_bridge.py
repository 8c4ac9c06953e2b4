"""The Optuna bridge: an experiment's trials as an Optuna study (for ``optuna-dashboard``, importance).

Each trial becomes a :class:`optuna.trial.FrozenTrial` with the parameters the space
drew for it and their distributions (the ``<name>:off`` switches included; conditional
params only where they were sampled), the objective per epoch as intermediate values,
and its state: COMPLETE and PRUNED, ERROR -> FAIL, RUNNING -> RUNNING. A trial's value is
the one the leaderboard ranks by: its **best epoch's** objective (the project's one
definition of a trial's value); the last epoch's is kept in ``user_attrs["last_objective"]``.
With ``--multi-objective`` the values are the best epoch's (by the robust objective) pair.
Trials are added in the order they ran (their first report), with their real start and
completion times (first and last report), and the study's metric names are set. Store
attributes go to ``user_attrs`` (``trial_id``, ``status``, ``epochs``, ``error``).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import optuna
import pyarrow.compute as pc
from optuna.trial import TrialState

from analysis._export import search_space
from analysis._leaderboard import metric_mode
from analysis._load import Experiment
from fsrf import FSRFError
from fsrf.constants import COMPLETE_OBJECTIVE, OBJECTIVE
from tuning import trial_config

STATES = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "ERROR": TrialState.FAIL,
          "RUNNING": TrialState.RUNNING}


def _naive(moment: Any) -> Any:
    """A stored UTC timestamp as the naive local time Optuna keeps (as ``datetime.now()`` gives)."""
    return moment.astimezone().replace(tzinfo=None) if getattr(moment, "tzinfo", None) else moment


def _first_ts(rows: list[dict[str, Any]]) -> Any:
    """When a trial first reported (a trial that never did sorts last)."""
    times = [r["ts"] for r in rows if r["ts"] is not None]
    return (0, min(times)) if times else (1, None)


def open_storage(storage: str | os.PathLike[str] | None) -> Any:
    """An Optuna storage: None (in memory), an RDB URL (``sqlite:///study.db``) or a journal file path."""
    if storage is None:
        return optuna.storages.InMemoryStorage()
    text = str(storage)
    if "://" in text:
        try:
            return optuna.storages.RDBStorage(text)
        except Exception as err:  # noqa: BLE001 (SQLAlchemy's errors are long; keep one line)
            raise FSRFError(f"--to-optuna: cannot open {text} ({str(err).splitlines()[0][:200]})") from None
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    try:
        return JournalStorage(JournalFileBackend(os.path.expanduser(text)))
    except OSError as err:
        raise FSRFError(f"--to-optuna: cannot open journal file {text} ({err.strerror})") from None


def to_optuna(exp: Experiment, storage: str | os.PathLike[str] | None = None, *,
              space: str | os.PathLike[str] | None = None) -> optuna.Study:
    """Write the experiment's trials into an Optuna study named after the experiment, and return it.

    A study of that name already in ``storage`` is replaced (it is derived from the store).
    A search run with ``--multi-objective`` gives a two-objective study
    (``objective_complete``, ``objective``), as the search's own study was.

    Args:
        exp: the experiment.
        storage: ``sqlite:///study.db`` (any RDB URL), a journal file path, or None (in memory).
        space: a space file to use instead of the experiment's own.

    Raises:
        FSRFError: no space file, a storage that cannot be opened, or a stored config
            the space cannot draw (one line).
    """
    searched = search_space(exp, space)
    multi = bool(exp.options.get("multi_objective")) and COMPLETE_OBJECTIVE in exp.metrics
    keys = [COMPLETE_OBJECTIVE, OBJECTIVE] if multi else [OBJECTIVE]
    if OBJECTIVE not in exp.metrics:
        raise FSRFError(f"--to-optuna: experiment {exp.name!r} reports no {OBJECTIVE!r}")
    mode = metric_mode(exp, OBJECTIVE)
    direction = "minimize" if mode == "min" else "maximize"
    store = open_storage(storage)
    if exp.name in [s.study_name for s in optuna.study.get_all_study_summaries(store)]:
        optuna.delete_study(study_name=exp.name, storage=store)
    study = optuna.create_study(storage=store, study_name=exp.name, directions=[direction] * len(keys))
    study.set_user_attr("fsrf.store", exp.path)
    study.set_user_attr("fsrf.space", str(searched.source))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(keys)
    results = exp.results.select(["trial_id", "iteration", "ts", *keys])
    per_trial: dict[str, list[dict[str, Any]]] = {}
    for row in results.filter(pc.is_valid(results[OBJECTIVE])).to_pylist():
        per_trial.setdefault(row["trial_id"], []).append(row)
    trials = []
    sign = 1.0 if mode == "min" else -1.0
    ran = sorted(exp.trials.to_pylist(), key=lambda t: (_first_ts(per_trial.get(t["trial_id"], [])), t["trial_id"]))
    for trial in ran:
        trial_id, status = trial["trial_id"], trial["status"]
        params, dists = searched.optuna_params(trial_config(trial), f"{exp.name}: trial {trial_id}")
        rows = [r for r in per_trial.get(trial_id, [])
                if all(math.isfinite(r[k]) for k in keys if r[k] is not None)]
        intermediate = {int(r["iteration"]): float(r[OBJECTIVE]) for r in rows if r["iteration"] is not None}
        last = rows[-1] if rows else None
        scored = [r for r in rows if all(r[k] is not None for k in keys)]
        best = min(scored, key=lambda r: sign * float(r[OBJECTIVE])) if scored else None
        values = None if best is None else [float(best[k]) for k in keys]
        state = STATES[status]
        if state == TrialState.COMPLETE and values is None:
            state = TrialState.FAIL  # finished without a finite objective: Optuna cannot hold it as complete
        if state not in (TrialState.COMPLETE, TrialState.PRUNED) or (multi and state == TrialState.PRUNED):
            values = None
        attrs = {"trial_id": trial_id, "status": status, "epochs": trial["iterations"] or 0,
                 "value": "best epoch's objective"}
        if best is not None:
            attrs["best_epoch"] = int(best["iteration"])
        if last is not None and last[OBJECTIVE] is not None:
            attrs["last_objective"] = float(last[OBJECTIVE])
        if trial["error"]:
            attrs["error"] = trial["error"]
        frozen = optuna.trial.create_trial(
            state=state, values=values, params=params, distributions=dists, user_attrs=attrs,
            intermediate_values=intermediate if not multi else None,
        )
        times = [_naive(r["ts"]) for r in per_trial.get(trial_id, []) if r["ts"] is not None]
        if times:
            frozen.datetime_start = min(times)
            frozen.datetime_complete = max(times)
        if state == TrialState.RUNNING:
            frozen.datetime_complete = None
        trials.append(frozen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.add_trials(trials)
    return study
