"""Whole-modality random missingness (the CorrKD/HRLF training protocol).

Shape legend: B batch, T_m steps of modality m, M = 3 modalities.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fsrf._constants import MODALITIES
from fsrf.missing._base import BaseMissingness
from fsrf.missing._checks import checked_draw


def whole_drop(rates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Which modalities of each sample are dropped whole.

    Draws a (B, M) uniform matrix, then one rescue index per sample (always, so
    the generator advances by a fixed amount).

    Args:
        rates: (B, M) float on the generator's device.
        generator: a CPU or device generator.

    Returns:
        (B, M) bool on the rates' device, True = dropped; never True in all M columns of a row.
    """
    b, n = rates.shape
    dropped = torch.rand((b, n), generator=generator, device=rates.device) < rates  # (B, M)
    rescue = torch.randint(n, (b,), generator=generator, device=rates.device)  # (B,) uniform over modalities
    rescued = torch.nn.functional.one_hot(rescue, n).bool() & dropped.all(dim=1, keepdim=True)
    return dropped & ~rescued


def whole_keep(valid: Mapping[str, torch.Tensor], dropped: torch.Tensor) -> dict[str, torch.Tensor]:
    """Keep masks from per-sample modality drops: a dropped modality loses every valid position.

    Args:
        valid: modality -> (B, T_m) bool, on the device of ``dropped``.
        dropped: (B, M) bool from :func:`whole_drop`.
    """
    return {m: ~(valid[m] & dropped[:, i : i + 1]) for i, m in enumerate(MODALITIES)}


class ModalityDrop(BaseMissingness):
    """Drop whole modalities (inter-modality missingness, CorrKD/HRLF training).

    Modality m of sample b is dropped whole (every valid position False,
    padding still True) with probability ``rates[b, m]``, independently across
    modalities and samples. When that would drop all three modalities of a
    sample, one of them, chosen uniformly with the generator, is kept whole; so
    the realised drop probability of modality m is ``r_m - r_a r_l r_v / 3`` when
    the others' rates are ``r``.

    Examples:
        >>> gen = torch.Generator().manual_seed(0)
        >>> valid = {m: torch.ones(4, 3, dtype=torch.bool) for m in MODALITIES}
        >>> keep = ModalityDrop().sample(valid, torch.ones(4, 3), gen)
        >>> int(sum(k.all(dim=1) for k in keep.values()).min())  # one modality survives
        1
    """

    name = "modality"

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
        return whole_keep(valid, whole_drop(rates, generator))
