"""The end of a search: the top trials on the terminal and the best trial's full config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsrf import OBJECTIVE, Config, parse_overrides, save_config, with_overrides
from tuning._store_write import CONFIG_PREFIX
from tuning.space import SearchSpace
from tuning.store import read_results, read_trials


def rank_order(trials: list[dict[str, Any]], values: Mapping[str, float | None], *, mode: str) -> list[dict[str, Any]]:
    """Trials best first by ``values[trial_id]`` (``mode`` min or max); trials without a value last;
    ties and valueless trials by trial id. The one ranking: ``tune.py``'s summary and ``best.yaml``,
    ``fsrf analyze``'s leaderboard and ``fsrf export --rank`` all order trials with it."""
    sign = 1.0 if mode == "min" else -1.0

    def key(trial: dict[str, Any]) -> tuple[bool, float, str]:
        value = values.get(trial["trial_id"])
        return (value is None, 0.0 if value is None else sign * value, trial["trial_id"])

    return sorted(trials, key=key)


def ranked_trials(store: Path, *, mode: str) -> list[dict[str, Any]]:
    """Trials with their best objective over their epochs (``best_objective``), in :func:`rank_order`."""
    trials = read_trials(store).to_pylist()
    results = read_results(store)
    # a search whose every trial failed before its first epoch stored no objective column at all
    results = results.select(["trial_id", OBJECTIVE]).to_pylist() if OBJECTIVE in results.column_names else []
    best: dict[str, float] = {}
    pick = min if mode == "min" else max
    for row in results:
        value = row[OBJECTIVE]
        if value is not None and not math.isnan(value):
            best[row["trial_id"]] = pick(best.get(row["trial_id"], value), value)
    for trial in trials:
        trial["best_objective"] = best.get(trial["trial_id"])
    return rank_order(trials, best, mode=mode)


def trial_config(trial: dict[str, Any]) -> dict[str, Any]:
    """The flat Tune config of a stored trial (its searched values)."""
    return {
        k[len(CONFIG_PREFIX):]: v for k, v in trial.items() if k.startswith(CONFIG_PREFIX) and v is not None
    }


def run_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted config values every trial of a search got on top of its space, from the search's
    options (``SearchOptions`` as a dict, as ``fsrf_search.json`` stores them): ``--checkpoint-every``,
    ``--set`` values, ``--max-epochs``, ``--data`` and a population search's fixed curriculum.
    The one builder: the trials, ``best.yaml`` and ``fsrf export`` all use it."""
    from tuning._pbt import is_population, population_overrides

    overrides: dict[str, Any] = {"train.checkpoint_every": options.get("checkpoint_every", 1),
                                 **parse_overrides(list(options.get("overrides") or ()))}
    if options.get("max_epochs"):
        overrides["train.epochs"] = options["max_epochs"]
    if options.get("data"):
        overrides["data.path"] = str(options["data"])
    if is_population(options.get("scheduler")):
        overrides.update(population_overrides())
    return overrides


def trial_training_config(trial: Mapping[str, Any], *, space: SearchSpace, options: Mapping[str, Any],
                          source: str) -> Config:
    """The complete training config a stored trial ran with (minus its device and thread count).

    A trial of a population-based search (pbt, pb2) gets the schedule it followed: its rates per
    epoch as a ``replay`` curriculum, each other perturbed field epoch by epoch with it.
    """
    from tuning._pbt import RATE, schedule_of, winner_overrides

    schedule = schedule_of(dict(trial))
    followed = winner_overrides(schedule) if RATE in schedule else {}
    return with_overrides(space.to_config(trial_config(dict(trial))), {**run_overrides(options), **followed},
                          source=source)


def write_trial_config(config: Config, path: Path, *, provenance: dict[str, Any]) -> Path:
    """Write a chosen trial's training config with its provenance: the one writer of ``best.yaml``
    (``tune.py``) and of ``fsrf export``'s files."""
    save_config(config, path, provenance=provenance)
    return path


def print_summary(store: Path, space: SearchSpace, *, mode: str, top: int = 10) -> dict[str, int]:
    """Print the top trials: objective, key parameters, epochs run, status; returns the status counts."""
    trials = ranked_trials(store, mode=mode)
    columns = list(space.key_columns())
    header = ["rank", "trial", "status", "epochs", "objective", *(c.split(".", 1)[1] for c in columns)]
    rows = []
    for rank, trial in enumerate(trials[:top], 1):
        cfg = trial_config(trial)
        value = trial["best_objective"]
        rows.append([
            str(rank), trial["trial_id"], trial["status"], str(trial.get("iterations") or 0),
            "-" if value is None else f"{value:.4f}", *(_short(cfg.get(c, "-")) for c in columns),
        ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\ntop trials by best validation objective ({space.metric}, {mode}):")
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial["status"]] = counts.get(trial["status"], 0) + 1
    print("trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    return counts


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def population_winner(store: Path, *, mode: str) -> dict[str, Any] | None:
    """The winner of a population-based search: the trial whose followed schedule ended best.

    Ranked by the objective of its last epoch, not its best one: after an exploit a trial's
    earlier rows are its own, but its followed schedule (and so its last row) is another's, and
    ``best.yaml`` replays that schedule to its end. Its ``followed_schedule`` is added.
    """
    from tuning._pbt import schedule_of

    sign = 1.0 if mode == "min" else -1.0
    ranked = []
    for trial in read_trials(store).to_pylist():
        value, schedule = trial.get(OBJECTIVE), schedule_of(trial)
        if trial["status"] != "ERROR" and schedule and value is not None and not math.isnan(value):
            ranked.append((sign * value, trial["trial_id"], {**trial, "followed_schedule": schedule}))
    return min(ranked)[2] if ranked else None


def write_best(
    store: Path, space: SearchSpace, *, options: Mapping[str, Any], path: Path, experiment: str,
    population: bool = False,
) -> Path | None:
    """Write the best trial's full training config (``fsrf train --config`` takes it as is).

    For a population-based search (``population``), the winner is the trial whose followed
    schedule ended best (:func:`population_winner`), and its config replays that schedule: its
    rates per epoch as a ``replay`` curriculum, each other perturbed field epoch by epoch with it.
    """
    if population:
        best = population_winner(store, mode=space.mode)
        if best is None:
            return None
        value = best[OBJECTIVE]
    else:
        trials = [t for t in ranked_trials(store, mode=space.mode) if t["best_objective"] is not None]
        if not trials:
            return None
        best = trials[0]
        value = best["best_objective"]
    config = trial_training_config(best, space=space, options=options, source=str(path))
    provenance = {
        "experiment": experiment,
        "trial_id": best["trial_id"],
        "objective": space.metric,
        "objective_value": value,
        "store": str(store),
    }
    if population:
        provenance["objective_of"] = "last epoch of the followed schedule"
        provenance["followed_schedule"] = best["followed_schedule"]
    return write_trial_config(config, path, provenance=provenance)
