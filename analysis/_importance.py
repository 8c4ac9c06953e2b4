"""Parameter importance: which searched parameters matter for the objective.

Optuna's evaluators on a study rebuilt from the trial store (see
:mod:`analysis._optuna_bridge`): fANOVA (a random forest's functional ANOVA) and
PED-ANOVA (how the top-quantile trials' parameter distribution differs from all
trials'). Every searched parameter is included, the categorical curriculum kind too;
parameters sampled only under a condition (``curriculum.step_size`` ...) are left out
from both evaluators when they are not in every completed trial (fANOVA cannot use them,
and PED-ANOVA's estimate on the few trials that hold one is mostly noise), so the two
evaluators rank the same set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fsrf import FSRFError
from tuning.store import CONFIG_PREFIX

if TYPE_CHECKING:
    import optuna

EVALUATORS = ("fanova", "ped-anova")
"""The evaluator names :func:`importance` takes."""


def _evaluator(name: str, seed: int) -> Any:
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    if name == "fanova":
        return FanovaImportanceEvaluator(seed=seed)
    if name == "ped-anova":
        return PedAnovaImportanceEvaluator()
    raise FSRFError(f"importance: unknown evaluator {name!r}; expected one of {', '.join(EVALUATORS)}")


def importance(study: optuna.Study, *, evaluator: str = "fanova", seed: int = 0,
               params: Sequence[str] | None = None) -> dict[str, float]:
    """Importance of each searched parameter for the study's objective, most important first.

    Args:
        study: a study rebuilt from the store (``to_optuna``); with two objectives
            (complete, robust) the last one, the robust objective, is explained.
        evaluator: ``"fanova"`` or ``"ped-anova"``.
        seed: the fANOVA forest's seed (PED-ANOVA is deterministic).
        params: the parameters to rank; None: those every completed trial holds.

    Returns:
        ``{param: importance}``, normalised to sum to 1, sorted descending.

    Raises:
        FSRFError: an unknown evaluator, or too few completed trials with parameters.
    """
    import optuna

    chosen = _evaluator(evaluator, seed)
    target = None
    if len(study.directions) > 1:
        def target(trial: optuna.trial.FrozenTrial) -> float:
            return float(trial.values[-1])
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2 or not any(t.params for t in complete):
        raise FSRFError(f"importance: study {study.study_name!r} has {len(complete)} completed trial(s) "
                        f"with parameters; expected at least 2")
    if params is None:
        params = sorted(set.intersection(*(set(t.params) for t in complete)))
        if not params:
            raise FSRFError(f"importance: study {study.study_name!r} has no parameter common to all its "
                            f"completed trials")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning of PED-ANOVA
            result = optuna.importance.get_param_importances(
                study, evaluator=chosen, params=list(params), target=target)
    except (ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FSRFError(f"importance ({evaluator}): {first}") from None
    cleaned = {k: (0.0 if v is None or not math.isfinite(v) else float(v)) for k, v in result.items()}
    return dict(sorted(cleaned.items(), key=lambda kv: -kv[1]))


def importance_table(study: optuna.Study, *, evaluators: tuple[str, ...] = EVALUATORS,
                     seed: int = 0) -> list[dict[str, Any]]:
    """Rows ``{param, fanova, ped-anova, rank}`` (rank by the first evaluator); an evaluator
    that cannot run on this study gives empty values (the error is kept under ``note``)."""
    scores: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for name in evaluators:
        try:
            scores[name] = importance(study, evaluator=name, seed=seed)
        except FSRFError as err:
            scores[name] = {}
            notes.append(str(err))
    params: list[str] = []
    for name in evaluators:
        params += [p for p in scores[name] if p not in params]
    first = scores[evaluators[0]] if evaluators else {}
    params.sort(key=lambda p: -first.get(p, -1.0))
    rows = [{"param": p, **{name: scores[name].get(p) for name in evaluators}, "rank": i + 1}
            for i, p in enumerate(params)]
    if notes and rows:
        rows[0]["note"] = "; ".join(notes)
    return rows


def study_from_tables(trials: Any, *, name: str, mode: str, metric: str = "objective",
                      results: Any = None) -> optuna.Study:
    """A minimal in-memory study from the store's tables: one completed trial per trial with a value.

    A fallback for when :func:`analysis._optuna_bridge.to_optuna` is not available. Each
    trial's value is its best ``metric`` over epochs (``results``; else its last row in
    ``trials``). Distributions come from the observed values: strings and bools are
    categorical, numbers float ranges (log when positive and spanning >= 30x).

    Args:
        trials: pandas frame of :func:`tuning.store.read_trials` (``config.*`` columns).
        name: the study name.
        mode: ``"min"`` or ``"max"``.
        metric: the value column.
        results: pandas frame of :func:`tuning.store.read_results`, or None.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from pandas.api import types

    if mode not in ("min", "max"):
        raise FSRFError(f"importance: mode {mode!r}; expected min or max")
    if results is not None and metric in results.columns:
        grouped = results.groupby("trial_id")[metric]
        values = grouped.min() if mode == "min" else grouped.max()
    elif metric in trials.columns:
        values = trials.set_index("trial_id")[metric]
    else:
        raise FSRFError(f"importance: metric {metric!r} is not in the store")
    configs = [c for c in trials.columns if c.startswith(CONFIG_PREFIX)]
    dists: dict[str, Any] = {}
    for col in configs:
        series = trials[col].dropna()
        if series.empty or series.nunique() < 2:
            continue
        first = series.iloc[0]
        dtype = series.dtype
        if isinstance(first, (str, bool)) or types.is_bool_dtype(dtype) or not types.is_numeric_dtype(dtype):
            dists[col] = CategoricalDistribution(sorted(series.unique().tolist(), key=str))
        else:
            low, high = float(series.min()), float(series.max())
            dists[col] = FloatDistribution(low, high, log=low > 0 and high / low >= 30)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, direction="minimize" if mode == "min" else "maximize")
    for _, row in trials.iterrows():
        value = values.get(row["trial_id"])
        if value is None or not math.isfinite(float(value)):
            continue
        params, used = {}, {}
        for col, dist in dists.items():
            v = row[col]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            key = col[len(CONFIG_PREFIX):]
            params[key] = v.item() if hasattr(v, "item") else v
            used[key] = dist
        study.add_trial(optuna.trial.create_trial(params=params, distributions=used, value=float(value)))
    return study
