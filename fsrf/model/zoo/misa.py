"""``misa``: MISA, modality-invariant and -specific representations (Hazarika et al., ACM MM 2020),
as the MMSA port trains it.

Shape legend: B batch, T_m steps, D_m features of modality m, H = ``model.hidden``.

* Utterance vectors: text, the masked mean of the (frozen BERT) text features over its valid
  tokens; audio and vision, a two-layer bidirectional LSTM with LayerNorm between the layers
  (hidden width D_m), whose final states of both layers and directions are concatenated (4 D_m).
* Projection per modality: Linear -> ReLU -> LayerNorm to H (u_m).
* Private encoders p_m = sigmoid(Linear_m(u_m)) (one per modality) and one shared encoder
  s_m = sigmoid(Linear(u_m)); a decoder per modality reconstructs u_m from p_m + s_m.
* Fusion: a one-layer Transformer (2 heads) over [p_t, p_v, p_a, s_t, s_v, s_a], the six
  outputs concatenated (6 H) -> Linear(6H, 3H) -> Dropout -> ReLU -> Linear(3H, 1).

Loss terms (weights per dataset as in MMSA): ``sim``, CMD (5 moments) between the shared
vectors of the three modality pairs, averaged; ``diff``, MISA's soft orthogonality (squared
Frobenius norm of the cross-correlation of batch-centred, row-normalised vectors) summed over
(p_m, s_m) for each m and over the three private pairs; ``recon``, the MSE of each u_m's
reconstruction, averaged. MMSA's task loss is MSE: ``configs/misa.yaml`` sets
``train.task_loss: mse``.

MMSA's optimiser settings (set in ``optim``): MOSI batch 16, lr 1e-4, grad clip 0.8,
weight decay 0; MOSEI 64, 1e-4, 0.8, 5e-5; SIMS 64, 1e-4, 1.0, 5e-5; Adam, early stopping 8.

Deviations: text is the frozen ``text`` features by default (MISA fine-tunes BERT on token
ids: ``data.text_input: tokens`` with ``data.text_finetune: true``); audio/vision LSTMs read their own valid lengths, while
the MMSA port packs them with the *text* lengths, so on unaligned data only the first <= 50
frames are read: ``text_lengths_for_av: true`` reproduces that quirk (off by default);
selection on the validation objective.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fsrf._constants import MODALITIES
from fsrf._validate import check, check_weights
from fsrf.losses import cmd
from fsrf.model._base import BaseModel, BaseModelConfig, StepOutput, TrainBatch, register_model
from fsrf.model._rnn import LengthLSTM

if TYPE_CHECKING:
    from fsrf._config import Config


@dataclass(frozen=True)
class MISAConfig(BaseModelConfig):
    """MISA's section: width, dropout, loss weights (MOSI's values by default) and the length quirk."""

    name: str = "misa"
    hidden: int = 128
    dropout: float = 0.2
    heads: int = 2
    sim: float = 0.3
    diff: float = 0.1
    recon: float = 1.0
    cmd_order: int = 5
    text_lengths_for_av: bool = False

    dataset_defaults: ClassVar = {
        "mosei": {"dropout": 0.5, "diff": 0.3, "sim": 0.8, "recon": 1.0},
        "sims": {"dropout": 0.0, "diff": 0.3, "sim": 1.0, "recon": 0.8},
    }

    def __post_init__(self) -> None:
        check(self.hidden >= 1, "hidden", f"{self.hidden} must be >= 1")
        check(self.heads >= 1 and self.hidden % self.heads == 0, "heads",
              f"{self.heads} must be >= 1 and divide model.hidden={self.hidden}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"{self.dropout} must be in [0, 1)")
        check(self.cmd_order >= 1, "cmd_order", f"{self.cmd_order} must be >= 1")
        check_weights(self, ("sim", "diff", "recon"))

    def weights(self) -> dict[str, float]:
        return {"sim": self.sim, "diff": self.diff, "recon": self.recon}


@dataclass(frozen=True, eq=False)
class MISAOutput:
    """A forward pass: the prediction (B,) and, per modality, u_m, p_m, s_m and the reconstruction (B, H)."""

    pred: torch.Tensor
    utterance: dict[str, torch.Tensor]
    private: dict[str, torch.Tensor]
    shared: dict[str, torch.Tensor]
    recon: dict[str, torch.Tensor]


def diff_loss(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """MISA's soft orthogonality of (B, H) x1 and x2: mean squared entry of the cross-correlation
    of batch-centred, row-normalised vectors (0 when orthogonal)."""
    a, b = x1 - x1.mean(dim=0), x2 - x2.mean(dim=0)
    a = a / (a.norm(dim=1, keepdim=True) + 1e-6)
    b = b / (b.norm(dim=1, keepdim=True) + 1e-6)
    return (a.t() @ b).pow(2).mean()


class _StackedBiLSTM(nn.Module):
    """Two bidirectional LSTM layers (width D) with LayerNorm between; final states -> (B, 4 D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.first = LengthLSTM(dim, dim, bidirectional=True)
        self.norm = nn.LayerNorm(2 * dim)
        self.second = LengthLSTM(2 * dim, dim, bidirectional=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out, h1 = self.first(x, lengths)
        _, h2 = self.second(self.norm(out), lengths)
        return torch.cat([h1, h2], dim=-1)  # (B, 4 D): layer 1 fwd/bwd, layer 2 fwd/bwd


@register_model
class MISA(BaseModel):
    """MISA (see the module docstring)."""

    name = "misa"
    config_class = MISAConfig
    paper = "Hazarika et al., MISA: Modality-Invariant and -Specific Representations for MSA, ACM MM 2020 (MMSA port)"
    faithful = ("utterance encoders (stacked BiLSTMs with LayerNorm for audio/vision), projections, sigmoid "
                "private/shared encoders, reconstruction, 1-layer Transformer fusion over the 6 vectors, CMD "
                "similarity + soft orthogonality + reconstruction with MMSA's per-dataset weights")
    deviations = ("frozen text features (masked mean) unless data.text_input: tokens with text_finetune; "
                  "audio/vision LSTMs read their own lengths (MMSA's text-length quirk: "
                  "text_lengths_for_av: true); selection on validation")

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        mc, dims = config.model, config.data.dims()
        h = mc.hidden
        self.text_lengths_for_av = mc.text_lengths_for_av
        self.rnn = nn.ModuleDict({m: _StackedBiLSTM(dims[m]) for m in ("audio", "vision")})
        width = {"text": dims["text"], "audio": 4 * dims["audio"], "vision": 4 * dims["vision"]}
        self.project = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(width[m], h), nn.ReLU(), nn.LayerNorm(h)) for m in MODALITIES
        })
        self.private = nn.ModuleDict({m: nn.Sequential(nn.Linear(h, h), nn.Sigmoid()) for m in MODALITIES})
        self.shared = nn.Sequential(nn.Linear(h, h), nn.Sigmoid())
        self.decoder = nn.ModuleDict({m: nn.Linear(h, h) for m in MODALITIES})
        layer = nn.TransformerEncoderLayer(d_model=h, nhead=mc.heads, batch_first=True)
        self.fusion = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(6 * h, 3 * h), nn.Dropout(mc.dropout), nn.ReLU(), nn.Linear(3 * h, 1))
        self.cmd_order = mc.cmd_order

    def forward(self, features, valid, *, keep=None) -> MISAOutput:
        lengths = {m: valid[m].sum(dim=1).clamp_min(1) for m in MODALITIES}
        text_valid = valid["text"].to(features["text"].dtype).unsqueeze(-1)
        raw = {"text": (features["text"] * text_valid).sum(dim=1) / text_valid.sum(dim=1).clamp_min(1.0)}
        for m in ("audio", "vision"):
            n = lengths["text"].clamp_max(features[m].shape[1]) if self.text_lengths_for_av else lengths[m]
            raw[m] = self.rnn[m](features[m], n)
        u = {m: self.project[m](raw[m]) for m in MODALITIES}
        p = {m: self.private[m](u[m]) for m in MODALITIES}
        s = {m: self.shared(u[m]) for m in MODALITIES}
        recon = {m: self.decoder[m](p[m] + s[m]) for m in MODALITIES}
        order = ("text", "vision", "audio")  # MISA's token order [p_t, p_v, p_a, s_t, s_v, s_a]
        tokens = torch.stack([p[m] for m in order] + [s[m] for m in order], dim=1)  # (B, 6, H)
        pred = self.head(self.fusion(tokens).flatten(1)).squeeze(-1)
        return MISAOutput(pred=pred, utterance=u, private=p, shared=s, recon=recon)

    def training_step(self, batch: TrainBatch) -> StepOutput:
        out = self(batch.features, batch.valid, keep=batch.keep)
        with torch.autocast(device_type=batch.labels.device.type, enabled=False):
            u, p, s, r = ({m: v[m].float() for m in MODALITIES} for v in (out.utterance, out.private, out.shared, out.recon))
            terms = {
                "sim": torch.stack([cmd(s[a], s[b], order=self.cmd_order)
                                    for a, b in itertools.combinations(MODALITIES, 2)]).mean(),
                "diff": sum(diff_loss(p[m], s[m]) for m in MODALITIES)
                + sum(diff_loss(p[a], p[b]) for a, b in itertools.combinations(MODALITIES, 2)),
                "recon": torch.stack([F.mse_loss(r[m], u[m]) for m in MODALITIES]).mean(),
            }
        return StepOutput(preds=[x.float() for x in out.pred.chunk(batch.views)], terms=terms)
