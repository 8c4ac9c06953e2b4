"""Analysis of tuning experiments: read the trial store, rank trials, export configs, bridge to Optuna.

Everything reads the store through :mod:`tuning.store`'s readers and never writes to it.

Example:
    >>> from analysis import load_experiment, leaderboard, export_config   # doctest: +SKIP
    >>> exp = load_experiment("~/ray_results/mosi-robust")
    >>> leaderboard(exp, metric="valid/robust/MAE", top=5)
    >>> export_config(exp, rank=1, out="best.yaml")
"""

from typing import Any

from analysis._export import export_config, run_overrides, search_space
from analysis._leaderboard import (
    differing_params,
    error_messages,
    leaderboard,
    metric_mode,
    render_leaderboard,
    status_counts,
    trial_values,
)
from analysis._load import Experiment, load_experiment, load_experiments
from analysis._optuna_bridge import open_storage, to_optuna

_COMMANDS = {"compare_main": "analysis._compare"}
"""The command line behind ``fsrf compare``, loaded on first access."""


def __getattr__(name: str) -> Any:
    """``compare_main``: imported when ``fsrf compare`` runs."""
    if name not in _COMMANDS:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    import importlib

    value = importlib.import_module(_COMMANDS[name]).main
    globals()[name] = value
    return value


__all__ = [
    "Experiment",
    "compare_main",
    "differing_params",
    "error_messages",
    "export_config",
    "leaderboard",
    "load_experiment",
    "load_experiments",
    "metric_mode",
    "open_storage",
    "render_leaderboard",
    "run_overrides",
    "search_space",
    "status_counts",
    "to_optuna",
    "trial_values",
]
