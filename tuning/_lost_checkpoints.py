"""Restored trials never restart from a checkpoint that storage no longer holds.

Tune keeps ``num_to_keep`` checkpoints per trial and deletes older ones as new
ones arrive, but it snapshots the experiment state (which records each trial's
checkpoints) only every few seconds, forcing a snapshot only *after* the
deletion. A driver killed in between (a crash, a lost head node, SIGKILL) is
restored with trials whose recorded latest checkpoint is gone; Tune then fails
them ("Could not recover from checkpoint as it does not exist on storage
anymore") on every retry, and a resumable search ends with errored trials.

:class:`LostCheckpointGuard` runs when a trial's actor has started and before
Tune schedules its restore: it drops the recorded checkpoints that storage no
longer holds, so the trial restarts from its newest surviving recorded
checkpoint, or from epoch 1 when none survives. Results carry the epoch as their
iteration (``tuning.trainable``), so the store's de-duplicated view keeps one row
per epoch either way.

This reads and edits Tune's per-trial checkpoint bookkeeping
(``trial.run_metadata.checkpoint_manager``), which is not public API; a Ray
without it gets one warning and Tune's own behaviour.
"""

from __future__ import annotations

import warnings
from typing import Any

import pyarrow.fs as pafs
from ray.tune import Callback


def _exists(checkpoint: Any) -> bool:
    try:
        return checkpoint.filesystem.get_file_info(checkpoint.path).type != pafs.FileType.NotFound
    except OSError:  # storage unreachable: let Tune report that itself
        return True


def forget_lost_checkpoints(trial: Any) -> str | None:
    """Drop ``trial``'s recorded checkpoints that storage no longer holds.

    Returns:
        A message when the checkpoint the trial would restore from was gone, else None.
    """
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result
    if latest is None:
        return None
    kept = [result for result in manager._checkpoint_results if _exists(result.checkpoint)]
    manager._checkpoint_results = kept
    if _exists(latest.checkpoint):
        return None
    manager._latest_checkpoint_result = kept[-1] if kept else None
    restart = f"from {kept[-1].checkpoint.path}" if kept else "from epoch 1"
    return f"trial {trial.trial_id}: recorded checkpoint {latest.checkpoint.path} is gone; restarting {restart}"


class LostCheckpointGuard(Callback):
    """A Tune callback: see the module's docstring."""

    def __init__(self) -> None:
        self._broken = False

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Called after the trial's actor started and before Tune restores it."""
        if self._broken:
            return
        try:
            message = forget_lost_checkpoints(trial)
        except AttributeError as err:  # another Ray's internals
            self._broken = True
            warnings.warn(f"fsrf tune: cannot check restored checkpoints on this Ray ({err})", stacklevel=2)
            return
        if message:
            print(f"fsrf tune: {message}", flush=True)


__all__ = ["LostCheckpointGuard", "forget_lost_checkpoints"]
