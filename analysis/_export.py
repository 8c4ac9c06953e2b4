"""Export: a chosen trial's complete training config, with where it came from.

The config is what the trial trained with: the space's base config (with ``fixed``)
plus the trial's sampled values (:meth:`SearchSpace.to_config`), plus the search's
run-level overrides as ``tuning/_run.py::run_search`` builds them (``--set`` values,
``--max-epochs``, ``--checkpoint-every``) and its ``--data`` file. ``fsrf train --config``
and ``fsrf final --config`` take the file as is (its ``provenance`` key is ignored there).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from analysis._leaderboard import leaderboard, metric_mode
from analysis._load import Experiment
from fsrf import Config, FSRFError
from fsrf.constants import OBJECTIVE
from tuning import run_overrides, write_trial_config  # noqa: F401 - run_overrides: re-exported by analysis
from tuning import trial_training_config as build_trial_config
from tuning.space import SearchSpace, load_space


def search_space(exp: Experiment, space: str | os.PathLike[str] | None = None) -> SearchSpace:
    """The experiment's search space (or ``space``, a replacement file).

    Raises:
        FSRFError: the experiment names no space, or its file is gone.
    """
    if space is not None:
        return load_space(space)
    if exp.space is None:
        named = exp.options.get("space")
        why = f"its space file {named} is missing" if named else "it records no space (no fsrf_search.json)"
        raise FSRFError(f"experiment {exp.name!r} ({exp.path}): {why}; pass --space FILE")
    return load_space(exp.space)


def pick_trial(exp: Experiment, *, rank: int = 1, metric: str = OBJECTIVE, mode: str | None = None,
               reduce: str = "best") -> dict[str, Any]:
    """The leaderboard row at ``rank`` (1 = best) among trials with a value of ``metric``.

    Raises:
        FSRFError: ``rank`` < 1, or fewer ranked trials than ``rank``.
    """
    if rank < 1:
        raise FSRFError(f"--rank: {rank} is not a rank (1 is the best trial)")
    rows = leaderboard(exp, metric=metric, mode=mode, top=None, reduce=reduce)
    rows = [r for r in rows if r["value"] is not None]
    if len(rows) < rank:
        raise FSRFError(f"--rank: {rank} but experiment {exp.name!r} has {len(rows)} trial(s) with a value "
                        f"of {metric}")
    return rows[rank - 1]


def trial_training_config(exp: Experiment, trial_id: str, *, space: SearchSpace) -> Config:
    """The complete training config the trial ran with (see :func:`tuning._summary.trial_training_config`)."""
    rows = exp.trials.filter(pc.equal(exp.trials["trial_id"], trial_id)).to_pylist()
    if not rows:
        raise FSRFError(f"experiment {exp.name!r}: no trial {trial_id!r}")
    return build_trial_config(rows[0], space=space, options=exp.options, source=f"{exp.name}: search options")


def export_config(
    exp: Experiment, *, out: str | os.PathLike[str], rank: int = 1, metric: str = OBJECTIVE,
    mode: str | None = None, space: str | os.PathLike[str] | None = None, reduce: str = "best",
) -> Path:
    """Write the ``rank``-th trial's complete training config to ``out``, with its provenance.

    Returns:
        ``out``.

    Raises:
        FSRFError: an unknown metric, a rank beyond the ranked trials, a missing space file,
            or a stored config the space cannot rebuild (one line each).
    """
    mode = mode or metric_mode(exp, metric)
    row = pick_trial(exp, rank=rank, metric=metric, mode=mode, reduce=reduce)
    searched = search_space(exp, space)
    config = trial_training_config(exp, row["trial_id"], space=searched)
    provenance = {
        "experiment": exp.name,
        "trial_id": row["trial_id"],
        "rank": rank,
        "metric": metric,
        "mode": mode,
        "value": row["value"],
        "status": row["status"],
        "epochs": row["epochs"],
        "store": exp.path,
        "space": str(searched.source),
    }
    return write_trial_config(config, Path(out), provenance=provenance)
