"""The Ray Tune function trainable: one trial = one ``fsrf.train`` run.

fsrf knows nothing of Ray; this module passes it a ``report`` callback that
forwards every epoch's metrics to ``ray.tune.report`` with the checkpoint fsrf
wrote that epoch, and resumes from ``ray.tune.get_checkpoint()`` when Tune
restarts the trial (after a crash, a lost node, or ``--resume``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import ray.tune
import torch

from fsrf import (
    OBJECTIVE,
    FSRFError,
    NonFiniteLossError,
    atomic_write_text,
    load_checkpoint,
    record_provenance,
    train,
    with_overrides,
)
from fsrf.constants import COMPLETE_OBJECTIVE, EPOCH, LAST_CHECKPOINT, VALID, rate_key
from tuning._pbt import schedule_columns
from tuning._run import WORK_DIR
from tuning._shared_data import from_arrays
from tuning.space import SearchSpace

CHECKPOINT_FILE = LAST_CHECKPOINT
NONFINITE_FILE = "nonfinite.txt"
"""In a trial's folder: the error of the epoch whose loss turned non-finite (not retried unless asked)."""


def work_dir(trial_dir: str | Path) -> Path:
    """A fresh scratch directory for fsrf's run files inside the trial's own directory.

    ``fsrf.train`` writes its checkpoints and history there; Tune copies each
    reported checkpoint into ``checkpoint_*`` beside it. A worker killed by
    SIGKILL cannot remove it, so a stale one (~1 MB) is removed when the trial
    starts again (and by the driver when the search restarts, see ``tuning._run``);
    nothing piles up in the system temp folder.
    """
    work = Path(trial_dir) / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def _reporter(select_metric: str, complete: bool, work: Path, *, retune: Sequence[str] = (),
              inherited: Sequence[dict[str, float]] = ()) -> Callable[[dict[str, float], Path | None], None]:
    """Tune's report of every epoch; with ``retune`` (a population-based search) each result also
    carries the followed schedule so far (``inherited``: the restored checkpoint's history)."""
    complete_key = rate_key(VALID, 0.0, select_metric)
    lineage = list(inherited)

    def report(metrics: dict[str, float], checkpoint: Path | None) -> None:
        metrics = dict(metrics)
        if retune:
            lineage[:] = [r for r in lineage if r[EPOCH] < metrics[EPOCH]] + [dict(metrics)]
            metrics.update(schedule_columns(lineage, retune))
        # Tune's iteration is the epoch, also after a restart from scratch (see _resume_file).
        metrics["training_iteration"] = int(metrics[EPOCH])
        if complete:
            metrics[COMPLETE_OBJECTIVE] = metrics[complete_key]
        if checkpoint is None:
            ray.tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="ckpt-", dir=work) as tmp:
            shutil.copy2(checkpoint, Path(tmp) / CHECKPOINT_FILE)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))

    return report


def fsrf_trainable(
    trial_config: dict[str, Any],
    *,
    space: SearchSpace,
    data: dict[str, Any],
    overrides: dict[str, Any],
    experiment_dir: str | None = None,
    quiet: bool = True,
    retry_nan: bool = False,
    retune: Sequence[str] = (),
) -> None:
    """Train one trial's config; every epoch is reported to Tune.

    Args:
        trial_config: the flat config Tune gives the trial (searched values).
        space: the search space, which turns ``trial_config`` into an fsrf config.
        data: the dataset as numpy arrays from the object store (see ``tuning._shared_data``).
        overrides: run-level dotted config values (epochs, checkpoint period, ...).
        experiment_dir: the experiment directory every node sees (local or NFS storage): the
            trial's scratch files go to ``<experiment_dir>/<trial>/.fsrf-work``; None (object-store
            storage): to Ray's local directory of the trial on its node.
        quiet: leave out Ray's per-checkpoint log lines ("Checkpoint successfully created").
        retry_nan: train a trial again after its loss turned non-finite. False (default): a
            non-finite loss is deterministic under the trial's seed, so Tune's retries of such a
            trial fail at once with the recorded error (``nonfinite.txt`` in the trial's folder)
            instead of spending the budget on training it again.
        retune: the fields a population-based search perturbs (``tuning._pbt``): a restored
            checkpoint may hold other values of them (another trial's, before the perturbation),
            and every report carries the followed schedule; empty for other searches.
    """
    if quiet:
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    context = ray.tune.get_context()
    resources = context.get_trial_resources().required_resources
    cpus = max(1, int(resources.get("CPU", 1)))
    device = "cpu"
    if resources.get("GPU", 0) > 0 and ray.get_gpu_ids():
        if torch.cuda.is_available():
            device = "cuda"  # Ray set CUDA_VISIBLE_DEVICES to the GPU it gave this trial
        else:
            warnings.warn(f"trial {context.get_trial_id()}: given a GPU but torch sees no CUDA device; "
                          "training on the CPU", stacklevel=1)
    config = with_overrides(
        space.to_config(trial_config),
        {**overrides, "train.num_threads": cpus, "train.device": device},
        source=f"trial {context.get_trial_id()}",
    )
    dataset = from_arrays(data)
    trial_dir = Path(experiment_dir) / context.get_trial_name() if experiment_dir else context.get_trial_dir()
    work = work_dir(trial_dir)
    record_provenance(trial_dir, config.data)  # kept with the trial (the scratch below is removed)
    marker = Path(trial_dir) / NONFINITE_FILE
    if marker.is_file() and not retry_nan:
        raise NonFiniteLossError(f"{marker.read_text().strip()} (not trained again: a non-finite loss repeats "
                                 "under the trial's seed; tune.py --retry-nan retries such trials)")
    try:
        out = work / "run"
        out.mkdir()
        checkpoint = ray.tune.get_checkpoint()
        resume = None if checkpoint is None else _resume_file(checkpoint, out, context.get_trial_id())
        inherited = load_checkpoint(resume)["history"] if resume is not None and retune else []
        report = _reporter(config.train.select_metric, 0.0 in config.missing.valid_rates, work,
                           retune=retune, inherited=inherited)
        try:
            train(config, dataset=dataset, out_dir=out, report=report, resume_from=resume, tensorboard=False,
                  retune=retune)
        except NonFiniteLossError as err:
            atomic_write_text(marker, f"{err}\n")
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _resume_file(checkpoint: ray.tune.Checkpoint, out: Path, trial_id: str) -> Path | None:
    """Copy the checkpoint Tune restores from into ``out``; None (start over) if it is torn.

    A checkpoint directory that is gone altogether never gets here (Tune refuses
    it before the trainable runs; ``tuning._lost_checkpoints`` handles that case).
    One whose ``last.pt`` is missing or unreadable (a worker killed while
    persisting it) is: training the trial again from epoch 1 is correct (results
    carry the epoch as their iteration, so the store keeps one row per epoch),
    where failing would turn a resumable trial into an error.
    """
    resume = out / "resume.pt"
    try:
        with checkpoint.as_directory() as restored:
            shutil.copy2(Path(restored) / CHECKPOINT_FILE, resume)
        load_checkpoint(resume)
    except (OSError, FSRFError) as err:
        warnings.warn(f"trial {trial_id}: checkpoint {checkpoint.path} cannot be read "
                      f"({str(err).splitlines()[0][:200]}); training this trial again from epoch 1",
                      stacklevel=2)
        resume.unlink(missing_ok=True)
        return None
    return resume


__all__ = ["COMPLETE_OBJECTIVE", "OBJECTIVE", "fsrf_trainable"]
