"""``cyin``: CyIN, a cyclic informative latent space for complete and incomplete multimodal learning
(Lin et al., NeurIPS 2025), re-implemented from the paper (its repository holds no code).

Shape legend: B batch, T_m steps of modality m, D_m its features, L the token grid (text's padded
length), C = ``model.hidden`` (C_U), C_ib = ``model.ib_hidden``, C_B = ``model.latent``.

* Length matching (the paper pairs token i of one modality with token i of another, which needs
  one length): ``model.length_match: text`` (default) puts every modality on text's token grid.
  Token i of audio (vision) is the mean of the i-th of n_text equal spans of the sample's n_m
  valid frames (spans of at least one frame, so a modality shorter than the text repeats frames):
  the i-th word is paired with the same share of the utterance's time, an evenly-paced stand-in
  for the word alignment of MMSA's aligned files, whose timings the unaligned files do not keep.
  Text keeps its tokens; grid position i is valid where text position i is (padding, never
  drops). ``position`` pairs step i of every modality as it comes (MMSA's aligned_50 files:
  every padded length must be equal). Dropped frames are zero-filled and averaged like any other.
* Encoders E_m: Linear(D_m, C), learned positions, a pre-norm Transformer (``encoder_layers``)
  over the grid, LayerNorm: F_m (B, L, C).
* IB encoders E_S: token-wise Linear(C, C_ib) -> GELU -> Linear(C_ib, 2 C_B) = (mu, log sigma^2);
  B_m = mu + sigma * z while training, mu in eval mode (Eq. 6).
* Token-level IB decoders D_{S->T}: token-wise Linear(C_B, C_ib) -> GELU -> Linear(C_ib, C), one
  per ordered pair and per modality itself (9).
* Label-level IB predictors P_S: the mean of B_S over the grid -> Linear(C_B, C_ib) -> GELU ->
  Linear(C_ib, 1).
* Translators Gamma_{S->T}: one cascaded residual autoencoder per ordered pair (6), ``cra_blocks``
  residual autoencoders C_B -> w -> w/2 -> w/4 -> w/2 -> w -> C_B (w = ``cra_width``; the paper's
  [64, 32, 16] is w = 64); block i reads B_S plus the outputs of blocks 1..i-1 (Eq. 14) and, as in
  MMIN's cascade (the paper's CRA reference), a transition MLP C_B -> C_B -> C_B maps B_S plus all
  the blocks' outputs to the translation (the last block's output alone passes through a w/4
  bottleneck: fitting a 32-wide map, 600 steps reached 1 - R^2 = 0.69 without it, 0.07 with it).
  The reverse translation of the cycle is the opposite pair's translator (shared weights, Eq. 16).
* Missing modalities: modality m of a sample is missing when ``keep`` is False at every valid
  position (a partly kept modality is encoded from what is left). A missing modality's latent is
  the sum of the translations from the present ones, B_m = sum_{j present} Gamma_{j->m}(B_j)
  (Eq. 19; ``model.combine: mean`` divides by their count). With no modality present a sample
  keeps its own latents (nothing to translate from).
* Fusion D_M: for each modality pair (text, audio), (text, vision), (audio, vision) a stack of
  ``fusion_layers`` pre-norm cross-modal attention layers (queries from the first, keys from the
  second, ``heads`` heads) over the latents, its output averaged over the grid; the three
  concatenated (3 C_B), LayerNorm, MLP head (Eqs. 21-22).

Loss (Eq. 23): task + (1/beta) (tib + lib) + gamma tran; ``weights()`` gives tib and lib the
weight 1/``beta`` and tran ``gamma``. KL is KL(N(mu, sigma^2) || N(0, I)) averaged over the latent
dimensions (App. B, Eq. 43) and over the grid tokens of the samples where the modality is present.

* ``tib`` (Eq. 8-9): mean over S of [KL_S + beta rec(S->S)] plus mean over ordered pairs S != T of
  [KL_S + beta rec(S->T)], rec(S->T) the reconstruction of F_T from B_S by D_{S->T} over the tokens
  of samples where S and T are present.
* ``lib`` (Eq. 11): mean over S of [KL_S + beta * the task loss (L1, or MSE with
  ``train.task_loss: mse``) of P_S(B_S)] over the samples where S is present.
* ``tran`` (Eq. 15-17, 20): mean over ordered pairs of rec + cyc: rec compares Gamma_{S->T}(B_S)
  with mu_T, cyc compares Gamma_{T->S}(Gamma_{S->T}(B_S)) with mu_S, over samples with S and T
  present. The paper compares with the sampled B_T; mu_T is its expectation, so against a
  detached target the translator's expected gradient is the same, without the sampling noise,
  and mu_T is what the fusion reads in eval mode.

Scale honesty: every reconstruction is a relative error, the squared error over the spread of what
it reconstructs, over the compared tokens (1 - R^2), so shrinking a representation cannot lower it.
Token-level IB: over the variance of the (detached) F_T; scaling F_m by 0.01 and undoing it in E_S
and D changes no term (a test checks it), while the plain MSE falls 10^4-fold. Translation and
cycle: over the variance of the sampled latent B_T (B_S), i.e. in units of the latent's own spread,
as the paper's absolute error is when the latents have unit scale; a common scale of mu and sigma
cancels. Not over mu_T's variance, a ratio without bound as mu_T's spread shrinks: with it,
``configs/cyin.yaml`` trained stably for five epochs, then within three more tran rose from 2.1 to
6.0 and the task loss from 0.64 to 1.08 (0.86 at the last epoch). The latents' own scale is held by
the KL's unit prior, and the label terms compare with fixed labels. Targets are detached (the paper
back-propagates into them): a translation target that could move toward its prediction would let all
latents shrink together, against only the prior's pull, weighted 1/beta (1/32 on MOSI) where the
translation weighs gamma (10). Each term averages over the pairs (or modalities) that have at least
two tokens to compare; a pair without any adds nothing, so a modality missing from a whole batch
gives finite terms.

Two stages: the first ``stage1_fraction`` of the epochs (epoch e, counted from 1, is in stage 1
while e <= fraction * epochs, as the unattributed CyIN trainer's ``stage_divide`` does: 1:9 of 50
epochs is 5) train without the translation term, on the complete batch (``stage1_complete``; the paper
builds the IB space on complete input), the rest with it, on the trainer's incomplete views.
:meth:`CyIN.on_epoch_start` sets the stage from the epoch, so a resumed run is in the right stage
from its first epoch; a model outside the trainer (no hook called) is in stage 2. In stage 1 the
``tran`` term is absent (not computed, not logged). Growing ``train.epochs`` on a resume moves
the boundary with it.

Deviations: the unimodal encoders are Transformers over the given features (the paper fine-tunes
BERT and uses ImageBind audio/vision features; ``data.text_input: tokens`` with
``data.text_finetune: true`` fine-tunes a text encoder here); the length matching above (the
paper does not say how it pairs tokens of unaligned sequences); reconstruction terms relative
and against detached targets (above); fusion averages the cross-modal outputs over the grid
(MulT reads the last step); dataset defaults for SIMS are MOSI's (the paper has no SIMS runs);
checkpoints are selected on validation (that trainer keeps the last epoch).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from fsrf._constants import MODALITIES
from fsrf._validate import check, check_one_of, check_unit, check_weights
from fsrf.model._base import BaseModel, BaseModelConfig, StepOutput, TrainBatch, register_model
from fsrf.model._layers import CrossLayer, masked_mean, transformer

if TYPE_CHECKING:
    from fsrf._config import Config
    from fsrf.model._base import EpochInfo

PAIRS: tuple[tuple[str, str], ...] = tuple(itertools.permutations(MODALITIES, 2))
"""The six ordered (source, target) pairs: the translators."""
DECODE_PAIRS: tuple[tuple[str, str], ...] = tuple(itertools.product(MODALITIES, MODALITIES))
"""The nine (source, target) pairs of the token-level IB decoders, a modality with itself included."""
FUSION_PAIRS: tuple[tuple[str, str], ...] = tuple(itertools.combinations(MODALITIES, 2))
"""The three modality pairs the fusion reads: (queries, keys)."""
_LOGVAR_RANGE = 10.0
_TINY = 1e-10


@dataclass(frozen=True)
class CyINConfig(BaseModelConfig):
    """CyIN's section: sizes, the translators, loss weights and the stage split.

    Class defaults are small (the synthetic data); the real datasets take the paper's Table 6.
    gamma is 1 here, not the paper's 10: on ``configs/cyin.yaml`` (seed 1111, test MAE, mean over
    the random rates / the six patterns) gamma 10 gave 0.747 / 0.867, gamma 1 0.683 / 0.743 and
    gamma 0 0.687 / 0.780. Token-level translation has little to find there (the synthetic
    modalities share one sample-level factor under strong modality-specific nuisance: a trained
    model's translations explained at most 16% of a target latent's variance), so a heavy term
    mostly disturbs the latents the fusion reads.
    """

    name: str = "cyin"
    hidden: int = 64
    ib_hidden: int = 64
    latent: int = 32
    heads: int = 2
    encoder_layers: int = 1
    fusion_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.1
    cra_blocks: int = 4
    cra_width: int = 32
    length_match: str = "text"
    combine: str = "sum"
    beta: float = 32.0
    gamma: float = 1.0
    stage1_fraction: float = 0.1
    stage1_complete: bool = True

    # Table 6 (MOSI / MOSEI columns; SIMS, which the paper does not run, takes MOSI's)
    dataset_defaults: ClassVar = {
        ds: {"hidden": 256, "ib_hidden": 256, "latent": 128, "cra_blocks": 8, "cra_width": 64,
             "fusion_layers": 2, "heads": 2, "beta": 32.0, "gamma": 10.0, "stage1_fraction": 0.1}
        for ds in ("mosi", "sims")
    } | {"mosei": {"hidden": 64, "ib_hidden": 64, "latent": 256, "cra_blocks": 4, "cra_width": 128,
                   "fusion_layers": 8, "heads": 4, "beta": 4.0, "gamma": 5.0, "stage1_fraction": 0.3}}

    def __post_init__(self) -> None:
        for key in ("hidden", "ib_hidden", "latent", "heads", "encoder_layers", "fusion_layers", "ff_mult",
                    "cra_blocks"):
            check(getattr(self, key) >= 1, key, f"{getattr(self, key)} must be >= 1")
        for key in ("hidden", "latent"):
            check(getattr(self, key) % self.heads == 0, "heads",
                  f"{self.heads} must divide model.{key}={getattr(self, key)}")
        check(self.cra_width >= 4, "cra_width", f"{self.cra_width} must be >= 4 (its narrowest layer is w/4)")
        check(0.0 <= self.dropout < 1.0, "dropout", f"{self.dropout} must be in [0, 1)")
        check_one_of(self.length_match, "length_match", ("text", "position"))
        check_one_of(self.combine, "combine", ("sum", "mean"))
        check(self.beta > 0.0, "beta", f"{self.beta} must be > 0 (the IB terms weigh 1/beta)")
        check_weights(self, ("gamma",))
        check_unit(self.stage1_fraction, "stage1_fraction")

    def weights(self) -> dict[str, float]:
        return {"tib": 1.0 / self.beta, "lib": 1.0 / self.beta, "tran": self.gamma}


def training_stage(epoch: int, epochs: int, fraction: float) -> int:
    """The stage (1 or 2) of the 0-based ``epoch`` of ``epochs``: 1 while ``epoch + 1 <= fraction * epochs``
    (the first ``floor(fraction * epochs)`` epochs)."""
    return 1 if epoch + 1 <= fraction * epochs + 1e-9 else 2


def text_grid_pool(x: torch.Tensor, valid: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Resample frames onto the text's token grid by relative time.

    Args:
        x: (B, T, D) frames of one modality.
        valid: (B, T) bool, its valid frames.
        grid: (B, L) bool, the text's valid positions (its first n_text).

    Returns:
        (B, L, D): position i < n_text holds the mean of the valid frames of rank
        [floor(i n / n_text), max(that + 1, floor((i + 1) n / n_text))) with n the sample's valid frames;
        positions from n_text on hold 0.
    """
    n = valid.sum(dim=1, keepdim=True).clamp_min(1)  # (B, 1)
    words = grid.sum(dim=1, keepdim=True).clamp_min(1)  # (B, 1)
    i = torch.arange(grid.shape[1], device=x.device).unsqueeze(0)  # (1, L)
    start = i * n // words  # (B, L)
    end = torch.maximum(start + 1, (i + 1) * n // words)
    rank = (valid.long().cumsum(dim=1) - 1).unsqueeze(1)  # (B, 1, T): a valid frame's rank
    span = valid.unsqueeze(1) & (rank >= start.unsqueeze(-1)) & (rank < end.unsqueeze(-1))  # (B, L, T)
    span = span & (i < words).unsqueeze(-1)
    weight = span.to(x.dtype)
    weight = weight / weight.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return weight @ x


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) of (..., C_B) per position, averaged over the C_B dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).mean(dim=-1)


def masked_relative_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, spread_of: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared error of (B, L, C) ``pred`` to the detached ``target`` over the (B, L) ``mask``'s tokens,
    over the variance there of the target (or of ``spread_of``, detached): 1 - R^2, unchanged when
    all of them are scaled alike.

    Returns:
        ``(value, counted)``: the scalar (0 with fewer than two tokens) and whether it counts (float 0/1).
    """
    target = target.detach()
    ref = target if spread_of is None else spread_of.detach()
    w = mask.to(target.dtype).unsqueeze(-1)  # (B, L, 1)
    count = w.sum()
    mean = (ref * w).sum(dim=(0, 1)) / count.clamp_min(1.0)
    spread = ((ref - mean).pow(2) * w).sum()
    err = ((pred - target).pow(2) * w).sum()
    counted = (count >= 2).to(target.dtype)
    return counted * err / spread.clamp_min(_TINY), counted


def _weighted_mean(values: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean of the values that count: sum(value * counted) / max(1, sum(counted))."""
    total = torch.stack([v * c for v, c in values]).sum()
    return total / torch.stack([c for _, c in values]).sum().clamp_min(1.0)


class GroupedLinear(nn.Module):
    """G independent linear maps applied at once: (G, N, in) -> (G, N, out), one batched matmul
    (initialised as ``nn.Linear``); ``index`` (G',) picks which maps read the G' inputs."""

    def __init__(self, groups: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = in_dim ** -0.5
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        w, b = (self.weight, self.bias) if index is None else (self.weight[index], self.bias[index])
        return torch.baddbmm(b.to(x.dtype), x, w.to(x.dtype))


class GroupedMLP(nn.Module):
    """G token-wise MLPs through the given widths (GELU and dropout between layers), grouped."""

    def __init__(self, groups: int, sizes: list[int], dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(GroupedLinear(groups, a, b) for a, b in itertools.pairwise(sizes))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        for k, layer in enumerate(self.layers):
            if k:
                x = self.drop(nn.functional.gelu(x))
            x = layer(x, index)
        return x


class CascadedResidualAutoencoders(nn.Module):
    """G translators Gamma (one per group) as MMIN's cascaded residual autoencoder: ``blocks``
    residual autoencoders C_B -> w -> w/2 -> w/4 -> w/2 -> w -> C_B, block i reading x plus the
    outputs of blocks 1..i-1 (Eq. 14), then a transition MLP C_B -> C_B -> C_B of x plus every
    block's output. (G', N, C_B) in and out; ``index`` as :class:`GroupedLinear`."""

    def __init__(self, groups: int, dim: int, width: int, blocks: int, dropout: float) -> None:
        super().__init__()
        sizes = [dim, width, width // 2, width // 4, width // 2, width, dim]
        self.blocks = nn.ModuleList(GroupedMLP(groups, sizes, dropout) for _ in range(blocks))
        self.transition = GroupedMLP(groups, [dim, dim, dim], 0.0)

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        total, out = x, torch.zeros_like(x)
        for block in self.blocks:
            total = total + out
            out = block(total, index)
        return self.transition(total + out, index)


def _key(source: str, target: str) -> str:
    return f"{source}_{target}"


@dataclass(frozen=True, eq=False)
class CyINOutput:
    """A forward pass; every dict is keyed by modality, every (B, L, .) tensor lies on the grid.

    Attributes:
        pred: (B,) predictions.
        grid: (B, L) bool, the grid's valid positions.
        encoded: F_m (B, L, C).
        mu, logvar: the IB encoders' (B, L, C_B) means and log variances.
        own: B_m (B, L, C_B), the latent of modality m's own input (sampled while training).
        translated: Gamma_{S->T}(B_S) (B, L, C_B) by (source, target).
        latent: the latent the fusion read: ``own``, or where m was replaced, the translations' sum.
        present: (B, M) bool, modalities with a kept valid position (all True without ``keep``).
        replaced: (B, M) bool, missing modalities replaced by translation (another one present).
    """

    pred: torch.Tensor
    grid: torch.Tensor
    encoded: dict[str, torch.Tensor]
    mu: dict[str, torch.Tensor]
    logvar: dict[str, torch.Tensor]
    own: dict[str, torch.Tensor]
    translated: dict[tuple[str, str], torch.Tensor]
    latent: dict[str, torch.Tensor]
    present: torch.Tensor
    replaced: torch.Tensor


@register_model
class CyIN(BaseModel):
    """CyIN (see the module docstring)."""

    name = "cyin"
    config_class = CyINConfig
    paper = ("Lin et al., CyIN: Cyclic Informative Latent Space for Bridging Complete and Incomplete "
             "Multimodal Learning, NeurIPS 2025")
    faithful = ("token-level IB cyclically over every modality pair (9 decoders) and label-level IB per "
                "modality, reparameterised Gaussian latents, cascaded residual autoencoders translating "
                "latents forward and back (shared reverse weights), a missing modality's latent as the sum "
                "of translations from the present ones, pairwise cross-modal attention fusion; "
                "task + (1/beta)(tib + lib) + gamma tran; two stages (gamma off, complete input, in the "
                "first), Table 6's sizes and weights per dataset")
    deviations = ("Transformer encoders over the given features (not BERT/ImageBind unless data.text_input: "
                  "tokens); unaligned sequences matched onto text's token grid by relative time "
                  "(length_match); reconstructions relative (1 - R^2) against detached targets, so no term "
                  "is won by shrinking; fusion averages over the grid; selection on validation")

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        c, dims, lens = config.model, config.data.dims(), config.data.lengths()
        if c.length_match == "position":
            check(len(set(lens.values())) == 1, "model.length_match",
                  f"position pairs step i of every modality, but the padded lengths differ ({lens}); "
                  "use text")
        length = lens["text"]
        h, ib, lat = c.hidden, c.ib_hidden, c.latent
        self.project = nn.ModuleDict({m: nn.Linear(dims[m], h) for m in MODALITIES})
        self.pos = nn.ParameterDict({m: nn.Parameter(torch.randn(1, length, h) * 0.02) for m in MODALITIES})
        self.encoder = nn.ModuleDict({m: transformer(h, c.heads, c.encoder_layers, c.ff_mult, c.dropout)
                                      for m in MODALITIES})
        self.encoder_norm = nn.ModuleDict({m: nn.LayerNorm(h) for m in MODALITIES})
        self.ib_encoder = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(h, ib), nn.GELU(), nn.Dropout(c.dropout), nn.Linear(ib, 2 * lat))
            for m in MODALITIES
        })
        self.ib_decoder = GroupedMLP(len(DECODE_PAIRS), [lat, ib, h], 0.0)  # D_{S->T}, in DECODE_PAIRS order
        self.predictor = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(lat, ib), nn.GELU(), nn.Dropout(c.dropout), nn.Linear(ib, 1))
            for m in MODALITIES
        })
        self.translator = CascadedResidualAutoencoders(len(PAIRS), lat, c.cra_width, c.cra_blocks, c.dropout)
        reverse = [PAIRS.index((t, s)) for s, t in PAIRS]  # Gamma_{T->S} for the pair (S, T)
        self.register_buffer("reverse", torch.tensor(reverse), persistent=False)
        self.fusion = nn.ModuleDict({
            _key(q, k): nn.ModuleList(CrossLayer(lat, c.heads, c.ff_mult * lat, c.dropout)
                                      for _ in range(c.fusion_layers))
            for q, k in FUSION_PAIRS
        })
        width = len(FUSION_PAIRS) * lat
        self.fusion_norm = nn.LayerNorm(width)
        self.head = nn.Sequential(nn.Linear(width, lat), nn.GELU(), nn.Dropout(c.dropout), nn.Linear(lat, 1))
        self.length_match, self.combine = c.length_match, c.combine
        self.beta, self.gamma = c.beta, c.gamma
        self.stage1_fraction, self.stage1_complete = c.stage1_fraction, c.stage1_complete
        self.stage = 2

    def on_epoch_start(self, info: EpochInfo) -> None:
        self.stage = training_stage(info.epoch, info.epochs, self.stage1_fraction)

    def translate(self, source: str, target: str, latent: torch.Tensor) -> torch.Tensor:
        """Gamma_{source->target} of one (B, L, C_B) latent."""
        index = torch.tensor([PAIRS.index((source, target))], device=latent.device)
        return self.translator(latent.flatten(0, 1).unsqueeze(0), index).view_as(latent)

    def forward(self, features, valid, *, keep=None) -> CyINOutput:
        grid = valid["text"]
        attend = grid.clone()
        attend[:, 0] |= ~grid.any(dim=1)  # a row without any valid position attends to its first
        pad = ~attend
        if keep is None:
            present = torch.ones(grid.shape[0], len(MODALITIES), dtype=torch.bool, device=grid.device)
        else:  # missing: no kept valid position; a modality without valid positions counts as present
            kept = [~valid[m].any(dim=1) | (valid[m] & keep[m]).any(dim=1) for m in MODALITIES]
            present = torch.stack(kept, dim=1)
        f, mu, logvar, own = {}, {}, {}, {}
        for m in MODALITIES:
            x = features[m]
            if m != "text" and self.length_match == "text":
                x = text_grid_pool(x, valid[m], grid)
            h = self.project[m](x) + self.pos[m].to(x.dtype)
            f[m] = self.encoder_norm[m](self.encoder[m](h, src_key_padding_mask=pad))
            mu[m], lv = self.ib_encoder[m](f[m]).chunk(2, dim=-1)
            logvar[m] = lv.clamp(-_LOGVAR_RANGE, _LOGVAR_RANGE)
            own[m] = mu[m] + (0.5 * logvar[m]).exp() * torch.randn_like(mu[m]) if self.training else mu[m]
        sources = torch.stack([own[s] for s, _ in PAIRS]).flatten(1, 2)  # (6, B L, C_B)
        translated = dict(zip(PAIRS, self.translator(sources).view(len(PAIRS), *own["text"].shape).unbind(0)))
        latent, replaced = {}, []
        for i, m in enumerate(MODALITIES):
            others = [(j, s) for j, s in enumerate(MODALITIES) if s != m]
            weight = {s: present[:, j].to(own[m].dtype)[:, None, None] for j, s in others}
            rec = sum(weight[s] * translated[(s, m)] for _, s in others)
            count = sum(weight.values())  # (B, 1, 1): present sources
            if self.combine == "mean":
                rec = rec / count.clamp_min(1.0)
            gone = ~present[:, i] & (count.view(-1) > 0)  # (B,)
            latent[m] = torch.where(gone[:, None, None], rec, own[m])
            replaced.append(gone)
        pooled = []
        for q, k in FUSION_PAIRS:
            x = latent[q]
            for layer in self.fusion[_key(q, k)]:
                x = layer(x, latent[k], pad)
            pooled.append(masked_mean(x, attend))
        pred = self.head(self.fusion_norm(torch.cat(pooled, dim=-1))).squeeze(-1)
        return CyINOutput(pred=pred, grid=grid, encoded=f, mu=mu, logvar=logvar, own=own,
                          translated=translated, latent=latent, present=present,
                          replaced=torch.stack(replaced, dim=1))

    def training_step(self, batch: TrainBatch) -> StepOutput:
        if self.stage == 1 and self.stage1_complete:  # build the IB space on the complete batch
            n, device = len(batch.labels), batch.labels.device
            complete = {m: v.to(device, non_blocking=True) for m, v in batch.complete.items()}
            out = self(complete, {m: v[:n] for m, v in batch.valid.items()})
            views, labels = 1, batch.labels
        else:
            out = self(batch.features, batch.valid, keep=batch.keep)
            views, labels = batch.views, batch.labels.repeat(batch.views)
        shape = out.own["text"].shape[:2]
        decoded = self.ib_decoder(torch.stack([out.own[s] for s, _ in DECODE_PAIRS]).flatten(1, 2))
        decoded = dict(zip(DECODE_PAIRS, decoded.view(len(DECODE_PAIRS), *shape, -1).unbind(0)))
        unimodal = {m: self.predictor[m](masked_mean(out.own[m], out.grid)).squeeze(-1) for m in MODALITIES}
        tran = self.stage == 2 and self.gamma > 0
        cycled = {}
        if tran:  # Gamma_{T->S}(Gamma_{S->T}(B_S)), every pair at once
            there = torch.stack([out.translated[p] for p in PAIRS]).flatten(1, 2)
            back = self.translator(there, self.reverse)
            cycled = dict(zip(PAIRS, back.view(len(PAIRS), *out.own["text"].shape).unbind(0)))
        with torch.autocast(device_type=labels.device.type, enabled=False):  # terms in float32
            terms = self._ib_terms(out, decoded, unimodal, labels.float(), batch.task)
            if tran:
                terms["tran"] = self._translation_term(out, cycled)
        return StepOutput(preds=[p.float() for p in out.pred.chunk(views)], terms=terms)

    def _ib_terms(
        self, out: CyINOutput, decoded, unimodal, labels: torch.Tensor, task: str
    ) -> dict[str, torch.Tensor]:
        """tib and lib (module docstring), in float32."""
        grid, present = out.grid, out.present
        kl, rows = {}, {}
        for i, m in enumerate(MODALITIES):
            rows[m] = grid & present[:, i : i + 1]  # (B, L): tokens of samples where m is present
            token_kl = gaussian_kl(out.mu[m].float(), out.logvar[m].float())
            weight = rows[m].float()
            kl[m] = (token_kl * weight).sum() / weight.sum().clamp_min(1.0)
        intra, inter = [], []
        for s in MODALITIES:
            for t in MODALITIES:
                rec, counted = masked_relative_mse(decoded[(s, t)].float(), out.encoded[t].float(),
                                                   rows[s] & rows[t])
                (intra if s == t else inter).append((kl[s] + self.beta * rec, counted))
        label = []
        for i, m in enumerate(MODALITIES):
            has = present[:, i].float()
            diff = unimodal[m].float() - labels
            err = ((diff.abs() if task == "l1" else diff.pow(2)) * has).sum() / has.sum().clamp_min(1.0)
            label.append((kl[m] + self.beta * err, (has.sum() > 0).float()))
        return {"tib": _weighted_mean(intra) + _weighted_mean(inter), "lib": _weighted_mean(label)}

    def _translation_term(self, out: CyINOutput, cycled) -> torch.Tensor:
        """tran = mean over ordered pairs of rec + cyc (module docstring), in float32."""
        values = []
        for s, t in PAIRS:
            i, j = MODALITIES.index(s), MODALITIES.index(t)
            mask = out.grid & (out.present[:, i] & out.present[:, j]).unsqueeze(1)
            rec, counted = masked_relative_mse(out.translated[(s, t)].float(), out.mu[t].float(), mask,
                                               spread_of=out.own[t].float())
            cyc, _ = masked_relative_mse(cycled[(s, t)].float(), out.mu[s].float(), mask,
                                         spread_of=out.own[s].float())
            values.append((rec + cyc, counted))
        return _weighted_mean(values)
