"""``dashfusion``: DashFusion, dual-stream alignment with hierarchical bottleneck fusion (Wen et al.,
IEEE TNNLS 36(10), 2025), re-implemented from the paper and a reading of the authors' code (which
has no licence: nothing of it is copied).

Shape legend: B batch, T_m steps of modality m (L for text), D_m its features, H = ``model.hidden``
(128), K = ``model.bottleneck`` (8), N training samples.

* Text: a projector of the (frozen BERT) text features, 2 x [Linear without bias, GELU], then
  LayerNorm: X_t (B, L, H) and its masked mean.
* Audio, vision: Linear(D_m, H), a CLS token (ones) in front, learnable positions (zeros at
  start), dropout ``embed_dropout``, then a post-norm Transformer (``encoder_layers``: 2, MOSEI 4;
  feed-forward 2 H, dropout ``encoder_dropout`` 0.5, GELU) and LayerNorm: X_m (B, 1 + T_m, H) and
  its masked mean (CLS included).
* Temporal alignment: the text tokens query audio and vision with their own keys and values
  (``heads`` x ``align_head_dim``): H = X_t + W_o(CA(t -> a) + CA(t -> v)).
* Hierarchical bottleneck fusion, ``fusion_depth`` levels (2; MOSEI 3): at level l the query
  (level 0: H; then the previous bottleneck) passes a one-layer Transformer and keeps its first
  K / 2^l tokens (8 -> 4 -> 2); the bottleneck gathers from the three streams, LN(q + CA_t + CA_a
  + CA_v), then an FFN and LN; each stream then attends to the bottleneck (one cross layer). The
  HBF attention keeps the authors' form: scale H^-0.5 (not per head), no output projection, and
  ``x + LN(attn(x))``, ``x + LN(FFN(x))`` blocks.
* Head: [bottleneck token 0; text, audio, vision stream token 0] (4 H) -> 2 H -> H -> 1, GELU.

Semantic alignment and supervised contrast (``contrast``, weight 0.2; NT-Xent at ``temperature``
0.5, cosine similarity): every anchor brings six training samples drawn from a retrieval table,
two positives (near in the similarity matrix, same label), two negatives (far, other label) and
two hard negatives (near, other label), forwarded through the encoders and the alignment like the
anchor. In each of four spaces (text, audio and vision means, the aligned H[:, 0]) the anchor is
paired with its two positives and set against its four negatives; text of each of the seven
samples is paired with its own audio and vision. The loss per anchor is the mean over these 22
positive pairs of -log(e^{s+/tau} / (e^{s+/tau} + sum over the anchor's negatives e^{s-/tau})),
as the authors' loss computes it (the twelve cross-modal pairs of retrieved samples have no
negatives and so contribute 0), then the mean over the batch.

The retrieval table. :meth:`DashFusion.on_epoch_start` rebuilds it every ``refresh_every`` epochs
(0-based epochs 0, k, 2k, ...: the authors refresh before epochs 1, 3, 5, ... with k = 2), so the
first one, at epoch 0, comes from the initial weights, as in the authors' code (whose initial
matrix from raw features is overwritten before the first step). The complete training split is
embedded in eval mode; the cosine similarity of the concatenated text, audio and vision means
ranks every sample against all others; per sample it keeps the first ``pool`` (10) samples of the
same label from the top of the ranking (positives), of another label from the top (hard
negatives) and of another label from the bottom (negatives), labels rounded to integers
(``round_labels``; SIMS compares raw labels). ``near_window`` / ``far_window`` limit how far down /
up the ranking is scanned (the authors' per-dataset windows). ``retrieval: index`` (default)
stores the samples' indices, as intended; ``retrieval: rank`` reproduces the published code,
which stores the rank *positions* and then indexes the data with them (positives are then mostly
the first few samples of the split, negatives the last few, whatever the anchor). Only the table,
(N, 3, pool) sample indices (-1 where a list is short), and the epoch of its refresh are kept in
the state dict (``get_extra_state``), so a resumed run draws from the very table an uninterrupted
one does; the similarity matrix itself (N x N) is never stored. Until a table exists (the
compile warm-up, a hand-made batch without ``TrainBatch.index``, a step outside a training epoch)
the term is 0; in training the first ``on_epoch_start`` builds it, so it is on from the first step.

Missing input. Frames whose features are all zero are masked like padding
(``mask_zero_frames``, the authors' key-padding rule, which turns dropped frames into a shorter
sequence); ``false`` masks padding only. Attention masks padding in the alignment and the fusion
(the authors' code attends to zeroed padding there); the audio and vision CLS tokens are always
attendable, and a query row with no attendable key (text wholly missing) gets a zero output
instead of a NaN softmax.

Deviations: text is the frozen ``text`` features by default (the authors fine-tune BERT on raw
text: ``data.text_input: tokens`` with ``data.text_finetune: true``); the optimiser is the
trainer's (AdamW, warm-up then cosine; theirs: lr 5e-5 / MOSEI 2e-5, weight decay 1e-3 without
bias/LayerNorm, linear decay after 10 / 1 warm-up epochs, batch 16 / 8); padding masked as above,
and the authors' always-attended first frame is not forced; the retrieved samples are complete
(the anchor is the trainer's incomplete view); a sample whose list holds fewer than two candidates
draws what it has and the missing slots leave their pairs out (the authors' code fails there);
checkpoints are selected on the validation objective (as theirs, on validation MAE).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fsrf._constants import MODALITIES
from fsrf._device import to_device
from fsrf._errors import FSRFError
from fsrf._validate import check, check_one_of, check_weights
from fsrf.model._base import BaseModel, BaseModelConfig, EpochInfo, StepOutput, TrainBatch, register_model
from fsrf.model._layers import masked_mean

if TYPE_CHECKING:
    from fsrf._config import Config
    from fsrf.data import Split

RETRIEVALS = ("index", "rank")
KINDS = ("positive", "negative", "hard")
"""The retrieval table's lists per sample: near + same label, far + other label, near + other label
(the authors' ``ss``, ``dd``, ``sd``)."""
PER_KIND = 2
"""Samples drawn from each list per anchor (slots 1-2 positives, 3-4 negatives, 5-6 hard negatives)."""
SPACES = ("text", "audio", "vision", "fused")
"""The contrastive spaces: each modality's mean and the aligned H[:, 0]."""

Streams = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""modality -> (X_m (B, T, H), its (B, T) attendable mask)."""


@dataclass(frozen=True)
class DashFusionConfig(BaseModelConfig):
    """DashFusion's section: sizes, the contrastive term and its retrieval (MOSI's values by default)."""

    name: str = "dashfusion"
    hidden: int = 128
    heads: int = 8
    ff_mult: int = 2
    encoder_layers: int = 2
    encoder_dropout: float = 0.5
    embed_dropout: float = 0.1
    align_head_dim: int = 32
    fusion_depth: int = 2
    bottleneck: int = 8
    fusion_dropout: float = 0.0
    mask_zero_frames: bool = True
    contrast: float = 0.2
    temperature: float = 0.5
    refresh_every: int = 2
    retrieval: str = "index"
    pool: int = 10
    near_window: float = 1.0
    far_window: float = 1.0
    round_labels: bool = True

    dataset_defaults: ClassVar = {
        "mosei": {"encoder_layers": 4, "fusion_depth": 3, "near_window": 0.5, "far_window": 0.125},
        "sims": {"near_window": 0.625, "far_window": 0.5, "round_labels": False},
    }

    def __post_init__(self) -> None:
        for key in ("hidden", "heads", "ff_mult", "encoder_layers", "align_head_dim", "fusion_depth",
                    "bottleneck", "refresh_every"):
            check(getattr(self, key) >= 1, key, f"{getattr(self, key)} must be >= 1")
        check(self.hidden % self.heads == 0, "heads", f"{self.heads} must divide model.hidden={self.hidden}")
        for key in ("encoder_dropout", "embed_dropout", "fusion_dropout"):
            check(0.0 <= getattr(self, key) < 1.0, key, f"{getattr(self, key)} must be in [0, 1)")
        check(self.temperature > 0, "temperature", f"{self.temperature} must be > 0")
        check_one_of(self.retrieval, "retrieval", RETRIEVALS)
        check(self.pool >= PER_KIND, "pool", f"{self.pool} must be >= {PER_KIND} (samples drawn per list)")
        for key in ("near_window", "far_window"):
            check(0.0 < getattr(self, key) <= 1.0, key, f"{getattr(self, key)} must be in (0, 1]")
        check_weights(self, ("contrast",))

    def weights(self) -> dict[str, float]:
        return {"contrast": self.contrast}

    def level_tokens(self) -> tuple[int, ...]:
        """Bottleneck tokens per fusion level: K, K/2, K/4, ... (at least 1)."""
        return tuple(max(1, self.bottleneck // 2**level) for level in range(self.fusion_depth))


# --- attention ---------------------------------------------------------------------------------


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> (B, L, heads * d)."""
    b, _, n, _ = x.shape
    return x.transpose(1, 2).reshape(b, n, -1)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Scaled dot-product attention of (B, h, Lq, d) queries over (B, h, Lk, d) keys/values.

    ``mask`` (B, Lk) is True at attendable keys. A sample with no attendable key (a wholly missing
    modality) attends to every key and its output is zeroed, so outputs and gradients stay finite
    (a softmax over no key would be NaN).
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    any_key = mask.any(dim=1)  # (B,)
    safe = mask | ~any_key[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe[:, None, None, :], scale=scale)
    return out * any_key[:, None, None, None].to(out.dtype)


def _feed_forward(hidden: int, inner: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner, hidden),
                         nn.Dropout(dropout))


class TemporalAlignment(nn.Module):
    """H = X_t + W_o(CA(X_t -> X_a) + CA(X_t -> X_v)): text queries, each modality its own keys/values."""

    def __init__(self, c: DashFusionConfig) -> None:
        super().__init__()
        inner = c.heads * c.align_head_dim
        self.heads, self.scale = c.heads, c.align_head_dim**-0.5
        self.query = nn.Linear(c.hidden, inner, bias=False)
        self.key = nn.ModuleDict({m: nn.Linear(c.hidden, inner, bias=False) for m in ("audio", "vision")})
        self.value = nn.ModuleDict({m: nn.Linear(c.hidden, inner, bias=False) for m in ("audio", "vision")})
        self.out = (nn.Sequential(nn.Linear(inner, c.hidden), nn.Dropout(c.fusion_dropout))
                    if inner != c.hidden else nn.Identity())

    def forward(self, text: torch.Tensor, streams: Streams) -> torch.Tensor:
        q = _split(self.query(text), self.heads)
        total = 0
        for m in ("audio", "vision"):
            x, mask = streams[m]
            total = total + _merge(attend(q, _split(self.key[m](x), self.heads),
                                          _split(self.value[m](x), self.heads), mask, self.scale))
        return text + self.out(total)


class _Attention(nn.Module):
    """The authors' HBF attention: biased q/k/v projections, scale H^-0.5, no output projection."""

    def __init__(self, c: DashFusionConfig) -> None:
        super().__init__()
        self.heads, self.scale = c.heads, c.hidden**-0.5
        self.query, self.key, self.value = (nn.Linear(c.hidden, c.hidden) for _ in range(3))

    def forward(self, x: torch.Tensor, source: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.heads
        q, k, v = _split(self.query(x), h), _split(self.key(source), h), _split(self.value(source), h)
        return _merge(attend(q, k, v, mask, self.scale))


class _Block(nn.Module):
    """x + LN(attn(x, source)), then x + LN(FFN(x)); self-attention without ``source``."""

    def __init__(self, c: DashFusionConfig) -> None:
        super().__init__()
        self.attn, self.attn_norm = _Attention(c), nn.LayerNorm(c.hidden)
        self.ff = _feed_forward(c.hidden, c.ff_mult * c.hidden, c.fusion_dropout)
        self.ff_norm = nn.LayerNorm(c.hidden)

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        x = self.attn_norm(self.attn(x, x if source is None else source, mask)) + x
        return self.ff_norm(self.ff(x)) + x


class _Gather(nn.Module):
    """The bottleneck reads every stream: LN(q + CA_t + CA_a + CA_v), then LN(x + FFN(x))."""

    def __init__(self, c: DashFusionConfig) -> None:
        super().__init__()
        self.heads, self.scale = c.heads, (c.hidden // c.heads) ** -0.5
        self.query = nn.Linear(c.hidden, c.hidden, bias=False)
        self.key = nn.ModuleDict({m: nn.Linear(c.hidden, c.hidden, bias=False) for m in MODALITIES})
        self.value = nn.ModuleDict({m: nn.Linear(c.hidden, c.hidden, bias=False) for m in MODALITIES})
        self.norm1, self.norm2 = nn.LayerNorm(c.hidden), nn.LayerNorm(c.hidden)
        self.ff = _feed_forward(c.hidden, c.ff_mult * c.hidden, c.fusion_dropout)

    def forward(self, query: torch.Tensor, streams: Streams) -> torch.Tensor:
        q = _split(self.query(query), self.heads)
        out = query
        for m in MODALITIES:
            x, mask = streams[m]
            k, v = _split(self.key[m](x), self.heads), _split(self.value[m](x), self.heads)
            out = out + _merge(attend(q, k, v, mask, self.scale))
        out = self.norm1(out)
        return self.norm2(out + self.ff(out))


class HierarchicalBottleneckFusion(nn.Module):
    """``fusion_depth`` levels of K, K/2, ... bottleneck tokens between the three streams."""

    def __init__(self, c: DashFusionConfig) -> None:
        super().__init__()
        self.tokens = c.level_tokens()
        self.query = nn.ModuleList(_Block(c) for _ in self.tokens)
        self.gather = nn.ModuleList(_Gather(c) for _ in self.tokens)
        self.spread = nn.ModuleDict({m: nn.ModuleList(_Block(c) for _ in self.tokens) for m in MODALITIES})

    def forward(
        self, fused: torch.Tensor, fused_mask: torch.Tensor, streams: Streams
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``fused`` H (B, L, H); streams: m -> (X_m, attendable mask). Returns the (B, 4 H)
        representation and each level's bottleneck (B, K_l, H)."""
        query, levels = fused, []
        for level, k in enumerate(self.tokens):
            query = self.query[level](query, mask=fused_mask if level == 0 else None)[:, :k]
            query = self.gather[level](query, streams)
            streams = {m: (self.spread[m][level](x, source=query), mask) for m, (x, mask) in streams.items()}
            levels.append(query)
        rep = torch.cat([query[:, 0], *(streams[m][0][:, 0] for m in MODALITIES)], dim=-1)
        return rep, tuple(levels)


class _SequenceEncoder(nn.Module):
    """Audio/vision: Linear, CLS (ones) + positions (zeros), dropout, post-norm Transformer, LayerNorm."""

    def __init__(self, c: DashFusionConfig, in_dim: int, length: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, c.hidden)
        self.cls = nn.Parameter(torch.ones(1, 1, c.hidden))
        self.pos = nn.Parameter(torch.zeros(1, length + 1, c.hidden))
        self.drop = nn.Dropout(c.embed_dropout)
        layer = nn.TransformerEncoderLayer(c.hidden, c.heads, c.ff_mult * c.hidden, c.encoder_dropout,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.encoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D), (B, T) attendable -> X (B, 1 + T, H) zero where masked, and its mask (CLS True)."""
        h = self.proj(x)
        b, t, _ = h.shape
        h = torch.cat([self.cls.expand(b, -1, -1).to(h.dtype), h], dim=1) + self.pos[:, : t + 1].to(h.dtype)
        mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        h = self.encoder(self.drop(h), src_key_padding_mask=~mask)
        return self.norm(h) * mask[..., None].to(h.dtype), mask


@dataclass(frozen=True, eq=False)
class DashFusionOutput:
    """A forward pass: pred (B,); summaries, space -> (B, H) (text/audio/vision means, the aligned
    H[:, 0] as ``fused``); bottlenecks, each fusion level's tokens (B, K_l, H)."""

    pred: torch.Tensor
    summaries: dict[str, torch.Tensor]
    bottlenecks: tuple[torch.Tensor, ...]


# --- retrieval -----------------------------------------------------------------------------------


def _first(mask: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, ``values`` at the first ``k`` True positions of ``mask`` (C, N), in order; -1 past the end."""
    n = mask.shape[1]
    position = torch.arange(n, device=mask.device).expand_as(mask)
    key = torch.where(mask, position, n)
    top = key.topk(min(k, n), dim=1, largest=False, sorted=True)
    out = torch.where(top.values < n, values.gather(1, top.indices), -1)
    return F.pad(out, (0, k - out.shape[1]), value=-1)


def retrieval_table(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    pool: int,
    mode: str = "index",
    near_window: float = 1.0,
    far_window: float = 1.0,
    chunk: int | None = None,
) -> torch.Tensor:
    """The retrieval lists of every sample from its cosine-similarity ranking.

    Args:
        embeddings: (N, E) one vector per training sample.
        labels: (N,) the classes compared (already rounded where that is wanted).
        pool: entries kept per list.
        mode: ``index``: the lists hold the samples found (intended); ``rank``: they hold the
            rank positions at which they were found, as the published code does (the far list's
            negative positions -p - 1 index the split from its end, N - 1 - p).
        near_window, far_window: the share of the ranking scanned from the top (positives, hard
            negatives) and from the bottom (negatives; the authors' loop stops one short of it).
        chunk: rows ranked at a time (memory: chunk x N).

    Returns:
        (N, 3, pool) long: per sample the positives, negatives and hard negatives (:data:`KINDS`),
        best first, -1 where fewer were found. The sample itself is never its own positive in
        ``index`` mode; ``rank`` mode skips rank position i instead, as published.
    """
    n, device = embeddings.shape[0], embeddings.device
    z = F.normalize(embeddings.float(), dim=1, eps=1e-6)
    labels = labels.to(device)
    chunk = chunk or max(1, 2**22 // max(n, 1))
    near_n, far_n = int(n * near_window), int(n * far_window)
    position = torch.arange(n, device=device)
    near_ok, far_ok = position < near_n, position < far_n - 1
    out = torch.empty(n, len(KINDS), pool, dtype=torch.long, device=device)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=device)
        order = (z[rows] @ z.T).sort(dim=1, descending=True, stable=True).indices  # (C, N) samples by rank
        same = labels[order] == labels[rows][:, None]
        far_other = (~same).flip(1) & far_ok  # from the bottom: position p is rank N - 1 - p
        if mode == "index":
            not_self = order != rows[:, None]
            near, far = order, order.flip(1)
        else:
            not_self = position[None, :] != rows[:, None]
            near, far = position.expand_as(order), (n - 1 - position).expand_as(order)
        out[rows] = torch.stack([
            _first(same & not_self & near_ok, near, pool),
            _first(far_other, far, pool),
            _first(~same & not_self & near_ok, near, pool),
        ], dim=1)
    return out


def draw_retrieved(
    table: torch.Tensor, index: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per anchor, :data:`PER_KIND` distinct entries of each list, uniformly among those present.

    Args:
        table: (N, 3, pool) from :func:`retrieval_table`.
        index: (B,) the anchors' training positions (on the table's device).

    Returns:
        (B, 6) sample indices, positives, negatives, hard negatives (two each); -1 where a
        list held fewer than two.
    """
    rows = table.index_select(0, index)  # (B, 3, pool)
    keys = torch.rand(rows.shape, generator=generator, device=rows.device).masked_fill(rows < 0, 2.0)
    pick = keys.topk(PER_KIND, dim=-1, largest=False).indices
    return rows.gather(-1, pick).flatten(1)


@functools.cache
def _pairs(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a1, p, a2, n) over the S x 7 embeddings of a group (index s * 7 + slot, s in :data:`SPACES`),
    made once per device."""
    slots = 1 + len(KINDS) * PER_KIND
    at = {s: i * slots for i, s in enumerate(SPACES)}
    positives = [(at["text"] + j, at[m] + j) for j in range(slots) for m in ("audio", "vision")]
    positives += [(at[s], at[s] + j) for s in SPACES for j in range(1, 1 + PER_KIND)]
    negatives = [(at[s], at[s] + j) for s in SPACES for j in range(1 + PER_KIND, slots)]
    a1, p = torch.tensor(positives, device=device).T
    a2, neg = torch.tensor(negatives, device=device).T
    return a1, p, a2, neg


def group_ntxent(groups: torch.Tensor, slot_valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """The semantic-alignment and supervised contrastive loss of a batch of anchor groups.

    Args:
        groups: (B, S, 7, H): per space of :data:`SPACES`, the anchor then its six retrieved samples.
        slot_valid: (B, 7) bool, False at a slot whose sample was not found (its pairs are left out).
        temperature: tau.

    Returns:
        The mean over anchors of the mean over valid positive pairs (a, p) of
        ``-log(e^{s_ap/tau} / (e^{s_ap/tau} + sum_n e^{s_an/tau}))``, s the cosine similarity and n
        the valid negatives of anchor a (none: the pair's loss is 0), as the authors' NT-Xent.
    """
    b, s, r, h = groups.shape
    z = F.normalize(groups.reshape(b, s * r, h), dim=-1)
    sim = z @ z.transpose(1, 2) / temperature  # (B, S r, S r)
    a1, p, a2, neg = _pairs(groups.device)
    valid = slot_valid.repeat(1, s)  # (B, S r)
    pos = sim[:, a1, p]  # (B, P)
    owned = (a2[None, :] == a1[:, None])[None] & valid[:, neg][:, None, :]  # (B, P, Q)
    negs = sim[:, a2, neg][:, None, :].expand(-1, len(a1), -1).masked_fill(~owned, float("-inf"))
    losses = torch.logsumexp(torch.cat([pos[..., None], negs], dim=-1), dim=-1) - pos  # (B, P)
    ok = (valid[:, a1] & valid[:, p]).to(losses.dtype)
    return ((losses * ok).sum(dim=1) / ok.sum(dim=1).clamp_min(1.0)).mean()


# --- the model -------------------------------------------------------------------------------------


@register_model
class DashFusion(BaseModel):
    """DashFusion (see the module docstring)."""

    name = "dashfusion"
    config_class = DashFusionConfig
    paper = ("Wen et al., DashFusion: Dual-Stream Alignment With Hierarchical Bottleneck Fusion for "
             "Multimodal Sentiment Analysis, IEEE TNNLS 36(10), 2025")
    faithful = ("text projector, CLS audio/vision Transformer encoders, text-query temporal alignment, "
                "hierarchical bottleneck fusion (8 -> 4 -> 2 tokens, the authors' attention form), 4-vector "
                "head; NT-Xent (tau 0.5, weight 0.2) over text/audio/vision/fused spaces with 2 positives, "
                "2 negatives and 2 hard negatives per anchor from a training-set similarity ranking "
                "refreshed every 2 epochs (retrieval: index as intended, rank as published); "
                "per-dataset depths and windows")
    deviations = ("frozen text features unless data.text_input: tokens with text_finetune; the trainer's "
                  "optimiser and schedule; padding masked in alignment and fusion, wholly masked rows "
                  "give 0; retrieved samples complete; short retrieval lists drop their pairs; "
                  "validation selection")

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        c, dims, lens = config.model, config.data.dims(), config.data.lengths()
        if lens["text"] < c.bottleneck:
            raise FSRFError(f"model.bottleneck: {c.bottleneck} tokens exceed data.text_len={lens['text']} "
                            "(the bottleneck starts from the first text positions)")
        self.c = c
        self.text = nn.Sequential(
            nn.Linear(dims["text"], c.hidden, bias=False), nn.GELU(),
            nn.Linear(c.hidden, c.hidden, bias=False), nn.GELU(), nn.LayerNorm(c.hidden),
        )
        self.encoders = nn.ModuleDict({m: _SequenceEncoder(c, dims[m], lens[m]) for m in ("audio", "vision")})
        self.align = TemporalAlignment(c)
        self.fusion = HierarchicalBottleneckFusion(c)
        self.head = nn.Sequential(
            nn.Linear(4 * c.hidden, 2 * c.hidden), nn.GELU(),
            nn.Linear(2 * c.hidden, c.hidden), nn.GELU(), nn.Linear(c.hidden, 1),
        )
        self._table = torch.empty(0, len(KINDS), c.pool, dtype=torch.long)
        self._refreshed = -1
        self._bank: Split | None = None

    # -- network --

    def _encode(self, features: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]):
        """Streams m -> (X_m, attendable mask), means m -> (B, H), and the aligned H (B, L, H)."""
        masks = {m: valid[m] & (features[m] != 0).any(dim=-1) if self.c.mask_zero_frames else valid[m]
                 for m in MODALITIES}
        x_t = self.text(features["text"])
        x_t = x_t * masks["text"][..., None].to(x_t.dtype)
        streams = {"text": (x_t, masks["text"])}
        for m in ("audio", "vision"):
            streams[m] = self.encoders[m](features[m], masks[m])
        means = {m: masked_mean(x, mask) for m, (x, mask) in streams.items()}
        return streams, means, self.align(x_t, streams)

    def forward(self, features, valid, *, keep=None) -> DashFusionOutput:
        streams, means, fused = self._encode(features, valid)
        rep, levels = self.fusion(fused, streams["text"][1], streams)
        pred = self.head(rep).squeeze(-1)
        return DashFusionOutput(pred=pred, summaries={**means, "fused": fused[:, 0]}, bottlenecks=levels)

    def embed(
        self, features: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The contrastive spaces of complete inputs (encoders and alignment, no fusion): space -> (B, H)."""
        _, means, fused = self._encode(self.encode_inputs(features, valid), valid)
        return {**means, "fused": fused[:, 0]}

    # -- retrieval table: built around the epochs, kept in the state dict --

    def on_epoch_start(self, info: EpochInfo) -> None:
        """Rebuild the retrieval table every ``refresh_every`` epochs (and whenever none exists)."""
        self._bank = info.train
        if self.c.contrast > 0 and (self._refreshed < 0 or info.epoch % self.c.refresh_every == 0):
            self.refresh(info)

    def on_epoch_end(self, info: EpochInfo) -> None:
        self._bank = None  # the split is read by this epoch's steps only

    @torch.no_grad()
    def refresh(self, info: EpochInfo) -> None:
        """Embed the complete training split and rank it (:func:`retrieval_table`)."""
        vectors: torch.Tensor | None = None
        for index, features, valid in info.batches():
            means = self.embed(features, valid)
            row = torch.cat([means[m].float() for m in MODALITIES], dim=1)
            if vectors is None:
                vectors = row.new_zeros(len(info.train), row.shape[1])
            vectors[index] = row
        labels = info.train.labels.to(info.device)
        labels = torch.round(labels) if self.c.round_labels else labels
        self._table = retrieval_table(vectors, labels, pool=self.c.pool, mode=self.c.retrieval,
                                      near_window=self.c.near_window, far_window=self.c.far_window).cpu()
        self._refreshed = info.epoch

    @property
    def table(self) -> torch.Tensor:
        """(N, 3, pool) the current retrieval table (empty before the first refresh)."""
        return self._table

    @property
    def refreshed_at(self) -> int:
        """The 0-based epoch of the last refresh (-1: none yet)."""
        return self._refreshed

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {"table": self._table, "refreshed": torch.tensor(self._refreshed, dtype=torch.long)}

    def set_extra_state(self, state: Any) -> None:
        self._table = state["table"].to("cpu", torch.long)
        self._refreshed = int(state["refreshed"])

    # -- training --

    def training_step(self, batch: TrainBatch) -> StepOutput:
        out = self(batch.features, batch.valid, keep=batch.keep)
        preds = [p.float() for p in out.pred.chunk(batch.views)]
        terms = {"contrast": self._contrast(batch, out)} if self.c.contrast > 0 else {}
        return StepOutput(preds=preds, terms=terms)

    def _contrast(self, batch: TrainBatch, out: DashFusionOutput) -> torch.Tensor:
        device = batch.labels.device
        if self._bank is None or batch.index is None or self._table.shape[0] != len(self._bank):
            return torch.zeros((), device=device)
        picked = draw_retrieved(self._table, batch.index.cpu())  # (B, 6), CPU: the split lives there
        others = self._bank.take(picked.clamp_min(0).flatten())
        retrieved = self.embed({m: to_device(x, device) for m, x in others.features.items()},
                               {m: to_device(v, device) for m, v in others.valid.items()})
        b = picked.shape[0]
        anchors = {s: v[:b] for s, v in out.summaries.items()}  # the first view's anchors
        with torch.autocast(device_type=device.type, enabled=False):
            slots = PER_KIND * len(KINDS)
            groups = torch.stack([
                torch.cat([anchors[s].float()[:, None], retrieved[s].float().view(b, slots, -1)], dim=1)
                for s in SPACES
            ], dim=1)  # (B, S, 7, H)
            slot_valid = torch.cat([torch.ones(b, 1, dtype=torch.bool), picked >= 0], dim=1).to(device)
            return group_ntxent(groups, slot_valid, self.c.temperature)
