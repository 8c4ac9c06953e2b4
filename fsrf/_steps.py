"""One training epoch and one validation pass, shared by every caller of :func:`fsrf.train`.

Shape legend: B batch, V views (1 or 2), T_m steps of modality m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fsrf._config import Config
from fsrf._constants import MODALITIES, VALID, rate_key, robust_key
from fsrf._device import autocast
from fsrf._errors import NonFiniteLossError
from fsrf._rng import draw_seed, isolated_rng
from fsrf.data import Batch, MultimodalDataset
from fsrf.evaluate import mean_row, predict
from fsrf.metrics import regression_metrics
from fsrf.missing import BaseMissingness, apply_keep, build_simulator, eval_keep, training_rates
from fsrf.model import BaseModel, TrainBatch, total_loss


@dataclass(frozen=True, eq=False)
class EpochContext:
    """Everything an epoch reads; built once per run."""

    config: Config
    dataset: MultimodalDataset
    model: BaseModel
    device: torch.device
    generator: torch.Generator
    simulator: BaseMissingness
    views: int
    weights: dict[str, float]
    valid_keep: dict[float, dict[str, torch.Tensor]]

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
            rate: eval_keep(dataset.valid.valid, rate=rate, seed=mc.eval_seed, split="valid")
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
        )


def step_loss(ctx: EpochContext, batch: Batch, *, max_rate: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Draw the views of one batch, run the model's training step, form the loss (no backward)."""
    cfg, model, device, gen = ctx.config, ctx.model, ctx.device, ctx.generator
    rates = training_rates(len(batch), max_rate=max_rate, complete_share=cfg.missing.complete_share, generator=gen)
    keeps = [ctx.simulator.sample(batch.valid, rates, gen) for _ in range(ctx.views)]
    views = [apply_keep(batch.features, k) for k in keeps]
    x = {m: torch.cat([v[m] for v in views]).to(device, non_blocking=True) for m in MODALITIES}  # (V*B, T_m, D_m)
    keep = {m: torch.cat([k[m] for k in keeps]).to(device, non_blocking=True) for m in MODALITIES}
    valid = {m: batch.valid[m].repeat(ctx.views, 1).to(device, non_blocking=True) for m in MODALITIES}
    labels = batch.labels.to(device, non_blocking=True)
    step_batch = TrainBatch(features=x, valid=valid, keep=keep, labels=labels, complete=batch.features,
                            views=ctx.views, task=cfg.train.task_loss)
    with isolated_rng(draw_seed(gen), device), autocast(device, cfg.train.precision):
        step = model.training_step(step_batch)
    return total_loss(step, labels, ctx.weights, task=cfg.train.task_loss)


def train_epoch(
    ctx: EpochContext,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epoch: int,
    max_rate: float,
) -> dict[str, float]:
    """Train one epoch at the curriculum's ``max_rate``; return the mean of every loss term."""
    cfg, model, gen = ctx.config, ctx.model, ctx.generator
    split = ctx.dataset.train
    model.train()
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    bs = cfg.optim.batch_size
    for _, batch in split.batches(bs, generator=gen, drop_last=len(split) >= bs):
        n = len(batch)
        total, terms = step_loss(ctx, batch, max_rate=max_rate)
        values = torch.stack(list(terms.values()))
        if not bool(torch.isfinite(values).all()):
            name, value = next((k, float(v)) for k, v in terms.items() if not math.isfinite(float(v)))
            hint = "optim.lr" if name in ("total", "task") else f"model.{name} or optim.lr"
            raise NonFiniteLossError(f"epoch {epoch}: loss term {name!r} is {value} (lower {hint})")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v * n
        seen += n
    return {k: float(v) / seen for k, v in sums.items()}


def validate(ctx: EpochContext) -> dict[str, float]:
    """Validation metrics at every configured rate, plus their means (``valid/robust/<metric>``)."""
    split, split_name = ctx.dataset.valid, VALID
    cfg = ctx.config
    per_rate = {}
    for rate, keep in ctx.valid_keep.items():
        pred = predict(
            ctx.model, split, keep=keep, batch_size=cfg.train.eval_batch_size, device=ctx.device,
            precision=cfg.train.precision,
        )
        per_rate[rate] = regression_metrics(pred, split.labels, ctx.dataset.name)
    out = {rate_key(split_name, r, k): v for r, row in per_rate.items() for k, v in row.items()}
    out.update({robust_key(split_name, k): v for k, v in mean_row(list(per_rate.values())).items()})
    return out
