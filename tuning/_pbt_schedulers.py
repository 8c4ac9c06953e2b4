"""Ray Tune's PBT and PB2, kept synchronous across a resume, that leave a trial's last epoch
alone (imports Ray; see ``tuning._pbt``).

Four behaviours of Ray's synchronous ``PopulationBasedTraining`` (and ``PB2``) are changed here:

* **The last epoch.** Stock PBT perturbs a trial whenever ``perturbation_interval`` epochs have
  passed, also at its last epoch, and lets any trial of the upper quantile be cloned: a trial
  that exploits a checkpoint of a last epoch restarts under a new config and trains nothing
  more, so it ends on its own earlier result (stored as pruned) and its stored config names
  values it never trained with. Here a trial whose latest result is its last epoch (a result
  whose ``final_epoch`` is 1.0) is in neither quantile: it never exploits and is never cloned.
  Such a result just continues when no other trial is paused, and otherwise goes through PBT's
  synchronous bookkeeping (another trial may be waiting for this one at a perturbation epoch,
  and only that releases it).
* **A resume.** Tune does not save a scheduler's state with the experiment: after
  ``Tuner.restore`` every trial starts again from its latest checkpoint (the trials may stand at
  different epochs: one waiting at a perturbation epoch, another still short of it) under a
  fresh PBT clock that counts from epoch 0. Stock PBT then perturbs at the first result of each
  trial, whatever its epoch, comparing scores of different epochs, and may hand a trial's
  last-epoch checkpoint to a trial still short of it. Here a trial restored from a checkpoint
  gets its clock back (its epoch, the perturbation epoch it last passed, the score of its
  checkpoint's result), the population's next synchronisation point is the first perturbation
  epoch past the least advanced trial, and the restored trials wait (paused) until the
  scheduler picks them: only those short of that point run, and the population perturbs there
  together, as an uninterrupted search would have. PB2's model then sees one point per restored
  trial (its restored epoch and score) and the points after the resume; the points before the
  driver died are not rebuilt. A trial Tune retries after a failure gets its clock back too
  (stock PBT restarts it at epoch 0 as well), without waiting: it was running.
* **The snapshot after an exploit.** An exploit hands the trial another's checkpoint by editing
  the trial's checkpoint bookkeeping, which Tune serialises through a cache that only the trial's
  next result clears; a snapshot of the experiment in between (the trial restarted, no result
  yet) recorded the perturbed config with the trial's own pre-exploit checkpoint, and a resume
  from it restarted the trial from a checkpoint of another config (which ``fsrf.train`` refuses,
  failing the trial). Here the cache is cleared at the exploit.
* **Randomness.** Stock PBT draws its exploit partners and perturbations from Python's global
  ``random``, resamples values through Tune's domains from NumPy's global generator, and PB2's GP
  bandit starts its optimiser from NumPy's global generator too: seeding them would reseed the
  whole driver, not seeding them leaves ``--seed`` short of the perturbations. Here the scheduler
  owns both generators, seeded by ``--seed``, and swaps them in only while it draws (the driver's
  global generators are left as they were), so a seed fixes the perturbations (given the same
  order of results).

This overrides methods of Ray's that are not public API (``_checkpoint_or_exploit``,
``_get_new_config``), edits Tune's trial bookkeeping (``run_metadata.invalidate_cache``, a trial's
status in ``on_trial_add``, which Tune calls before it files a new or restored trial by status,
and after it has filed a retried one), and reads the PBT state Ray keeps per trial;
``tests/test_pbt.py`` runs all of it through real Tune searches, a killed-and-resumed one included.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2

from fsrf.constants import FINAL_EPOCH


class _OwnRandom:
    """Python's and NumPy's global generators swapped for a seeded pair while in use (re-entrant)."""

    def __init__(self, seed: int) -> None:
        self._states = (random.Random(seed).getstate(), np.random.RandomState(seed).get_state())
        self._outer: tuple[Any, Any] | None = None
        self._depth = 0

    def __enter__(self) -> None:
        if not self._depth:
            self._outer = (random.getstate(), np.random.get_state())
            random.setstate(self._states[0])
            np.random.set_state(self._states[1])
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if not self._depth and self._outer is not None:
            self._states = (random.getstate(), np.random.get_state())
            random.setstate(self._outer[0])
            np.random.set_state(self._outer[1])
            self._outer = None


class _Synchronised:
    """The mixin of :class:`FinalEpochPBT` and :class:`FinalEpochPB2`."""

    def __init__(self, *, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._random = _OwnRandom(seed)
        self._retried: set[str] = set()

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        """Tune's hook: a failed trial; Tune adds it again (``on_trial_add``) when it retries it."""
        self._retried.add(trial.trial_id)
        super().on_trial_error(tune_controller, trial)  # type: ignore[misc]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """Tune's hook: a trial restarted from a checkpoint (``--resume``, or Tune retrying a failed
        trial) gets its PBT clock back; a restored one waits, paused, until the scheduler picks it."""
        retried = trial.trial_id in self._retried
        self._retried.discard(trial.trial_id)
        super().on_trial_add(tune_controller, trial)  # type: ignore[misc]
        restored = trial.latest_checkpoint_result
        metrics = dict(restored.metrics or {}) if restored is not None else {}
        epoch = metrics.get(self._time_attr)  # type: ignore[attr-defined]
        if trial.status != Trial.PENDING or not isinstance(epoch, (int, float)) or epoch < 1:
            return
        epoch = int(epoch)
        interval = self._perturbation_interval  # type: ignore[attr-defined]
        state = self._trial_state[trial]  # type: ignore[attr-defined]
        if self._metric in metrics:  # type: ignore[attr-defined]
            self._save_trial_state(state, epoch, metrics, trial)  # type: ignore[attr-defined]
        state.last_train_time = epoch
        state.last_perturbation_time = epoch - epoch % interval
        live = [s.last_train_time for t, s in self._trial_state.items()  # type: ignore[attr-defined]
                if not t.is_finished()]
        self._next_perturbation_sync = max(  # type: ignore[attr-defined]
            (min(live) // interval + 1) * interval, self._burn_in_period)  # type: ignore[attr-defined]
        if not retried:
            # Paused, a trial is started only by `choose_trial_to_run` (those short of the next
            # synchronisation point); pending, Tune would start every restored trial at once. A
            # retried trial is already filed as pending (it was running: short of that point).
            trial.set_status(Trial.PAUSED)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Tune's hook: a last epoch with no trial paused continues (to its end); the rest is PBT's."""
        if result.get(FINAL_EPOCH) == 1.0 and not any(
            t is not trial and t.status == Trial.PAUSED for t in tune_controller.get_trials()
        ):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]

    def _checkpoint_or_exploit(self, trial: Any, tune_controller: Any, upper_quantile: list,
                               lower_quantile: list) -> None:
        """PBT's step for ``trial`` with the trials at their last epoch out of both quantiles."""
        states = self._trial_state  # type: ignore[attr-defined]

        def going_on(t: Any) -> bool:
            return (states[t].last_result or {}).get(FINAL_EPOCH) != 1.0

        upper_quantile = [t for t in upper_quantile if going_on(t)]
        lower_quantile = [t for t in lower_quantile if going_on(t)] if upper_quantile else []
        with self._random:  # the partner to clone is drawn here, the new config in `_get_new_config`
            super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)  # type: ignore[misc]
        # An exploit swaps the trial's checkpoint inside its run metadata, whose JSON Tune caches
        # until the trial's next result: an experiment snapshot taken in between would pair the
        # new config with the trial's own old checkpoint, and a resume would restore that pair.
        trial.run_metadata.invalidate_cache()

    def _get_new_config(self, trial: Any, trial_to_clone: Any) -> tuple[dict, dict]:
        """PBT's explore (or PB2's GP bandit) drawing from the scheduler's own generators."""
        with self._random:
            return super()._get_new_config(trial, trial_to_clone)  # type: ignore[misc]


class FinalEpochPBT(_Synchronised, PopulationBasedTraining):
    """``PopulationBasedTraining`` that stays synchronous across a resume and leaves last epochs alone."""


class FinalEpochPB2(_Synchronised, PB2):
    """``PB2`` that stays synchronous across a resume and leaves last epochs alone."""


__all__ = ["FinalEpochPB2", "FinalEpochPBT"]
