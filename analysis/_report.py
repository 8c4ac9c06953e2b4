"""The HTML report of one or more searches: ``index.html`` with PNG figures and CSV tables beside it.

``index.html`` opens from disk with no server or network: it links only to files in
its own directory (the figures, ``leaderboard.csv``, ``importance.csv``), and its
style is inline. Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis import _figures as fig
from analysis._export import run_overrides
from analysis._importance import EVALUATORS, importance_table, study_from_tables
from analysis._leaderboard import (
    check_metric,
    error_messages,
    format_cell,
    leaderboard,
    metric_mode,
    status_counts,
)
from analysis._load import Experiment, load_experiment
from fsrf import FSRFError, atomic_write_text
from fsrf.constants import COMPLETE_OBJECTIVE, OBJECTIVE, TEXT_PROTOCOLS, direction, rate_key, robust_key
from fsrf.evaluate import protocol_line
from tuning.space import load_space
from tuning.store import CONFIG_PREFIX

INDEX = "index.html"
LEADERBOARD_CSV = "leaderboard.csv"
IMPORTANCE_CSV = "importance.csv"
MIN_IMPORTANCE_TRIALS = 30
"""Below this many finished trials the report warns that importance is a rough ranking."""
MAX_AXES = 8
"""Parameters on the parallel-coordinates plot (the most important ones)."""

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
.wide{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
pre{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:.8em}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}th{background:#f3f3f3}
td:nth-child(2){text-align:left}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{color:#666;font-size:.9em}code{background:#f5f5f5;padding:0 .2em}
"""


def _slug(name: str, index: int) -> str:
    return f"{index + 1}-" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment")[:60]


def base_metric(exp: Experiment, metric: str) -> str:
    """The MMSA metric behind ``metric`` (``MAE`` for ``objective`` of a MAE search)."""
    if "/" in metric:
        return metric.rsplit("/", 1)[-1]
    robust = [m for m in exp.metrics if m.startswith("valid/robust/")]
    results = exp.results
    if OBJECTIVE in results.column_names:
        import pyarrow.compute as pc

        for name in robust:
            both = results.select([OBJECTIVE, name]).drop_null()
            if both.num_rows and pc.max(pc.abs(pc.subtract(both[OBJECTIVE], both[name]))).as_py() <= 1e-9:
                return name.rsplit("/", 1)[-1]
    return robust[0].rsplit("/", 1)[-1] if robust else "MAE"


def _study(exp: Experiment, mode: str) -> Any:
    """The study rebuilt from the store (its space's distributions); the observed values without a space."""
    from analysis._optuna_bridge import to_optuna

    try:
        return to_optuna(exp)
    except FSRFError:
        return study_from_tables(exp.trials.to_pandas(), name=exp.name, mode=mode,
                                 results=exp.results.to_pandas())


def _log_params(study: Any) -> list[str]:
    logs = set()
    for trial in study.get_trials(deepcopy=False):
        for name, dist in trial.distributions.items():
            if getattr(dist, "log", False):
                logs.add(name)
    return sorted(logs)


def _choice_params(study: Any) -> list[str]:
    from optuna.distributions import CategoricalDistribution

    return sorted({name for trial in study.get_trials(deepcopy=False)
                   for name, dist in trial.distributions.items()
                   if isinstance(dist, CategoricalDistribution) and not name.endswith(":off")})


def _best_config(exp: Experiment, out: Path, slug: str, *, metric: str, mode: str) -> str:
    """The top trial's full training config, written as ``<slug>-best.yaml`` beside the page
    (by ``fsrf export``'s writer) and shown; a line saying why when it cannot be rebuilt."""
    from analysis._export import export_config

    path = out / f"{slug}-best.yaml"
    try:
        export_config(exp, out=path, metric=metric, mode=mode)
    except FSRFError as err:
        return f'<p class="note">no best config: {html.escape(str(err))}</p>'
    text = path.read_text()
    return (f'<p>The top trial as a full training config: <a href="{html.escape(path.name)}">{html.escape(path.name)}</a> '
            f"(the same file <code>fsrf export</code> writes; train it with "
            f"<code>fsrf train --config {html.escape(path.name)} --out runs/best</code>).</p>"
            f'<details><summary>show it</summary><pre>{html.escape(text)}</pre></details>')


def _table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return '<p class="note">(none)</p>'
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(r.get(c), missing='–'))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _csv(rows: list[dict[str, Any]], path: Path, columns: Sequence[str]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(columns)) if rows else pd.DataFrame(columns=list(columns))
    atomic_write_text(path, frame.to_csv(index=False))


def _text_protocol(exp: Experiment) -> str:
    """How the search's missing text was simulated: each trial's ``data.text_input`` as searched,
    overridden (``--set``) or given by the space's base config (features when none is known)."""
    column = CONFIG_PREFIX + "data.text_input"
    found = set(exp.trials.column(column).to_pylist()) - {None} if column in exp.trials.column_names else set()
    if not found:
        overridden = run_overrides(exp.options).get("data.text_input")
        if overridden is not None:
            found = {overridden}
        elif exp.space is not None:
            try:
                found = {load_space(exp.space).base.data.text_input}
            except FSRFError:  # a space that no longer loads: the report still renders
                found = set()
    protocols = {TEXT_PROTOCOLS[v] for v in found if v in TEXT_PROTOCOLS} or {TEXT_PROTOCOLS["features"]}
    return protocols.pop() if len(protocols) == 1 else "mixed"


def _schedules(exp: Experiment) -> dict[str, dict[str, list[float]]]:
    """Each trial's followed schedule (a population-based search's), ``{}`` for other searches."""
    from tuning import SCHEDULE_PREFIX, schedule_of

    names = [c for c in exp.trials.column_names if c == "trial_id" or c.startswith(SCHEDULE_PREFIX)]
    if len(names) < 2:
        return {}
    rows = exp.trials.select(names).to_pylist()
    return {r["trial_id"]: s for r in rows if (s := schedule_of(r))}


def _experiment_section(exp: Experiment, index: int, out: Path, *, metric: str, mode: str | None,
                        top: int) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    check_metric(exp, metric)
    mode = mode or metric_mode(exp, metric)
    if mode not in ("min", "max"):
        raise FSRFError(f"--mode: {mode!r} is not min or max")
    slug = _slug(exp.name, index)
    board = leaderboard(exp, metric=metric, mode=mode, top=top)
    study_mode = mode
    if metric != OBJECTIVE and OBJECTIVE in exp.metrics:
        try:
            study_mode = metric_mode(exp, OBJECTIVE)
        except FSRFError:  # the objective's direction is unknown: rank it like the chosen metric
            study_mode = mode
    study = _study(exp, study_mode)
    imp = importance_table(study)
    logs = _log_params(study)

    results = exp.results.to_pandas()
    best = fig.best_rows(results, metric=metric, mode=mode)
    statuses = {t["trial_id"]: t["status"] for t in exp.trials.select(["trial_id", "status"]).to_pylist()}
    best = best.assign(status=best["trial_id"].map(statuses))
    finished = sum(1 for v in statuses.values() if v in ("COMPLETE", "PRUNED"))
    top_ids = [r["trial_id"] for r in board if r["value"] is not None]
    top_best = best[best["trial_id"].isin(top_ids)]
    base = base_metric(exp, metric)
    base_mode = direction(base)
    complete = COMPLETE_OBJECTIVE if COMPLETE_OBJECTIVE in exp.metrics else rate_key("valid", 0.0, base)
    robust = OBJECTIVE if OBJECTIVE in exp.metrics else robust_key("valid", base)
    ranked = [r["param"] for r in imp if all(r.get(e) is not None for e in EVALUATORS[:1])]
    searched = [p[len(CONFIG_PREFIX):] for p in exp.config_columns
                if not p.endswith(":off") and results[p].nunique(dropna=True) > 1] if len(results) else []
    slices = [p for p in ranked if p in searched] + [p for p in searched if p not in ranked]
    axes = slices[:MAX_AXES]
    figures = [
        ("Learning curves", fig.learning_curves(
            results, top_ids, out / f"{slug}-learning.png", metric=metric,
            title=f"{exp.name}: {metric} per epoch, top {len(top_ids)} trials")),
        ("Robustness curves", fig.robustness_curves(
            top_best, out / f"{slug}-robustness.png", metric=base, split="valid",
            title=f"{exp.name}: {base} vs validation missing rate (top {len(top_best)}, best epoch)")),
        ("Pareto front: complete vs robust", fig.pareto_front(
            fig.best_rows(results, metric=robust, mode=base_mode) if robust in results.columns else best,
            out / f"{slug}-pareto.png", complete=complete, robust=robust, mode=base_mode,
            title=f"{exp.name}: complete vs robust {base}")),
        ("Parameter importance", fig.importance_bars(
            imp, out / f"{slug}-importance.png", evaluator=EVALUATORS[0], n_trials=finished,
            title=f"{exp.name}: parameter importance ({EVALUATORS[0]}, {finished} finished trials)")),
        ("Parameter slices", fig.param_slices(
            best, slices, out / f"{slug}-slices.png", metric=metric, log_params=logs,
            choice_params=_choice_params(study),
            title=f"{exp.name}: {metric} against each parameter (pruned trials hollow)")),
        ("Parallel coordinates", fig.parallel_coordinates(
            best, axes, out / f"{slug}-parallel.png", metric=metric, mode=mode, log_params=logs,
            title=f"{exp.name}: parallel coordinates ({len(axes)} most important parameters)")),
    ]
    kind = CONFIG_PREFIX + "curriculum.kind"
    if kind in best.columns and best[kind].nunique(dropna=True) > 1:
        figures.append(("Curriculum kinds", fig.group_comparison(
            best, kind, out / f"{slug}-curricula.png", metric=metric, mode=mode,
            title=f"{exp.name}: {metric} by curriculum kind (pruned trials hollow)", xlabel="curriculum.kind")))
    switches = [c[len(CONFIG_PREFIX):-len(":off")] for c in exp.config_columns if c.endswith(":off")]
    if switches:
        figures.append(("Loss terms off vs on", fig.switch_comparison(
            best, switches, out / f"{slug}-terms.png", metric=metric, mode=mode,
            title=f"{exp.name}: {metric} with each switchable weight off vs on")))
    schedules = _schedules(exp)
    if schedules:  # a population-based search (pbt, pb2): what its top trials learned
        figures.insert(1, ("Learned schedules (population-based search)", fig.learned_schedules(
            schedules, [r["trial_id"] for r in board], out / f"{slug}-schedules.png",
            title=f"{exp.name}: followed schedules of the top trials (missing rate, perturbed fields)")))
    counts = status_counts(exp)
    errors = error_messages(exp)
    protocol = _text_protocol(exp)
    parts = [f'<h2 id="{html.escape(slug)}">{html.escape(exp.name)}</h2>',
             f'<p class="note">store: <code>{html.escape(exp.path)}</code> · trials: '
             + html.escape(", ".join(f"{n} {s.lower()}" for s, n in counts.items())) + "</p>",
             f"<h3>Leaderboard: top {len(board)} by {html.escape(metric)} ({mode}, best over epochs)</h3>",
             _table(board), f'<p class="note">{html.escape(protocol_line(protocol))}</p>',
             "<h3>Best config</h3>", _best_config(exp, out, slug, metric=metric, mode=mode),
             "<h3>Parameter importance (fANOVA, PED-ANOVA; normalised to sum 1)</h3>",
             (f'<p class="note">Only {finished} finished trials: with fewer than {MIN_IMPORTANCE_TRIALS} the '
              "importance is a rough ranking, not a finding.</p>" if finished < MIN_IMPORTANCE_TRIALS else ""),
             _table(imp)]
    if errors:
        parts += ["<h3>Errors</h3>", _table([{"trial_id": t, "error": m} for t, m in errors.items()])]
    for caption, path in figures:
        name = html.escape(path.name)
        parts.append(f'<h3>{html.escape(caption)}</h3><img src="{name}" alt="{html.escape(caption)}">')
    lb_rows = [{"experiment": exp.name, **r, "text_protocol": protocol} for r in board]
    imp_rows = [{"experiment": exp.name, **r} for r in imp]
    return "\n".join(parts), lb_rows, imp_rows


def write_report(exps: Experiment | str | os.PathLike[str] | Sequence[Experiment | str | os.PathLike[str]],
                 out_dir: str | os.PathLike[str], *, metric: str = OBJECTIVE, mode: str | None = None,
                 top: int = 10) -> Path:
    """Write ``out_dir/index.html`` with the figures (PNG) and tables (CSV) of each experiment.

    Args:
        exps: one or several experiments (loaded, or paths/URIs to load).
        out_dir: the report directory (created).
        metric: the ranking metric (``objective``, ``valid/robust/MAE``, ...).
        mode: ``min`` or ``max``; None: the metric's direction (the search's for the objective).
        top: trials in the leaderboard, learning and robustness curves.

    Returns:
        The path of ``index.html``.

    Raises:
        FSRFError: an unknown metric or mode, no experiment, an unwritable directory (one line).
    """
    if isinstance(exps, (Experiment, str, os.PathLike)):
        exps = [exps]
    loaded = [e if isinstance(e, Experiment) else load_experiment(e) for e in exps]
    if not loaded:
        raise FSRFError("report: no experiment given; expected one or more experiment directories")
    if top < 1:
        raise FSRFError(f"--top: {top} is not a positive number of trials")
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FSRFError(f"--report: cannot create {out} ({err.strerror})") from None
    sections, lb_rows, imp_rows = [], [], []
    for i, exp in enumerate(loaded):
        section, lb, imp = _experiment_section(exp, i, out, metric=metric, mode=mode, top=top)
        sections.append(section)
        lb_rows += lb
        imp_rows += imp
    lb_cols: list[str] = []
    for r in lb_rows:
        lb_cols += [k for k in r if k not in lb_cols]
    _csv(lb_rows, out / LEADERBOARD_CSV,
         lb_cols or ["experiment", "rank", "trial_id", "status", "epochs", "value"])
    imp_cols: list[str] = []
    for r in imp_rows:
        imp_cols += [k for k in r if k not in imp_cols]
    _csv(imp_rows, out / IMPORTANCE_CSV, imp_cols or ["experiment", "param", *EVALUATORS, "rank"])
    names = ", ".join(e.name for e in loaded)
    toc = " · ".join(f'<a href="#{html.escape(_slug(e.name, i))}">{html.escape(e.name)}</a>'
                     for i, e in enumerate(loaded))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fsrf search report: {html.escape(names)}</title>
<style>{_STYLE}</style></head><body>
<h1>Search report: {html.escape(names)}</h1>
<p>Ranked by <code>{html.escape(metric)}</code>.
Tables as CSV: <a href="{LEADERBOARD_CSV}">{LEADERBOARD_CSV}</a>,
<a href="{IMPORTANCE_CSV}">{IMPORTANCE_CSV}</a>. Experiments: {toc}</p>
{"".join(sections)}
</body></html>
"""
    index = out / INDEX
    atomic_write_text(index, page)
    return index
