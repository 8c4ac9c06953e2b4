"""One training epoch and one validation pass, shared by every caller of :func:`fsrf.train`.

Shape legend: B batch, V views (1 or 2), T_m steps of modality m.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from fsrf._config import Config
from fsrf._constants import MODALITIES, VALID, rate_key, robust_key
from fsrf._device import CompiledForward, autocast, grad_scaler, to_device
from fsrf._errors import NonFiniteLossError
from fsrf._rng import draw_seed, isolated_rng, make_generator
from fsrf.data import Batch, MultimodalDataset
from fsrf.evaluate import mean_row, predict_many
from fsrf.metrics import regression_metrics
from fsrf.missing import BaseMissingness, apply_keep, build_simulator, eval_keep, training_rates
from fsrf.model import BaseModel, EpochInfo, TrainBatch, side_inputs, total_loss


@dataclass(frozen=True, eq=False)
class EpochContext:
    """Everything an epoch reads; built once per run.

    Attributes:
        valid_keep: validation rate -> the fixed keep masks of the whole validation split, on
            the run's device.
        scaler: the gradient scaler (enabled for ``train.precision: fp16`` only; a disabled one
            passes losses and steps through unchanged).
    """

    config: Config
    dataset: MultimodalDataset
    model: BaseModel
    device: torch.device
    generator: torch.Generator
    simulator: BaseMissingness
    views: int
    weights: dict[str, float]
    valid_keep: dict[float, dict[str, torch.Tensor]]
    scaler: Any = None

    @classmethod
    def create(
        cls,
        config: Config,
        dataset: MultimodalDataset,
        model: BaseModel,
        device: torch.device,
        generator: torch.Generator,
    ) -> EpochContext:
        mc = config.missing
        kwargs = {"modality_share": mc.modality_share} if mc.simulator == "mixed" else {}
        valid_keep = {
            rate: {m: to_device(k, device) for m, k in
                   eval_keep(dataset.valid.valid, rate=rate, seed=mc.eval_seed, split="valid").items()}
            for rate in mc.valid_rates
        }
        return cls(
            config=config,
            dataset=dataset,
            model=model,
            device=device,
            generator=generator,
            simulator=build_simulator(mc.simulator, **kwargs),
            views=model.training_views(),
            weights=config.model.weights(),
            valid_keep=valid_keep,
            scaler=grad_scaler(device, config.train.precision),
        )


def mask_generator(ctx: EpochContext) -> torch.Generator:
    """The generator of one epoch's training masks and rates.

    On the CPU it is the run's generator itself (every draw as before devices mattered). On a
    GPU it is a generator on the device, seeded with one draw from the run's generator, so the
    masks are drawn where the batch is; seeded per epoch, it needs no state of its own in a
    checkpoint (the run's generator's state at the epoch's end covers it).
    """
    if ctx.device.type == "cpu":
        return ctx.generator
    return torch.Generator(device=ctx.device).manual_seed(draw_seed(ctx.generator))


def step_loss(
    ctx: EpochContext,
    batch: Batch,
    *,
    max_rate: float,
    generator: torch.Generator | None = None,
    index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Draw the views of one batch, run the model's training step, form the loss (no backward).

    Args:
        batch: a training batch on the CPU; it goes to the device through pinned memory.
        max_rate: the curriculum's rate.
        generator: the masks' generator (:func:`mask_generator`); the run's generator when None
            (masks drawn on the CPU and moved).
        index: (B,) the batch's positions in the training split (:attr:`TrainBatch.index`).
    """
    cfg, model, device, gen = ctx.config, ctx.model, ctx.device, ctx.generator
    mask_gen = gen if generator is None else generator
    features = {m: to_device(f, device) for m, f in batch.features.items()}
    valid = {m: to_device(v, device) for m, v in batch.valid.items()}
    labels = to_device(batch.labels, device)
    drawn_valid = batch.valid if mask_gen.device.type == "cpu" else valid
    rates = training_rates(len(batch), max_rate=max_rate, complete_share=cfg.missing.complete_share,
                           generator=mask_gen).double()
    keeps = [
        {m: to_device(k, device) for m, k in ctx.simulator.draw(drawn_valid, rates, mask_gen).items()}
        for _ in range(ctx.views)
    ]
    views = [apply_keep(features, k) for k in keeps]
    x = {m: torch.cat([v[m] for v in views]) for m in MODALITIES}  # (V*B, T_m, D_m)
    keep = {m: torch.cat([k[m] for k in keeps]) for m in MODALITIES}
    stacked_valid = {m: valid[m].repeat(ctx.views, 1) for m in MODALITIES}
    step_batch = TrainBatch(features=x, valid=stacked_valid, keep=keep, labels=labels, complete=features,
                            views=ctx.views, task=cfg.train.task_loss,
                            index=None if index is None else to_device(index, device),
                            extras=side_inputs(model, {k: to_device(x, device) for k, x in batch.extras.items()}
                                               ).get("extras", {}))
    with isolated_rng(draw_seed(gen), device), autocast(device, cfg.train.precision):
        step = model.training_step(step_batch)
    return total_loss(step, labels, ctx.weights, task=cfg.train.task_loss)


def _non_finite(epoch: int, name: str, value: float) -> NonFiniteLossError:
    hint = "optim.lr" if name in ("total", "task") else f"model.{name} or optim.lr"
    return NonFiniteLossError(f"epoch {epoch}: loss term {name!r} is {value} (lower {hint})")


def train_epoch(
    ctx: EpochContext,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epoch: int,
    max_rate: float,
) -> dict[str, float]:
    """Train one epoch at the curriculum's ``max_rate``; return the mean of every loss term.

    The loss terms are summed on the device and read back once, at the end of the epoch. On
    the CPU, where reading a value costs nothing, every step's terms are checked and a
    non-finite one stops the epoch before its optimiser step; on a GPU the check reads the
    epoch's sums (a non-finite term at any step leaves its sum non-finite).

    Raises:
        NonFiniteLossError: a loss term was NaN or infinite (naming the epoch and the term).
    """
    cfg, model, gen = ctx.config, ctx.model, ctx.generator
    split = ctx.dataset.train
    scaler = ctx.scaler if ctx.scaler is not None else grad_scaler(ctx.device, cfg.train.precision)
    check_each_step = ctx.device.type == "cpu"
    masks = mask_generator(ctx)
    model.train()
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    bs = cfg.optim.batch_size
    for index, batch in split.batches(bs, generator=gen, drop_last=len(split) >= bs):
        n = len(batch)
        total, terms = step_loss(ctx, batch, max_rate=max_rate, generator=masks, index=index)
        if check_each_step and not bool(torch.isfinite(torch.stack(list(terms.values()))).all()):
            name, value = next((k, float(v)) for k, v in terms.items() if not math.isfinite(float(v)))
            raise _non_finite(epoch, name, value)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if cfg.optim.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v * n
        seen += n
    values = torch.stack(list(sums.values())).cpu().tolist()  # the epoch's one read-back
    means = {k: v / seen for k, v in zip(sums, values)}
    for name, value in means.items():
        if not math.isfinite(value):
            raise _non_finite(epoch, name, value)
    return means


def warm_up(ctx: EpochContext, compiled: CompiledForward) -> None:
    """Compile the training step before training: one forward and backward of the first
    training batch, so that a failure to compile either falls back to eager before any step
    counts.

    The step draws from generators of its own; afterwards every buffer (BatchNorm statistics)
    is restored and the gradients are dropped, so the run's state and random streams are as
    if it had not happened.

    Raises:
        Exception: the step fails eagerly too (the model's own error, not the compiler's).
    """
    model, split = ctx.model, ctx.dataset.train
    index = torch.arange(min(len(split), ctx.config.optim.batch_size))
    batch = split.take(index)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    probe = dataclasses.replace(ctx, generator=make_generator(0))
    masks = mask_generator(probe)
    start = masks.get_state()
    model.train()

    def step() -> None:
        try:
            total, _ = step_loss(probe, batch, max_rate=0.5, generator=masks, index=index)
            total.backward()
        finally:
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])

    try:
        step()
    except Exception as err:  # compiling the backward pass raises many types
        if not compiled.active:
            raise  # the forward already fell back to eager: this is the model's own error
        compiled.disable(err)
        masks.set_state(start)
        step()  # eagerly: the model's own errors raise here
        compiled.announce()


def validate(ctx: EpochContext) -> dict[str, float]:
    """Validation metrics at every configured rate, plus their means (``valid/robust/<metric>``).

    Each validation batch goes to the device once and runs under every rate's masks there
    (:func:`fsrf.evaluate.predict_many`).
    """
    split, split_name = ctx.dataset.valid, VALID
    cfg = ctx.config
    rates = list(ctx.valid_keep)
    preds = predict_many(
        ctx.model, split, keeps=[ctx.valid_keep[r] for r in rates], batch_size=cfg.train.eval_batch_size,
        device=ctx.device, precision=cfg.train.precision,
    )
    per_rate = {rate: regression_metrics(pred, split.labels, ctx.dataset.name) for rate, pred in zip(rates, preds)}
    out = {rate_key(split_name, r, k): v for r, row in per_rate.items() for k, v in row.items()}
    out.update({robust_key(split_name, k): v for k, v in mean_row(list(per_rate.values())).items()})
    return out


def epoch_hook(ctx: EpochContext, *, epoch: int, end: bool) -> None:
    """Call the model's :meth:`~fsrf.model.BaseModel.on_epoch_start` (or ``on_epoch_end``) for
    ``epoch`` (0-based): eval mode, no gradients, a random state of its own seeded from
    ``train.seed`` and the epoch (no draw from the run's generator)."""
    model, cfg = ctx.model, ctx.config
    info = EpochInfo(epoch=epoch, epochs=cfg.train.epochs, train=ctx.dataset.train, device=ctx.device,
                     batch_size=cfg.train.eval_batch_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), isolated_rng(cfg.train.seed * 100_003 + 2 * epoch + int(end), ctx.device):
            (model.on_epoch_end if end else model.on_epoch_start)(info)
    finally:
        model.train(was_training)
