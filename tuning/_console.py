"""What a search tells the terminal: a start summary, and Ray's internals kept out by default.

Verbosity (``tune.py -q`` / default / ``-v``): 0 prints the start summary and the final
leaderboard only; 1 (default) adds Tune's status table every 15 s (best and last objective per
trial); 2 adds Tune's per-result lines and Ray's own log lines. Below 2, Ray's INFO lines (cluster
start, "Checkpoint successfully created", result-file writes; a population's "[Exploit]" lines are
kept at verbosity 1), its experiment-snapshot warnings,
its token-authentication notice (token authentication stays on) and Optuna's study-creation line
are left out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsrf import Config
    from fsrf.data import MultimodalDataset
    from tuning._run import SearchOptions
    from tuning.space import SearchSpace


def ray_log_level(verbosity: int) -> int:
    """The level of Ray's ``ray`` logger in the driver for a verbosity."""
    return logging.INFO if verbosity >= 2 else logging.WARNING


def quiet_internals(verbosity: int) -> None:
    """Below verbosity 2, silence Ray's and Optuna's bookkeeping lines in the driver."""
    if verbosity >= 2:
        return
    import optuna

    if verbosity >= 1:  # a population's exploits ("[Exploit] Cloning trial ...") are the search's own news
        logging.getLogger("ray.tune.schedulers.pbt").setLevel(logging.INFO)

    # Tune's "snapshotting triggered multiple times" warning: 0 switches it off (Ray's own advice)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def start_summary(options: SearchOptions, space: SearchSpace, base: Config, dataset: MultimodalDataset,
                  exp: Path) -> str:
    """The search in three lines: what, on which data, with what resources, and where."""
    verb = "resuming" if options.resume else "starting"
    epochs = base.train.epochs
    scheduler = "multi-objective (FIFO)" if options.multi_objective else options.scheduler
    sizes = f"train {len(dataset.train)}, valid {len(dataset.valid)}"
    gpus = f", {options.gpus_per_trial:g} GPU" if options.gpus_per_trial else ""
    where: Any = options.storage if "://" in options.storage else exp
    return (
        f"fsrf tune: {verb} search {options.name!r}: model {base.model.name}, {len(space.params)} searched "
        f"parameters ({Path(space.source).name}), objective {space.metric} ({space.mode})\n"
        f"fsrf tune: {options.num_samples} trials x {epochs} epochs, {options.max_concurrent} at once, "
        f"{options.sampler} sampler, {scheduler} scheduler; data {dataset.name} ({sizes}; the test split "
        f"is never read); per trial {options.cpus_per_trial:g} CPU{gpus}\n"
        f"fsrf tune: results in {where}; watch with: tensorboard --logdir {where}  or  "
        f"optuna-dashboard {where}/optuna.journal"
    )
