"""A search's TensorBoard files, written by the driver with ``fsrf train``'s tag scheme.

``<experiment>/tensorboard/`` holds the HParams columns of the experiment (every parameter of
the space, conditional ones included, and the metrics ``best_objective``, ``objective``,
``trial/pruned``, ``trial/epochs``) and one folder per trial (``trial_<id>``): the epoch
records as scalars under the same tags ``fsrf train`` writes, and an HParams session with the
trial's sampled values, ended as complete, pruned (stopped by the scheduler before its last
epoch: ``trial/pruned`` = 1, session status unknown) or error. Ray's own TensorBoard logger is
replaced (its tags carry a ``ray/tune/`` prefix, its scalars Ray's timings, and its HParams
columns come from one trial); Ray's CSV and JSON loggers stay (the store's repair reads them).

The class is built on first access (``TensorBoardCallback``), so importing this module does
not import Ray. ``fsrf tune`` always uses it; view with ``tensorboard --logdir <experiment>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsrf import TensorBoardLog, write_hparams_config
from fsrf.constants import EPOCH, FINAL_EPOCH, TENSORBOARD_DIR
from tuning._lazy import lazy_class
from tuning.space import SearchSpace

# Ray's result keys that are not the trainer's epoch record (timings, ids, bookkeeping).
_RAY_KEYS = frozenset({
    "config", "done", "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s",
    "time_total_s", "pid", "hostname", "node_ip", "time_since_restore", "iterations_since_restore",
    "checkpoint_dir_name", "should_checkpoint", "experiment_tag", "episodes_total", "timesteps_total",
    "timesteps_since_restore",
})


class _TensorBoardHooks:
    """The driver's TensorBoard writer (mixed into Ray's ``TBXLoggerCallback`` on first access).

    Args:
        root: ``<experiment>/tensorboard``.
        params: every parameter of the space (the HParams columns), name -> domain (see
            :func:`hparams_domains`).
    """

    def __init__(self, root: str | Path, *, params: Mapping[str, Any]) -> None:
        # Ray's TBXLoggerCallback.__init__ (it imports tensorboardX) is deliberately not called.
        self.root = Path(root)
        self.params = dict(params)
        self._logs: dict[str, TensorBoardLog] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config (tuner.pkl); open event files stay with this process.
        return {**self.__dict__, "_logs": {}}

    def setup(self, *args: Any, **kwargs: Any) -> None:
        write_hparams_config(self.root, params=self.params)

    def _log(self, trial: Any, iteration: int) -> TensorBoardLog:
        log = self._logs.get(trial.trial_id)
        if log is None:  # first result of this driver session: epochs from `iteration` on replace older ones
            log = TensorBoardLog(self.root / f"trial_{trial.trial_id}", purge_step=iteration)
            log.start({k: trial.config[k] for k in self.params if k in trial.config}, session=trial.trial_id)
            self._logs[trial.trial_id] = log
        return log

    def log_trial_start(self, trial: Any) -> None:
        return None

    def log_trial_restore(self, trial: Any) -> None:
        return None

    def log_trial_save(self, trial: Any) -> None:
        return None

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        """One epoch: the trainer's record (Ray's keys left out) at step = epoch."""
        epoch = result.get(EPOCH, result.get("training_iteration"))
        if not isinstance(epoch, int | float):
            return
        record = {k: v for k, v in result.items() if k not in _RAY_KEYS}
        record[EPOCH] = epoch
        self._log(trial, int(epoch)).epoch(record)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        """complete, pruned (no final epoch in its last result) or error; closes the files."""
        last = trial.last_result or {}
        log = self._logs.pop(trial.trial_id, None)
        if log is None:
            if not last:
                return
            log = self._log(trial, int(last.get("training_iteration", 1)))
            self._logs.pop(trial.trial_id, None)
        status = "error" if failed else ("complete" if last.get(FINAL_EPOCH) == 1.0 else "pruned")
        epochs = last.get(EPOCH, last.get("training_iteration"))
        log.end(status, epochs=int(epochs) if isinstance(epochs, int | float) else None)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()


if TYPE_CHECKING:
    from ray.tune.logger import TBXLoggerCallback

    class TensorBoardCallback(_TensorBoardHooks, TBXLoggerCallback):
        ...


def hparams_domains(space: SearchSpace) -> dict[str, Any]:
    """Each searched parameter's HParams domain: its range (widened to its "off" value) or choices."""
    out: dict[str, Any] = {}
    for param in space.params:
        if param.kind == "choice":
            out[param.name] = list(param.choices)
        else:
            low, high = param.low, param.high
            if param.off_value is not None:
                low = min(low, param.off_value)
            out[param.name] = (low, high) if param.kind == "int" else (float(low), float(high))
    return out


def tensorboard_root(experiment: str | Path) -> Path:
    """``<experiment>/tensorboard``, where a search's event files go."""
    return Path(experiment) / TENSORBOARD_DIR


def __getattr__(name: str) -> Any:
    """``TensorBoardCallback`` is built on first access: importing Ray costs a second."""
    return lazy_class(globals(), name, wanted="TensorBoardCallback", hooks=_TensorBoardHooks,
                      base="ray.tune.logger.TBXLoggerCallback")
