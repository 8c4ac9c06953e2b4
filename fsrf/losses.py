"""FSRF's loss terms and their weighted sum.

Shape legend: B batch, H hidden dim. Representations are (B, H); every
distributional term treats the batch as a sample of the distribution.

Terms (weights in :class:`fsrf.LossConfig`; a weight of 0 skips the term):

* ``task``: L1 or MSE between prediction and label, averaged over the views;
* ``homo``: CMD (order 5) between the homogeneous parts of every modality pair;
* ``diff``: de-redundancy, soft orthogonality between the homogeneous,
  heterogeneous and noise parts of each modality and between heterogeneous parts;
* ``recon``: MSE of each decoder's reconstruction of the (detached) encoder output;
* ``noise``: MSE of a sentiment regressor on the noise parts behind gradient
  reversal; the regressor learns to read sentiment, the noise encoders learn to
  leave none for it to read;
* ``distill``: bidirectional self-distillation, each view's prediction regressed
  onto the other's with a stop-gradient on the target side;
* ``align``: distribution alignment (CMD or MMD) of the homogeneous and
  heterogeneous parts of the two views.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from fsrf._config import LossConfig
from fsrf._constants import MODALITIES
from fsrf.model import FSRFOutput

TERMS: tuple[str, ...] = ("task", "homo", "diff", "recon", "noise", "distill", "align")
"""Every loss term's name, in logging order (``total`` is their weighted sum)."""


def cmd(x1: torch.Tensor, x2: torch.Tensor, order: int = 5) -> torch.Tensor:
    """Central moment discrepancy (MISA): ||mu1 - mu2|| + sum_k ||E(x1-mu1)^k - E(x2-mu2)^k||.

    Args:
        x1: (B1, H) samples.
        x2: (B2, H) samples.
        order: highest central moment K.
    """
    mx1, mx2 = x1.mean(dim=0), x2.mean(dim=0)
    sx1, sx2 = x1 - mx1, x2 - mx2
    total = (mx1 - mx2).norm(p=2)
    for k in range(2, order + 1):
        total = total + (sx1.pow(k).mean(dim=0) - sx2.pow(k).mean(dim=0)).norm(p=2)
    return total


def diff_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Soft orthogonality (MISA's DiffLoss) of two (B, H) representations.

    Rows are centred over the batch and scaled to unit norm (the norm is not
    differentiated); the loss is the mean squared entry of A^T B, 0 when the
    column spaces are orthogonal.
    """
    a = a - a.mean(dim=0, keepdim=True)
    b = b - b.mean(dim=0, keepdim=True)
    a = a / (a.norm(p=2, dim=1, keepdim=True).detach() + 1e-6)
    b = b / (b.norm(p=2, dim=1, keepdim=True).detach() + 1e-6)
    return (a.t() @ b).pow(2).mean()


def mmd(x1: torch.Tensor, x2: torch.Tensor, bandwidths: Sequence[float] = (0.5, 1.0, 2.0, 4.0)) -> torch.Tensor:
    """Biased squared MMD with a sum of Gaussian kernels on (B, H) samples.

    Distances are scaled by the feature dimension so that bandwidths need no tuning per H.
    """
    z = torch.cat([x1, x2], dim=0)
    d2 = torch.cdist(z, z).pow(2) / z.shape[1]
    k = sum(torch.exp(-d2 / (2.0 * bw * bw)) for bw in bandwidths)
    n1 = x1.shape[0]
    return k[:n1, :n1].mean() + k[n1:, n1:].mean() - 2.0 * k[:n1, n1:].mean()


def _task(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    return F.l1_loss(pred, target) if kind == "l1" else F.mse_loss(pred, target)


def _view_terms(out: FSRFOutput, labels: torch.Tensor, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Terms that each view contributes on its own."""
    terms = {"task": _task(out.pred, labels, cfg.task)}
    if cfg.homo > 0:
        pairs = list(itertools.combinations(MODALITIES, 2))
        terms["homo"] = sum(cmd(out.homo[a], out.homo[b], cfg.cmd_order) for a, b in pairs) / len(pairs)
    if cfg.diff > 0:
        own = sum(
            diff_loss(out.homo[m], out.hetero[m])
            + diff_loss(out.homo[m], out.noise[m])
            + diff_loss(out.hetero[m], out.noise[m])
            for m in MODALITIES
        )
        cross = sum(diff_loss(out.hetero[a], out.hetero[b]) for a, b in itertools.combinations(MODALITIES, 2))
        terms["diff"] = own + cross
    if cfg.recon > 0:
        terms["recon"] = sum(F.mse_loss(out.recon[m], out.encoded[m].detach()) for m in MODALITIES) / len(MODALITIES)
    if cfg.noise > 0:
        terms["noise"] = sum(F.mse_loss(out.noise_pred[m], labels) for m in MODALITIES) / len(MODALITIES)
    return terms


def fsrf_loss(
    views: Sequence[FSRFOutput], labels: torch.Tensor, cfg: LossConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted training loss over one or two incomplete views of a batch.

    Args:
        views: the model's output for each view (same samples, independent masks).
        labels: (B,) targets.
        cfg: the loss weights.

    Returns:
        ``(total, terms)``: the scalar to minimise, and every computed term
        (unweighted, detached) by name, ``total`` included.
    """
    per_view = [_view_terms(v, labels, cfg) for v in views]
    terms = {k: sum(t[k] for t in per_view) / len(views) for k in per_view[0]}
    if len(views) == 2:
        a, b = views
        if cfg.distill > 0:
            terms["distill"] = F.mse_loss(a.pred, b.pred.detach()) + F.mse_loss(b.pred, a.pred.detach())
        if cfg.align > 0:
            dist = cmd if cfg.align_kind == "cmd" else mmd
            terms["align"] = sum(
                dist(a.homo[m], b.homo[m]) + dist(a.hetero[m], b.hetero[m]) for m in MODALITIES
            ) / len(MODALITIES)
    total = terms["task"] + sum(getattr(cfg, k) * v for k, v in terms.items() if k != "task")
    logged = {k: v.detach() for k, v in terms.items()}
    logged["total"] = total.detach()
    return total, logged


def needs_two_views(cfg: LossConfig) -> bool:
    """Self-distillation and alignment need two views; without them one view suffices."""
    return cfg.distill > 0 or cfg.align > 0
