"""``tfn``: Tensor Fusion Network (Zadeh et al., EMNLP 2017), as the MMSA reference.

Unimodal vectors as in LF-DNN (time-averaged audio / vision SubNets, a text LSTM over the
frozen text features); each gets a constant 1 appended and their outer product
[1; h_a] x [1; h_v] x [1; h_t], of size (H_a+1)(H_v+1)(text_out+1), holds every unimodal,
bimodal and trimodal interaction; dropout and a three-layer MLP regress the score, squashed
to the label range as sigmoid(o) * 2R - R (MMSA: R = 3). Task loss only (L1 in MMSA).

Per-dataset hyper-parameters are MMSA's, in ``TFNConfig.dataset_defaults``. MMSA's
optimiser settings (set them in ``optim``): MOSI batch 32, lr 1e-3; MOSEI 128, 5e-3;
SIMS 32, 5e-4.

Deviations: time averages over the valid steps; packed LSTM; the output range R is a config
value (3 for MOSI/MOSEI/synthetic, 1 for SIMS, whose labels lie in [-1, 1]; MMSA keeps 3 for
every dataset); selection on the validation objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from fsrf._validate import check
from fsrf.model._base import BaseModel, BaseModelConfig, register_model
from fsrf.model._late_fusion import PredOutput, Unimodal, check_late_fusion

if TYPE_CHECKING:
    from fsrf._config import Config


@dataclass(frozen=True)
class TFNConfig(BaseModelConfig):
    """TFN's section: subnet widths, dropouts and output range (MOSI's values by default)."""

    name: str = "tfn"
    text_hidden: int = 128
    audio_hidden: int = 32
    vision_hidden: int = 128
    text_out: int = 32
    post_fusion_dim: int = 64
    text_dropout: float = 0.3
    audio_dropout: float = 0.3
    vision_dropout: float = 0.3
    post_fusion_dropout: float = 0.5
    output_range: float = 3.0

    dataset_defaults: ClassVar = {
        "mosei": {"audio_hidden": 16, "text_out": 128, "post_fusion_dim": 16, "text_dropout": 0.4,
                  "audio_dropout": 0.4, "vision_dropout": 0.4, "post_fusion_dropout": 0.4},
        "sims": {"text_out": 256, "post_fusion_dim": 32, "text_dropout": 0.4, "audio_dropout": 0.4,
                 "vision_dropout": 0.4, "post_fusion_dropout": 0.4, "output_range": 1.0},
    }

    def __post_init__(self) -> None:
        check_late_fusion(self)
        check(self.output_range > 0, "output_range", f"{self.output_range} must be > 0")

    def fusion_size(self) -> int:
        """Length of the flattened outer product."""
        return (self.audio_hidden + 1) * (self.vision_hidden + 1) * (self.text_out + 1)


def tensor_fusion(h_a: torch.Tensor, h_v: torch.Tensor, h_t: torch.Tensor) -> torch.Tensor:
    """The flattened outer product of [1; h_a], [1; h_v], [1; h_t]: (B, (A+1)(V+1)(T+1))."""
    one = h_a.new_ones(h_a.shape[0], 1)
    a, v, t = (torch.cat([one, h], dim=1) for h in (h_a, h_v, h_t))
    return torch.einsum("ba,bv,bt->bavt", a, v, t).flatten(start_dim=1)


@register_model
class TFN(BaseModel):
    """Tensor Fusion Network (MMSA reference)."""

    name = "tfn"
    config_class = TFNConfig
    paper = "Zadeh et al., Tensor Fusion Network for Multimodal Sentiment Analysis, EMNLP 2017 (MMSA port)"
    faithful = ("time-averaged audio/vision SubNets, text LSTM, 3-way outer product with appended 1s, "
                "3-layer post-fusion MLP, sigmoid output scaling, L1 task loss, MMSA's per-dataset sizes")
    deviations = ("averages over valid steps; packed LSTM; output range per dataset (SIMS 1, MMSA 3); "
                  "selection on the validation objective; optimiser settings live in `optim`")

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        mc, dims = config.model, config.data.dims()
        self.unimodal = Unimodal(mc, dims)
        self.post = nn.Sequential(
            nn.Dropout(mc.post_fusion_dropout), nn.Linear(mc.fusion_size(), mc.post_fusion_dim), nn.ReLU(),
            nn.Linear(mc.post_fusion_dim, mc.post_fusion_dim), nn.ReLU(), nn.Linear(mc.post_fusion_dim, 1),
        )
        self.output_range = mc.output_range

    def forward(self, features, valid, *, keep=None) -> PredOutput:
        u = self.unimodal(features, valid)
        fused = tensor_fusion(u["audio"], u["vision"], u["text"])  # (B, (H_a+1)(H_v+1)(text_out+1))
        out = self.post(fused).squeeze(-1)
        return PredOutput(pred=torch.sigmoid(out) * 2 * self.output_range - self.output_range, fused=fused)
