"""Faults of the trial store: find them, quarantine what cannot be read, recover rows from Tune.

The store is not the only record of a search: Tune keeps its own per-trial
``result.json`` (every reported result, one JSON object a line) and the trials'
statuses in ``experiment_state-*.json``. This module compares the store with
them and repairs it:

* :func:`check_store` reports damaged Parquet parts, torn WAL segments, results
  Tune holds that the store lost, iterations neither holds (a gap, named
  explicitly), and trials whose status disagrees with Tune's.
* :func:`repair_store` moves what cannot be read into ``store/quarantine/``
  (never deletes it), compacts the WAL (a torn segment's complete batches are
  kept, the original quarantined), and :func:`reconcile` writes the results and
  terminal events the store lost, recovered from Tune's files.
* :func:`preflight` is the check a search runs before any Ray work: the store
  is writable and its parts can be read, else one line saying what to do.

``fsrf store check|repair <experiment>`` is :func:`main`. Nothing here imports Ray.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fsrf import FSRFError
from fsrf.constants import FINAL_EPOCH
from tuning._store_read import (
    STATUS,
    STORE_DIR,
    DamagedPartError,
    _Store,
    read_attempts,
    read_trials,
    store_root,
)
from tuning._store_write import (
    BASE_COLUMNS,
    CONFIG_PREFIX,
    PART_SUFFIX,
    PARTS_DIR,
    QUARANTINE_DIR,
    RESULT,
    WAL_DIR,
    WAL_SUFFIX,
    TrialStoreWriter,
    align_parts,
    is_metric,
    quarantine,
    scan_segment,
    visible,
    write_error,
)

RESULT_FILE = "result.json"
TUNE_STATE_GLOB = "experiment_state-*.json"
TERMINAL = {"TERMINATED", "ERROR"}
"""Tune's statuses of a trial that will not run again."""


# --- Tune's own files --------------------------------------------------------------------
@dataclass
class TuneTrial:
    """One trial as Tune recorded it."""

    trial_id: str
    status: str | None
    """Tune's status (TERMINATED, ERROR, RUNNING, PENDING, PAUSED); None without a readable state file."""
    directory: Path
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    """The last ``result.json`` row of each training iteration."""


def _tune_statuses(exp: Path) -> dict[str, tuple[str, str]] | None:
    """trial_id -> (status, trial directory name) from Tune's newest experiment state, or None.

    The file is Tune's (``experiment_state-<time>.json``: ``trial_data`` holds one
    ``[trial JSON, runtime JSON]`` pair per trial); only ``trial_id``, ``status``
    and ``relative_logdir`` are read, and any other shape reads as None.
    """
    states = sorted(exp.glob(TUNE_STATE_GLOB), key=lambda p: (p.stat().st_mtime, p.name))
    if not states:
        return None
    try:
        data = json.loads(states[-1].read_text())
        out = {}
        for pair in data["trial_data"]:
            trial = json.loads(pair[0]) if isinstance(pair[0], str) else pair[0]
            trial_id = str(trial["trial_id"])
            out[trial_id] = (str(trial["status"]), str(trial.get("relative_logdir") or f"trial_{trial_id}"))
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def read_result_file(path: Path) -> dict[int, dict[str, Any]]:
    """Tune's ``result.json`` of one trial: the last row of each ``training_iteration``.

    A torn last line (the driver killed while appending) and lines without an
    iteration are skipped.
    """
    rows: dict[int, dict[str, Any]] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
            rows[int(row["training_iteration"])] = row
        except (ValueError, KeyError, TypeError):
            continue
    return rows


def tune_trials(exp: Path) -> dict[str, TuneTrial]:
    """The trials Tune holds in ``exp``, with their statuses and reported results.

    With a readable experiment state, exactly its trials; without one, every
    ``trial_*/result.json`` (statuses None).
    """
    statuses = _tune_statuses(exp)
    trials: dict[str, TuneTrial] = {}
    if statuses is not None:
        for trial_id, (status, dirname) in statuses.items():
            directory = exp / dirname
            trials[trial_id] = TuneTrial(trial_id, status, directory, read_result_file(directory / RESULT_FILE))
        return trials
    for result_file in sorted(exp.glob(f"*/{RESULT_FILE}")):
        results = read_result_file(result_file)
        ids = {str(r.get("trial_id")) for r in results.values() if r.get("trial_id")}
        if len(ids) == 1:
            trial_id = ids.pop()
            trials[trial_id] = TuneTrial(trial_id, None, result_file.parent, results)
    return trials


# --- what the store holds ------------------------------------------------------------------
@dataclass
class StoreReport:
    """What :func:`check_store` found; every problem is one line of :meth:`problems`."""

    root: Path
    parts: int = 0
    wal: int = 0
    rows: int = 0
    damaged: list[tuple[Path, str]] = field(default_factory=list)
    """Parquet parts that cannot be read, with the reason."""
    torn: list[tuple[Path, str]] = field(default_factory=list)
    """WAL segments with a torn tail or schema (their complete batches are readable)."""
    recoverable: dict[str, list[int]] = field(default_factory=dict)
    """Per trial, iterations Tune's ``result.json`` holds and the store lacks."""
    lost: dict[str, list[int]] = field(default_factory=dict)
    """Per trial, iterations below its last one that neither the store nor Tune holds."""
    status: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Per trial, (store status, Tune status) where Tune has finished it and the store has not."""
    quarantined: list[Path] = field(default_factory=list)
    tune_state: bool = False
    """Whether Tune's experiment state was found and read."""

    def problems(self) -> list[str]:
        """One line per problem found (empty: the store agrees with itself and with Tune)."""
        lines = [f"damaged: {p} ({why})" for p, why in self.damaged]
        lines += [f"torn: {p} ({why})" for p, why in self.torn]
        lines += [f"missing: trial {t}: iterations {_ranges(its)} are in Tune's {RESULT_FILE}, not in the store"
                  for t, its in sorted(self.recoverable.items())]
        lines += [f"gap: trial {t}: iterations {_ranges(its)} are neither in the store nor in Tune's {RESULT_FILE}"
                  for t, its in sorted(self.lost.items())]
        lines += [f"status: trial {t}: the store says {s}, Tune says {tune}"
                  for t, (s, tune) in sorted(self.status.items())]
        return lines


def _ranges(values: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3, 5"``."""
    out: list[str] = []
    values = sorted(values)
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


def experiment_dir(root: Path) -> Path:
    """The experiment directory of a store root (``<exp>/store`` -> ``<exp>``)."""
    return root.parent if root.name == STORE_DIR else root


def _scan_files(report: StoreReport, *, thorough: bool) -> None:
    root = report.root
    parts_dir, wal_dir = root / PARTS_DIR, root / WAL_DIR
    parts = sorted(p for p in parts_dir.iterdir() if visible(p, PART_SUFFIX)) if parts_dir.is_dir() else []
    wals = sorted(p for p in wal_dir.iterdir() if visible(p, WAL_SUFFIX)) if wal_dir.is_dir() else []
    report.parts, report.wal = len(parts), len(wals)
    for part in parts:
        try:
            if thorough:  # every page decoded: damage anywhere shows
                report.rows += pq.read_table(part).num_rows
            else:  # the footer only (a search's own check at its end)
                report.rows += pq.read_metadata(part).num_rows
        except (pa.ArrowException, OSError) as exc:
            report.damaged.append((part, f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"))
    for wal in wals:
        try:
            table, problem = scan_segment(wal)
        except FileNotFoundError:
            continue
        report.rows += 0 if table is None else table.num_rows
        if problem is not None:
            report.torn.append((wal, problem))
    quarantine_dir = root / QUARANTINE_DIR
    report.quarantined = sorted(p for p in quarantine_dir.rglob("*") if p.is_file()) if quarantine_dir.is_dir() else []


def _store_view(root: Path, skip: Sequence[Path]) -> tuple[dict[str, set[int]], dict[str, str]]:
    """(result iterations per trial, status per trial) of the store's readable files."""
    import warnings

    from tuning._store_write import TornSegmentWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TornSegmentWarning)  # reported by _scan_files
        with _Store(root, skip) as store:
            if not store.segments:
                return {}, {}
            keys = store.columns(["trial_id", "iteration", "event"])
        results = keys.filter(pc.and_(pc.equal(keys["event"], RESULT), pc.is_valid(keys["iteration"])))
        iterations: dict[str, set[int]] = {}
        for trial_id, it in zip(results["trial_id"].to_pylist(), results["iteration"].to_pylist()):
            iterations.setdefault(trial_id, set()).add(int(it))
        trials = read_trials(root, skip=skip)
        statuses = dict(zip(trials["trial_id"].to_pylist(), trials["status"].to_pylist()))
    return iterations, statuses


def check_store(path: str | Path, *, thorough: bool = True) -> StoreReport:
    """Read every file of a store and compare it with Tune's files; writes nothing.

    Args:
        path: An experiment directory (``<storage>/<name>``) or its ``store/``.
        thorough: Decode every Parquet page (False: read each part's footer only).

    Raises:
        FSRFError: ``path`` holds no store.
    """
    root = store_root(path)
    report = StoreReport(root)
    _scan_files(report, thorough=thorough)
    exp = experiment_dir(root)
    iterations, statuses = _store_view(root, [p for p, _ in report.damaged])
    report.tune_state = _tune_statuses(exp) is not None
    for trial_id, trial in tune_trials(exp).items():
        held = iterations.get(trial_id, set())
        tune_held = set(trial.results)
        missing = sorted(tune_held - held)
        if missing:
            report.recoverable[trial_id] = missing
        known = held | tune_held
        if known:
            lost = sorted(set(range(1, max(known) + 1)) - known)
            if lost:
                report.lost[trial_id] = lost
        if trial.status in TERMINAL:
            store_status = statuses.get(trial_id, "absent")
            if store_status not in _agreeing(trial.status):
                report.status[trial_id] = (store_status, trial.status)
    return report


def _agreeing(tune_status: str) -> set[str]:
    return {"ERROR"} if tune_status == "ERROR" else {"COMPLETE", "PRUNED"}


# --- repairs -------------------------------------------------------------------------------
def reconcile(path: str | Path, *, experiment: str) -> list[str]:
    """Write what the store lost and Tune holds: result rows, then terminal events.

    Result rows are recovered from each trial's ``result.json`` for the
    iterations the store lacks (``message`` says where they came from), under
    the trial's latest attempt. A trial that Tune holds as TERMINATED or ERROR
    and the store does not gets its ``complete``/``pruned`` (by the last result's
    ``final_epoch``) or ``error`` event, so the store's status agrees with Tune's.

    Args:
        path: An experiment directory or its ``store/`` (no search may be writing it).
        experiment: The experiment name stored in new rows.

    Returns:
        One line per trial repaired (empty when nothing was missing).

    Raises:
        StoreWriteError: the disk refused the writes.
        DamagedPartError: a part cannot be read (quarantine it first: :func:`repair_store`).
    """
    root = store_root(path)
    report = check_store(root, thorough=False)
    if report.damaged:
        raise DamagedPartError(report.damaged[0][0], OSError(report.damaged[0][1]))
    if not report.recoverable and not report.status:
        return []
    trials = tune_trials(experiment_dir(root))
    attempts = read_attempts(root)
    done: list[str] = []
    with TrialStoreWriter(root, experiment=experiment) as writer:
        for trial_id, missing in sorted(report.recoverable.items()):
            trial = trials[trial_id]
            source = f"recovered from {trial.directory.name}/{RESULT_FILE}"
            for it in missing:
                row = trial.results[it]
                metrics = {k: v for k, v in row.items()
                           if k != "config" and is_metric(v) and k not in BASE_COLUMNS
                           and not k.startswith(CONFIG_PREFIX)}
                writer.result(trial_id=trial_id, attempt=attempts.get(trial_id, 1), iteration=it,
                              config=row.get("config"), metrics=metrics, message=source)
            done.append(f"trial {trial_id}: recovered iterations {_ranges(missing)} from "
                        f"{trial.directory / RESULT_FILE}")
        for trial_id, (store_status, tune_status) in sorted(report.status.items()):
            trial = trials[trial_id]
            last = trial.results[max(trial.results)] if trial.results else {}
            if tune_status == "ERROR":
                from tuning.store import error_line

                error_file = trial.directory / "error.txt"
                message = error_line(SimpleNamespace(error_file=str(error_file), get_error=lambda: None))
                event = "error"
            else:
                event = "complete" if last.get(FINAL_EPOCH) == 1.0 else "pruned"
                message = f"recorded from Tune's experiment state (the store said {store_status})"
            it = last.get("training_iteration")
            writer.event(trial_id=trial_id, attempt=attempts.get(trial_id, 1), event=event,
                         iteration=int(it) if isinstance(it, (int, float)) else None,
                         message=message or f"recorded from Tune's experiment state (the store said {store_status})")
            done.append(f"trial {trial_id}: status {store_status} -> {STATUS[event]} (Tune: {tune_status})")
    return done


def repair_store(path: str | Path, *, experiment: str | None = None) -> list[str]:
    """Quarantine what cannot be read, compact the WAL, recover from Tune; returns what was done.

    No search may be writing the store meanwhile (it has one writer).

    Args:
        path: An experiment directory or its ``store/``.
        experiment: The experiment name for new rows (default: the experiment directory's name).

    Raises:
        StoreWriteError: the disk refused a write or a move (one line naming the file).
        FSRFError: ``path`` holds no store.
    """
    root = store_root(path)
    name = experiment or experiment_dir(root).name
    done: list[str] = []
    report = check_store(root)
    try:
        for part, why in report.damaged:
            moved = quarantine(root, part)
            done.append(f"quarantined {part} -> {moved} ({why})")
            wal = root / WAL_DIR / f"{part.stem}{WAL_SUFFIX}"
            if wal.is_file():
                done.append(f"rebuilding {part.name} from {wal}")
        torn = {p for p, _ in report.torn}
        if report.wal:
            import warnings

            from tuning._store_write import TornSegmentWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TornSegmentWarning)
                TrialStoreWriter(root, experiment=name).close()  # compacts every WAL segment
            for wal in sorted(torn):
                done.append(f"compacted torn {wal.name}: its complete batches kept, the original moved to "
                            f"{root / QUARANTINE_DIR / WAL_DIR}")
            if len(torn) < report.wal:
                done.append(f"compacted {report.wal - len(torn)} WAL segment(s) of stopped sessions")
    except OSError as exc:
        raise write_error(root, exc) from None
    done += reconcile(root, experiment=name)
    try:
        aligned = align_parts(root)
    except OSError as exc:
        raise write_error(root, exc) from None
    if aligned:
        done.append(f"gave {len(aligned)} part(s) the store's full schema (every column in every part)")
    return done


def preflight(path: Path) -> None:
    """Before a search writes to an existing store: it must be writable and its parts readable.

    Raises:
        StoreWriteError: ``wal/`` or ``parts/`` refuses a new file (read-only, full).
        DamagedPartError: a part cannot be read; the message says to run ``fsrf store repair``.
    """
    if not ((path / WAL_DIR).is_dir() or (path / PARTS_DIR).is_dir()):
        return  # no store yet (or an empty directory, e.g. a mount point): the writer creates it
    root = store_root(path)
    for sub in (WAL_DIR, PARTS_DIR):
        probe = root / sub / f".probe-{uuid.uuid4().hex}"
        try:
            (root / sub).mkdir(exist_ok=True)
            with open(probe, "xb") as f:
                f.write(b"fsrf")
        except OSError as exc:
            raise write_error(root / sub, exc) from None
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
    read_attempts(root)


# --- command line ------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The parser of ``fsrf store``."""
    p = argparse.ArgumentParser(
        prog="fsrf store",
        description="Check or repair a search's trial store against Tune's own per-trial files. "
                    "check exits 0 when the store is whole, 1 when it found problems; repair moves what "
                    "cannot be read into store/quarantine/ (never deletes), keeps every readable row and "
                    "recovers lost ones from Tune's result.json files. Run repair while no search runs.",
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("check", "report damaged parts, torn WAL segments, lost rows, disagreeing statuses"),
                         ("repair", "quarantine, compact, recover from Tune's files, record Tune's statuses")):
        s = sub.add_parser(action, help=text)
        s.add_argument("experiment", type=Path, help="experiment directory (<storage>/<name>) or its store/")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``check EXP`` or ``repair EXP``; returns 0 (whole or repaired), 1 (problems found), 2 (bad input)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        if args.action == "check":
            report = check_store(args.experiment)
            problems = report.problems()
            print(f"{report.root}: {report.parts} part(s), {report.wal} WAL segment(s), {report.rows} row(s) "
                  f"readable; {len(report.quarantined)} file(s) in {QUARANTINE_DIR}/"
                  + ("" if report.tune_state else "; no Tune experiment state to compare statuses with"))
            for line in problems:
                print(line)
            if problems:
                print(f"{len(problems)} problem(s); fsrf store repair {args.experiment} fixes what can be fixed")
                return 1
            print("ok")
            return 0
        done = repair_store(args.experiment)
        for line in done:
            print(line)
        remaining = check_store(args.experiment).problems()
        for line in remaining:
            print(f"left: {line}")
        print("nothing to repair" if not done else f"repaired: {len(done)} action(s)")
        return 1 if remaining else 0
    except FSRFError as err:
        print(f"fsrf store: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
