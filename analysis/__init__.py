"""Analysis of tuning experiments: read the trial store, rank trials, export configs, bridge to Optuna.

Everything reads the store through :mod:`tuning.store`'s readers and never writes to it.

Example:
    >>> from analysis import load_experiment, leaderboard, export_config   # doctest: +SKIP
    >>> exp = load_experiment("~/ray_results/mosi-robust")
    >>> leaderboard(exp, metric="valid/robust/MAE", top=5)
    >>> export_config(exp, rank=1, out="best.yaml")
"""

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

__all__ = [
    "Experiment",
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
