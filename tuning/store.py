"""The trial store: every Tune trial result in Apache Arrow files, crash-safe, one writer.

This module (with ``_store_write`` and ``_store_read``, which it re-exports) is the
only code that knows the format. Layout of a store directory (by convention
``<storage>/<experiment>/store/``)::

    wal/<session>-<n:04d>.arrows     Arrow IPC *stream*, appended and fsynced per flush
    parts/<session>-<n:04d>.parquet  the same rows, once the segment is closed (immutable)
    quarantine/{wal,parts}/...       files that could not be read whole (torn, damaged), moved aside

``session`` is the writer's UTC start time and a short uuid
(``20250102T030405123456Z-1a2b3c4d``), so names sort by start time. A writer (one per
driver start) rolls to a new segment when a row brings a column the open segment lacks,
or when the open segment reaches ``segment_bytes`` (32 MiB, ~5,000 one-row batches).
Closing the writer, and a roll on size, compact the closed segments to Parquet (temp
file, fsync, rename, fsync directory, then the WAL is deleted); segments of a crashed driver stay in ``wal/`` (a torn tail
loses only the batch being written) and the next writer compacts them. Nothing is
rewritten in place. Files whose names start with ``.`` or ``_`` are temporary.

Rows (one wide table): ``schema_version`` int64, ``experiment``, ``trial_id`` strings,
``attempt`` int64 (1 for a trial's first start, +1 per restart), ``iteration`` int64
(null for events without one), ``event`` (``result``, ``start``, ``restore``,
``complete``, ``pruned``, ``error``), ``message`` (the error's first line),
``session``, ``seq`` int64 (monotonic per writer), ``ts`` timestamp[us, UTC]; then
``config.<dotted.path>`` (bool, int64, float64, or string; lists as JSON) and one
float64 column per numeric reported key (``objective``, ``valid/robust/MAE``, ...; a
population-based search adds the followed schedule, ``schedule/rate/e0001``, ..., see ``tuning._pbt``).
Every file's schema metadata holds ``fsrf.store.schema_version`` and
``fsrf.store.versions`` (Python, pyarrow, Ray, Optuna, torch).

Reading with pyarrow or pandas alone (rows as written: events included, not de-duplicated;
:func:`read_results` filters and de-duplicates). Compacted parts::

    import pathlib, pyarrow as pa, pyarrow.dataset as ds, pyarrow.parquet as pq
    files = sorted(str(p) for p in pathlib.Path(root, "parts").glob("[!._]*.parquet"))
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    df = ds.dataset(files, format="parquet", schema=schema).to_table().to_pandas()

(``ds.dataset(f"{root}/parts", format="parquet")`` also works, but takes its columns
from the first file only.) A live, not yet compacted WAL segment::

    import pyarrow as pa
    with pa.ipc.open_stream(pa.OSFile(str(wal_file))) as reader:
        table = reader.read_all()  # raises on a torn tail; read_events() keeps its complete batches
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsrf.constants import FINAL_EPOCH
from tuning import _store_read
from tuning._lazy import lazy_class
from tuning._remote import MIRROR_PERIOD_S, is_uri, mirror, store_copy
from tuning._store_read import STATUS, read_attempts, read_base_config, store_root
from tuning._store_write import (
    BASE_COLUMNS,
    CONFIG_PREFIX,
    EVENTS,
    SCHEMA_VERSION,
    STORE_DIR,
    StoreWriteError,
    TornSegmentWarning,
    TrialStoreWriter,
    is_metric,
)

_WRITE_FAULTS: dict[str, StoreWriteError] = {}
"""The write each store's callback could not make in this process, by store directory."""


def write_fault(root: str | os.PathLike[str]) -> StoreWriteError | None:
    """The write the disk refused to the store callback of ``root`` in this process, if any."""
    return _WRITE_FAULTS.get(str(Path(root)))


def clear_write_fault(root: str | os.PathLike[str]) -> None:
    """Forget :func:`write_fault` of ``root`` (a new search on it starts)."""
    _WRITE_FAULTS.pop(str(Path(root)), None)

__all__ = [
    "CONFIG_PREFIX",
    "EVENTS",
    "SCHEMA_VERSION",
    "STATUS",
    "STORE_DIR",
    "ArrowStoreCallback",
    "StoreWriteError",
    "TornSegmentWarning",
    "TrialStoreWriter",
    "read_base_config",
    "read_events",
    "read_results",
    "read_trials",
    "store_root",
]


def _reader(name: str):
    local = getattr(_store_read, name)

    def read(path: str | os.PathLike[str]) -> Any:
        if is_uri(path):
            with store_copy(str(path)) as tmp:
                return local(tmp)
        return local(path)

    read.__name__ = read.__qualname__ = name
    read.__doc__ = (local.__doc__ or "") + "\n    ``path`` may also be an object-store URI (``s3://...``).\n"
    return read


read_results = _reader("read_results")
read_events = _reader("read_events")
read_trials = _reader("read_trials")


def _guarded(hook: Callable[..., None]) -> Callable[..., None]:
    """A Tune hook that does nothing after a refused write, and records the first one."""

    @functools.wraps(hook)
    def guarded(self: _StoreHooks, *args: Any, **kwargs: Any) -> None:
        if self._fault is not None:
            return
        try:
            hook(self, *args, **kwargs)
        except StoreWriteError as exc:
            self._failed(exc)

    return guarded


class _StoreHooks:
    """The single writer of a trial store, as a Tune callback in the driver.

    ``ArrowStoreCallback`` is this class mixed into ``ray.tune.Callback``; it is
    built on first access, so importing this module does not import Ray.

    Attempts: a trial's rows carry ``attempt`` = 1 at its first start and one
    more at every later start. Tune calls ``on_trial_start`` for each actor
    start (first start, retry after ``on_trial_recover``, resume after pause,
    driver restore), so the number grows there and only there;
    ``on_trial_recover``/``on_trial_restore`` write a ``restore`` event under the
    attempt that failed or is being restored. On setup the callback reads each
    trial's highest attempt from the store, so numbering continues across
    driver restarts; the store is the source of truth (no callback state).

    Faults of the disk: the first write the disk refuses (read-only, full) is
    recorded (see :func:`write_fault`) with one line on stderr, the callback
    writes nothing more, and it stops the search the way Ctrl-C does (SIGUSR1,
    Tune's own interrupt: the experiment is saved with its trials checkpointed).
    Rows it could not write are in Tune's per-trial ``result.json`` files, from
    which ``--resume`` recovers them (see ``tuning._store_repair``).

    Example:
        >>> RunConfig(callbacks=[ArrowStoreCallback(exp / "store", experiment="exp")])  # doctest: +SKIP
    """

    def __init__(
        self, root: str | os.PathLike[str], *, experiment: str, flush_every: int = 1, fsync: bool = True,
        final_key: str | None = FINAL_EPOCH,
        mirror_to: str | None = None,
        base: dict[str, Any] | None = None,
    ) -> None:
        """Configure; the writer opens in :meth:`setup`.

        Args:
            root: The store directory.
            experiment: The experiment name stored in every row.
            flush_every: Rows per fsynced record batch (see :class:`TrialStoreWriter`).
            fsync: fsync every batch.
            final_key: The result key that is 1.0 in a trial's last epoch; a trial that
                ends without it is ``pruned``. None: every ended trial is ``complete``.
            mirror_to: An object-store URI that receives a copy of ``root`` every
                ``MIRROR_PERIOD_S`` seconds and at the end (see ``tuning._remote``).
            base: The search's base configuration, kept in every file's schema metadata
                (:func:`read_base_config` reads it back).
        """
        self.root = Path(root)
        self.experiment = experiment
        self.flush_every = flush_every
        self.fsync = fsync
        self.final_key = final_key
        self.mirror_to = mirror_to
        self.base = base
        self._mirrored = 0.0
        self._writer: TrialStoreWriter | None = None
        self._attempts: dict[str, int] = {}
        self._skipped: set[str] = set()
        self._fault: StoreWriteError | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config (tuner.pkl); an open writer stays with this process.
        state = self.__dict__.copy()
        state.update(_writer=None, _attempts={}, _skipped=set(), _fault=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_fault", None)

    def _failed(self, exc: StoreWriteError) -> None:
        """Record the refused write once, stop writing, and interrupt the search like Ctrl-C."""
        if self._fault is not None:
            return
        self._fault = exc
        _WRITE_FAULTS[str(self.root)] = exc
        if self._writer is not None:
            with contextlib.suppress(StoreWriteError):
                self._writer.close()  # releases the files only; the WAL stays for the next writer
        print(f"fsrf tune: error: {exc}; stopping the search (trials are checkpointed)", file=sys.stderr,
              flush=True)
        handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if callable(handler):  # Tune's interrupt handler: saves the experiment and stops the loop
            os.kill(os.getpid(), signal.SIGUSR1)

    def _open(self) -> TrialStoreWriter:
        if self._writer is None or self._writer.closed:
            self._writer = TrialStoreWriter(
                self.root, experiment=self.experiment, flush_every=self.flush_every, fsync=self.fsync,
                base=getattr(self, "base", None),  # callbacks pickled before this attribute existed
            )
            self._attempts = read_attempts(self.root)
        return self._writer

    def _attempt(self, trial_id: str, *, start: bool = False) -> int:
        # A new attempt at every start (and for a trial never seen, which Tune does not produce).
        if start or trial_id not in self._attempts:
            self._attempts[trial_id] = self._attempts.get(trial_id, 0) + 1
        return self._attempts[trial_id]

    # -- Tune hooks (called in the driver) ---------------------------------------------------
    @_guarded
    def setup(
        self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any
    ) -> None:
        """Open the writer (compacting a crashed session's WAL) and learn the attempts so far."""
        self._open()

    @_guarded
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A (re)started trial: a new attempt and a ``start`` event with its config."""
        writer = self._open()
        attempt = self._attempt(trial.trial_id, start=True)
        writer.event(trial_id=trial.trial_id, attempt=attempt, event="start", config=trial.config)

    @_guarded
    def on_trial_restore(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A ``restore`` event (the attempt was counted at the start before it)."""
        self._lifecycle(trial, "restore")

    @_guarded
    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A failed trial that Tune retries: ``restore`` with the error; its next start is a new attempt."""
        self._lifecycle(trial, "restore", message=error_line(trial))

    @_guarded
    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        """A result row: every numeric top-level entry of ``result`` except ``config``."""
        writer = self._open()
        metrics = {}
        for key, value in result.items():
            if key == "config" or not is_metric(value):
                continue
            if key in BASE_COLUMNS or key.startswith(CONFIG_PREFIX):
                if key not in self._skipped:
                    self._skipped.add(key)
                    warnings.warn(f"trial store {self.root}: reported key {key!r} is a store column "
                                  f"name; not stored", stacklevel=2)
                continue
            metrics[key] = value
        writer.result(trial_id=trial.trial_id, attempt=self._attempt(trial.trial_id),
                      iteration=int(result["training_iteration"]), config=trial.config, metrics=metrics)
        self._maybe_mirror()

    def _maybe_mirror(self, *, now: bool = False) -> None:
        if self.mirror_to is None or (not now and time.monotonic() - self._mirrored < MIRROR_PERIOD_S):
            return
        if self._writer is not None and not self._writer.closed:
            self._writer.flush()
        mirror(self.root, self.mirror_to, delete=True)  # the store location holds our files only
        self._mirrored = time.monotonic()

    @_guarded
    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """``complete`` if the last result has ``final_key`` == 1.0 (or no key is set), else ``pruned``."""
        last = trial.last_result or {}
        done = self.final_key is None or last.get(self.final_key) == 1.0
        self._lifecycle(trial, "complete" if done else "pruned")

    @_guarded
    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """An ``error`` event carrying the first line of the trial's exception."""
        self._lifecycle(trial, "error", message=error_line(trial))

    @_guarded
    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Mark trials the experiment does not hold as ``discarded``, then close the writer.

        A driver killed before Tune snapshotted a newly started trial leaves that
        trial's rows in the store but not in the restored experiment, which draws
        its sample again. Its rows stay (nothing is deleted); the readers leave
        discarded trials out, so the store shows exactly the experiment's trials.
        """
        writer = self._open()
        known = {t.trial_id for t in trials}
        for trial_id in sorted(set(read_attempts(self.root)) | set(self._attempts)):
            if trial_id not in known:
                writer.event(trial_id=trial_id, attempt=self._attempt(trial_id), event="discarded",
                             message="started before the driver died, absent from the restored experiment")
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._maybe_mirror(now=True)

    def _lifecycle(self, trial: Any, event: str, message: str | None = None) -> None:
        writer = self._open()
        last = trial.last_result or {}
        it = last.get("training_iteration")
        writer.event(trial_id=trial.trial_id, attempt=self._attempt(trial.trial_id), event=event,
                     iteration=it if isinstance(it, int) else None, message=message)
        self._maybe_mirror()


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)): ?(.*)$")


def error_line(trial: Any) -> str | None:
    """``"ValueError: boom"``: the type and first message line of a trial's last exception.

    Read from the text of Tune's ``error.txt`` (a traceback; Ray's task errors end
    with the cause's own ``module.Type: message`` line), never by unpickling
    Tune's pickled copy. Never raises; None when Tune recorded nothing.
    """
    try:
        local = trial.error_file
        text = Path(local).read_text() if local and os.path.exists(local) else (trial.get_error() or "")
    except Exception:  # noqa: BLE001 - a message is a nicety; never fail the experiment for it
        return None
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Failure # ")]
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match:
            return f"{match.group(1)}: {match.group(2)}".rstrip(": ")
    return lines[-1].strip() if lines else None


if TYPE_CHECKING:
    from ray.tune import Callback

    class ArrowStoreCallback(_StoreHooks, Callback):
        ...


def __getattr__(name: str) -> Any:
    """``ArrowStoreCallback`` is built on first access: importing Ray costs a second."""
    return lazy_class(globals(), name, wanted="ArrowStoreCallback", hooks=_StoreHooks,
                      base="ray.tune.Callback")

