"""TensorBoard event files with one tag scheme for ``fsrf train`` and every search trial.

A run's (or a trial's) folder gets:

* scalars: every numeric key of the epoch record (:func:`fsrf.train.train`'s history rows, e.g.
  ``objective``, ``best_objective`` (the objective of the best selectable epoch so far: the one
  definition of a run's value, the one the leaderboards rank by), ``valid/robust/MAE``,
  ``train/missing_rate``, ``train/loss/task``) at step = epoch;
* an HParams session: the run's parameters at its start; at its end ``trial/pruned`` (1 when a
  scheduler stopped it before its last epoch, else 0), ``trial/epochs`` and the session status
  (success; unknown for pruned, as HParams has no such status; failure for an error).

:func:`write_hparams_config` writes the experiment's HParams columns once, in the log root:
every parameter of the search space (conditional ones included, so a column exists even when
the first trials did not sample it) and the metrics above. Nothing of the tuner's internals is
written (Ray's own TensorBoard logger is not used).

Writing uses ``torch.utils.tensorboard`` and the HParams protos of the ``tensorboard`` package;
neither needs TensorFlow.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from fsrf._constants import BEST_OBJECTIVE, EPOCH, OBJECTIVE

PRUNED_TAG: Final = "trial/pruned"
"""Scalar tag written at a run's end: 1.0 when a scheduler stopped it early, else 0.0."""
EPOCHS_TAG: Final = "trial/epochs"
"""Scalar tag written at a run's end: the epochs it trained."""
HPARAMS_METRICS: Final = (BEST_OBJECTIVE, OBJECTIVE, PRUNED_TAG, EPOCHS_TAG)
"""The metric columns of the HParams table, in order."""
END_STATUSES: Final = ("complete", "pruned", "error")


def hparam_value(value: Any) -> bool | int | float | str | None:
    """A value HParams can show: numbers and strings as they are, lists and None as text."""
    if isinstance(value, bool | int | float | str):
        return value
    if value is None:
        return None
    return str(value)


def _plugin_summary(tag: str, data: Any) -> Any:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
    return summary


def _writer(logdir: Path, purge_step: int | None = None) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(logdir), purge_step=purge_step)


def _domain(spec: Any) -> Any:
    from tensorboard.plugins.hparams import summary_v2 as hp

    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(v, int | float) for v in spec):
        low, high = spec
        if isinstance(low, int) and isinstance(high, int):
            return hp.IntInterval(low, high)
        return hp.RealInterval(float(low), float(high))
    if isinstance(spec, list) and spec and len({type(v) for v in spec}) == 1 and isinstance(spec[0], bool | int | float | str):
        return hp.Discrete(spec)
    return None


def write_hparams_config(logdir: str | Path, *, params: Mapping[str, Any],
                         metrics: Iterable[str] = HPARAMS_METRICS) -> None:
    """Write the HParams experiment (its columns) into ``logdir`` itself, once.

    Args:
        logdir: the folder TensorBoard is pointed at; each run writes in a subfolder.
        params: every parameter a session may carry, name -> its domain: ``(low, high)`` (ints:
            an integer range), a list of choices of one type, or None (no domain shown).
        metrics: the scalar tags shown as metric columns.
    """
    from tensorboard.plugins.hparams import summary_v2 as hp

    root = Path(logdir)
    marker = root / ".hparams_config"
    if marker.exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    pb = hp.hparams_config_pb([hp.HParam(name, _domain(spec)) for name, spec in params.items()],
                              [hp.Metric(tag) for tag in metrics])
    writer = _writer(root)
    try:
        writer._get_file_writer().add_summary(pb)
        writer.flush()
    finally:
        writer.close()
    marker.write_text("written\n")


class TensorBoardLog:
    """One run's event files: epoch scalars and its HParams session.

    Args:
        logdir: the run's folder (created).
        purge_step: the first epoch this session writes; TensorBoard drops events at or after
            it that an earlier (interrupted) session wrote, so a resumed run has no duplicates.
    """

    def __init__(self, logdir: str | Path, *, purge_step: int | None = None) -> None:
        self.logdir = Path(logdir)
        self._writer = _writer(self.logdir, purge_step)
        self._epochs = 0

    def start(self, params: Mapping[str, Any], *, session: str) -> None:
        """Write the HParams session start (once per run: a resumed run keeps its first one).

        Args:
            params: the run's parameters (name -> value); None values are left out.
            session: the session's name (the trial id or run folder).
        """
        from tensorboard.plugins.hparams import summary_v2 as hp

        marker = self.logdir / ".hparams_session"
        if marker.exists():
            return
        values = {k: v for k, v in ((k, hparam_value(v)) for k, v in params.items()) if v is not None}
        self._writer._get_file_writer().add_summary(hp.hparams_pb(values, trial_id=session))
        self._writer.flush()
        marker.write_text(session + "\n")

    def epoch(self, record: Mapping[str, Any]) -> None:
        """Write one epoch's record (its numeric values) at step ``record["epoch"]``."""
        step = int(record[EPOCH])
        self._epochs = max(self._epochs, step)
        for key, value in record.items():
            if key != EPOCH and isinstance(value, int | float) and not isinstance(value, bool):
                self._writer.add_scalar(key, float(value), step)
        self._writer.flush()

    def end(self, status: str, *, epochs: int | None = None) -> None:
        """Write the session's end (``complete``, ``pruned`` or ``error``) and close the files."""
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        if status not in END_STATUSES:
            raise ValueError(f"status {status!r}: expected one of {END_STATUSES}")
        step = epochs or self._epochs
        self._writer.add_scalar(PRUNED_TAG, 1.0 if status == "pruned" else 0.0, step)
        self._writer.add_scalar(EPOCHS_TAG, float(step), step)
        # HParams has no "stopped early" status: pruned is told by trial/pruned, its status is unknown
        code = {"complete": api_pb2.STATUS_SUCCESS, "pruned": api_pb2.STATUS_UNKNOWN,
                "error": api_pb2.STATUS_FAILURE}[status]
        data = plugin_data_pb2.HParamsPluginData(
            version=metadata.PLUGIN_DATA_VERSION,
            session_end_info=plugin_data_pb2.SessionEndInfo(status=code, end_time_secs=time.time()),
        )
        self._writer._get_file_writer().add_summary(_plugin_summary(metadata.SESSION_END_INFO_TAG, data))
        self.close()

    def close(self) -> None:
        """Flush and close the event file (safe to call twice)."""
        self._writer.close()


__all__ = ["EPOCHS_TAG", "HPARAMS_METRICS", "PRUNED_TAG", "TensorBoardLog",
           "write_hparams_config"]
