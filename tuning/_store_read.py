"""Readers of the trial store; see :mod:`tuning.store` for the layout. Readers never write.

Large stores are read in two passes: the small key columns first (to find which
rows are kept and in what order), then the other columns a few at a time, each
group decoded, gathered and freed before the next. Peak memory stays near the
size of the answer, and the process reuses the same freed pages, which matters
more than CPU on a small virtual machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Self

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fsrf import FSRFError
from tuning._store_write import (
    BASE_COLUMNS,
    CONFIG_PREFIX,
    META_PREFIX,
    PART_SUFFIX,
    PARTS_DIR,
    RESULT,
    STORE_DIR,
    WAL_DIR,
    WAL_SUFFIX,
    merge_types,
    read_segment,
    visible,
)
from tuning._store_write import conform_table as _conform

STATUS = {"complete": "COMPLETE", "pruned": "PRUNED", "error": "ERROR", "discarded": "DISCARDED"}
"""Terminal events and the status they give a trial; a trial without one is ``RUNNING``."""
KEYS = ["trial_id", "iteration", "attempt", "session", "seq", "event", "message"]
_GROUP = 8  # columns decoded per pass when gathering


class DamagedPartError(FSRFError):
    """A Parquet part cannot be read; the message names it and says how to repair the store.

    Attributes:
        path: The damaged file.
    """

    def __init__(self, path: Path, exc: BaseException) -> None:
        self.path = Path(path)
        detail = " ".join(str(exc).split())[:160]
        experiment = self.path.parent.parent
        if experiment.name == STORE_DIR:
            experiment = experiment.parent
        super().__init__(f"trial store: {self.path} is damaged ({type(exc).__name__}: {detail}); expected a "
                         f"readable Parquet part; run: fsrf store repair {experiment}")


def store_root(path: str | os.PathLike[str]) -> Path:
    """The store directory for ``path``: the store itself or an experiment directory holding ``store/``.

    Raises:
        FSRFError: ``path`` is missing, not a directory, or holds no store.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FSRFError(f"trial store {p}: no such directory; expected a store (wal/, parts/) "
                        f"or an experiment directory holding {STORE_DIR}/")
    if not p.is_dir():
        raise FSRFError(f"trial store {p}: not a directory; expected a store directory")
    if not ((p / WAL_DIR).is_dir() or (p / PARTS_DIR).is_dir()) and (p / STORE_DIR).is_dir():
        p = p / STORE_DIR
    if not ((p / WAL_DIR).is_dir() or (p / PARTS_DIR).is_dir()):
        raise FSRFError(f"trial store {p}: no wal/ or parts/ inside; expected a store written by "
                        f"tuning.store (or an experiment directory holding {STORE_DIR}/)")
    return p


def unify(schemas: Sequence[pa.Schema]) -> pa.Schema:
    """One schema for all segments: Arrow's permissive promotion, else the store's type policy.

    Arrow promotes null -> any and int64 -> float64; a mix it refuses (int64 and
    string after a config value changed kind) becomes string, as the writer does.
    """
    try:
        return pa.unify_schemas(list(schemas), promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        types: dict[str, pa.DataType] = {}
        for schema in schemas:
            for field in schema:
                old = types.get(field.name)
                types[field.name] = field.type if old is None else merge_types(old, field.type)
        return pa.schema(list(types.items()), metadata=schemas[-1].metadata)


class _Segment:
    """One Parquet part (read column by column) or WAL segment (read whole: it is small)."""

    def __init__(self, file: Path, part: Path) -> None:
        self._parquet: pq.ParquetFile | None = None
        self._table: pa.Table | None = None
        if file.suffix != PART_SUFFIX:
            try:
                self._table = read_segment(file)
            except FileNotFoundError:  # compacted since it was listed: its part exists now
                file = part
        self.file = file
        if file.suffix == PART_SUFFIX:
            try:
                self._parquet = pq.ParquetFile(file)
                self.schema = self._parquet.schema_arrow
                self.num_rows = self._parquet.metadata.num_rows
            except (pa.ArrowException, OSError) as exc:
                if self._parquet is not None:
                    self._parquet.close()
                raise DamagedPartError(file, exc) from None
        else:
            self.schema = self._table.schema if self._table is not None else pa.schema([])
            self.num_rows = self._table.num_rows if self._table is not None else 0

    def read(self, schema: pa.Schema) -> pa.Table:
        have = [name for name in schema.names if name in self.schema.names]
        if not have:
            table = pa.table({"_": pa.nulls(self.num_rows)}).drop_columns(["_"])
        elif self._parquet is not None:
            try:
                table = self._parquet.read(columns=have)
            except (pa.ArrowException, OSError) as exc:
                raise DamagedPartError(self.file, exc) from None
        else:
            table = self._table.select(have)  # type: ignore[union-attr]
        return _conform(table, schema)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()


class _Store:
    """The segments of a store, listed once, with one unified schema."""

    def __init__(self, path: str | os.PathLike[str], skip: Collection[Path] = ()) -> None:
        self.root = store_root(path)
        wal_dir, parts_dir = self.root / WAL_DIR, self.root / PARTS_DIR
        # List the WAL before the parts: a segment compacted in between is then seen as a part.
        skipped = {p.name for p in skip}
        wals = [p for p in wal_dir.iterdir() if visible(p, WAL_SUFFIX)] if wal_dir.is_dir() else []
        parts = [p for p in parts_dir.iterdir() if visible(p, PART_SUFFIX) and p.name not in skipped] \
            if parts_dir.is_dir() else []
        named = {p.stem: p for p in wals}
        named.update({p.stem: p for p in parts})  # a part wins over a WAL not yet deleted
        self.segments: list[_Segment] = []
        try:
            for name in sorted(named):  # session start, then roll order
                segment = _Segment(named[name], parts_dir / f"{name}{PART_SUFFIX}")
                if segment.num_rows:
                    self.segments.append(segment)
                else:
                    segment.close()
        except BaseException:
            self.close()
            raise
        self.schema = unify([s.schema for s in self.segments]) if self.segments else pa.schema([])

    def require_rows(self) -> None:
        if not self.segments:
            raise FSRFError(f"trial store {self.root}: empty; expected rows in {WAL_DIR}/*{WAL_SUFFIX} "
                            f"or {PARTS_DIR}/*{PART_SUFFIX}")

    def _group(self, names: Sequence[str]) -> pa.Table:
        schema = pa.schema([self.schema.field(n) for n in names])
        return pa.concat_tables([s.read(schema) for s in self.segments])

    def columns(self, names: Sequence[str], positions: pa.Array | None = None) -> pa.Table:
        """The named columns, every row in write order or those at ``positions``.

        Decoded a few columns per pass: ~2x faster than all at once on a 2-core VM.
        """
        columns: list[pa.ChunkedArray] = []
        for start in range(0, len(names), _GROUP):
            group = self._group(names[start:start + _GROUP])
            columns.extend((group if positions is None else group.take(positions)).columns)
        fields = [self.schema.field(n) for n in names]
        return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=self.schema.metadata))

    def close(self) -> None:
        for segment in self.segments:
            segment.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dedup_positions(keys: pa.Table) -> pa.Array:
    """Row numbers of the kept result rows, sorted by (trial_id, iteration).

    One row per (trial_id, iteration): the highest (attempt, session, seq) wins.
    """
    keys = keys.append_column("pos", pa.array(range(keys.num_rows), pa.int64()))
    discarded = pc.unique(keys.filter(pc.equal(keys["event"], "discarded"))["trial_id"].combine_chunks())
    keys = keys.filter(pc.equal(keys["event"], RESULT))
    if len(discarded):  # trials the restored experiment does not hold (see ArrowStoreCallback)
        keys = keys.filter(pc.invert(pc.is_in(keys["trial_id"], value_set=discarded)))
    keys = keys.set_column(1, "iteration", pc.fill_null(keys["iteration"], -1))
    order = pc.sort_indices(keys, sort_keys=[
        ("trial_id", "ascending"), ("iteration", "ascending"),
        ("attempt", "descending"), ("session", "descending"), ("seq", "descending"),
    ])
    keys = keys.select(["trial_id", "iteration", "pos"]).take(order).combine_chunks()
    n = keys.num_rows
    if n > 1:
        tid, it = keys["trial_id"], keys["iteration"]
        changed = pc.or_(pc.not_equal(tid.slice(1), tid.slice(0, n - 1)),
                         pc.not_equal(it.slice(1), it.slice(0, n - 1)))
        keys = keys.filter(pa.concat_arrays([pa.array([True]), changed.combine_chunks()]))
    return keys["pos"].combine_chunks()


def _last_per_trial(trial_ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Mask of the last row of each run of equal trial ids (the input is sorted by trial_id)."""
    tid = trial_ids.combine_chunks() if isinstance(trial_ids, pa.ChunkedArray) else trial_ids
    n = len(tid)
    if n == 0:
        return pa.array([], pa.bool_())
    return pa.concat_arrays([pc.not_equal(tid.slice(0, n - 1), tid.slice(1)), pa.array([True])])


def read_events(path: str | os.PathLike[str]) -> pa.Table:
    """Every row the store holds (results and lifecycle events), unified, in write order.

    Args:
        path: The store directory, or an experiment directory holding ``store/``.

    Raises:
        DamagedPartError: a Parquet part cannot be read (one line naming it).
        FSRFError: ``path`` is missing, holds no store, or the store is empty.
    """
    with _Store(path) as store:
        store.require_rows()
        return store.columns(store.schema.names)


def read_results(path: str | os.PathLike[str]) -> pa.Table:
    """Result rows, each (trial_id, iteration) once, sorted by trial_id then iteration.

    A row re-reported after a restore replaces the earlier one: the row with the
    highest (attempt, session, seq) wins. Columns are the store's, unified over
    all segments (a column missing from older segments reads as null).

    Args:
        path: The store directory, or an experiment directory holding ``store/``.

    Raises:
        DamagedPartError: a Parquet part cannot be read (one line naming it).
        FSRFError: ``path`` is missing, holds no store, or the store is empty.
    """
    with _Store(path) as store:
        store.require_rows()
        keep = _dedup_positions(store.columns(KEYS))
        return store.columns(store.schema.names, keep)


def read_trials(path: str | os.PathLike[str], *, skip: Collection[Path] = ()) -> pa.Table:
    """One row per trial, sorted by trial_id.

    Columns: ``trial_id``; ``status`` (``COMPLETE``, ``PRUNED``, ``ERROR`` from the
    trial's last lifecycle event, ``RUNNING`` when that is not a terminal one);
    ``attempts`` (distinct attempt numbers); ``iterations`` (highest result
    iteration); ``error`` (message of the last error event); the trial's
    ``config.*`` columns (from its last ``start`` or ``result`` row); and the
    metric columns of its last de-duplicated result (null for a trial without results).
    Trials marked ``discarded`` (started before a driver crash, absent from the
    restored experiment) are left out here and in :func:`read_results`; their
    rows stay in the files and in :func:`read_events`.

    Args:
        path: The store directory, or an experiment directory holding ``store/``.
        skip: Parquet parts to leave out (damaged ones, see ``tuning._store_repair``).

    Raises:
        DamagedPartError: a Parquet part cannot be read (one line naming it).
        FSRFError: ``path`` is missing, holds no store, or the store is empty.
    """
    with _Store(path, skip) as store:
        store.require_rows()
        names = store.schema.names
        configs = [c for c in names if c.startswith(CONFIG_PREFIX)]
        metrics = [c for c in names if c not in BASE_COLUMNS and not c.startswith(CONFIG_PREFIX)]
        keys = store.columns(KEYS)
        kept = _dedup_positions(keys)
        keys = keys.append_column("pos", pa.array(range(keys.num_rows), pa.int64()))
        ordered = keys.take(pc.sort_indices(keys, sort_keys=[
            ("trial_id", "ascending"), ("attempt", "ascending"),
            ("session", "ascending"), ("seq", "ascending"),
        ]))
        trials = pc.unique(ordered["trial_id"].combine_chunks())

        def last(rows: pa.Table) -> pa.Table:  # each trial's last row of ``rows``, aligned to ``trials``
            rows = rows.filter(_last_per_trial(rows["trial_id"]))
            return rows.take(pc.index_in(trials, value_set=rows["trial_id"].combine_chunks()))

        event = ordered["event"]
        life = last(ordered.filter(pc.is_in(event, value_set=pa.array(["start", "restore", *STATUS]))))
        errors = last(ordered.filter(pc.equal(event, "error")))
        with_config = last(ordered.filter(pc.is_in(event, value_set=pa.array(["start", RESULT]))))
        attempts = ordered.group_by("trial_id").aggregate([("attempt", "count_distinct")])
        attempts = attempts.take(pc.index_in(trials, value_set=attempts["trial_id"].combine_chunks()))
        final = last(keys.select(["trial_id", "iteration", "pos"]).take(kept))

        table: dict[str, pa.Array | pa.ChunkedArray] = {
            "trial_id": trials,
            "status": pa.array([STATUS.get(e, "RUNNING") for e in life["event"].to_pylist()], pa.string()),
            "attempts": attempts["attempt_count_distinct"].cast(pa.int64()),
            "iterations": final["iteration"],
            "error": errors["message"],
        }
        for part, rows in ((configs, with_config), (metrics, final)):
            gathered = store.columns(part, pc.fill_null(rows["pos"], 0))
            valid = pc.is_valid(rows["pos"])
            for name in part:  # a trial without such a row gets nulls
                column, typ = gathered[name], gathered[name].type
                null = pa.nulls(1, typ)[0]
                table[name] = column if pa.types.is_null(typ) else pc.if_else(valid, column, null)
        result = pa.table(table)
        return result.filter(pc.not_equal(result["status"], STATUS["discarded"]))


def read_base_config(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The search's base configuration the store keeps (its base config with ``fixed`` applied,
    the ``fixed`` values and the run-level overrides; the newest session's), or None for a store
    written without it.

    Args:
        path: The store directory, or an experiment directory holding ``store/``.
    """
    root = store_root(path)
    key = f"{META_PREFIX}base_config".encode()
    files = sorted(p for p in (root / PARTS_DIR).glob(f"*{PART_SUFFIX}") if visible(p, PART_SUFFIX))
    files += sorted(p for p in (root / WAL_DIR).glob(f"*{WAL_SUFFIX}") if visible(p, WAL_SUFFIX))
    found = None
    for file in files:  # names sort by session start: the newest session's wins
        try:
            meta = (pq.read_schema(file) if file.suffix == PART_SUFFIX else read_segment(file).schema).metadata
        except (OSError, pa.ArrowException):  # a damaged file is check/repair's business, not this reader's
            meta = None
        if meta and key in meta:
            found = json.loads(meta[key])
    return found


def read_attempts(path: str | os.PathLike[str]) -> dict[str, int]:
    """Each trial's highest attempt number so far; ``{}`` for a missing or empty store.

    Raises:
        DamagedPartError: a Parquet part cannot be read (one line naming it).
    """
    try:
        store = _Store(path)
    except DamagedPartError:
        raise
    except FSRFError:
        return {}
    with store:
        if not store.segments:
            return {}
        grouped = store.columns(["trial_id", "attempt"]).group_by("trial_id").aggregate([("attempt", "max")])
    return dict(zip(grouped["trial_id"].to_pylist(), grouped["attempt_max"].to_pylist()))
