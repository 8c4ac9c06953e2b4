"""Building blocks: per-modality sequence encoders, MLPs, Transformers.

Shape legend: B batch, T time steps of one modality (T' after downsampling),
D input feature dim, H hidden dim.
"""

from __future__ import annotations

import torch
from torch import nn

from fsrf._constants import MODALITIES


def mlp(hidden: int, *, out: int | None = None, dropout: float = 0.0) -> nn.Sequential:
    """Linear(H, H) -> GELU -> Dropout -> Linear(H, out or H)."""
    return nn.Sequential(
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, out or hidden),
    )


def transformer(hidden: int, heads: int, layers: int, ff_mult: int, dropout: float) -> nn.TransformerEncoder:
    """A pre-norm Transformer encoder over (B, T, H) sequences."""
    layer = nn.TransformerEncoderLayer(
        d_model=hidden,
        nhead=heads,
        dim_feedforward=hidden * ff_mult,
        dropout=dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)


class CrossLayer(nn.Module):
    """Pre-norm cross attention (queries: ``target`` (B, Lq, H), keys/values: ``source`` (B, Lk, H)),
    then a feed-forward block (width ``ff``); ``pad`` (B, Lk) True at source positions not to attend
    (each row must leave one position open)."""

    def __init__(self, hidden: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.q_norm, self.kv_norm, self.ff_norm = (nn.LayerNorm(hidden) for _ in range(3))
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(hidden, ff), nn.GELU(), nn.Linear(ff, hidden))

    def forward(
        self, target: torch.Tensor, source: torch.Tensor, pad: torch.Tensor | None = None
    ) -> torch.Tensor:
        kv = self.kv_norm(source)
        target = target + self.attn(self.q_norm(target), kv, kv, key_padding_mask=pad, need_weights=False)[0]
        return target + self.ff(self.ff_norm(target))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T, H) over the True positions of (B, T); rows without any give 0."""
    weights = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    total = (x * weights).sum(dim=1)  # (B, H)
    count = weights.sum(dim=1).clamp_min(1.0)  # (B, 1)
    return total / count


def kept_share(valid: dict[str, torch.Tensor], keep: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """(B, M) kept share of each modality's valid frames (1 without a keep mask or valid frame)."""
    shares = []
    for m in MODALITIES:
        v = valid[m]
        if keep is None:
            shares.append(torch.ones(v.shape[0], device=v.device))
            continue
        total = v.sum(dim=1)
        kept = (v & keep[m].to(v.device)).sum(dim=1)
        shares.append(torch.where(total > 0, kept / total.clamp_min(1), torch.ones_like(total, dtype=torch.float)))
    return torch.stack(shares, dim=1).float()


class ModalityEncoder(nn.Module):
    """Projection, optional temporal downsampling, positional encoding, Transformer, pooling.

    Maps (B, T, D) features with a (B, T) validity mask to a pooled (B, H) vector.
    Dropped (zero-filled) frames stay attendable, as in the field's protocols;
    padding is masked out of attention and pooling. A row with no valid position
    attends to its first position only, so outputs and gradients stay finite.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        max_len: int,
        hidden: int,
        heads: int,
        layers: int,
        ff_mult: int,
        dropout: float,
        downsample: int = 1,
    ) -> None:
        super().__init__()
        self.downsample = downsample
        self.proj = nn.Linear(in_dim, hidden)
        steps = -(-max_len // downsample)
        self.pos = nn.Parameter(torch.randn(1, steps, hidden) * 0.02)
        self.encoder = transformer(hidden, heads, layers, ff_mult, dropout)
        self.norm = nn.LayerNorm(hidden)

    def _pool_time(self, h: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Average non-overlapping windows of ``downsample`` valid steps: T -> T'."""
        s = self.downsample
        b, t, d = h.shape
        pad = (-t) % s
        if pad:
            h = nn.functional.pad(h, (0, 0, 0, pad))
            valid = nn.functional.pad(valid, (0, pad), value=False)
        w = valid.to(h.dtype).view(b, -1, s, 1)  # (B, T', s, 1)
        total = (h.view(b, -1, s, d) * w).sum(dim=2)  # (B, T', H)
        count = w.sum(dim=2)  # (B, T', 1)
        return total / count.clamp_min(1.0), count.squeeze(-1) > 0

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)  # (B, T, H)
        if self.downsample > 1:
            h, valid = self._pool_time(h, valid)  # (B, T', H), (B, T')
        h = h + self.pos[:, : h.shape[1]]
        empty = ~valid.any(dim=1)  # (B,)
        attend = valid.clone()
        attend[:, 0] |= empty
        h = self.encoder(h, src_key_padding_mask=~attend)  # (B, T', H)
        return self.norm(masked_mean(h, attend))  # (B, H)
