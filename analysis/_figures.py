"""Figures of a search, each one PNG written atomically (matplotlib, Agg backend).

Inputs are pandas frames of the trial store: ``results`` (one row per trial and
epoch, :func:`tuning.store.read_results`) and ``best`` (one row per trial, the
epoch that is best on the selection metric, :func:`best_rows`). matplotlib is
imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fsrf import FSRFError, atomic_write
from fsrf.constants import EPOCH, EVAL_RATES, rate_key
from tuning.store import CONFIG_PREFIX

DPI = 120
CONFIG = CONFIG_PREFIX


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` as PNG beside ``path`` under a temporary name, then rename it into place."""
    plt = _plt()
    path = Path(path)
    try:
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI))
    finally:
        plt.close(fig)
    return path


def _short(trial_id: str) -> str:
    return str(trial_id)[-12:]


def _label(col: str) -> str:
    return col.removeprefix(CONFIG)


def best_rows(results: Any, *, metric: str = "objective", mode: str = "min") -> Any:
    """One row per trial: its epoch with the best ``metric`` (``mode``), sorted best first."""
    if metric not in results.columns:
        raise FSRFError(f"figures: metric {metric!r} is not in the store")
    rows = results.dropna(subset=[metric])
    if rows.empty:
        return rows
    grouped = rows.groupby("trial_id")[metric]
    idx = grouped.idxmin() if mode == "min" else grouped.idxmax()
    ordered = rows.loc[idx.values].sort_values(metric, ascending=(mode == "min"), kind="stable")
    return ordered.reset_index(drop=True)


def _epochs(frame: Any) -> Any:
    return frame[EPOCH] if EPOCH in frame.columns and frame[EPOCH].notna().any() else frame["iteration"]


def learning_curves(results: Any, trial_ids: Sequence[str], path: str | os.PathLike[str], *,
                    metric: str = "objective", title: str | None = None) -> Path:
    """``metric`` against epoch for each trial of ``trial_ids`` (the top trials); best marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for rank, tid in reversed(list(enumerate(trial_ids))):  # the best drawn last, on top, dark and thick
        rows = results[results["trial_id"] == tid].dropna(subset=[metric])
        if rows.empty:
            continue
        rows = rows.sort_values("iteration")
        style = {"color": "black", "linewidth": 2.6, "zorder": 5} if rank == 0 else {"linewidth": 1.3, "alpha": 0.85}
        ax.plot(_epochs(rows), rows[metric], marker="o", markersize=3,
                label=_short(tid) + (" (best)" if rank == 0 else ""), **style)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (validation)")
    ax.set_title(title or f"Learning curves of the top {len(trial_ids)} trials")
    ax.grid(alpha=0.3)
    if ax.lines:
        handles, labels = ax.get_legend_handles_labels()  # in rank order, best first
        ax.legend(handles[::-1], labels[::-1], title="trial", fontsize=8, title_fontsize=8,
                  ncol=2 if len(ax.lines) > 5 else 1)
    else:
        ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def rate_columns(frame: Any, metric: str, split: str = "valid") -> list[tuple[float, str]]:
    """``(rate, column)`` of the per-rate columns ``<split>/r<rate>/<metric>`` present, by rate."""
    keys = [(r, rate_key(split, r, metric)) for r in EVAL_RATES]
    return [(r, key) for r, key in keys if key in frame.columns]


def robustness_curves(best: Any, path: str | os.PathLike[str], *, metric: str = "MAE", split: str = "valid",
                      title: str | None = None) -> Path:
    """``<split>/r<rate>/<metric>`` against the missing rate, one line per row of ``best``
    (each trial's best epoch)."""
    plt = _plt()
    cols = rate_columns(best, metric, split)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for _, row in best.iterrows():
        pts = [(r, row[c]) for r, c in cols if row[c] == row[c]]  # skip NaN
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1.4,
                    label=_short(row["trial_id"]))
    split_name = {"valid": "validation", "test": "test"}.get(split, split)
    ax.set_xlabel(f"{split_name} missing rate (fraction of inputs dropped)")
    ax.set_ylabel(f"{metric} ({split_name})")
    ax.set_xticks(list(EVAL_RATES))
    ax.set_title(title or f"Robustness of the top {len(best)} trials ({metric} vs missing rate)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(title="trial (best epoch)", fontsize=8, title_fontsize=8,
                  ncol=2 if len(ax.lines) > 5 else 1)
    else:
        ax.text(0.5, 0.5, f"no {split}/r<rate>/{metric} columns", ha="center", va="center",
                transform=ax.transAxes)
    return _save(fig, path)


def pareto_mask(x: Sequence[float], y: Sequence[float], mode: str = "min") -> list[bool]:
    """Which points are non-dominated when both coordinates are to be minimised (``min``) or maximised."""
    sign = 1.0 if mode == "min" else -1.0
    pts = [(sign * float(a), sign * float(b)) for a, b in zip(x, y)]
    mask = []
    for i, (a, b) in enumerate(pts):
        dominated = any(c <= a and d <= b and (c < a or d < b) for j, (c, d) in enumerate(pts) if j != i)
        mask.append(not dominated)
    return mask


def pareto_front(best: Any, path: str | os.PathLike[str], *, complete: str = "objective_complete",
                 robust: str = "objective", mode: str = "min", title: str | None = None) -> Path:
    """Complete-input vs robust performance of every trial (its best epoch); the Pareto front highlighted."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5.0))
    both = complete in best.columns and robust in best.columns
    rows = best.dropna(subset=[complete, robust]) if both else best[:0]
    if len(rows):
        mask = pareto_mask(rows[complete], rows[robust], mode)
        front = rows[mask].sort_values(complete)
        other = rows[[not m for m in mask]]
        ax.scatter(other[complete], other[robust], s=18, color="tab:gray", alpha=0.6,
                   label="dominated trials")
        ax.plot(front[complete], front[robust], color="tab:red", linewidth=1, zorder=2)
        ax.scatter(front[complete], front[robust], s=40, color="tab:red", edgecolor="black", zorder=3,
                   label=f"Pareto front ({len(front)} trials)")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no {complete} / {robust} values", ha="center", va="center",
                transform=ax.transAxes)
    better = "lower" if mode == "min" else "higher"
    ax.set_xlabel(f"{complete} (complete inputs, {better} is better)")
    ax.set_ylabel(f"{robust} (robust: mean over missing rates, {better} is better)")
    ax.set_title(title or "Complete vs robust performance")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _is_categorical(series: Any) -> bool:
    from pandas.api import types

    return types.is_bool_dtype(series.dtype) or not types.is_numeric_dtype(series.dtype)


def _codes(series: Any) -> tuple[Any, list[Any]]:
    """Integer positions of a categorical column and its categories (sorted as strings)."""
    cats = sorted(series.dropna().unique().tolist(), key=str)
    index = {c: i for i, c in enumerate(cats)}
    return series.map(lambda v: index.get(v, math.nan)), cats


STATUS_MARKERS = {"COMPLETE": {"label": "complete"}, "PRUNED": {"label": "pruned (stopped early)", "hollow": True}}
"""How a trial's status is drawn in the per-trial scatter figures: pruned trials hollow."""


def _scatter_by_status(ax: Any, x: Any, y: Any, status: Any, *, color: str = "C0") -> None:
    """Complete trials filled, pruned ones hollow (their objective is from fewer epochs), others grey."""
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    status = np.asarray(status if status is not None else ["COMPLETE"] * len(x), dtype=object)
    for name, style in STATUS_MARKERS.items():
        keep = status == name
        if keep.any():
            face = "none" if style.get("hollow") else color
            ax.scatter(x[keep], y[keep], s=18, facecolors=face, edgecolors=color, linewidths=1.0, alpha=0.85,
                       label=style["label"])
    other = ~np.isin(status, list(STATUS_MARKERS))
    if other.any():
        ax.scatter(x[other], y[other], s=14, color="grey", marker="x", alpha=0.7, label="other")


def _status(frame: Any) -> Any:
    return frame["status"] if "status" in frame.columns else None


def param_slices(best: Any, params: Sequence[str], path: str | os.PathLike[str], *, metric: str = "objective",
                 log_params: Sequence[str] = (), choice_params: Sequence[str] = (),
                 title: str | None = None) -> Path:
    """One panel per searched parameter: ``metric`` of each trial (best epoch) against the parameter's value.

    Panels share one y range. Complete trials are filled points, pruned ones hollow (``best`` may
    carry a ``status`` column). On a log axis, trials whose value is 0 (a weight switched off)
    are drawn at an "off" position left of the range, never dropped. A choice is drawn as
    categories even when its values are numbers (a two-value choice is not a continuous axis).

    Args:
        params: ``config.*`` columns (or bare dotted names, ``config.`` is added).
        log_params: parameters drawn on a log x axis (log-scaled in the space).
        choice_params: parameters that are choices (categorical) in the space.
    """
    plt = _plt()
    from matplotlib.ticker import NullFormatter

    cols = [p if p.startswith(CONFIG) else CONFIG + p for p in params]
    cols = [c for c in cols if c in best.columns and best[c].notna().any()] or [None]
    logs = {p if p.startswith(CONFIG) else CONFIG + p for p in log_params}
    choices = {p if p.startswith(CONFIG) else CONFIG + p for p in choice_params}
    ncols = min(3, len(cols))
    nrows = math.ceil(len(cols) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False,
                             layout="constrained", sharey=True)
    for ax in axes.flat[len(cols):]:
        ax.set_visible(False)
    for ax, col in zip(axes.flat, cols):
        if col is None:
            ax.text(0.5, 0.5, "no searched parameters", ha="center", va="center", transform=ax.transAxes)
            continue
        rows = best.dropna(subset=[col, metric])
        if col in choices or _is_categorical(rows[col]):
            codes, cats = _codes(rows[col])
            jitter = [((hash(str(t)) % 1000) / 1000 - 0.5) * 0.3 for t in rows["trial_id"]]
            _scatter_by_status(ax, codes + jitter, rows[metric], _status(rows))
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels([str(c) for c in cats], rotation=30 if len(cats) > 3 else 0, fontsize=8)
            ax.set_xlabel(_label(col) + " (choice)")
        elif col in logs:
            positive = rows[rows[col] > 0]
            off = rows[rows[col] <= 0]
            x = rows[col].astype(float).copy()
            low = float(positive[col].min()) if len(positive) else 1.0
            off_at = low / 10 ** 0.75  # left of the drawn range, on the log axis
            x[rows[col] <= 0] = off_at
            _scatter_by_status(ax, x, rows[metric], _status(rows))
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            if len(off):
                ax.axvline(off_at * 10 ** 0.375, color="grey", linewidth=0.6, linestyle=":")
                ax.text(off_at, 1.0, "off", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                        fontsize=8)
            ax.set_xlabel(_label(col) + (f" (log scale; {len(off)} trials off, at left)" if len(off) else " (log scale)"))
        else:
            _scatter_by_status(ax, rows[col], rows[metric], _status(rows))
            ax.set_xlabel(_label(col))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(title or f"{metric} against each searched parameter (one point per trial)")
    return _save(fig, path)


def importance_bars(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, evaluator: str,
                    n_trials: int, min_trials: int = 30, title: str | None = None) -> Path:
    """Horizontal bars of each parameter's importance (``rows`` of :func:`importance_table`),
    most important on top; below ``min_trials`` finished trials the figure says the ranking is unreliable."""
    plt = _plt()
    shown = [r for r in rows if r.get(evaluator) is not None]
    fig, ax = plt.subplots(figsize=(7.0, 0.9 + 0.28 * max(len(shown), 1)))
    if shown:
        names = [r["param"] for r in shown][::-1]
        values = [float(r[evaluator]) for r in shown][::-1]
        ax.barh(names, values, color="C0")
        ax.set_xlabel(f"{evaluator} importance (normalised to sum 1)")
        ax.tick_params(axis="y", labelsize=8)
    else:
        ax.text(0.5, 0.5, f"no {evaluator} importance (too few finished trials?)", ha="center", va="center",
                transform=ax.transAxes)
    heading = title or f"Parameter importance ({evaluator})"
    if n_trials < min_trials:
        heading += f"\nonly {n_trials} finished trials (< {min_trials}): a rough ranking, not a finding"
        ax.set_facecolor("#fff6e5")
    ax.set_title(heading, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def group_comparison(best: Any, column: str, path: str | os.PathLike[str], *, metric: str = "objective",
                     mode: str = "min", groups: Sequence[Any] | None = None, title: str | None = None,
                     xlabel: str | None = None) -> Path:
    """Each trial's best-epoch ``metric`` by the value of ``column`` (a curriculum kind, a loss
    term on/off): points per group (pruned hollow), the group's best marked, trial counts under
    each group. One panel; groups in ``groups`` order (default: sorted)."""
    plt = _plt()
    rows = best.dropna(subset=[metric]) if metric in best.columns else best.iloc[0:0]
    values = groups if groups is not None else sorted(rows[column].dropna().unique().tolist(), key=str) \
        if column in rows.columns else []
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(values) + 2), 4.2))
    better = min if mode == "min" else max
    for i, value in enumerate(values):
        part = rows[rows[column] == value] if column in rows.columns else rows.iloc[0:0]
        jitter = [i + ((hash(str(t)) % 1000) / 1000 - 0.5) * 0.35 for t in part["trial_id"]]
        _scatter_by_status(ax, jitter, part[metric], _status(part), color=f"C{i % 10}")
        if len(part):
            top = better(part[metric])
            ax.plot([i - 0.3, i + 0.3], [top, top], color="black", linewidth=2.0)
    ax.set_xticks(range(len(values)))
    counts = [int((rows[column] == v).sum()) if column in rows.columns else 0 for v in values]
    ax.set_xticklabels([f"{v}\n({n} trials)" for v, n in zip(values, counts)], fontsize=8)
    ax.set_xlabel(xlabel or _label(column))
    ax.set_ylabel(f"{metric} (best epoch; black bar: the group's best)")
    ax.grid(alpha=0.3, axis="y")
    if not values:
        ax.text(0.5, 0.5, f"no {_label(column)} values", ha="center", va="center", transform=ax.transAxes)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_title(title or f"{metric} by {_label(column)}")
    return _save(fig, path)


def switch_comparison(best: Any, params: Sequence[str], path: str | os.PathLike[str], *, metric: str = "objective",
                      mode: str = "min", title: str | None = None) -> Path:
    """For each switchable loss weight, its trials with the term off (weight 0) against those with
    it on: one panel per term, one shared y range, pruned trials hollow, each side's best marked."""
    plt = _plt()
    cols = [p if p.startswith(CONFIG) else CONFIG + p for p in params]
    cols = [c for c in cols if c in best.columns] or [None]
    ncols = min(4, len(cols))
    nrows = math.ceil(len(cols) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols + 0.5, 3.0 * nrows), squeeze=False,
                             layout="constrained", sharey=True)
    for ax in axes.flat[len(cols):]:
        ax.set_visible(False)
    better = min if mode == "min" else max
    rows = best.dropna(subset=[metric]) if metric in best.columns else best.iloc[0:0]
    for ax, col in zip(axes.flat, cols):
        if col is None:
            ax.text(0.5, 0.5, "no switchable terms", ha="center", va="center", transform=ax.transAxes)
            continue
        on = rows[col].fillna(0) > 0
        for i, (part, name) in enumerate(((rows[~on], "off"), (rows[on], "on"))):
            jitter = [i + ((hash(str(t)) % 1000) / 1000 - 0.5) * 0.35 for t in part["trial_id"]]
            _scatter_by_status(ax, jitter, part[metric], _status(part), color="C3" if name == "off" else "C0")
            if len(part):
                top = better(part[metric])
                ax.plot([i - 0.3, i + 0.3], [top, top], color="black", linewidth=2.0)
        ax.set_xticks([0, 1])
        ax.set_xticklabels([f"off ({int((~on).sum())})", f"on ({int(on.sum())})"], fontsize=8)
        ax.set_xlim(-0.6, 1.6)
        ax.set_title(_label(col), fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes.flat[0].set_ylabel(metric)
    fig.suptitle(title or f"{metric} with each loss term off vs on (black bar: each side's best)")
    return _save(fig, path)


def parallel_coordinates(best: Any, params: Sequence[str], path: str | os.PathLike[str], *,
                         metric: str = "objective", mode: str = "min", log_params: Sequence[str] = (),
                         title: str | None = None) -> Path:
    """Parallel coordinates: one axis per parameter and the metric, each normalised to [0, 1]
    (log parameters on a log scale, categories evenly spaced); lines coloured by ``metric``."""
    plt = _plt()
    import numpy as np

    cols = [p if p.startswith(CONFIG) else CONFIG + p for p in params]
    cols = [c for c in cols if c in best.columns and best[c].notna().any()]
    logs = {p if p.startswith(CONFIG) else CONFIG + p for p in log_params}
    axes_cols = [*cols, metric]
    rows = best.dropna(subset=[metric]).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.4 * len(axes_cols)), 4.8))
    norm = np.full((len(rows), len(axes_cols)), np.nan)
    ends: list[tuple[str, str]] = []
    labels: list[tuple[int, list[Any]]] = []  # categorical axes: every category at its height
    logged: set[str] = set()
    for j, col in enumerate(axes_cols):
        series = rows[col]
        if _is_categorical(series):
            codes, cats = _codes(series)
            vals = codes.to_numpy(dtype=float)
            span = max(len(cats) - 1, 1)
            norm[:, j] = vals / span
            ends.append(("", ""))
            labels.append((j, cats))
            continue
        vals = series.to_numpy(dtype=float)
        if col in logs and np.nanmin(vals) > 0:
            logged.add(col)
        shown = np.log10(vals) if col in logged else vals
        lo, hi = np.nanmin(shown), np.nanmax(shown)
        norm[:, j] = (shown - lo) / (hi - lo) if hi > lo else 0.5
        ends.append((f"{np.nanmin(vals):.3g}", f"{np.nanmax(vals):.3g}"))
    if len(rows):
        values = rows[metric].to_numpy(dtype=float)
        cmap = plt.get_cmap("viridis_r" if mode == "min" else "viridis")
        lo, hi = float(values.min()), float(values.max())
        scale = (lambda v: (v - lo) / (hi - lo)) if hi > lo else (lambda v: 0.5)
        order = np.argsort(values if mode == "max" else -values)  # best drawn last, on top
        x = np.arange(len(axes_cols))
        for i in order:
            ax.plot(x, norm[i], color=cmap(scale(values[i])), alpha=0.7, linewidth=1.2)
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
        fig.colorbar(sm, ax=ax, label=f"{metric} ({'lower' if mode == 'min' else 'higher'} is better)")
    for j, (low, high) in enumerate(ends):
        ax.axvline(j, color="black", linewidth=0.8)
        ax.text(j, -0.06, low, ha="center", va="top", fontsize=7)
        ax.text(j, 1.04, high, ha="center", va="bottom", fontsize=7)
    for j, cats in labels:
        for k, cat in enumerate(cats):
            ax.text(j + 0.04, k / max(len(cats) - 1, 1), str(cat), ha="left", va="center", fontsize=7,
                    bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "alpha": 0.7, "linewidth": 0})
    ax.set_xticks(range(len(axes_cols)))
    ax.set_xticklabels([_label(c) + (" (log)" if c in logged else "") for c in axes_cols], rotation=25,
                       ha="right", fontsize=8)
    ax.set_ylim(-0.15, 1.15)
    ax.set_yticks([0, 0.5, 1])
    ax.set_ylabel("normalised value (0 = min, 1 = max)")
    ax.set_xlim(-0.3, len(axes_cols) - 0.7)
    ax.set_title(title or f"Parallel coordinates of {len(rows)} trials (best epoch each)")
    return _save(fig, path)


def learned_schedules(schedules: dict[str, dict[str, list[float]]], trial_ids: Sequence[str],
                      path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """The schedules a population-based search's top trials followed, one panel per perturbed field.

    Args:
        schedules: ``{trial_id: {name: [value per epoch from 1]}}`` (``tuning._pbt.followed_schedules``);
            ``rate`` is the training missing rate, other names are perturbed config fields.
        trial_ids: the trials to draw, best first (those without a schedule are skipped).
    """
    plt = _plt()
    drawn = [t for t in trial_ids if t in schedules]
    names = sorted({n for t in drawn for n in schedules[t]}, key=lambda n: (n != "rate", n))
    fig, axes = plt.subplots(len(names) or 1, 1, figsize=(7.5, 2.6 * max(1, len(names))), sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        for tid in drawn:
            values = schedules[tid].get(name)
            if values:
                ax.step(range(1, len(values) + 1), values, where="post", marker="o", markersize=3,
                        linewidth=1.4, label=_short(tid))
        ax.set_ylabel("training missing rate" if name == "rate" else name)
        if name != "rate" and all(v > 0 for t in drawn for v in schedules[t].get(name, [1.0])):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    bottom = axes[-1, 0]
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlabel("epoch")
    axes[0, 0].set_title(title or f"Followed schedules of the top {len(drawn)} trials")
    if drawn:
        axes[0, 0].legend(title="trial", fontsize=8, title_fontsize=8, ncol=2 if len(drawn) > 5 else 1)
    else:
        axes[0, 0].text(0.5, 0.5, "no followed schedules", ha="center", va="center",
                        transform=axes[0, 0].transAxes)
    return _save(fig, path)
