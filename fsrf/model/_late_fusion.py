"""Building blocks of MMSA's late-fusion references (TFN, LF-DNN): subnets over
time-averaged audio / vision and an LSTM over the frozen text features.

Shape legend: B batch, T_m steps of modality m, D_m its feature dim, H_m a subnet's width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fsrf._validate import check
from fsrf.model._rnn import LengthLSTM


@dataclass(frozen=True, eq=False)
class PredOutput:
    """A forward pass that gives the prediction (B,) and the fused vector the head read."""

    pred: torch.Tensor
    fused: torch.Tensor


def check_late_fusion(section: Any) -> None:
    """Widths >= 1 and dropouts in [0, 1) of a late-fusion model's section."""
    for key in ("text_hidden", "audio_hidden", "vision_hidden", "text_out", "post_fusion_dim"):
        check(getattr(section, key) >= 1, key, f"{getattr(section, key)} must be >= 1")
    for key in ("text_dropout", "audio_dropout", "vision_dropout", "post_fusion_dropout"):
        check(0.0 <= getattr(section, key) < 1.0, key, f"{getattr(section, key)} must be in [0, 1)")


def time_average(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T, D) over its valid (non-padding) steps -> (B, D); dropped frames count as zeros.

    MMSA averages over the whole padded length; averaging over the valid steps keeps a
    sample's vector independent of how much padding its file carries.
    """
    weights = valid.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class SubNet(nn.Module):
    """MMSA's ``SubNet``: BatchNorm1d -> Dropout -> 3 x (Linear + ReLU), (B, D) -> (B, H)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.drop(self.norm(x)))


class TextSubNet(nn.Module):
    """MMSA's ``TextSubNet``: a one-layer LSTM over (B, T, D) text features, its last state over
    the valid steps -> Dropout -> Linear, (B, out)."""

    def __init__(self, in_dim: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        self.rnn = LengthLSTM(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        lengths = valid.sum(dim=1).clamp_min(1)  # a sample with no valid step reads its first
        _, last = self.rnn(x, lengths)
        return self.linear(self.drop(last))


class Unimodal(nn.Module):
    """The three unimodal vectors of MMSA's late-fusion models: text LSTM, audio and vision subnets
    over their time averages; reads a section with the fields :func:`check_late_fusion` checks."""

    def __init__(self, section: Any, dims: dict[str, int]) -> None:
        super().__init__()
        s = section
        self.text = TextSubNet(dims["text"], s.text_hidden, s.text_out, s.text_dropout)
        self.audio = SubNet(dims["audio"], s.audio_hidden, s.audio_dropout)
        self.vision = SubNet(dims["vision"], s.vision_hidden, s.vision_dropout)

    def forward(self, features: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """modality -> (B, text_out | H_a | H_v)."""
        return {
            "text": self.text(features["text"], valid["text"]),
            "audio": self.audio(time_average(features["audio"], valid["audio"])),
            "vision": self.vision(time_average(features["vision"], valid["vision"])),
        }
