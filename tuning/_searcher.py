"""OptunaSearch that tells Optuna the truth about trials the scheduler stopped.

Ray's stock ``OptunaSearch`` tells a trial that ASHA stopped early as COMPLETE,
with the low-budget value it had when stopped, and TPE then learns from a mix
of low- and full-fidelity scores. Here such a trial reaches the study as
PRUNED, carrying its intermediate values, including the last one, which Tune
does not pass to ``on_trial_result`` when the scheduler stops a trial.

A trial counts as finished when its last report carries ``final_epoch == 1``
(its epoch budget or its own early stopping); any other ending without an
error is a scheduler stop.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from fsrf.constants import FINAL_EPOCH

logger = logging.getLogger(__name__)


class PruneAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose scheduler-stopped trials are PRUNED in the study.

    Args are those of :class:`ray.tune.search.optuna.OptunaSearch`, plus
    ``final_key``: the result key that is 1.0 in a trial's last report.
    """

    def __init__(self, *args: Any, final_key: str = FINAL_EPOCH, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._final_key = final_key

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped = (
            not error
            and result is not None
            and not isinstance(self.metric, list)
            and result.get(self._final_key) != 1.0
            and trial_id in self._ot_trials
            and trial_id not in self._completed_trials
        )
        if not stopped:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        ot_trial = self._ot_trials[trial_id]
        value, step = result.get(self.metric), result.get("training_iteration")
        if value is not None and step is not None:
            with warnings.catch_warnings():  # Optuna warns when that step was already reported
                warnings.simplefilter("ignore")
                ot_trial.report(float(value), int(step))
        try:
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 (as the parent: never kill the search over a tell)
            logger.warning("could not tell trial %s as pruned: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    @property
    def study(self):
        """The Optuna study this searcher asks and tells (in memory, named after the experiment)."""
        return self._ot_study
