"""``lf_dnn``: MMSA's late-fusion DNN reference.

Audio and vision are averaged over time and encoded by a ``SubNet`` each (BatchNorm,
dropout, three Linear+ReLU layers); text runs through a one-layer LSTM over the frozen
text features (``TextSubNet``); the three vectors are concatenated and a three-layer
post-fusion MLP regresses the score. Task loss only (L1 in MMSA).

Per-dataset hyper-parameters are MMSA's (``config_regression.json``), in
``LFDNNConfig.dataset_defaults``; MMSA's optimiser settings are not part of the model section
(set them in ``optim``): MOSI batch 128, lr 1e-3, weight decay 1e-2; MOSEI 64, 2e-3, 1e-3;
SIMS 128, 5e-3, 5e-3; MMSA uses Adam and early stopping after 8 epochs on validation loss.

Deviations: time averages run over the valid (non-padding) steps, not the padded length; the
LSTM reads the valid steps (packed); missing input arrives zero-filled, as in MMSA's
``generate_m``; model selection follows the trainer (validation objective), not MMSA's
validation loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from fsrf.model._base import BaseModel, BaseModelConfig, register_model
from fsrf.model._late_fusion import PredOutput, Unimodal, check_late_fusion

if TYPE_CHECKING:
    from fsrf._config import Config


@dataclass(frozen=True)
class LFDNNConfig(BaseModelConfig):
    """LF-DNN's section: subnet widths and dropouts (MOSI's values by default)."""

    name: str = "lf_dnn"
    text_hidden: int = 128
    audio_hidden: int = 16
    vision_hidden: int = 128
    text_out: int = 256
    post_fusion_dim: int = 128
    text_dropout: float = 0.2
    audio_dropout: float = 0.2
    vision_dropout: float = 0.2
    post_fusion_dropout: float = 0.2

    dataset_defaults: ClassVar = {
        "mosei": {"audio_hidden": 32, "text_out": 128, "post_fusion_dim": 128},
        "sims": {"audio_hidden": 32, "text_out": 256, "post_fusion_dim": 32, "text_dropout": 0.3,
                 "audio_dropout": 0.3, "vision_dropout": 0.3, "post_fusion_dropout": 0.5},
    }

    def __post_init__(self) -> None:
        check_late_fusion(self)


@register_model
class LFDNN(BaseModel):
    """Late-fusion DNN (MMSA): concatenated unimodal vectors -> post-fusion MLP."""

    name = "lf_dnn"
    config_class = LFDNNConfig
    paper = "MMSA reference LF-DNN (late-fusion DNN; thuiar/MMSA models/singleTask/LF_DNN.py)"
    faithful = ("time-averaged audio/vision SubNets, text LSTM over frozen features, concatenation, "
                "3-layer post-fusion MLP, L1 task loss, MMSA's per-dataset widths and dropouts")
    deviations = ("averages over valid steps (MMSA: the padded length); packed LSTM over valid text steps; "
                  "selection on the validation objective; optimiser settings live in `optim`")

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        mc, dims = config.model, config.data.dims()
        self.unimodal = Unimodal(mc, dims)
        fused = mc.text_out + mc.audio_hidden + mc.vision_hidden
        self.post = nn.Sequential(
            nn.Dropout(mc.post_fusion_dropout), nn.Linear(fused, mc.post_fusion_dim), nn.ReLU(),
            nn.Linear(mc.post_fusion_dim, mc.post_fusion_dim), nn.ReLU(), nn.Linear(mc.post_fusion_dim, 1),
        )

    def forward(self, features, valid, *, keep=None) -> PredOutput:
        u = self.unimodal(features, valid)
        h = torch.cat([u["text"], u["audio"], u["vision"]], dim=-1)  # (B, text_out + H_a + H_v)
        return PredOutput(pred=self.post(h).squeeze(-1), fused=h)
