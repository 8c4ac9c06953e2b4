"""Deterministic mask helpers: applying keep masks, whole-modality patterns, training rates.

Shape legend: B batch, T_m steps of modality m, D_m its feature dimension.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fsrf._constants import MODALITIES
from fsrf._errors import FSRFError
from fsrf.missing._checks import check_generator, check_int, check_unit, check_valid


def apply_keep(features: Mapping[str, torch.Tensor], keep: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero-fill the dropped frames (the field's convention for missing features).

    Args:
        features: modality -> (B, T_m, D_m) features, any floating dtype.
        keep: modality -> (B, T_m) bool keep masks for the same modalities
            (moved to each feature's device if needed).

    Returns:
        modality -> (B, T_m, D_m) with the same dtype and device as ``features``:
        kept frames unchanged, dropped frames exactly zero (even where the input
        was not finite). The inputs are not modified.

    Raises:
        FSRFError: the modalities differ, a mask is not bool, or shapes disagree.
    """
    if set(features) != set(keep):
        raise FSRFError(f"keep: has modalities {sorted(keep)!r}, expected those of features {sorted(features)!r}")
    out = {}
    for m, x in features.items():
        k = keep[m]
        if k.dtype != torch.bool or x.dim() != 3 or tuple(k.shape) != tuple(x.shape[:2]):
            raise FSRFError(
                f"keep[{m!r}]: {k.dtype} {tuple(k.shape)} given, expected bool {tuple(x.shape[:2])} "
                f"for features of shape {tuple(x.shape)}"
            )
        out[m] = x.masked_fill(~k.to(x.device).unsqueeze(-1), 0)
    return out


def pattern_keep(valid: Mapping[str, torch.Tensor], present: Sequence[str]) -> dict[str, torch.Tensor]:
    """Keep masks of one whole-modality availability pattern (CorrKD/HRLF evaluation); no randomness.

    Args:
        valid: modality -> (N, T_m) bool, True at real positions.
        present: the available modalities, e.g. ``("text", "audio")``; a
            non-empty subset of text, audio, vision.

    Returns:
        modality -> (N, T_m) bool on valid's device: all True for a present
        modality, False at every valid position of an absent one (padding True).

    Raises:
        FSRFError: ``present`` is a bare string, is empty, or names an unknown modality.
    """
    if isinstance(present, str) or not isinstance(present, Sequence):
        raise FSRFError(f"present: {present!r} given, expected a sequence of modality names such as ('text',)")
    if len(present) == 0:
        raise FSRFError(f"present: {present!r} is empty, expected at least one of {', '.join(MODALITIES)}")
    unknown = [p for p in present if p not in MODALITIES]
    if unknown:
        raise FSRFError(f"present: {unknown[0]!r} is not one of {', '.join(MODALITIES)}")
    check_valid(valid)
    return {m: torch.ones_like(valid[m]) if m in present else ~valid[m] for m in MODALITIES}


def training_rates(
    batch_size: int,
    *,
    max_rate: float,
    complete_share: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Per-sample, per-modality missing rates for one training batch (LNLN's scheme, capped).

    Every sample and modality draws r ~ U(0, max_rate) independently; then each
    sample independently, with probability ``complete_share``, is made complete
    (r = 0 for all modalities). Draws, in order: a (B, 3) then a (B,) uniform
    matrix from ``generator``.

    Args:
        batch_size: B >= 1.
        max_rate: upper bound of the rates, in [0, 1] (the curriculum's rate).
        complete_share: probability in [0, 1] that a sample is complete.
        generator: the only source of randomness, on the CPU or a device; the rates
            are drawn on its device.

    Returns:
        (B, 3) float32 on the generator's device, columns in modality order, values in
        [0, max_rate].

    Raises:
        FSRFError: an argument out of range or of the wrong type.
    """
    b = check_int(batch_size, "batch_size", minimum=1)
    top = check_unit(max_rate, "max_rate")
    share = check_unit(complete_share, "complete_share")
    gen = check_generator(generator)
    rates = torch.rand((b, len(MODALITIES)), generator=gen, device=gen.device) * top
    complete = torch.rand(b, generator=gen, device=gen.device) < share  # (B,)
    return rates.masked_fill(complete.unsqueeze(1), 0.0)
