"""Ray Tune x Optuna searches over FSRF's loss weights and missing-rate curricula.

The public surface other packages use (``analysis``, ``fsrf``'s command line). Names are
loaded on first access, so ``import tuning`` stays cheap and never imports Ray; the modules
behind them are private.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    # running a search
    "SearchOptions": "tuning._run", "run_search": "tuning._run", "experiment_path": "tuning._run",
    "BEST_FILE": "tuning._run", "STATE_FILE": "tuning._run", "SAMPLERS": "tuning._run", "check_sampler": "tuning._run",
    # a stored trial: its config, its place in the ranking, its training config and its writer
    "trial_config": "tuning._summary", "rank_order": "tuning._summary", "ranked_trials": "tuning._summary",
    "run_overrides": "tuning._summary", "trial_training_config": "tuning._summary",
    "write_trial_config": "tuning._summary",
    # the store's row layout
    "BASE_COLUMNS": "tuning._store_write", "CONFIG_PREFIX": "tuning._store_write", "STORE_DIR": "tuning._store_write",
    # the space's parameters
    "OFF": "tuning._space_params", "Param": "tuning._space_params", "SWITCH_SUFFIX": "tuning._space_params",
    # population-based searches: the followed schedules
    "SCHEDULE_PREFIX": "tuning._pbt", "schedule_of": "tuning._pbt", "followed_schedules": "tuning._pbt",
    # storage URIs
    "is_uri": "tuning._remote", "resolve_uri": "tuning._remote",
    # a dataset as arrays (shipped to trials and final-training tasks through Ray's object store)
    "ALL_SPLITS": "tuning._shared_data", "from_arrays": "tuning._shared_data", "to_arrays": "tuning._shared_data",
    # final multi-seed training (one model per seed, selected on validation, evaluated on test)
    "train_and_evaluate": "tuning._final", "run_seeds": "tuning._final", "start_ray": "tuning._final",
    "check_gpu_capacity": "tuning._final", "check_gpus_per_run": "tuning._final", "dg_info": "tuning._final",
    "with_domain": "tuning._final", "domain_title": "tuning._final",
    # command lines behind `fsrf final`, `fsrf store` and `fsrf cluster`
    "final_main": "tuning._final", "store_main": "tuning._store_repair", "cluster_main": "tuning._cluster",
}
_RENAMED = {"resolve_uri": "resolve", "final_main": "main", "store_main": "main", "cluster_main": "main"}

__all__ = [  # noqa: RUF022 - grouped as _PUBLIC is
    "SearchOptions",
    "run_search",
    "experiment_path",
    "BEST_FILE",
    "STATE_FILE",
    "SAMPLERS",
    "check_sampler",
    "trial_config",
    "rank_order",
    "ranked_trials",
    "run_overrides",
    "trial_training_config",
    "write_trial_config",
    "BASE_COLUMNS",
    "CONFIG_PREFIX",
    "STORE_DIR",
    "OFF",
    "Param",
    "SWITCH_SUFFIX",
    "SCHEDULE_PREFIX",
    "schedule_of",
    "followed_schedules",
    "is_uri",
    "resolve_uri",
    "ALL_SPLITS",
    "from_arrays",
    "to_arrays",
    "train_and_evaluate",
    "run_seeds",
    "start_ray",
    "check_gpu_capacity",
    "check_gpus_per_run",
    "dg_info",
    "with_domain",
    "domain_title",
    "final_main",
    "store_main",
    "cluster_main",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its private module on first access."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tuning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
