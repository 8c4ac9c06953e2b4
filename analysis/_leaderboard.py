"""Leaderboards: trials ranked by a metric, the parameters that differ, epochs run, status.

Rows are plain dicts (``pandas.DataFrame(rows)`` and ``csv.DictWriter`` take them)::

    {"rank": 1, "trial_id": "...", "status": "COMPLETE", "epochs": 8, "value": 0.71,
     "optim.lr": 0.0012, "curriculum.kind": "linear", ...}

``value`` is the trial's best value of the metric over its epochs (``reduce="last"``: its
last reported one). Parameter keys are the ``config.*`` columns (prefix dropped) that take
more than one value across the experiment's trials.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from analysis._load import Experiment
from fsrf import FSRFError
from fsrf.constants import COMPLETE_OBJECTIVE, OBJECTIVE, direction
from tuning import CONFIG_PREFIX, SWITCH_SUFFIX, rank_order
from tuning.store import STATUS

STATUSES = ("COMPLETE", "PRUNED", "ERROR", "RUNNING")
"""The statuses a trial can have in :func:`tuning.store.read_trials`, in display order."""
ROBUST_PREFIX = "valid/robust/"


def check_metric(exp: Experiment, metric: str) -> None:
    """Raise a one-line FSRFError naming ``metric`` and a few known ones if the store lacks it."""
    known = exp.metrics
    if metric in known:
        return
    close = difflib.get_close_matches(metric, known, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    shown = [m for m in (OBJECTIVE, COMPLETE_OBJECTIVE) if m in known]
    shown += [m for m in known if m.startswith(ROBUST_PREFIX)]
    shown += [m for m in known if m not in shown]
    raise FSRFError(f"--metric: {metric!r} is not a metric of experiment {exp.name!r} ({exp.path}); {hint}"
                    f"known: {', '.join(shown[:6])}{', ...' if len(shown) > 6 else ''} ({len(known)} in all)")


def metric_mode(exp: Experiment, metric: str) -> str:
    """``min`` or ``max`` for ``metric``: for the objective, the search's own direction.

    The objective is ``valid/robust/<M>``'s value under the name ``objective``, so its
    direction is that of ``M``: found by matching the columns, else from the space file.
    """
    if metric not in (OBJECTIVE, COMPLETE_OBJECTIVE):
        return direction(metric)
    target = exp.results[OBJECTIVE] if OBJECTIVE in exp.results.column_names else None
    if target is not None:
        for name in exp.metrics:
            if name.startswith(ROBUST_PREFIX):
                both = pa.table({"a": target, "b": exp.results[name]}).drop_null()
                gap = pc.abs(pc.subtract(both["a"], both["b"]))
                if both.num_rows and pc.all(pc.less_equal(gap, 1e-9)).as_py():
                    return direction(name)
    if exp.space is not None:
        from tuning.space import load_space

        return load_space(exp.space).mode
    raise FSRFError(f"--mode: the direction of {metric!r} in {exp.name!r} is unknown (no valid/robust/* "
                    f"column matches it, no space file); pass --mode min or --mode max")


def _statuses(status: str | Iterable[str] | None) -> set[str] | None:
    if status is None:
        return None
    wanted = {status} if isinstance(status, str) else set(status)
    upper = {s.upper() for s in wanted}
    bad = sorted(s for s in upper if s not in STATUSES)
    if bad:
        raise FSRFError(f"--status: {bad[0].lower()!r} is not a trial status "
                        f"(known: {', '.join(s.lower() for s in STATUSES)})")
    return upper


@functools.lru_cache(maxsize=8)
def _key_columns(space: str) -> tuple[str, ...]:
    from tuning.space import load_space

    try:
        loaded = load_space(space)
    except FSRFError:
        return ()
    return (*loaded.key_columns(), *loaded.param_names())


def differing_params(exp: Experiment) -> list[str]:
    """The ``config.*`` columns (prefix dropped) with more than one distinct non-null value.

    Ordered as the space's progress-table columns, then its other params, then the
    ``:off`` switches; store order when the space is unknown.
    """
    names = []
    for column in exp.config_columns:
        values = pc.unique(exp.trials[column]).drop_null()
        if len(values) > 1 or (len(values) == 1 and exp.trials[column].null_count):
            names.append(column[len(CONFIG_PREFIX):])
    order = _key_columns(exp.space) if exp.space else ()
    rank = {name: i for i, name in reversed(list(enumerate(order)))}
    return sorted(names, key=lambda n: (n.endswith(SWITCH_SUFFIX), rank.get(n, len(rank))))


def trial_values(exp: Experiment, metric: str, *, mode: str, reduce: str = "best") -> dict[str, float]:
    """Each trial's best (or last) finite value of ``metric``; trials without one are left out."""
    if reduce not in ("best", "last"):
        raise FSRFError(f"reduce: {reduce!r} is not best or last")
    table = exp.results.select(["trial_id", "iteration", metric])
    table = table.filter(pc.and_(pc.is_valid(table[metric]), pc.is_finite(table[metric])))
    if reduce == "last":  # results are sorted by trial_id then iteration
        grouped = table.group_by("trial_id", use_threads=False).aggregate([(metric, "last")])
        values = grouped[f"{metric}_last"]
    else:
        grouped = table.group_by("trial_id").aggregate([(metric, mode)])
        values = grouped[f"{metric}_{mode}"]
    return dict(zip(grouped["trial_id"].to_pylist(), values.to_pylist()))


def leaderboard(
    exp: Experiment, *, metric: str = OBJECTIVE, mode: str | None = None, top: int | None = 10,
    status: str | Iterable[str] | None = None, reduce: str = "best",
) -> list[dict[str, Any]]:
    """The top trials by ``metric``, best first; trials without a value come last (by trial id).

    Args:
        exp: the experiment.
        metric: a reported key (``objective``, ``valid/robust/MAE``, ``valid/r0.3/MAE``, ...).
        mode: ``min`` or ``max``; None: the metric's direction (the search's for the objective).
        top: how many rows (None: all).
        status: keep only trials of this status (or these statuses), e.g. ``"complete"``.
        reduce: ``best`` (each trial's best value over its epochs) or ``last`` (its last value).

    Raises:
        FSRFError: an unknown metric, mode or status (one line).
    """
    check_metric(exp, metric)
    mode = mode or metric_mode(exp, metric)
    if mode not in ("min", "max"):
        raise FSRFError(f"--mode: {mode!r} is not min or max")
    if top is not None and top < 1:
        raise FSRFError(f"--top: {top} is not a positive number of trials")
    wanted = _statuses(status)
    values = trial_values(exp, metric, mode=mode, reduce=reduce)
    params = differing_params(exp)
    columns = ["trial_id", "status", "iterations", *(CONFIG_PREFIX + p for p in params)]
    trials = exp.trials.select(columns).to_pylist()
    if wanted is not None:
        trials = [t for t in trials if t["status"] in wanted]
    rows = []
    for rank, trial in enumerate(rank_order(trials, values, mode=mode)[:top], 1):
        row: dict[str, Any] = {
            "rank": rank, "trial_id": trial["trial_id"], "status": trial["status"],
            "epochs": trial["iterations"] or 0, "value": values.get(trial["trial_id"]),
        }
        row.update({p: trial[CONFIG_PREFIX + p] for p in params})
        rows.append(row)
    return rows


def status_counts(exp: Experiment) -> dict[str, int]:
    """Trials per status, in :data:`STATUSES` order (statuses without trials left out)."""
    statuses = exp.trials["status"].to_pylist()
    return {s: statuses.count(s) for s in STATUSES if s in statuses}


def error_messages(exp: Experiment) -> dict[str, str]:
    """The errored trials' error lines, by trial id (``""`` when none was recorded)."""
    rows = exp.trials.select(["trial_id", "status", "error"]).to_pylist()
    return {r["trial_id"]: r["error"] or "" for r in rows if r["status"] == STATUS["error"]}


def format_cell(value: Any, *, missing: str = "-") -> str:
    """A table cell: floats to 4 significant digits, None/NaN as ``missing``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_leaderboard(
    exp: Experiment, rows: list[dict[str, Any]], *, metric: str = OBJECTIVE, mode: str | None = None,
    reduce: str = "best", width: int | None = None,
) -> str:
    """The leaderboard, the status counts and the errors as terminal text.

    Args:
        reduce: how the rows' values were taken (``best`` or ``last``), for the title.
        width: wrap nothing, but drop trailing parameter columns beyond this many characters.
    """
    mode = mode or metric_mode(exp, metric)
    base = ["rank", "trial_id", "status", "epochs", "value"]
    params = [k for k in (rows[0] if rows else {}) if k not in base]
    header = ["rank", "trial", "status", "epochs", metric, *params]
    table = [header] + [[format_cell(r[k]) for k in (*base, *params)] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    if width is not None:
        keep, used = 0, 0
        for w in widths:
            if used + w > width and keep >= len(base):
                break
            used, keep = used + w + 2, keep + 1
        widths, table = widths[:keep], [line[:keep] for line in table]
    how = "best over epochs" if reduce == "best" else "last epoch"
    lines = [f"{exp.name}: top {len(rows)} trials by {metric} ({mode}, {how}) — {exp.path}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
    counts = status_counts(exp)
    lines.append("trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items())
                 + f" ({sum(counts.values())} in all)")
    errors = error_messages(exp)
    by_message: dict[str, list[str]] = {}
    for trial_id, message in errors.items():
        by_message.setdefault(message or "(no message recorded)", []).append(trial_id)
    for message, ids in sorted(by_message.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(ids[:3]) + (f", +{len(ids) - 3} more" if len(ids) > 3 else "")
        lines.append(f"  error x{len(ids)}: {message} ({shown})")
    return "\n".join(lines)
