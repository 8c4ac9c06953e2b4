"""FSRF's loss terms and their weighted sum.

Shape legend: B batch, H hidden dim, M = 3 modalities. Representations are (B, H);
every distributional term treats the batch as a sample of the distribution.

Every auxiliary term is invariant to rescaling the representations it reads: parts
are batch-standardised (each dimension centred and divided by its batch std) before
they are compared, and regression targets are judged relative to their own
variance. Multiplying c_m, s_m, n_m, r_m by 0.01 changes no term, so no term can be
won by shrinking the representations (the flaw of CMD on raw MLP outputs).

Terms (weights in FSRF's config section, :class:`fsrf.model.FSRFConfig`; a weight of 0
skips the term). The trainer adds the task term (L1 or MSE, ``train.task_loss``, averaged
over the views) for every model; :func:`fsrf_terms` gives FSRF's own:

* ``homo`` (factorization, similarity): 1 - the mean per-dimension correlation
  between the homogeneous parts c_a, c_b of every modality pair, over the samples
  where both are present. The modalities share only the sentiment-bearing
  semantics, so maximising their agreement makes c_m carry those semantics.
* ``diff`` (factorization, de-redundancy): mean squared entry of the batch
  cross-correlation matrix between c_m, s_m and n_m of each modality and between
  the s_m of every pair (0 when uncorrelated).
* ``recon``: MSE of each decoder's reconstruction of the (detached) encoder output
  h_m, divided by h_m's batch variance (1 - R^2), so the parts keep what h_m holds.
* ``noise``: the R^2 of the least-squares linear read-out of the label from n_m, over the
  samples of both views (a ridge of 1e-4 on standardised n_m): the multivariate quantity a
  fresh linear probe measures. n_m is low-dimensional (``model.noise_dim``), so the batch
  estimate is well conditioned. Two weaker forms were measured first and failed: an
  adversarial linear probe on standardised n_m (beaten in training while a fresh probe
  read the label at R^2 .61) and the mean per-dimension squared correlation (driven to
  .0002 per dimension while a fresh probe still read R^2 .28: the label hid in
  combinations of correlated dimensions).
* ``recover``: the recovery path. On samples where modality m and another modality
  are present, r_m (recovered from the others' c_k) regresses onto the detached c_m,
  as 1 - R^2 against c_m's batch variance.

Self-distillation between the two incomplete views (independent masks of the same
samples), in both directions:

* ``distill``: knowledge flows from what a view *has* to what the other *lacks*.
  Per sample and modality m, the view in which m's kept share exceeds the other's
  by more than ``distill_margin`` (default 0.25) is the teacher (stop-gradient) and
  the other the student: the student's homogeneous token (r_m if m is absent
  there, else its own c_m) regresses onto the teacher's own c_m (1 - R^2, as
  ``recover``). Per sample, the view whose mean kept share over the modalities
  exceeds the other's by more than the margin is the teacher of the prediction:
  the student's prediction regresses onto its stop-gradient prediction (L1 or MSE
  as ``task``). Ties and near-ties transfer nothing: two views that both keep about
  as much would only be pulled together (a consistency term, not a transfer), which
  measured worse on the basic synthetic data (margin 0: +.041 Rand MAE over the
  plain model, 3 seeds; margin 0.25: -.005). Since masks are independent, each view teaches on some
  samples and modalities and learns on others: the transfer runs both ways.
* ``align`` (distribution alignment): per modality, the distribution of the
  students' homogeneous tokens is matched to that of the teachers' (CMD or MMD,
  ``align_kind``), both standardised with the teachers' batch statistics (detached),
  so the student side must reach the teacher's scale rather than shrink.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from fsrf._constants import MODALITIES
from fsrf.model._base import StepOutput, task_loss, total_loss

if TYPE_CHECKING:
    from fsrf.model.zoo.fsrf import FSRFConfig, FSRFOutput

TERMS: tuple[str, ...] = ("task", "homo", "diff", "recon", "noise", "recover", "distill", "align")
"""Every loss term's name, in logging order (``total`` is their weighted sum)."""

_EPS = 1e-5
_TINY = 1e-10


def standardize(x: torch.Tensor, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """Centre each column of (B, H) ``x`` and divide by its std (those of ``like`` if given)."""
    ref = x if like is None else like
    mean = ref.mean(dim=0, keepdim=True)
    std = ref.std(dim=0, unbiased=False, keepdim=True)
    return (x - mean) / (std + _EPS * (std.detach().mean() + _EPS))


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(H_a, H_b) batch cross-correlation matrix of (B, H_a) and (B, H_b)."""
    return standardize(a).t() @ standardize(b) / a.shape[0]


def agreement_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - mean per-dimension correlation of (B, H) ``a`` and ``b``: 0 when they agree up to scale."""
    return 1.0 - (standardize(a) * standardize(b)).mean(dim=0).mean()


def decorrelation_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared batch cross-correlation of two (B, H) parts (soft orthogonality)."""
    return correlation(a, b).pow(2).mean()


def label_r2_loss(x: torch.Tensor, labels: torch.Tensor, *, ridge: float = 1e-4) -> torch.Tensor:
    """R^2 of the least-squares read-out of (B,) ``labels`` from (B, N) ``x`` (standardised, ridge)."""
    z = standardize(x)
    y = standardize(labels.unsqueeze(1))
    n = z.shape[0]
    gram = z.t() @ z / n + ridge * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    cross = z.t() @ y / n  # (N, 1)
    return (cross * torch.linalg.solve(gram, cross)).sum()


def relative_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of (B, H) ``pred`` to the detached ``target``, over the target's batch variance (1 - R^2)."""
    target = target.detach()
    scale = target.var(dim=0, unbiased=False).mean()
    return (pred - target).pow(2).mean() / scale.clamp_min(_TINY)


def cmd(x1: torch.Tensor, x2: torch.Tensor, order: int = 5) -> torch.Tensor:
    """Central moment discrepancy (MISA): ||mu1 - mu2|| + sum_k ||E(x1-mu1)^k - E(x2-mu2)^k||.

    Not scale-invariant by itself: FSRF feeds it standardised samples.

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


def mmd(x1: torch.Tensor, x2: torch.Tensor, bandwidths: Sequence[float] = (0.5, 1.0, 2.0, 4.0)) -> torch.Tensor:
    """Biased squared MMD with a sum of Gaussian kernels on (B, H) samples.

    Distances are scaled by the feature dimension so that bandwidths need no tuning per H.
    """
    z = torch.cat([x1, x2], dim=0)
    d2 = torch.cdist(z, z).pow(2) / z.shape[1]
    k = sum(torch.exp(-d2 / (2.0 * bw * bw)) for bw in bandwidths)
    n1 = x1.shape[0]
    return k[:n1, :n1].mean() + k[n1:, n1:].mean() - 2.0 * k[:n1, n1:].mean()


def _mean(values: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.stack(values).mean() if values else like.new_zeros(())


def _view_terms(out: FSRFOutput, labels: torch.Tensor, cfg: FSRFConfig) -> dict[str, torch.Tensor]:
    """Terms that each view contributes on its own."""
    terms: dict[str, torch.Tensor] = {}
    zero = out.pred.new_zeros(())
    present = ~out.absent & (out.presence > 0)  # (B, M): the modality's own parts are real
    if cfg.homo > 0:
        values = []
        for (i, a), (j, b) in itertools.combinations(enumerate(MODALITIES), 2):
            both = present[:, i] & present[:, j]
            if int(both.sum()) >= 2:
                values.append(agreement_loss(out.homo[a][both], out.homo[b][both]))
        terms["homo"] = _mean(values, zero)
    if cfg.diff > 0:
        own = [
            decorrelation_loss(x[m], y[m])
            for m in MODALITIES
            for x, y in ((out.homo, out.hetero), (out.homo, out.noise), (out.hetero, out.noise))
        ]
        cross = [decorrelation_loss(out.hetero[a], out.hetero[b]) for a, b in itertools.combinations(MODALITIES, 2)]
        terms["diff"] = _mean(own + cross, zero)
    if cfg.recon > 0:
        terms["recon"] = _mean([relative_mse(out.recon[m], out.encoded[m]) for m in MODALITIES], zero)
    if cfg.recover > 0 and out.recovered:
        values = []
        for i, m in enumerate(MODALITIES):
            others = present.clone()
            others[:, i] = False
            rows = present[:, i] & others.any(dim=1)
            if int(rows.sum()) >= 2:
                values.append(relative_mse(out.recovered[m][rows], out.homo[m][rows]))
        terms["recover"] = _mean(values, zero)
    return terms


def transfer_pairs(
    views: Sequence[FSRFOutput], teacher: FSRFOutput | None = None, *, mode: str = "views"
) -> list[tuple[FSRFOutput, FSRFOutput]]:
    """The (teacher, student) output pairs the distillation runs over.

    ``views``: view 0 <-> view 1 (both directions); ``complete``: the complete input -> each
    view; ``both``: all of these. Which samples and modalities each pair transfers is decided
    per row by the kept shares (see :func:`_distill_terms`).
    """
    pairs: list[tuple[FSRFOutput, FSRFOutput]] = []
    if mode in ("views", "both") and len(views) == 2:
        pairs += [(views[0], views[1]), (views[1], views[0])]
    if mode in ("complete", "both") and teacher is not None:
        pairs += [(teacher, v) for v in views]
    return pairs


def _distill_terms(
    pairs: Sequence[tuple[FSRFOutput, FSRFOutput]], cfg: FSRFConfig, *, task: str
) -> dict[str, torch.Tensor]:
    """Teacher -> student transfer over (teacher, student) pairs (see the module docstring).

    For a pair and modality m, the rows (samples) where the teacher's kept share of m
    exceeds the student's by more than ``cfg.distill_margin`` transfer m's homogeneous
    token; the rows where the teacher has more (by the margin, in mean kept share) of the
    whole input transfer the prediction. Each contribution is weighted by its share of rows.
    """
    terms: dict[str, torch.Tensor] = {}
    zero = pairs[0][1].pred.new_zeros(())
    if cfg.distill > 0:
        parts = []
        for teacher, student in pairs:
            for i, m in enumerate(MODALITIES):
                rows = teacher.presence[:, i] > student.presence[:, i] + cfg.distill_margin
                if int(rows.sum()) >= 2:
                    parts.append(relative_mse(student.used[m][rows], teacher.homo[m][rows]) * rows.float().mean())
            rows = teacher.presence.mean(dim=1) > student.presence.mean(dim=1) + cfg.distill_margin
            if bool(rows.any()):
                err = task_loss(student.pred[rows], teacher.pred[rows].detach(), task)
                parts.append(err * rows.float().mean())
        terms["distill"] = sum(parts, zero) / len(pairs) * 2  # two views' worth, whatever the mode
    if cfg.align > 0:
        dist = cmd if cfg.align_kind == "cmd" else mmd
        kwargs = {"order": cfg.cmd_order} if cfg.align_kind == "cmd" else {}
        values = []
        for i, m in enumerate(MODALITIES):
            chosen = [(t, s, t.presence[:, i] > s.presence[:, i] + cfg.distill_margin) for t, s in pairs]
            teachers = torch.cat([t.homo[m][rows] for t, _, rows in chosen]).detach()
            students = torch.cat([s.used[m][rows] for _, s, rows in chosen])
            if teachers.shape[0] >= 4:
                values.append(dist(standardize(students, like=teachers), standardize(teachers), **kwargs))
        terms["align"] = _mean(values, zero)
    return terms


def fsrf_terms(
    views: Sequence[FSRFOutput],
    labels: torch.Tensor,
    cfg: FSRFConfig,
    *,
    teacher: FSRFOutput | None = None,
    task: str = "l1",
) -> dict[str, torch.Tensor]:
    """FSRF's own loss terms (unweighted) over one or two incomplete views of a batch.

    Args:
        views: the model's output for each view (same samples, independent masks), float32.
        labels: (B,) targets.
        cfg: FSRF's config section (which terms, their settings).
        teacher: the model's output on the complete batch, computed without gradient
            (``model.teacher: complete | both``); None otherwise.
        task: ``l1`` or ``mse``, the form of the prediction distillation (as the task term).
    """
    per_view = [_view_terms(v, labels, cfg) for v in views]
    terms = {k: sum(t[k] for t in per_view) / len(views) for k in per_view[0]}
    if cfg.noise > 0:
        every = labels.repeat(len(views))
        terms["noise"] = torch.stack([
            label_r2_loss(torch.cat([v.noise[m] for v in views]), every) for m in MODALITIES
        ]).mean()
    pairs = transfer_pairs(views, teacher, mode=cfg.teacher)
    if pairs:
        terms.update(_distill_terms(pairs, cfg, task=task))
    return terms


def fsrf_loss(
    views: Sequence[FSRFOutput],
    labels: torch.Tensor,
    cfg: FSRFConfig,
    *,
    teacher: FSRFOutput | None = None,
    task: str = "l1",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The whole training loss the trainer forms for FSRF: task + weighted :func:`fsrf_terms`.

    Returns:
        ``(total, terms)``: the scalar to minimise, and every computed term (unweighted,
        detached) by name, ``task`` and ``total`` included.
    """
    step = StepOutput(preds=[v.pred for v in views],
                      terms=fsrf_terms(views, labels, cfg, teacher=teacher, task=task))
    return total_loss(step, labels, cfg.weights(), task=task)


def needs_two_views(cfg: FSRFConfig) -> bool:
    """Distillation between views needs two; without it (or with the complete teacher alone) one suffices."""
    return (cfg.distill > 0 or cfg.align > 0) and cfg.teacher in ("views", "both")


def needs_teacher(cfg: FSRFConfig) -> bool:
    """Whether the trainer runs the complete batch through the model (no gradient) as a teacher."""
    return (cfg.distill > 0 or cfg.align > 0) and cfg.teacher in ("complete", "both")
