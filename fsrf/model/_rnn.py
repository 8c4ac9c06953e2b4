"""LSTMs over right-padded variable-length sequences without packing.

``pack_padded_sequence`` makes PyTorch fall back to its step-by-step RNN on CPU (about 10x
slower than the fused kernel for the small widths of MMSA's audio/vision LSTMs, measured in
``bench/models.py``). These run the fused kernel on the padded batch and read each sample's
state at its own last valid step; the backward direction runs on each sequence reversed within
its length. Both give exactly what the packed LSTM gives (a test checks it to 1e-5): steps past
a sample's length are computed but never read.

Shape legend: B batch, T steps, D input features, H hidden width.
"""

from __future__ import annotations

import torch
from torch import nn


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, D) with each sample's first ``lengths[b]`` steps reversed; steps past it are filler."""
    steps = torch.arange(x.shape[1], device=x.device)
    index = (lengths.to(x.device).unsqueeze(1) - 1 - steps).clamp_min(0)  # (B, T)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))


def last_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, H): each sample's step ``lengths[b] - 1``."""
    index = (lengths.to(x.device) - 1).view(-1, 1, 1).expand(-1, 1, x.shape[2])
    return x.gather(1, index).squeeze(1)


class LengthLSTM(nn.Module):
    """One LSTM layer (optionally bidirectional) over right-padded (B, T, D) sequences.

    ``forward(x, lengths)`` returns ``(outputs, final)``: outputs (B, T, H or 2H), valid up to
    each sample's length, and the final states (B, H) forward, (B, 2H) as [forward; backward]
    when bidirectional, as ``h_n`` of a packed ``nn.LSTM`` would give them. Lengths must be >= 1.
    """

    def __init__(self, in_dim: int, hidden: int, *, bidirectional: bool = False) -> None:
        super().__init__()
        self.forward_rnn = nn.LSTM(in_dim, hidden, batch_first=True)
        self.backward_rnn = nn.LSTM(in_dim, hidden, batch_first=True) if bidirectional else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float()
        out, _ = self.forward_rnn(x)
        final = last_valid(out, lengths)
        if self.backward_rnn is None:
            return out, final
        back, _ = self.backward_rnn(reverse_within_length(x, lengths))
        back = reverse_within_length(back, lengths)  # back to input order; step 0 is its final state
        return torch.cat([out, back], dim=-1), torch.cat([final, back[:, 0]], dim=-1)
