"""``hme``: Hyper-Modality Enhancement for MSA with missing modalities (Zhuang et al., NeurIPS 2025),
re-implemented from the released code (YetZzzzzz/HME, MIT) and the project's notes.

Shape legend: B batch, T_m steps of modality m, D_m its features, H = ``model.hidden`` (HME's d_l),
N the training split's size, K = ``model.latents``.

* Encoders: per modality a bias-free projection (HME's kernel-1 Conv1d) to H, scaled by sqrt(H),
  sinusoidal positions, a MulT-style pre-norm Transformer (``model.layers``; attention, ReLU,
  residual and embedding dropouts as MulT's), a final LayerNorm and a max over the valid steps:
  H_m (B, H).
* Cross-sample enhancement: H'_m is the mean of the *neighbours* of H_m, the candidates whose
  cosine similarity to H_m is at least ``model.threshold`` (0.6). A query with no neighbour, or
  whose modality is absent (no kept frame), takes the mean of all its candidates; with no
  candidate at all, 0. A sample is never its own candidate. Where the candidates come from is
  ``model.neighbours``:

  - ``batch`` (HME as published): the other samples of the mini-batch whose modality is present.
    Gradients flow through the neighbours. A prediction then depends on the batch it is in:
    evaluation (validation, ``fsrf evaluate``, ``fsrf final``) runs the split in order, in
    batches of ``train.eval_batch_size`` (256 by default; the last batch holds the remainder), every
    sample of a batch under the same missing rate or pattern, so the numbers are reproducible but
    change with that batch size. HME itself evaluated shuffled batches of 128.
  - ``bank`` (the default): a bank of every training sample's H_m, computed from the complete
    training split in eval mode with the epoch's final weights (:meth:`HME.on_epoch_end`; before
    the first epoch too) and saved in the state dict, so validation, checkpoints and every
    evaluation read the same bank. In training each sample is excluded from its own candidates
    (``TrainBatch.index``); bank entries carry no gradient and are up to one epoch old.

  ``bank`` is the default because a prediction is then a function of the sample and the
  checkpoint alone, as for every other model here: the robustness tables do not move with the
  evaluation batch size, the split's order or which other test samples are missing at the same
  time; no test sample's features enter another's prediction; and training and evaluation
  retrieve from the same pool, whose size does not change with the searched ``optim.batch_size``
  (in-batch, a model trained in batches of 32 reads 31 candidates, evaluated in batches of 256 it
  reads 255). Its costs: one forward pass of the encoders over the training split per epoch, and
  N x 3 x H float32 values in every checkpoint (MOSEI at H 192: 38 MB). ``batch`` reproduces the
  published method.
* E_m = Perceiver(H'_m) (K learned latents, ``model.latent_layers`` x [cross-attention, GEGLU
  feed-forward, self-attention, feed-forward], mean of the latents, LayerNorm); the shared
  E_S = a Perceiver of its own over the three tokens [H_l, H_a, H_v].
* Hyper-modality generation: R_{m->k} = cross-encoder(queries E_m, context E_k) for the six
  ordered pairs, R_m = cross-encoder(E_S, [R_{m->k}, R_{m->k'}]) (``model.hyper_depth`` cross
  blocks each, mean, LayerNorm).
* VIB per modality: an MLP H -> 2H -> 2H -> 2H gives mu and sigma = softplus(s - 5); z = mu +
  eps sigma in training, mu in evaluation; Linear(H, 1)(z) is the unimodal prediction; KL =
  0.5 mean(mu^2 + sigma^2 - 2 log sigma - 1).
* Uncertainty-aware fusion: S_m = a1 H_m + a2 z_m, with (a1, a2) = softmax(MLP([H_m; z_m]) * (1,
  zeta_m) / sqrt(H)) and zeta_m = clamp(1 / (mean sigma_m + 1e-8), ``model.uncertainty_low``,
  ``model.uncertainty_high``) (HME's bounds 0.2 and 1.0); S_H = sum_m b_m z_m with b = softmax(
  MLP([z_l; z_a; z_v]) * softmax_m(1 / mean sigma_m) / sqrt(H)).
* Head: a post-norm Transformer (``model.fusion_layers`` layers, feed-forward 2048, dropout 0.1:
  torch's defaults, which HME keeps) over [S_l, S_a, S_v, S_H], concatenated (4H) -> Linear(4H,
  2H) -> Dropout -> ReLU -> Linear(2H, 1).

Loss (HME's ``train_epoch``): L1(pred, y) + 0.8 * mean_m L1(unimodal_m, y) + 0.01 * mean_m KL_m;
the trainer's task term is the first (``train.task_loss: l1``), ``vib`` (weight ``model.vib``,
0.8) the second, in the trainer's task loss form, and ``kl`` (``model.kl``, 0.01) the third.
HME's optimiser (AdamW lr 2e-5 for everything including BERT, weight decay 1e-4, batch 256, grad
clip by value 0.8, 100 epochs, patience 10 on validation loss) is for ``optim``/``train``; its
missingness (whole modalities, a per-sample mask with at least one modality kept) is
``missing.simulator: modality``.

Deviations: text is the frozen ``text`` features by default (HME fine-tunes BERT: ``data.text_input:
tokens`` with ``data.text_finetune: true``); padding is masked in attention and pooling (HME pools
the 50 aligned steps, padding included) and positions are added to every step (MulT skips steps
whose first feature is 0); a modality is absent when no valid frame is kept (HME tests whether
H_m sums to 0, which its encoder's output almost never does); a sample's fallback mean excludes
itself (HME's includes it); the VIB uses mu, not a sample, in evaluation, so predictions are
deterministic; sigma is floored at 1e-8 so log sigma stays finite; torch's multi-head attention
(with biases) in the Perceivers and cross-encoders; ``bank`` retrieval by default (above);
checkpoints are selected on the validation objective.

Cost: at MOSI's defaults (H 192, 16 heads) the network has 44.1M parameters. With attention
dropout, torch's CPU attention materialises the B x heads x T x T weights, so training on the
unaligned features (500 vision frames) is heavy on the CPU: measured peak memory of one step 3.9 GB
at batch 8, and batch 64 was killed at 23 GB; on aligned 50-step features (HME's data), 2.3 GB at
batch 64. CUDA was not measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fsrf._constants import MODALITIES, MODALITY_CODES
from fsrf._validate import check, check_one_of, check_weights
from fsrf.model._base import (
    BaseModel,
    BaseModelConfig,
    EpochInfo,
    StepOutput,
    TrainBatch,
    register_model,
    task_loss,
)
from fsrf.model._layers import kept_share

if TYPE_CHECKING:
    from fsrf._config import Config

NEIGHBOURS = ("bank", "batch")
_FUSION_FF = 2048  # torch's TransformerEncoderLayer default, which HME's fusion Transformer keeps


@dataclass(frozen=True)
class HMEConfig(BaseModelConfig):
    """HME's section: sizes, dropouts, retrieval, uncertainty bounds and loss weights. The class
    defaults are for the synthetic data (width 64, 4 heads, as configs/hme.yaml; every other value
    MOSI's); the real datasets take HME's: MOSI's width 192 and 16 heads, MOSEI's depths, and for
    SIMS (HME has no SIMS values) MOSI's."""

    name: str = "hme"
    hidden: int = 64
    heads: int = 4
    layers: int = 4
    latents: int = 5
    latent_layers: int = 4
    hyper_depth: int = 3
    fusion_layers: int = 2
    attn_dropout: float = 0.5
    dropout: float = 0.3
    embed_dropout: float = 0.2
    head_dropout: float = 0.1
    neighbours: str = "bank"
    threshold: float = 0.6
    uncertainty_low: float = 0.2
    uncertainty_high: float = 1.0
    vib: float = 0.8
    kl: float = 0.01

    dataset_defaults: ClassVar = {"mosi": {"hidden": 192, "heads": 16}, "sims": {"hidden": 192, "heads": 16},
                                  "mosei": {"hidden": 192, "heads": 16, "layers": 2, "latent_layers": 3}}

    def __post_init__(self) -> None:
        for key in ("hidden", "heads", "layers", "latents", "latent_layers", "hyper_depth", "fusion_layers"):
            check(getattr(self, key) >= 1, key, f"{getattr(self, key)} must be >= 1")
        check(self.hidden % self.heads == 0, "heads", f"{self.heads} must divide model.hidden={self.hidden}")
        for key in ("attn_dropout", "dropout", "embed_dropout", "head_dropout"):
            check(0.0 <= getattr(self, key) < 1.0, key, f"{getattr(self, key)} must be in [0, 1)")
        check_one_of(self.neighbours, "neighbours", NEIGHBOURS)
        check(-1.0 <= self.threshold <= 1.0, "threshold", f"{self.threshold} must be a cosine similarity in [-1, 1]")
        check(0.0 < self.uncertainty_low <= self.uncertainty_high, "uncertainty_low",
              f"{self.uncertainty_low} must be > 0 and <= model.uncertainty_high={self.uncertainty_high}")
        check_weights(self, ("vib", "kl"))

    def weights(self) -> dict[str, float]:
        return {"vib": self.vib, "kl": self.kl}


def enhance(query: torch.Tensor, pool: torch.Tensor, candidates: torch.Tensor, present: torch.Tensor,
            threshold: float) -> torch.Tensor:
    """HME's cross-sample enhancement of (B, H) ``query`` from (N, H) ``pool``.

    Args:
        candidates: (B, N) bool, which pool entries each query may read.
        present: (B,) bool; an absent query reads all its candidates.

    Returns:
        (B, H) float32: per query, the mean of its candidates with cosine similarity >= ``threshold``;
        of all its candidates when it is absent or none reaches the threshold; 0 without candidates.
    """
    q, p = query.float(), pool.float()
    with torch.autocast(device_type=q.device.type, enabled=False):  # float32: the threshold is a sharp edge
        similar = F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).t()  # (B, N)
        near = candidates & (similar >= threshold)
        chosen = torch.where((near.any(dim=1) & present).unsqueeze(1), near, candidates).float()
        return (chosen @ p) / chosen.sum(dim=1, keepdim=True).clamp_min(1.0)


def inverse_sigma(sigma: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """HME's uncertainty weight zeta (B,) of (B, H) sigma: 1 / (mean sigma + 1e-8), clamped to [low, high]."""
    return (1.0 / (sigma.mean(dim=1) + 1e-8)).clamp(low, high)


def _sinusoids(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fairseq/MulT sinusoidal positions 1..length: sines in the first half, cosines in the second."""
    half = dim // 2
    freq = torch.exp(torch.arange(half) * -(math.log(10000.0) / max(half - 1, 1)))
    angle = torch.arange(1, length + 1).unsqueeze(1) * freq.unsqueeze(0)
    return F.pad(torch.cat([angle.sin(), angle.cos()], dim=1), (0, dim % 2))


class _MulTLayer(nn.Module):
    """MulT's pre-norm encoder layer: self-attention and a ReLU feed-forward (4 H), each residual."""

    def __init__(self, c: HMEConfig) -> None:
        super().__init__()
        h = c.hidden
        self.attn_norm, self.ff_norm = nn.LayerNorm(h), nn.LayerNorm(h)
        self.attn = nn.MultiheadAttention(h, c.heads, dropout=c.attn_dropout, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)
        self.dropout = c.dropout

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        y = self.attn_norm(x)
        y = self.attn(y, y, y, key_padding_mask=pad, need_weights=False)[0]
        x = x + F.dropout(y, self.dropout, self.training)
        y = F.dropout(F.relu(self.fc1(self.ff_norm(x))), self.dropout, self.training)
        return x + F.dropout(self.fc2(y), self.dropout, self.training)


class _Encoder(nn.Module):
    """(B, T, D) features, (B, T) valid -> (B, H): projection, positions, MulT layers, LayerNorm, max over valid steps."""

    def __init__(self, c: HMEConfig, in_dim: int, max_len: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, c.hidden, bias=False)
        self.register_buffer("pos", _sinusoids(max_len, c.hidden), persistent=False)
        self.layers = nn.ModuleList(_MulTLayer(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.hidden)
        self.scale, self.embed_dropout = math.sqrt(c.hidden), c.embed_dropout

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.proj(x) * self.scale + self.pos[: x.shape[1]].to(x.dtype)
        h = F.dropout(h, self.embed_dropout, self.training)
        attend = valid.clone()
        attend[:, 0] |= ~valid.any(dim=1)  # a row without a valid step attends to its first one
        for layer in self.layers:
            h = layer(h, ~attend)
        h = self.norm(h)
        return h.masked_fill(~attend.unsqueeze(-1), float("-inf")).amax(dim=1)


class _GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate)


class _Block(nn.Module):
    """Pre-norm attention (to ``context`` when given, else self-attention), then a pre-norm GEGLU
    feed-forward (4 H), each residual: one block of HME's Perceiver (lucidrains' perceiver-pytorch)."""

    def __init__(self, c: HMEConfig, *, cross: bool) -> None:
        super().__init__()
        h = c.hidden
        self.norm = nn.LayerNorm(h)
        self.context_norm = nn.LayerNorm(h) if cross else None
        self.attn = nn.MultiheadAttention(h, c.heads, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, 8 * h), _GEGLU(), nn.Linear(4 * h, h))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm(x)
        kv = q if self.context_norm is None else self.context_norm(context)
        x = x + self.attn(q, kv, kv, need_weights=False)[0]
        return x + self.ff(x)


class _Perceiver(nn.Module):
    """K learned latents read a (B, L, H) context: depth x [cross block, self block]; mean of the latents, LayerNorm."""

    def __init__(self, c: HMEConfig) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(c.latents, c.hidden))
        self.cross = nn.ModuleList(_Block(c, cross=True) for _ in range(c.latent_layers))
        self.self_ = nn.ModuleList(_Block(c, cross=False) for _ in range(c.latent_layers))
        self.norm = nn.LayerNorm(c.hidden)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        x = self.latents.to(context.dtype).expand(context.shape[0], -1, -1)
        for cross, own in zip(self.cross, self.self_):
            x = own(cross(x, context))
        return self.norm(x.mean(dim=1))


class _CrossEncoder(nn.Module):
    """(B, Q, H) queries read a (B, L, H) context through ``model.hyper_depth`` cross blocks; mean, LayerNorm (HME's Encoder_Layer)."""

    def __init__(self, c: HMEConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block(c, cross=True) for _ in range(c.hyper_depth))
        self.norm = nn.LayerNorm(c.hidden)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            queries = block(queries, context)
        return self.norm(queries.mean(dim=1))


class _VIB(nn.Module):
    """Variational information bottleneck of a (B, H) input: (mu, sigma, z) float32 and the unimodal prediction (B,)."""

    def __init__(self, h: int) -> None:
        super().__init__()
        self.encode = nn.Sequential(nn.Linear(h, 2 * h), nn.ReLU(), nn.Linear(2 * h, 2 * h), nn.ReLU(),
                                    nn.Linear(2 * h, 2 * h))
        self.decode = nn.Linear(h, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, s = self.encode(x).float().chunk(2, dim=-1)
        sigma = F.softplus(s - 5.0).clamp_min(1e-8)
        z = mu + torch.randn_like(sigma) * sigma if self.training else mu
        return mu, sigma, z, self.decode(z).squeeze(-1)


def _attention_mlp(inputs: int, h: int, outputs: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs * h, h), nn.Dropout(dropout), nn.ReLU(), nn.Linear(h, outputs))


class NeighbourBank(nn.Module):
    """The training split's H_m per modality, (N, H) float32 each, for ``model.neighbours: bank``.

    The entries are non-persistent buffers (``.to(device)`` moves them) saved through the extra
    state, so a checkpoint carries them whatever N is; an unbuilt bank has N = 0.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        for m in MODALITIES:
            self.register_buffer(m, torch.zeros(0, hidden), persistent=False)

    def entries(self, m: str) -> torch.Tensor:
        return getattr(self, m)

    @property
    def built(self) -> bool:
        return self.entries(MODALITIES[0]).shape[0] > 0

    def fill(self, entries: dict[str, torch.Tensor]) -> None:
        for m in MODALITIES:
            setattr(self, m, entries[m].detach().float())

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {m: self.entries(m) for m in MODALITIES}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        for m in MODALITIES:
            setattr(self, m, state[m].to(self.entries(m).device, torch.float32))


@dataclass(frozen=True, eq=False)
class HMEOutput:
    """A forward pass: pred (B,); unimodal VIB predictions (B, M); KL per modality (M,); zeta (B, M),
    the bounded inverse-sigma weights; pooled H_m and enhanced H'_m (B, H) per modality."""

    pred: torch.Tensor
    unimodal: torch.Tensor
    kl: torch.Tensor
    zeta: torch.Tensor
    pooled: dict[str, torch.Tensor]
    enhanced: dict[str, torch.Tensor]


@register_model
class HME(BaseModel):
    """HME (see the module docstring)."""

    name = "hme"
    config_class = HMEConfig
    paper = ("Zhuang et al., Hyper-Modality Enhancement for Multimodal Sentiment Analysis with Missing "
             "Modalities (HME), NeurIPS 2025")
    faithful = ("MulT-style per-modality encoders with max pooling; cross-sample enhancement by cosine "
                "similarity >= 0.6 (model.neighbours: batch is the published in-batch retrieval); Perceiver "
                "latents per modality and shared; hyper-modality generation by cross-encoders over the six "
                "modality pairs; per-modality VIB; uncertainty-aware fusion with inverse-sigma weights clamped "
                "to [0.2, 1.0]; Transformer head; loss L1 + 0.8 mean unimodal L1 + 0.01 mean KL")
    deviations = ("retrieval from a bank of the training split by default (model.neighbours: bank; batch = "
                  "HME's in-batch); frozen text features unless data.text_input: tokens with text_finetune; "
                  "padding masked; absence read from the keep masks; a sample never its own fallback; VIB mean "
                  "in evaluation; torch attention in the Perceivers; checkpoints selected on validation")

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        c, dims, lens = config.model, config.data.dims(), config.data.lengths()
        h = c.hidden
        self.encoders = nn.ModuleDict({m: _Encoder(c, dims[m], lens[m]) for m in MODALITIES})
        self.perceivers = nn.ModuleDict({m: _Perceiver(c) for m in MODALITIES})
        self.shared = _Perceiver(c)
        self.pairs = nn.ModuleDict({_pair(m, k): _CrossEncoder(c) for m in MODALITIES for k in MODALITIES if k != m})
        self.hyper = nn.ModuleDict({m: _CrossEncoder(c) for m in MODALITIES})
        self.vib = nn.ModuleDict({m: _VIB(h) for m in MODALITIES})
        self.refine = nn.ModuleDict({m: _attention_mlp(2, h, 2, c.dropout) for m in MODALITIES})
        self.combine = _attention_mlp(3, h, 3, c.dropout)
        layer = nn.TransformerEncoderLayer(h, c.heads, _FUSION_FF, batch_first=True)
        self.fusion = nn.TransformerEncoder(layer, c.fusion_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(4 * h, 2 * h), nn.Dropout(c.head_dropout), nn.ReLU(), nn.Linear(2 * h, 1))
        self.bank = NeighbourBank(h) if c.neighbours == "bank" else None
        self.threshold, self.bounds, self.scale = c.threshold, (c.uncertainty_low, c.uncertainty_high), h ** -0.5

    def pooled(self, features: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """H_m (B, H) of each modality."""
        return {m: self.encoders[m](features[m], valid[m]) for m in MODALITIES}

    def _enhanced(self, h: dict[str, torch.Tensor], present: torch.Tensor,
                  index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """H'_m (B, H) float32: neighbours from the bank or from the batch (module docstring)."""
        b = present.shape[0]
        if self.bank is None:
            others = ~torch.eye(b, dtype=torch.bool, device=present.device)
            return {m: enhance(h[m], h[m], others & present[:, i].unsqueeze(0), present[:, i], self.threshold)
                    for i, m in enumerate(MODALITIES)}
        n = self.bank.entries(MODALITIES[0]).shape[0]
        candidates = torch.ones(b, n, dtype=torch.bool, device=present.device)
        if index is not None and n:
            candidates[torch.arange(b, device=present.device), index] = False
        return {m: enhance(h[m], self.bank.entries(m), candidates, present[:, i], self.threshold)
                for i, m in enumerate(MODALITIES)}

    def forward(self, features, valid, *, keep=None, index=None) -> HMEOutput:
        """See :meth:`BaseModel.forward`; ``index`` (B,): the samples' training-split positions, excluded
        from their own bank candidates (training with ``model.neighbours: bank``)."""
        h = self.pooled(features, valid)
        present = kept_share(valid, keep) > 0  # (B, M)
        enhanced = self._enhanced(h, present, index)
        dtype = h["text"].dtype
        e = {m: self.perceivers[m](enhanced[m].to(dtype).unsqueeze(1)) for m in MODALITIES}
        shared = self.shared(torch.stack([h[m] for m in MODALITIES], dim=1)).unsqueeze(1)  # (B, 1, H)
        hyper = {}
        for m in MODALITIES:
            towards = [self.pairs[_pair(m, k)](e[m].unsqueeze(1), e[k].unsqueeze(1)) for k in MODALITIES if k != m]
            hyper[m] = self.hyper[m](shared, torch.stack(towards, dim=1))
        mu, sigma, z, unimodal = zip(*(self.vib[m](hyper[m]) for m in MODALITIES))
        kl = torch.stack([0.5 * (u.pow(2) + s.pow(2) - 2 * s.log() - 1).mean() for u, s in zip(mu, sigma)])
        zeta = torch.stack([inverse_sigma(s, *self.bounds) for s in sigma], dim=1)  # (B, M)
        refined = []
        for i, m in enumerate(MODALITIES):
            pair = torch.stack([h[m].float(), z[i]], dim=1)  # (B, 2, H)
            logits = self.refine[m](pair.flatten(1).to(dtype)).float() * torch.stack(
                [torch.ones_like(zeta[:, i]), zeta[:, i]], dim=1)
            refined.append((torch.softmax(logits * self.scale, dim=1).unsqueeze(-1) * pair).sum(dim=1))
        zs = torch.stack(z, dim=1)  # (B, M, H)
        certainty = torch.softmax(torch.stack([1.0 / (s.mean(dim=1) + 1e-8) for s in sigma], dim=1), dim=1)
        logits = self.combine(zs.flatten(1).to(dtype)).float() * certainty
        hyper_all = (torch.softmax(logits * self.scale, dim=1).unsqueeze(-1) * zs).sum(dim=1)
        tokens = torch.stack([*refined, hyper_all], dim=1).to(dtype)  # (B, 4, H)
        pred = self.head(self.fusion(tokens).flatten(1)).squeeze(-1)
        return HMEOutput(pred=pred, unimodal=torch.stack(unimodal, dim=1), kl=kl, zeta=zeta, pooled=h,
                         enhanced=enhanced)

    def training_step(self, batch: TrainBatch) -> StepOutput:
        index = None if batch.index is None else batch.index.repeat(batch.views)
        out = self(batch.features, batch.valid, keep=batch.keep, index=index)
        labels = batch.labels.repeat(batch.views)
        with torch.autocast(device_type=labels.device.type, enabled=False):
            vib = torch.stack([task_loss(out.unimodal[:, i].float(), labels, batch.task)
                               for i in range(len(MODALITIES))]).mean()
            terms = {"vib": vib, "kl": out.kl.mean()}
        return StepOutput(preds=[p.float() for p in out.pred.chunk(batch.views)], terms=terms)

    def on_epoch_start(self, info: EpochInfo) -> None:
        """Build the bank before the first epoch of a fresh run (a resumed run loads its own)."""
        if self.bank is not None and not self.bank.built:
            self.on_epoch_end(info)

    def on_epoch_end(self, info: EpochInfo) -> None:
        """Fill the bank with the complete training split's H_m under the epoch's final weights."""
        if self.bank is None:
            return
        parts: dict[str, torch.Tensor] = {}
        for index, features, valid in info.batches():
            h = self.pooled(self.encode_inputs(features, valid), valid)
            for m in MODALITIES:
                if m not in parts:
                    parts[m] = torch.zeros(len(info.train), h[m].shape[1], device=info.device)
                parts[m].index_copy_(0, index, h[m].float())
        self.bank.fill(parts)


def _pair(m: str, k: str) -> str:
    return f"{MODALITY_CODES[m]}2{MODALITY_CODES[k]}"
