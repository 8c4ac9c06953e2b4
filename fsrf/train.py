"""The one training loop of FSRF: ``train(config, *, report=None, resume_from=None)``.

Each epoch trains under the curriculum's missing rate with two incomplete views
per batch (independent masks, one network), validates at the configured
missing rates with fixed masks, and reports every metric and loss term once.
Model selection and early stopping read the validation objective only (the
mean of ``train.select_metric`` over the validation rates); the test split is
never touched here. Every random draw comes from one generator seeded with
``train.seed`` (on a GPU, each epoch's masks from a device generator seeded from
it), and its state is checkpointed, so a resumed run ends exactly where an
uninterrupted one does: always on the CPU, and on a GPU under
``train.deterministic: true`` (with fp16 the gradient scaler's state is
checkpointed too).

The loop knows nothing of any tuner: a tuner passes ``report``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fsrf._checkpoint import checkpoint_config, load_checkpoint, load_weights, save_checkpoint
from fsrf._config import Config, config_to_dict, flatten_config, with_overrides
from fsrf._constants import (
    BEST_CHECKPOINT,
    BEST_OBJECTIVE,
    CONFIG_FILE,
    EPOCH,
    FINAL_EPOCH,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    LEARNING_RATE,
    OBJECTIVE,
    TENSORBOARD_DIR,
    TRAIN_RATE,
    VALID,
    direction,
    loss_key,
    retuned_key,
    robust_key,
)
from fsrf._device import check_precision, compile_model, resolve_device, run_settings
from fsrf._errors import FSRFError, NonFiniteLossError
from fsrf._provenance import record_provenance
from fsrf._rng import draw_seed, isolated_rng, make_generator
from fsrf._run_data import check_shapes, load_dataset
from fsrf._steps import EpochContext, epoch_hook, train_epoch, validate, warm_up
from fsrf._tensorboard import TensorBoardLog
from fsrf._yaml import atomic_write_text, save_config
from fsrf.data import MultimodalDataset
from fsrf.model import build_model
from fsrf.model._text import text_parameters

Report = Callable[[dict[str, float], "Path | None"], None]
"""``report(metrics, checkpoint)``: called once per epoch; ``checkpoint`` is the
path of the resumable checkpoint written at that epoch, or None."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run gives back.

    Attributes:
        best_epoch: the 1-based epoch with the best validation objective.
        best_objective: that objective's value.
        best_metrics: the report of the best epoch.
        history: every epoch's report.
        stopped_early: whether early stopping ended the run.
        out_dir: where checkpoints, config, history and TensorBoard events went.
        compiled: whether the model ran compiled to the end (``train.compile`` on and
            ``torch.compile`` did not fail; a failure prints one line and trains eagerly).
    """

    best_epoch: int
    best_objective: float
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(repr=False)
    stopped_early: bool = False
    out_dir: Path | None = None
    compiled: bool = False


def _lr_schedule(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = round(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _parameter_groups(model: torch.nn.Module, config: Config) -> list[dict]:
    """One AdamW group at ``optim.lr``, plus a fine-tuned text encoder's at ``optim.text_lr``
    (the same warm-up and decay schedule scales both)."""
    text = text_parameters(model)
    if not text:
        return [{"params": list(model.parameters())}]
    ids = {id(p) for p in text}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest}, {"params": text, "lr": config.optim.text_lr}]


RETUNABLE_PREFIXES = ("curriculum.", "model.", "optim.lr", "optim.text_lr", "optim.weight_decay")
"""Config fields ``train(retune=...)`` may name: the curriculum, loss weights (the model
section's numbers: a population-based search must not change an architecture field, which the
restored weights would not fit), and the optimiser's learning rates and weight decay."""


def _retunable(key: str, value: object) -> bool:
    """Whether field ``key`` (of value ``value``) may change mid-run: a numeric field
    :data:`RETUNABLE_PREFIXES` allows (``curriculum.kind`` too), a model field only as a float."""
    numeric = not isinstance(value, bool) and isinstance(value, numbers.Real)
    return key.startswith(RETUNABLE_PREFIXES) and (key == "curriculum.kind" or numeric) and not (
        key.startswith("model.") and not isinstance(value, float))


def _check_retune(config: Config, retune: Collection[str]) -> tuple[str, ...]:
    """``retune`` as a tuple, each a field :func:`_retunable` allows."""
    flat = flatten_config(config)
    for key in retune:
        if key not in flat:
            raise FSRFError(f"train(retune=...): {key!r} is not a config path")
        if not _retunable(key, flat[key]):
            raise FSRFError(f"train(retune=...): {key!r} cannot change on resume; expected a curriculum "
                            "field, a numeric model field (a loss weight) or optim.lr/text_lr/weight_decay")
    return tuple(retune)


def _check_replay(config: Config) -> tuple[str, ...]:
    """``curriculum.replay_fields``, each a field :func:`_retunable` allows outside the curriculum
    (the rate replays itself); a model field (a loss weight) must keep the sign of the config's
    value in every segment, since a model may skip computing a term whose weight is 0."""
    fields = config.curriculum.replay_fields
    if not fields:
        return ()
    flat = flatten_config(config)
    for key in fields:
        if key not in flat or key.startswith("curriculum.") or not _retunable(key, flat[key]):
            raise FSRFError(f"curriculum.replay_fields: {key!r} cannot be replayed; expected a loss weight of the "
                            "model section or optim.lr/text_lr/weight_decay")
    for epoch in config.curriculum.replay_epochs:
        for key, value in config.curriculum.replayed_at(epoch).items():
            if key.startswith("model.") and (value > 0) != (flat[key] > 0):
                raise FSRFError(f"curriculum.replay_values: {key} is {value} from epoch {epoch} but {flat[key]} in "
                                "the config; a replayed weight must stay 0 or stay > 0 (a model skips 0-weight terms)")
    for epoch in config.curriculum.replay_epochs:  # every value within its field's own bounds
        with_overrides(config, config.curriculum.replayed_at(epoch), source="curriculum.replay_values")
    return fields


def _replay_epoch(ctx: EpochContext, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                  config: Config, epoch: int) -> tuple[EpochContext, dict[str, float]]:
    """Set the replayed fields' values of ``epoch``: the loss weights of the context and the
    optimiser's learning rates or weight decay (as a population-based search's resume set them)."""
    values = config.curriculum.replayed_at(epoch)
    if not values:
        return ctx, {}
    segment = with_overrides(config, values, source="curriculum.replay_values")
    _retune_optimizer(optimizer, scheduler, segment, tuple(values))
    return dataclasses.replace(ctx, weights=segment.model.weights()), {retuned_key(k): float(v) for k, v in values.items()}


def _check_resume_config(config: Config, stored: Config, source: str, retune: Collection[str] = ()) -> None:
    """A resumed run must use the stored config; only ``train.epochs`` may grow, and the
    ``retune`` fields may change (a population-based search perturbs them between epochs)."""
    new, old = flatten_config(config), flatten_config(stored)
    for key, value in new.items():
        if key != "train.epochs" and key not in retune and old[key] != value:
            raise FSRFError(
                f"{source}: config differs from the checkpoint's at {key!r} "
                f"({value!r} != stored {old[key]!r}); resume with the same config"
            )


def _retune_optimizer(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                      config: Config, retune: Collection[str]) -> None:
    """After loading a checkpoint's optimiser and schedule: this config's learning rates and weight
    decay for the retuned ones (the checkpoint's stored ones would otherwise win), on the same
    warm-up and decay position."""
    groups = optimizer.param_groups
    if "optim.weight_decay" in retune:
        for group in groups:
            group["weight_decay"] = config.optim.weight_decay
    peaks = [config.optim.lr, config.optim.text_lr][: len(groups)]
    changed = False
    for i, (key, peak) in enumerate(zip(("optim.lr", "optim.text_lr"), peaks)):
        if key in retune and scheduler.base_lrs[i] != peak:
            scheduler.base_lrs[i] = peak
            groups[i]["initial_lr"] = peak
            changed = True
    if changed:
        for group, peak, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = peak * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in groups]


def train(
    config: Config,
    *,
    report: Report | None = None,
    resume_from: str | Path | None = None,
    out_dir: str | Path | None = None,
    dataset: MultimodalDataset | None = None,
    progress: bool = False,
    verbose: bool = False,
    tensorboard: bool = True,
    retune: Collection[str] = (),
) -> TrainResult:
    """Train FSRF under ``config``.

    Args:
        config: the run's configuration.
        report: called once per epoch with every metric and loss term (see :data:`Report`).
        resume_from: a ``last.pt`` checkpoint to continue from.
        out_dir: where to write ``config.yaml``, ``best.pt``, ``last.pt``,
            ``history.jsonl`` and TensorBoard events; None writes nothing.
        dataset: an already loaded dataset (a tuner shares one across trials);
            by default it is loaded as ``config.data`` says.
        progress: tell the terminal (stderr): a start line (device, model, parameters, data
            sizes, epochs), then a progress bar on a terminal, or one line per epoch when stderr
            is not a terminal (a log file, a pipe). False: silent.
        verbose: with ``progress``, one line per epoch on a terminal too.
        tensorboard: write TensorBoard scalars under ``out_dir/tensorboard``
            (a tuner whose own logger writes them turns this off).
        retune: dotted config fields that may differ from the checkpoint's on resume (a
            population-based search perturbs them between epochs): curriculum fields, numeric
            model fields (loss weights), ``optim.lr``, ``optim.text_lr``, ``optim.weight_decay``.
            Every epoch's report then carries each one's value as ``train/retuned/<field>``,
            and the restored optimiser takes this config's learning rates and weight decay.

    Raises:
        FSRFError: bad data, a mismatching checkpoint, ``train.precision: fp16`` without a CUDA
            device, or a non-finite loss (:class:`NonFiniteLossError`, naming the epoch and the term).
    """
    tc = config.train
    retune = _check_retune(config, retune)
    _check_replay(config)
    device = resolve_device(tc.device)
    check_precision(device, tc.precision)
    with run_settings(device, tf32=tc.tf32, deterministic=tc.deterministic):
        return _train(config, device, report=report, resume_from=resume_from, out_dir=out_dir,
                      dataset=dataset, progress=progress, verbose=verbose, tensorboard=tensorboard,
                      retune=retune)


def _start_line(config: Config, model: torch.nn.Module, dataset: MultimodalDataset, device: torch.device, *,
                start: int, out: Path | None) -> str:
    """What a run is about to do, in one line (the terminal's first)."""
    params = sum(p.numel() for p in model.parameters())
    sizes = ", ".join(f"{name} {len(split)}" for name, split in
                      (("train", dataset.train), ("valid", dataset.valid), ("test", dataset.test)) if split is not None)
    where = f"; writing {out}" if out is not None else ""
    resumed = f", resuming after epoch {start}" if start else ""
    return (f"fsrf train: model {config.model.name} ({params:,} parameters) on {dataset.name} ({sizes}), "
            f"{config.train.epochs} epochs{resumed}, batch {config.optim.batch_size}, device {device}{where}")


def _train(
    config: Config,
    device: torch.device,
    *,
    report: Report | None,
    resume_from: str | Path | None,
    out_dir: str | Path | None,
    dataset: MultimodalDataset | None,
    progress: bool,
    verbose: bool,
    tensorboard: bool,
    retune: tuple[str, ...] = (),
) -> TrainResult:
    """:func:`train` under the run's device settings."""
    tc = config.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if dataset is None:
        dataset = load_dataset(config.data)
    else:
        check_shapes(config.data, dataset)
    out = Path(out_dir) if out_dir is not None else None

    generator = make_generator(tc.seed)
    with isolated_rng(draw_seed(generator), device):
        model = build_model(config).to(device)
    compiled = compile_model(model) if tc.compile else None
    # on CUDA the fused kernel: one launch per step, and fp16's scaler steps it without a host sync
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(_parameter_groups(model, config), lr=config.optim.lr,
                                  weight_decay=config.optim.weight_decay, **fused)
    n_train = len(dataset.train)
    steps = max(1, n_train // config.optim.batch_size) if n_train >= config.optim.batch_size else 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_schedule(steps * tc.epochs, config.optim.warmup_fraction)
    )
    curriculum = config.curriculum.build()
    ctx = EpochContext.create(config, dataset, model, device, generator)
    if compiled is not None:
        warm_up(ctx, compiled)

    start, best, bad, history = 0, None, 0, []
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        stored = checkpoint_config(state, source=str(resume_from))
        _check_resume_config(config, stored, str(resume_from), retune)
        load_weights(model, state, source=str(resume_from))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _retune_optimizer(optimizer, scheduler, config, retune)
        if stored.curriculum.kind == config.curriculum.kind:  # a retuned kind starts with a fresh state
            curriculum.load_state_dict(state["curriculum"])
        generator.set_state(state["generator"])
        if state.get("scaler"):
            ctx.scaler.load_state_dict(state["scaler"])
        start, best, bad, history = state["epoch"], state["best"], state["bad_epochs"], list(state["history"])

    writer = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / CONFIG_FILE)
        record_provenance(out, config.data)  # versions, git commit, data SHA-256 (one entry per session)
        if tensorboard:
            writer = TensorBoardLog(out / TENSORBOARD_DIR, purge_step=start + 1)
            writer.start(flatten_config(config), session=out.name)

    select = robust_key(VALID, tc.select_metric)
    sign = 1.0 if direction(tc.select_metric) == "min" else -1.0
    stopped = False
    flat = flatten_config(config)
    retuned = {retuned_key(k): float(flat[k]) for k in retune if k != "curriculum.kind"}
    tty = sys.stderr.isatty()
    if progress:
        print(_start_line(config, model, dataset, device, start=start, out=out), file=sys.stderr, flush=True)
    bar = tqdm(range(start, tc.epochs), desc="fsrf", unit="epoch", disable=not (progress and tty),
               file=sys.stderr, initial=start, total=tc.epochs)
    try:
        for epoch in bar:
            rate = float(curriculum.rate(epoch))
            ctx, replayed = _replay_epoch(ctx, optimizer, scheduler, config, epoch)
            epoch_hook(ctx, epoch=epoch, end=False)
            losses = train_epoch(ctx, optimizer, scheduler, epoch=epoch + 1, max_rate=rate)
            epoch_hook(ctx, epoch=epoch, end=True)
            metrics = validate(ctx)
            if select not in metrics:
                raise FSRFError(
                    f"train.select_metric: {tc.select_metric!r} is not a metric of dataset "
                    f"{dataset.name!r}"
                )
            objective = metrics[select]
            score = sign * objective
            curriculum.observe(score)
            selectable = model.selectable()  # False in a staged model's earlier stage
            improved = selectable and not math.isnan(score) and (best is None or score < best["score"] - 1e-12)
            if selectable:
                bad = 0 if improved else bad + 1
            stopped = selectable and bool(tc.patience) and bad >= tc.patience
            last = stopped or epoch + 1 == tc.epochs
            record = {
                EPOCH: float(epoch + 1),
                TRAIN_RATE: rate,
                LEARNING_RATE: float(optimizer.param_groups[0]["lr"]),
                **retuned,
                **replayed,
                **{loss_key(k): v for k, v in losses.items()},
                **metrics,
                OBJECTIVE: objective,
                FINAL_EPOCH: 1.0 if last else 0.0,
            }
            if improved:
                best = {"epoch": epoch + 1, "score": score, "objective": objective, "metrics": record}
            record[BEST_OBJECTIVE] = math.nan if best is None else float(best["objective"])
            history.append(record)
            if improved and out is not None:
                save_checkpoint(
                    {"config": config_to_dict(config), "epoch": epoch + 1, "model": model.state_dict(),
                     "metrics": record},
                    out / BEST_CHECKPOINT,
                )
            checkpoint = None
            if out is not None and ((epoch + 1) % tc.checkpoint_every == 0 or last):
                checkpoint = save_checkpoint(
                    {
                        "config": config_to_dict(config),
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "curriculum": curriculum.state_dict(),
                        "generator": generator.get_state(),
                        "scaler": ctx.scaler.state_dict(),
                        "best": best,
                        "bad_epochs": bad,
                        "history": history,
                    },
                    out / LAST_CHECKPOINT,
                )
            if out is not None:
                atomic_write_text(out / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in history))
            if writer is not None:
                writer.epoch(record)
            bar.set_postfix({"rate": f"{rate:.2f}", "loss": f"{losses['total']:.3f}", select: f"{objective:.4f}"})
            if progress and (verbose or not tty):
                line = (f"epoch {epoch + 1}/{tc.epochs}: train rate {rate:.2f}, loss {losses['total']:.4f}, "
                        f"objective {objective:.4f}, best {record[BEST_OBJECTIVE]:.4f}"
                        + (" (new best)" if improved else ""))
                bar.write(line, file=sys.stderr) if tty else print(line, file=sys.stderr, flush=True)
            if report is not None:
                report(dict(record), checkpoint)
            if stopped:
                break
        if writer is not None:
            writer.end("complete", epochs=len(history))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if best is None:
        raise FSRFError(f"train.select_metric: {select} was NaN at every epoch; choose another metric")
    return TrainResult(
        best_epoch=int(best["epoch"]),
        best_objective=float(best["objective"]),
        best_metrics=dict(best["metrics"]),
        history=history,
        stopped_early=stopped,
        out_dir=out,
        compiled=compiled is not None and compiled.active,
    )


__all__ = ["NonFiniteLossError", "Report", "TrainResult", "train"]
