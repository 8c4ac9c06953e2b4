"""Synthetic experiments for the analysis tests: real stores, written by the real writer.

:func:`write_store` lays out ``<exp_dir>/store/`` and ``<exp_dir>/fsrf_search.json`` as
``fsrf tune`` does. Trial configs are drawn from ``tuning/spaces/default.yaml`` through
:meth:`SearchSpace.define_by_run` with Optuna's RandomSampler (conditional params and
``:off`` switches included), so every stored config is one the space could draw. The
objective (valid/robust/MAE, minimised) depends strongly on one planted parameter and
only weakly (noise) on the rest. Deterministic for a given ``seed``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna

from fsrf._constants import EVAL_RATES
from tuning._run import STATE_FILE, STORE_DIR, SearchOptions
from tuning.space import SearchSpace, load_space
from tuning.store import TrialStoreWriter

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = ROOT / "tuning" / "spaces" / "default.yaml"
ERROR_MESSAGES = ("RuntimeError: CUDA out of memory", "NonFiniteLossError: epoch 1: loss term homo is nan")

_SPACE: SearchSpace | None = None


def default_space() -> SearchSpace:
    """The default space, loaded once per test session."""
    global _SPACE
    if _SPACE is None:
        _SPACE = load_space(DEFAULT_SPACE)
    return _SPACE


def draw_configs(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` flat trial configs as Ray's OptunaSearch hands them to Tune (params + constants)."""
    space = default_space()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        constants = space.define_by_run(trial)
        configs.append({**trial.params, **constants})
    return configs


def planted_position(config: dict[str, Any], planted: str) -> float:
    """Where the planted param's value lies in its range, 0..1 (log scale for a log range)."""
    param = next(p for p in default_space().params if p.name == planted)
    value = config.get(planted)
    if value is None:
        return 0.5
    if param.kind == "choice":
        return param.choices.index(value) / max(1, len(param.choices) - 1)
    low, high, v = float(param.low), float(param.high), float(value)
    if param.log:
        low, high, v = math.log(low), math.log(high), math.log(max(v, param.low))
    return (v - low) / (high - low)


def write_store(
    exp_dir: str | Path, *, n_trials: int = 12, epochs: int = 4, seed: int = 0, planted: str = "optim.lr",
    n_error: int | None = None, n_running: int = 0, name: str | None = None, strength: float = 0.8,
) -> Path:
    """Write a synthetic experiment; returns ``exp_dir``.

    Statuses, by trial index ``i`` (trial ids ``t<seed>_<i:05d>``, so id order is index order):
    the last ``n_running`` trials are RUNNING (results, no end event); ``n_error`` (default
    ``n_trials // 6``) trials with ``i % 6 == 5`` are ERROR (the first of them before any
    result); of the rest, those whose planted value lies in the worst third are PRUNED after
    ``min(2, epochs - 1)`` epochs (at least 1); the others run ``epochs`` epochs and are COMPLETE.

    Args:
        exp_dir: the experiment directory (``store/`` and ``fsrf_search.json`` go in it).
        planted: the param the objective depends on: objective ~ 0.6 + strength * position.
    """
    exp = Path(exp_dir)
    name = name or exp.name
    rng = random.Random(seed)
    configs = draw_configs(n_trials, seed)
    n_error = n_trials // 6 if n_error is None else n_error
    errored = [i for i in range(n_trials - n_running) if i % 6 == 5][:n_error]
    with TrialStoreWriter(exp / STORE_DIR, experiment=name, fsync=False, flush_every=64) as writer:
        for i, config in enumerate(configs):
            trial_id = f"t{seed}_{i:05d}"
            position = planted_position(config, planted)
            level = 0.6 + strength * position + 0.02 * rng.random()
            running = i >= n_trials - n_running
            if i in errored:
                last = 0 if i == errored[0] else 1
                status = "error"
            elif running:
                last, status = max(1, epochs // 2), None
            elif position > 2 / 3 and epochs > 1:
                last, status = max(1, min(2, epochs - 1)), "pruned"
            else:
                last, status = epochs, "complete"
            writer.event(trial_id=trial_id, attempt=1, event="start", config=config)
            for epoch in range(1, last + 1):
                writer.result(trial_id=trial_id, attempt=1, iteration=epoch, config=config,
                              metrics=_metrics(level, epoch, final=status == "complete" and epoch == epochs,
                                               rng=rng))
            if status == "error":
                message = ERROR_MESSAGES[errored.index(i) % len(ERROR_MESSAGES)]
                writer.event(trial_id=trial_id, attempt=1, event="error", iteration=last or None,
                             message=message)
            elif status is not None:
                writer.event(trial_id=trial_id, attempt=1, event=status, iteration=last)
    space = default_space()
    options = SearchOptions(space=str(DEFAULT_SPACE), name=name, storage=str(exp.parent),
                            num_samples=n_trials, max_epochs=epochs, checkpoint_every=1, seed=seed,
                            sampler="random")
    state = {"space_fingerprint": space.fingerprint(), "options": asdict(options)}
    (exp / STATE_FILE).write_text(json.dumps(state, indent=2, default=str))
    return exp


def _metrics(level: float, epoch: int, *, final: bool, rng: random.Random) -> dict[str, float]:
    """One epoch's report: the robust MAE falls towards ``level`` as epochs pass."""
    robust = level + 0.3 * math.exp(-epoch / 2) + 0.005 * rng.random()
    metrics = {f"valid/r{rate:.1f}/MAE": robust + 0.2 * (rate - 0.45) for rate in EVAL_RATES}
    metrics.update({
        "objective": robust, "valid/robust/MAE": robust, "objective_complete": metrics["valid/r0.0/MAE"],
        "train/loss/task": 0.5 * robust + 0.1, "epoch": float(epoch), "final_epoch": 1.0 if final else 0.0,
    })
    return metrics
