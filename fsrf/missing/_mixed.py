"""Uncertain missingness: each sample is either whole-modality or token-level incomplete.

Shape legend: B batch, T_m steps of modality m.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fsrf._constants import MODALITIES
from fsrf.missing._base import BaseMissingness
from fsrf.missing._checks import check_unit, checked_draw
from fsrf.missing._modality_drop import whole_drop, whole_keep
from fsrf.missing._random_drop import token_keep


class MixedDrop(BaseMissingness):
    """Per sample, either :class:`ModalityDrop` or :class:`RandomDrop`, at that sample's rates.

    Each sample independently gets whole-modality missingness with probability
    ``modality_share`` and token/frame-level missingness otherwise. The draws
    are, in order: the (B,) per-sample choice, the token-level noise of every
    sample, then the whole-modality draws of every sample, so the generator
    always advances by the same amount.

    Args:
        modality_share: probability, in [0, 1], that a sample gets whole-modality
            missingness.

    Raises:
        FSRFError: ``modality_share`` is not a number in [0, 1].
    """

    name = "mixed"

    def __init__(self, *, modality_share: float = 0.5) -> None:
        self.modality_share = check_unit(modality_share, "modality_share")

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
        batch = int(rates.shape[0])
        whole = (torch.rand(batch, generator=generator, device=rates.device) < self.modality_share).unsqueeze(1)  # (B, 1)
        token = token_keep(valid, rates, generator)
        modality = whole_keep(valid, whole_drop(rates, generator))
        return {m: torch.where(whole, modality[m], token[m]) for m in MODALITIES}

    def __repr__(self) -> str:
        return f"MixedDrop(modality_share={self.modality_share!r})"
