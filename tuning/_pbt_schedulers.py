"""Ray Tune's PBT and PB2 that leave a trial's last epoch alone (imports Ray; see ``tuning._pbt``).

Stock PBT perturbs a trial whenever ``perturbation_interval`` epochs have passed, also at its
last epoch: the exploiting trial then restarts from the other's final checkpoint under a new
config and trains nothing more, so its stored config names values it never trained with. Here
a trial at its last epoch (a result whose ``final_epoch`` is 1.0) never exploits: the result
just continues when no other trial is paused, and otherwise goes through PBT's synchronous
bookkeeping (another trial may be waiting for this one at a perturbation epoch, and only that
releases it) with the trial left out of the lower quantile. This overrides a private method of
Ray's ``PopulationBasedTraining`` (``_checkpoint_or_exploit``); ``tests/test_pbt.py`` runs it.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2

from fsrf.constants import FINAL_EPOCH


class _LastEpochAlone:
    """The mixin of :class:`FinalEpochPBT` and :class:`FinalEpochPB2`."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Tune's hook: a last epoch with no trial paused continues (to its end); the rest is PBT's."""
        if result.get(FINAL_EPOCH) == 1.0 and not any(
            t is not trial and t.status == "PAUSED" for t in tune_controller.get_trials()
        ):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]

    def _checkpoint_or_exploit(self, trial: Any, tune_controller: Any, upper_quantile: list,
                               lower_quantile: list) -> None:
        last = self._trial_state[trial].last_result or {}  # type: ignore[attr-defined]
        if last.get(FINAL_EPOCH) == 1.0:  # it ends here: nothing to exploit for
            lower_quantile = [t for t in lower_quantile if t is not trial]
        super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)  # type: ignore[misc]


class FinalEpochPBT(_LastEpochAlone, PopulationBasedTraining):
    """``PopulationBasedTraining`` that never perturbs a trial at its last epoch."""


class FinalEpochPB2(_LastEpochAlone, PB2):
    """``PB2`` that never perturbs a trial at its last epoch."""


__all__ = ["FinalEpochPB2", "FinalEpochPBT"]
