"""Token/frame-level random missingness (the LNLN protocol, without its shared-noise bug).

Shape legend: B batch, T_m steps of modality m.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fsrf._constants import MODALITIES
from fsrf.missing._base import BaseMissingness
from fsrf.missing._checks import checked_draw

TEXT: str = MODALITIES[0]


def text_ends(valid: torch.Tensor) -> torch.Tensor:
    """The first and the last valid position of each row ([CLS] and [SEP]).

    Args:
        valid: (B, T) bool.

    Returns:
        (B, T) bool, True at those (at most two) positions; all False for a row
        without valid positions.
    """
    b, t = valid.shape
    if t == 0:
        return torch.zeros_like(valid)
    pos = torch.arange(t, device=valid.device).expand(b, t)
    first = torch.where(valid, pos, t).amin(dim=1, keepdim=True)  # (B, 1); t when the row is empty
    last = torch.where(valid, pos, -1).amax(dim=1, keepdim=True)  # (B, 1); -1 when the row is empty
    return (pos == first) | (pos == last)


def token_keep(
    valid: Mapping[str, torch.Tensor], rates: torch.Tensor, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Checked-input core of :class:`RandomDrop`, on the generator's device.

    Draws one (B, T_m) uniform matrix per modality, in modality order, whatever
    the rates, so the generator always advances by the same amount.

    Args:
        valid: modality -> (B, T_m) bool, in modality order, on the generator's device.
        rates: (B, 3) float on the same device.
        generator: a CPU or device generator.
    """
    keep = {}
    for i, m in enumerate(MODALITIES):
        v = valid[m]
        noise = torch.rand(v.shape, generator=generator, device=v.device)  # (B, T_m) in [0, 1)
        dropped = v & (noise < rates[:, i : i + 1])  # rate 0 never drops, rate 1 always does
        if m == TEXT:
            dropped &= ~text_ends(v)
        keep[m] = ~dropped
    return keep


class RandomDrop(BaseMissingness):
    """Drop single tokens/frames independently (LNLN ``generate_m``, intra-modality missingness).

    Within the valid positions of modality m of sample b, each position is
    dropped independently with probability ``rates[b, m]``. For text the first
    and the last valid position ([CLS] and [SEP]) are always kept, as in LNLN;
    any valid audio or vision frame may drop, so rate 1 drops them all. Unlike
    LNLN (which reseeded a single noise matrix on every call), each modality and
    each call draws fresh noise from the generator.

    Examples:
        >>> gen = torch.Generator().manual_seed(0)
        >>> valid = {m: torch.ones(2, 5, dtype=torch.bool) for m in MODALITIES}
        >>> keep = RandomDrop().sample(valid, torch.full((2, 3), 0.5), gen)
        >>> keep["text"][:, [0, -1]].all().item()
        True
    """

    name = "random"

    def sample(
        self,
        valid: Mapping[str, torch.Tensor],
        rates: torch.Tensor,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """See :meth:`BaseMissingness.sample`."""
        return checked_draw(self.draw, valid, rates, generator)

    def draw(
        self,
        valid: Mapping[str, torch.Tensor],
        rates: torch.Tensor,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """See :meth:`BaseMissingness.draw`."""
        return token_keep(valid, rates, generator)
