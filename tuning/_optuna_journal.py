"""A live Optuna journal of a running search, for ``optuna-dashboard``.

The driver appends each trial to ``<experiment>/optuna.journal`` (Optuna's
``JournalFileBackend``) when it ends (complete, pruned or error), so
``optuna-dashboard <experiment>/optuna.journal`` watches a search while it runs. Each trial
carries the parameters the space drew (switches included, conditional ones only where drawn)
with their distributions, the objective per epoch as intermediate values, its real start and
end times, and as its value the one definition of a trial's value: ``best_objective`` (its best
selectable epoch's objective; with ``--multi-objective`` that epoch's pair of
``objective_complete``, ``objective``). The study is named after the experiment, its metric
names set. Trials appear in the order they ended; a trial that errored is FAIL.

A resumed search appends to the same journal and skips the trials it already holds. Epochs a
killed driver never saw are missing from a resumed trial's intermediate values; ``fsrf analyze
EXP --to-optuna FILE`` rebuilds a complete study from the trial store at any time.

The class is built on first access (``OptunaJournalCallback``), so importing this module does not
import Ray.
"""

from __future__ import annotations

import datetime
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsrf.constants import BEST_OBJECTIVE, COMPLETE_OBJECTIVE, FINAL_EPOCH, OBJECTIVE
from tuning._lazy import lazy_class
from tuning.space import SearchSpace

JOURNAL_FILE = "optuna.journal"


class _JournalHooks:
    """Appends ended trials to an Optuna journal (mixed into ``ray.tune.Callback`` on access).

    Args:
        path: the journal file.
        space: the search space (parameters and the objective's direction).
        study_name: the experiment's name.
        multi_objective: a ``--multi-objective`` search (two values per trial).
    """

    def __init__(self, path: str | Path, *, space: SearchSpace, study_name: str, multi_objective: bool) -> None:
        self.path = Path(path)
        self.space = space
        self.study_name = study_name
        self.multi_objective = multi_objective
        self._study: Any = None
        self._done: set[str] = set()
        self._seen: dict[str, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config (tuner.pkl); the open storage stays with this process.
        return {**self.__dict__, "_study": None, "_done": set(), "_seen": {}}

    def _open(self) -> Any:
        if self._study is None:
            import optuna
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            storage = JournalStorage(JournalFileBackend(str(self.path)))
            direction = "minimize" if self.space.mode == "min" else "maximize"
            keys = [COMPLETE_OBJECTIVE, OBJECTIVE] if self.multi_objective else [OBJECTIVE]
            self._study = optuna.create_study(storage=storage, study_name=self.study_name, load_if_exists=True,
                                              directions=[direction] * len(keys))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._study.set_metric_names(keys)
            self._done = {t.user_attrs.get("trial_id") for t in self._study.get_trials(deepcopy=False)}
        return self._study

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self._open()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Note when the trial started (its first start in this driver session)."""
        self._seen.setdefault(trial.trial_id, {"start": datetime.datetime.now(), "epochs": {}})

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        """Keep the epoch's objective(s) and the time, for the trial's end."""
        seen = self._seen.setdefault(trial.trial_id, {"start": datetime.datetime.now(), "epochs": {}})
        step = result.get("training_iteration")
        if isinstance(step, int):
            seen["epochs"][step] = {k: result.get(k) for k in (OBJECTIVE, COMPLETE_OBJECTIVE, BEST_OBJECTIVE)}

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """COMPLETE (its last epoch reported ``final_epoch``) or PRUNED."""
        last = trial.last_result or {}
        self._add(trial, "COMPLETE" if last.get(FINAL_EPOCH) == 1.0 else "PRUNED")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """FAIL."""
        self._add(trial, "FAIL")

    def _values(self, epochs: dict[int, dict[str, Any]], last: dict[str, Any]) -> list[float] | None:
        best = last.get(BEST_OBJECTIVE)
        if not self.multi_objective:
            return [float(best)] if isinstance(best, int | float) and math.isfinite(best) else None
        sign = 1.0 if self.space.mode == "min" else -1.0
        scored = [e for e in epochs.values()
                  if all(isinstance(e.get(k), int | float) and math.isfinite(e[k]) for k in (OBJECTIVE, COMPLETE_OBJECTIVE))]
        if not scored:
            return None
        top = min(scored, key=lambda e: sign * float(e[OBJECTIVE]))
        return [float(top[COMPLETE_OBJECTIVE]), float(top[OBJECTIVE])]

    def _add(self, trial: Any, state_name: str) -> None:
        import optuna
        from optuna.trial import TrialState

        study = self._open()
        if trial.trial_id in self._done:
            return
        seen = self._seen.pop(trial.trial_id, {"start": datetime.datetime.now(), "epochs": {}})
        last = trial.last_result or {}
        state = getattr(TrialState, state_name)
        values = self._values(seen["epochs"], last)
        if state == TrialState.COMPLETE and values is None:
            state = TrialState.FAIL  # finished without a finite objective
        if state == TrialState.FAIL or (self.multi_objective and state == TrialState.PRUNED):
            values = None
        try:
            params, dists = self.space.optuna_params(dict(trial.config))
        except Exception as err:  # noqa: BLE001 - a config the space cannot replay: the trial without params
            warnings.warn(f"{self.path}: trial {trial.trial_id}'s config is not one the space draws "
                          f"({str(err).splitlines()[0][:160]}); journaled without parameters", stacklevel=2)
            params, dists = {}, {}
        intermediate = {} if self.multi_objective else {
            step: float(e[OBJECTIVE]) for step, e in seen["epochs"].items()
            if isinstance(e.get(OBJECTIVE), int | float) and math.isfinite(e[OBJECTIVE])}
        attrs = {"trial_id": trial.trial_id, "status": {"FAIL": "ERROR"}.get(state.name, state.name),
                 "epochs": int(last.get("training_iteration") or 0), "value": "best epoch's objective"}
        if isinstance(last.get(OBJECTIVE), int | float):
            attrs["last_objective"] = float(last[OBJECTIVE])
        frozen = optuna.trial.create_trial(state=state, values=values, params=params, distributions=dists,
                                           user_attrs=attrs, intermediate_values=intermediate or None)
        frozen.datetime_start = seen["start"]
        frozen.datetime_complete = datetime.datetime.now()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.add_trial(frozen)
        self._done.add(trial.trial_id)


if TYPE_CHECKING:
    from ray.tune import Callback

    class OptunaJournalCallback(_JournalHooks, Callback):
        ...


def __getattr__(name: str) -> Any:
    """``OptunaJournalCallback`` is built on first access: importing Ray costs a second."""
    return lazy_class(globals(), name, wanted="OptunaJournalCallback", hooks=_JournalHooks,
                      base="ray.tune.Callback")
