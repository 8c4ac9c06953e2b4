"""The trial store's format and its single writer; see :mod:`tuning.store` for the layout."""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Self

import pyarrow as pa
import pyarrow.parquet as pq

from fsrf import FSRFError, atomic_write, git_commit

SCHEMA_VERSION = 1
"""Version of the row layout below; stored in every row and in every file's schema metadata."""

WAL_DIR = "wal"
PARTS_DIR = "parts"
WAL_SUFFIX = ".arrows"
PART_SUFFIX = ".parquet"
TMP_PREFIX = ".tmp-"
QUARANTINE_DIR = "quarantine"
"""Where files that cannot be read whole are moved (never deleted): ``quarantine/wal``, ``quarantine/parts``."""
CONFIG_PREFIX = "config."
STORE_DIR = "store"
"""The trial store's directory inside an experiment directory (``<storage>/<name>/store``)."""
META_PREFIX = "fsrf.store."

RESULT = "result"
LIFECYCLE_EVENTS = ("start", "restore", "complete", "pruned", "error", "discarded")
EVENTS = (RESULT, *LIFECYCLE_EVENTS)

TS_TYPE = pa.timestamp("us", tz="UTC")
BASE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("schema_version", pa.int64()),
    pa.field("experiment", pa.string()),
    pa.field("trial_id", pa.string()),
    pa.field("attempt", pa.int64()),
    pa.field("iteration", pa.int64()),
    pa.field("event", pa.string()),
    pa.field("message", pa.string()),
    pa.field("session", pa.string()),
    pa.field("seq", pa.int64()),
    pa.field("ts", TS_TYPE),
)
BASE_COLUMNS: frozenset[str] = frozenset(f.name for f in BASE_FIELDS)
SEGMENT_BYTES = 32 * 2**20
"""Default size at which a WAL segment is closed and compacted (~5,000 one-row batches)."""
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_VERSIONED = ("fsrf-tune", "pyarrow", "ray", "optuna", "torch", "pandas")


class TornSegmentWarning(UserWarning):
    """A WAL segment ended inside a record batch; every complete batch before it was kept."""


class StoreWriteError(FSRFError):
    """The store's disk refused a write (read-only, full, gone); the message is one line.

    Attributes:
        path: The file or directory that could not be written.
        errno: The OS error number (``errno.ENOSPC``, ``errno.EACCES``, ...), or None.
    """

    def __init__(self, path: Path, exc: OSError) -> None:
        self.path = Path(exc.filename) if getattr(exc, "filename", None) else Path(path)
        self.errno = exc.errno
        cause = exc.strerror or type(exc).__name__
        code = f"Errno {exc.errno}: " if exc.errno is not None else ""
        super().__init__(f"trial store: cannot write {self.path} ({code}{cause}); expected a writable "
                         "directory with free space")


def write_error(path: Path, exc: OSError) -> StoreWriteError:
    """``exc`` as a :class:`StoreWriteError` naming ``path`` (or the file the OS named)."""
    return exc if isinstance(exc, StoreWriteError) else StoreWriteError(path, exc)


# --- the type policy ---------------------------------------------------------------
def flatten_config(config: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted paths: ``{"loss": {"cmd": 1}}`` -> ``{"loss.cmd": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in (config or {}).items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def config_value(value: Any) -> Any:
    """A config value as stored: None/bool/int/float as is, anything else a string (lists as JSON)."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        value = value.tolist()  # numpy scalars (Optuna may hand out np.float64, np.bool_) and arrays
    if value is None or isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, numbers.Integral):
        value = int(value)
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def value_type(value: Any) -> pa.DataType:
    """The column type of one stored config value: bool, int64, float64, string or null."""
    if value is None:
        return pa.null()
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    return pa.string()


def merge_types(old: pa.DataType, new: pa.DataType) -> pa.DataType:
    """The type that holds both: null yields, int64 + float64 -> float64, any other mix -> string."""
    if old == new or pa.types.is_null(new):
        return old
    if pa.types.is_null(old):
        return new
    if {old, new} == {pa.int64(), pa.float64()}:
        return pa.float64()
    return pa.string()


def to_string(value: Any) -> str | None:
    """A value of a column that was widened to string (``true``/``false`` for bools, like Arrow's cast)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def is_metric(value: Any) -> bool:
    """Whether a reported value is stored: real numbers only (bools, strings, dicts are skipped)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def schema_metadata(*, experiment: str, session: str, base: Mapping[str, Any] | None = None) -> dict[bytes, bytes]:
    """Schema metadata of every file a session writes: schema version, experiment, versions, git
    commit and, when given, the search's base configuration (``base``: JSON, see
    :func:`tuning.store.read_base_config`)."""
    versions = {"python": sys.version.split()[0]}
    for name in _VERSIONED:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    meta = {
        "schema_version": str(SCHEMA_VERSION),
        "experiment": experiment,
        "session": session,
        "versions": json.dumps(versions, sort_keys=True),
        "git": json.dumps(git_commit()),  # null unless fsrf runs from a git checkout
    }
    if base is not None:
        meta["base_config"] = json.dumps(base, sort_keys=True, default=str)
    return {f"{META_PREFIX}{k}".encode(): v.encode() for k, v in meta.items()}


def new_session_id() -> str:
    """``20250102T030405123456Z-1a2b3c4d``: UTC start time and a short uuid, so names sort by start."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"


def visible(path: Path, suffix: str) -> bool:
    """Whether a directory entry is a store file (dot- and underscore-files are temp/hidden)."""
    return path.name.endswith(suffix) and not path.name.startswith((".", "_")) and path.is_file()


# --- files ------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a create, rename or unlink) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def scan_segment(path: Path) -> tuple[pa.Table | None, str | None]:
    """All complete record batches of a WAL segment, and what was wrong with the rest.

    Returns:
        ``(table, problem)``: ``table`` is None when the file holds no schema
        (empty, or torn inside the schema message); ``problem`` is None for a
        whole segment, else one line saying what was dropped.

    Raises:
        FileNotFoundError: the segment was removed (compacted) meanwhile.
    """
    with open(path, "rb") as f:
        try:
            reader = pa.ipc.open_stream(f)
        except (pa.ArrowException, OSError) as exc:
            if path.stat().st_size:
                return None, f"unreadable schema, segment skipped ({exc})"
            return None, None
        batches: list[pa.RecordBatch] = []
        try:
            for batch in reader:  # keep the batches read before a torn one
                batches.append(batch)  # noqa: PERF402
        except (pa.ArrowException, OSError) as exc:
            return (pa.Table.from_batches(batches, schema=reader.schema),
                    f"torn tail dropped after {len(batches)} complete batch(es) ({exc})")
        return pa.Table.from_batches(batches, schema=reader.schema), None


def read_segment(path: Path) -> pa.Table | None:
    """All complete record batches of a WAL segment (an Arrow IPC stream).

    A torn tail (the writer died inside a batch) is dropped with a
    :class:`TornSegmentWarning` naming the file. Returns None for a file that
    holds no schema yet (empty, or torn inside the schema message).

    Raises:
        FileNotFoundError: the segment was removed (compacted) meanwhile.
    """
    table, problem = scan_segment(path)
    if problem is not None:
        warnings.warn(f"trial store: {path}: {problem}", TornSegmentWarning, stacklevel=3)
    return table


def quarantine(root: Path, file: Path) -> Path:
    """Move ``file`` into ``root/quarantine/<its folder>/`` (never overwriting); returns its new path."""
    target_dir = root / QUARANTINE_DIR / file.parent.name
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / file.name
    n = 1
    while target.exists():
        n += 1
        target = target_dir / f"{file.stem}.{n}{file.suffix}"
    os.replace(file, target)
    fsync_dir(target_dir)
    fsync_dir(file.parent)
    return target


def publish_part(table: pa.Table, part: Path, *, fsync: bool = True) -> None:
    """Write a Parquet part atomically (:func:`fsrf.atomic_write`: temp file, fsync, rename, fsync the directory)."""
    atomic_write(part, lambda f: pq.write_table(table.combine_chunks(), f, compression="zstd"), fsync=fsync,
                 sync_dir=True)


def compact_segment(root: Path, wal: Path, *, fsync: bool = True) -> Path | None:
    """Turn a closed (or crashed) WAL segment into ``parts/<same name>.parquet``, then delete it.

    The WAL is deleted only once the part is durable; a part that already
    exists (a crash between publish and delete) is kept as is. A torn segment
    (its complete batches are in the part) is moved into ``quarantine/wal/``
    instead of deleted. Returns the part, or None when the segment held no rows.
    """
    part = root / PARTS_DIR / f"{wal.stem}{PART_SUFFIX}"
    problem = None
    if not part.exists():
        table, problem = scan_segment(wal)
        if problem is not None:
            warnings.warn(f"trial store: {wal}: {problem}", TornSegmentWarning, stacklevel=3)
        if table is None or table.num_rows == 0:
            part = None
        else:
            publish_part(table, part, fsync=fsync)
    if problem is not None:
        quarantine(root, wal)
        return part
    wal.unlink()
    if fsync:
        fsync_dir(wal.parent)
    return part


def conform_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: missing ones null, others cast to its types."""
    if table.schema.equals(schema):
        return table
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
        else:
            column = table[field.name]
            columns.append(column if column.type == field.type else column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def align_parts(root: Path, *, fsync: bool = True) -> list[Path]:
    """Give every Parquet part of the store the same schema: the union of all parts' columns.

    A session's part holds only the columns its rows brought; readers that take the schema
    from one file (``pd.read_parquet(dir)``, ``pq.read_table(dir)``, ``ds.dataset(dir)``) or
    refuse files that differ (polars, DuckDB without ``union_by_name``) then miss columns or
    fail. Each part lacking a column (or holding a narrower type, widened as the writer does) is
    rewritten atomically with nulls where it had no value, its own schema metadata kept. A part
    that cannot be read is left alone (``fsrf store check`` reports it).

    Returns:
        The parts rewritten.
    """
    parts_dir = root / PARTS_DIR
    if not parts_dir.is_dir():
        return []
    parts, schemas = [], []
    for part in sorted(p for p in parts_dir.iterdir() if visible(p, PART_SUFFIX)):
        try:
            schemas.append(pq.read_schema(part))
        except (pa.ArrowInvalid, OSError):
            continue
        parts.append(part)
    types: dict[str, pa.DataType] = {}
    for schema in schemas:
        for field in schema:
            old = types.get(field.name)
            types[field.name] = field.type if old is None else merge_types(old, field.type)
    target = list(types.items())
    rewritten = []
    for part, schema in zip(parts, schemas):
        if [(f.name, f.type) for f in schema] == target:
            continue
        table = pq.read_table(part)
        publish_part(conform_table(table, pa.schema(target, metadata=schema.metadata)), part, fsync=fsync)
        rewritten.append(part)
    return rewritten


# --- the writer ---------------------------------------------------------------------------
class TrialStoreWriter:
    """The single writer of a trial store: appends rows to this session's WAL segments.

    Every flush writes one record batch to ``wal/<session>-<n:04d>.arrows``
    and fsyncs it. A row that brings a column (or a wider type) the open
    segment lacks rolls to a new segment, whose schema is the old one plus the
    new columns. ``close`` compacts this session's segments to Parquet parts;
    so does a segment passing ``segment_bytes`` (which bounds both the WAL's
    disk use and its read cost: a one-row batch of ~110 columns is ~7 kB and
    ~60 us to read back). Opening a writer compacts stale WAL segments left by
    crashed sessions; at most one writer may be open on a store at a time.

    Example:
        >>> with TrialStoreWriter("runs/exp/store", experiment="exp") as w:  # doctest: +SKIP
        ...     w.event(trial_id="t1", attempt=1, event="start", config={"loss": {"cmd": 0.5}})
        ...     w.result(trial_id="t1", attempt=1, iteration=1, config={"loss": {"cmd": 0.5}},
        ...              metrics={"objective": 0.9})
    """

    def __init__(
        self, root: str | os.PathLike[str], *, experiment: str, flush_every: int = 1, fsync: bool = True,
        segment_bytes: int = SEGMENT_BYTES, base: Mapping[str, Any] | None = None,
    ) -> None:
        """Open (creating) the store at ``root`` and compact what crashed sessions left.

        Args:
            root: The store directory (``wal/`` and ``parts/`` are created in it).
            experiment: The experiment name stored in every row.
            flush_every: Rows buffered per record batch (1: every row is durable at once).
            fsync: fsync every flushed batch; False trades crash durability for speed.
            segment_bytes: Roll to a new segment, and compact the closed ones, once the
                open segment holds this many bytes.
            base: the search's base configuration (its base config with ``fixed`` applied, the
                ``fixed`` values, the run-level overrides), kept in every file's schema metadata.

        Raises:
            StoreWriteError: the disk refused to compact a crashed session's segments.
            FSRFError: ``root`` cannot be a store directory, or a bad argument.
        """
        if not experiment:
            raise FSRFError(f"trial store {root}: experiment must be a non-empty name")
        if flush_every < 1:
            raise FSRFError(f"trial store {root}: flush_every must be >= 1, got {flush_every}")
        self.root = Path(root)
        self.experiment = experiment
        self.flush_every = flush_every
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.session = new_session_id()
        try:
            for sub in (WAL_DIR, PARTS_DIR):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FSRFError(f"trial store {self.root}: cannot create wal/ and parts/ there, "
                            f"expected a writable directory ({exc.strerror})") from None
        self._meta = schema_metadata(experiment=experiment, session=self.session, base=base)
        self._types: dict[str, pa.DataType] = {f.name: f.type for f in BASE_FIELDS}
        self._dirty = True
        self._rows: list[dict[str, Any]] = []
        self._seq = 0
        self._segments = 0
        self._file: Any = None
        self._stream: pa.ipc.RecordBatchStreamWriter | None = None
        self._schema: pa.Schema | None = None
        self._groups: list[tuple[pa.DataType, list[str], list[int]]] = []
        self._unpublished: list[Path] = []  # closed segments of this session, not yet compacted
        self._closed = False
        self._failed: StoreWriteError | None = None
        with self._writing(self.root):
            self._compact_stale()

    # -- rows --------------------------------------------------------------------------------
    def result(
        self, *, trial_id: str, attempt: int, iteration: int, config: Mapping[str, Any] | None,
        metrics: Mapping[str, Any], message: str | None = None,
    ) -> None:
        """Append one reported result; non-numeric metric values are skipped.

        ``message`` is null for reported results; a result recovered from Tune's own
        files says where it came from.

        Raises:
            FSRFError: a metric name collides with a store column or the ``config.`` prefix.
        """
        row = self._row(trial_id, attempt, RESULT, int(iteration), message, config)
        types = self._types
        for key, value in metrics.items():
            if not is_metric(value):
                continue
            if key in BASE_COLUMNS or key.startswith(CONFIG_PREFIX):
                raise FSRFError(f"trial store {self.root}: metric {key!r} collides with a store column; "
                                f"expected a name outside {sorted(BASE_COLUMNS)} and 'config.*'")
            row[key] = float(value)
            old = types.get(key)
            if old is None:
                types[key] = pa.float64()
                self._dirty = True
        self._append(row)

    def event(
        self, *, trial_id: str, attempt: int, event: str, config: Mapping[str, Any] | None = None,
        iteration: int | None = None, message: str | None = None,
    ) -> None:
        """Append one lifecycle event (``start``, ``restore``, ``complete``, ``pruned``, ``error``)."""
        if event not in LIFECYCLE_EVENTS:
            raise FSRFError(f"trial store {self.root}: unknown event {event!r}; "
                            f"expected one of {', '.join(LIFECYCLE_EVENTS)}")
        it = None if iteration is None else int(iteration)
        self._append(self._row(trial_id, attempt, event, it, message, config))

    def _row(self, trial_id: str, attempt: int, event: str, iteration: int | None,
             message: str | None, config: Mapping[str, Any] | None) -> dict[str, Any]:
        if self._closed:
            raise RuntimeError(f"trial store writer for {self.root} is closed")
        self._seq += 1
        row: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "experiment": self.experiment, "trial_id": str(trial_id),
            "attempt": int(attempt), "iteration": iteration, "event": event, "message": message,
            "session": self.session, "seq": self._seq, "ts": time.time_ns() // 1000,
        }
        types = self._types
        for key, raw in flatten_config(config).items():
            name = f"{CONFIG_PREFIX}{key}"
            value = config_value(raw)
            new = value_type(value)
            old = types.get(name)
            if old is None:
                types[name] = new
                self._dirty = True
            elif old != new:
                merged = merge_types(old, new)
                if merged != old:
                    types[name] = merged
                    self._dirty = True
            row[name] = value
        return row

    def _append(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.flush_every:
            self.flush()

    # -- segments ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """Turn the OS refusing a write into one :class:`StoreWriteError` and remember it.

        After a refused write the open segment may end inside a batch, so the
        writer writes nothing more: every later flush raises the same error, and
        the segment stays in ``wal/`` for the next writer to compact (its complete
        batches are kept, see :func:`compact_segment`).
        """
        if self._failed is not None:
            raise self._failed
        try:
            yield
        except OSError as exc:  # pyarrow's ArrowIOError is an OSError too
            self._failed = write_error(path, exc)
            raise self._failed from None

    @property
    def failed(self) -> StoreWriteError | None:
        """The write the disk refused, if any (the writer then writes nothing more)."""
        return self._failed

    def flush(self) -> None:
        """Write the buffered rows as one record batch and make it durable.

        Raises:
            StoreWriteError: the disk refused the write (full, read-only); one line naming the file.
        """
        if not self._rows:
            return
        with self._writing(self.root / WAL_DIR):
            if self._stream is None or self._dirty:
                self._roll()
            assert self._stream is not None
            self._stream.write_batch(self._batch(self._rows))
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        self._rows.clear()
        if self._file.tell() >= self.segment_bytes:
            with self._writing(self.root / PARTS_DIR):
                self._close_segment()
                self._compact_closed()

    def _batch(self, rows: list[dict[str, Any]]) -> pa.RecordBatch:
        # One pa.array per column type, sliced per column: ~3x cheaper than one array per column.
        n = len(rows)
        columns: list[Any] = [None] * len(self._schema)  # type: ignore[arg-type]
        for typ, names, index in self._groups:
            values = [row.get(name) for name in names for row in rows]
            if typ == pa.string():
                values = [to_string(v) for v in values]
            array = pa.array(values, type=typ)
            for j, i in enumerate(index):
                columns[i] = array.slice(j * n, n)
        return pa.RecordBatch.from_arrays(columns, schema=self._schema)

    def _roll(self) -> None:
        self._close_segment()
        self._schema = pa.schema([pa.field(n, t) for n, t in self._types.items()], metadata=self._meta)
        groups: dict[pa.DataType, tuple[list[str], list[int]]] = {}
        for i, field in enumerate(self._schema):
            names, index = groups.setdefault(field.type, ([], []))
            names.append(field.name)
            index.append(i)
        self._groups = [(t, names, index) for t, (names, index) in groups.items()]
        self._segments += 1
        path = self.root / WAL_DIR / f"{self.session}-{self._segments:04d}{WAL_SUFFIX}"
        self._file = open(path, "xb")  # noqa: SIM115 - closed in _close_segment
        self._stream = pa.ipc.new_stream(self._file, self._schema)
        if self.fsync:
            fsync_dir(path.parent)
        self._dirty = False

    def _close_segment(self) -> None:
        if self._stream is None:
            return
        try:
            self._stream.close()
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        finally:
            self._unpublished.append(Path(self._file.name))
            self._file.close()
            self._stream = self._file = None

    def _compact_closed(self) -> None:
        while self._unpublished:
            compact_segment(self.root, self._unpublished[0], fsync=self.fsync)
            self._unpublished.pop(0)

    def _compact_stale(self) -> None:
        wal_dir, parts_dir = self.root / WAL_DIR, self.root / PARTS_DIR
        for tmp in parts_dir.glob(f"{TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)  # a compaction that died before its rename
        for wal in sorted(p for p in wal_dir.iterdir() if visible(p, WAL_SUFFIX)):
            if not wal.name.startswith(self.session):
                compact_segment(self.root, wal, fsync=self.fsync)

    def close(self) -> None:
        """Flush, close the open segment and compact this session's segments to Parquet.

        After a refused write, only the file handles are released (nothing more is
        written): the segments stay in ``wal/`` for the next writer.

        Raises:
            StoreWriteError: the disk refused the last rows or the compaction.
        """
        if self._closed:
            return
        if self._failed is not None:
            self._abandon()
            raise self._failed
        try:
            self.flush()
        except StoreWriteError:
            self._abandon()
            raise
        with self._writing(self.root / PARTS_DIR):
            try:
                self._close_segment()
            finally:
                self._closed = True
            self._compact_closed()
            align_parts(self.root, fsync=self.fsync)  # every part readable alone with every column

    def _abandon(self) -> None:
        self._closed = True
        file, self._stream, self._file = self._file, None, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

