"""Ray Tune's PBT and PB2 that leave a trial's last epoch alone (imports Ray; see ``tuning._pbt``).

Stock PBT perturbs a trial whenever ``perturbation_interval`` epochs have passed, also at its
last epoch: the exploiting trial then restarts from the other's final checkpoint under a new
config and trains nothing more, so its stored config names values it never trained with. Here
a result whose ``final_epoch`` is 1.0 (the epoch budget) just continues, unless another trial
is paused (in synchronous mode it may be waiting for this one at a perturbation epoch, which
only PBT's own handling of this result releases).
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2

from fsrf._constants import FINAL_EPOCH


def _last_epoch(tune_controller: Any, trial: Any, result: dict) -> bool:
    """Whether ``result`` is the trial's last epoch and no other trial waits (paused)."""
    return result.get(FINAL_EPOCH) == 1.0 and not any(
        t is not trial and t.status == "PAUSED" for t in tune_controller.get_trials()
    )


class FinalEpochPBT(PopulationBasedTraining):
    """``PopulationBasedTraining`` that never perturbs at a trial's last epoch."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Tune's hook: a last epoch continues (to its end), see :func:`_last_epoch`; the rest is PBT's."""
        if _last_epoch(tune_controller, trial, result):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class FinalEpochPB2(PB2):
    """``PB2`` that never perturbs at a trial's last epoch."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Tune's hook: a last epoch continues (to its end), see :func:`_last_epoch`; the rest is PB2's."""
        if _last_epoch(tune_controller, trial, result):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


__all__ = ["FinalEpochPB2", "FinalEpochPBT"]
