"""The FSRF network: encoders, homogeneous-heterogeneous-noise factorization, fusion.

Shape legend: B batch, T_m time steps of modality m, D_m its feature dim,
H hidden dim (``model.hidden``). Modalities in the order text, audio, vision.

Per modality m the encoder gives h_m (B, H). The factorization splits it into
a homogeneous part c_m = F_c(h_m) (one encoder shared by all modalities), a
heterogeneous part s_m = F_s^m(h_m) and a noise part n_m = F_n^m(h_m) (one
each per modality); a decoder per modality reconstructs h_m from [c_m; s_m; n_m].
Fusion reads the six tokens {c_m, s_m} only, never the noise parts, and a
regression head predicts the sentiment score. A small regressor behind a
gradient-reversal layer reads n_m so that training can push sentiment out of
the noise (see :mod:`fsrf.losses`). The self-distillation between two
incomplete views is a training-time matter: the trainer feeds both views
through this one network (see :mod:`fsrf.train`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from fsrf._config import Config
from fsrf._constants import MODALITIES
from fsrf.model._layers import ModalityEncoder, grad_reverse, mlp, transformer


@dataclass(frozen=True, eq=False)
class FSRFOutput:
    """What one forward pass gives; every dict is keyed by modality.

    Attributes:
        pred: (B,) sentiment predictions.
        fused: (B, H) the fused representation read by the head.
        encoded: h_m, (B, H).
        homo: c_m, homogeneous parts, (B, H).
        hetero: s_m, heterogeneous parts, (B, H).
        noise: n_m, noise parts, (B, H).
        recon: reconstructions of h_m, (B, H); empty when not requested.
        noise_pred: (B,) sentiment read from n_m behind gradient reversal; empty when not requested.
    """

    pred: torch.Tensor
    fused: torch.Tensor
    encoded: dict[str, torch.Tensor]
    homo: dict[str, torch.Tensor]
    hetero: dict[str, torch.Tensor]
    noise: dict[str, torch.Tensor]
    recon: dict[str, torch.Tensor]
    noise_pred: dict[str, torch.Tensor]

    def float(self) -> FSRFOutput:
        """The same output in float32 (losses are computed in float32 under bf16 autocast)."""

        def cast(value: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
            if isinstance(value, dict):
                return {k: v.float() for k, v in value.items()}
            return value.float()

        return FSRFOutput(**{f.name: cast(getattr(self, f.name)) for f in fields(self)})

    def chunk(self, n: int) -> list[FSRFOutput]:
        """Split along the batch into ``n`` equal outputs (one per view)."""

        def split(value: torch.Tensor | dict[str, torch.Tensor]) -> list:
            if isinstance(value, dict):
                parts = {k: v.chunk(n) for k, v in value.items()}
                return [{k: parts[k][i] for k in value} for i in range(n)]
            return list(value.chunk(n))

        columns = {f.name: split(getattr(self, f.name)) for f in fields(self)}
        return [FSRFOutput(**{k: v[i] for k, v in columns.items()}) for i in range(n)]


class FSRF(nn.Module):
    """The FSRF model, built from a run config (reads ``config.model`` and ``config.data``).

    Example:
        >>> import torch
        >>> from fsrf import FSRF, Config
        >>> model = FSRF(Config())
        >>> dims, lens = Config().data.dims(), Config().data.lengths()
        >>> x = {m: torch.randn(2, lens[m], dims[m]) for m in dims}
        >>> ok = {m: torch.ones(2, lens[m], dtype=torch.bool) for m in dims}
        >>> model(x, ok).pred.shape
        torch.Size([2])
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        mc, dims, lens = config.model, config.data.dims(), config.data.lengths()
        hidden = mc.hidden
        self.encoders = nn.ModuleDict(
            {
                m: ModalityEncoder(
                    in_dim=dims[m],
                    max_len=lens[m],
                    hidden=hidden,
                    heads=mc.heads,
                    layers=mc.encoder_layers,
                    ff_mult=mc.ff_mult,
                    dropout=mc.dropout,
                    downsample=1 if m == "text" else mc.downsample,
                )
                for m in MODALITIES
            }
        )
        self.homo = mlp(hidden, dropout=mc.dropout)
        self.hetero = nn.ModuleDict({m: mlp(hidden, dropout=mc.dropout) for m in MODALITIES})
        self.noise = nn.ModuleDict({m: mlp(hidden, dropout=mc.dropout) for m in MODALITIES})
        self.decoder = nn.ModuleDict({m: nn.Linear(3 * hidden, hidden) for m in MODALITIES})
        self.noise_head = nn.ModuleDict({m: nn.Linear(hidden, 1) for m in MODALITIES})
        self.token_type = nn.Parameter(torch.randn(2 * len(MODALITIES), hidden) * 0.02)
        self.fusion = transformer(hidden, mc.heads, mc.fusion_layers, mc.ff_mult, mc.dropout)
        self.fusion_norm = nn.LayerNorm(hidden)
        self.head = mlp(hidden, out=1, dropout=mc.dropout)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        valid: dict[str, torch.Tensor],
        *,
        recon: bool = False,
        noise_pred: bool = False,
    ) -> FSRFOutput:
        """Run the network on (possibly incomplete) inputs.

        Args:
            features: modality -> (B, T_m, D_m); missing frames already zero-filled.
            valid: modality -> (B, T_m) bool, False at padding.
            recon: also decode the reconstructions of h_m.
            noise_pred: also run the gradient-reversed sentiment regressor on n_m.
        """
        h = {m: self.encoders[m](features[m], valid[m]) for m in MODALITIES}  # (B, H) each
        c = {m: self.homo(h[m]) for m in MODALITIES}
        s = {m: self.hetero[m](h[m]) for m in MODALITIES}
        n = {m: self.noise[m](h[m]) for m in MODALITIES}
        tokens = torch.stack([c[m] for m in MODALITIES] + [s[m] for m in MODALITIES], dim=1)
        tokens = tokens + self.token_type  # (B, 6, H)
        fused = self.fusion_norm(self.fusion(tokens).mean(dim=1))  # (B, H)
        pred = self.head(fused).squeeze(-1)  # (B,)
        rec = (
            {m: self.decoder[m](torch.cat([c[m], s[m], n[m]], dim=-1)) for m in MODALITIES}
            if recon
            else {}
        )
        npred = (
            {m: self.noise_head[m](grad_reverse(n[m])).squeeze(-1) for m in MODALITIES}
            if noise_pred
            else {}
        )
        return FSRFOutput(pred, fused, h, c, s, n, rec, npred)


__all__ = ["FSRF", "FSRFOutput"]
