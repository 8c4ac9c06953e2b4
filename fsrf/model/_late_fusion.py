"""Building blocks of MMSA's late-fusion references (TFN, LF-DNN): subnets over
time-averaged audio / vision and an LSTM over the frozen text features.

Shape legend: B batch, T_m steps of modality m, D_m its feature dim, H_m a subnet's width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


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
        self.rnn = nn.LSTM(in_dim, hidden, num_layers=1, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        lengths = valid.sum(dim=1).clamp_min(1).cpu()  # a sample with no valid step reads its first
        packed = pack_padded_sequence(x.float(), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.linear(self.drop(h[-1]))
