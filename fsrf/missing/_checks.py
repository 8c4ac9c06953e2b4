"""Argument checks shared by the simulators and helpers (one-line :class:`FSRFError` messages).

Shape legend: B batch, T_m steps of modality m.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping

import torch

from fsrf._constants import MODALITIES
from fsrf._errors import FSRFError


def check_unit(value: object, key: str) -> float:
    """Return ``value`` as a float after checking it is a real number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FSRFError(f"{key}: {value!r} has type {type(value).__name__}, expected a number in [0, 1]")
    out = float(value)
    if not (0.0 <= out <= 1.0):  # also rejects NaN
        raise FSRFError(f"{key}: {value!r} is out of range, expected a value in [0, 1]")
    return out


def check_int(value: object, key: str, *, minimum: int) -> int:
    """Return ``value`` as an int after checking it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FSRFError(f"{key}: {value!r} has type {type(value).__name__}, expected an integer")
    if int(value) < minimum:
        raise FSRFError(f"{key}: {value!r} must be >= {minimum}")
    return int(value)


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same (``cuda`` and ``cuda:<current>`` count as one)."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def check_generator(generator: object, device: torch.device | None = None) -> torch.Generator:
    """Return ``generator`` after checking it is a :class:`torch.Generator` on the CPU or on ``device``.

    Args:
        generator: the only source of randomness.
        device: the device of the masks; a generator there draws them there. None accepts
            a generator on any device.
    """
    if not isinstance(generator, torch.Generator):
        raise FSRFError(
            f"generator: {type(generator).__name__} given, expected a torch.Generator (the global RNG is never used)"
        )
    if device is not None and generator.device.type != "cpu" and not same_device(generator.device, device):
        raise FSRFError(f"generator: on {generator.device}, expected a CPU torch.Generator or one on {device}")
    return generator


def check_valid(valid: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.device]:
    """Check the validity masks and return them on the CPU, in modality order, with their device.

    Args:
        valid: modality -> (B, T_m) bool, one entry for each of text, audio, vision.

    Returns:
        ``(masks, device)``: modality -> (B, T_m) bool CPU tensors, and the device of the input.
    """
    if not isinstance(valid, Mapping):
        raise FSRFError(f"valid: {type(valid).__name__} given, expected a mapping modality -> (B, T) bool tensor")
    names = set(valid)
    if names != set(MODALITIES):
        raise FSRFError(f"valid: has modalities {sorted(names)!r}, expected exactly {', '.join(MODALITIES)}")
    out: dict[str, torch.Tensor] = {}
    batch: int | None = None
    device: torch.device | None = None
    for m in MODALITIES:
        v = valid[m]
        if not isinstance(v, torch.Tensor) or v.dtype != torch.bool or v.dim() != 2:
            what = f"{v.dtype} {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
            raise FSRFError(f"valid[{m!r}]: {what} given, expected a (B, T) bool tensor")
        if batch is not None and v.shape[0] != batch:
            raise FSRFError(f"valid[{m!r}]: batch size {v.shape[0]} differs from {batch} of {MODALITIES[0]!r}")
        if device is not None and v.device != device:
            raise FSRFError(f"valid[{m!r}]: on {v.device}, expected every modality on {device}")
        batch, device = int(v.shape[0]), v.device
        out[m] = v.cpu()
    assert device is not None
    return out, device


def check_rates(rates: torch.Tensor, batch: int) -> torch.Tensor:
    """Check per-sample, per-modality rates and return them as a (B, 3) float64 CPU tensor."""
    if not isinstance(rates, torch.Tensor):
        raise FSRFError(f"rates: {type(rates).__name__} given, expected a (B, 3) float tensor")
    shape = (batch, len(MODALITIES))
    if tuple(rates.shape) != shape or not rates.is_floating_point():
        raise FSRFError(f"rates: {rates.dtype} {tuple(rates.shape)} given, expected a float tensor of shape {shape}")
    out = rates.detach().cpu().double()
    bad = ~((out >= 0.0) & (out <= 1.0))  # NaN counts as bad
    if bool(bad.any()):
        value = float(out[bad][0])
        raise FSRFError(f"rates: {'nan' if math.isnan(value) else value!r} is out of range, expected values in [0, 1]")
    return out


def to_device(masks: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move CPU masks to ``device`` (a no-op on the CPU)."""
    if device.type == "cpu":
        return masks
    return {m: k.to(device, non_blocking=True) for m, k in masks.items()}


def checked_draw(
    draw: Callable[[Mapping[str, torch.Tensor], torch.Tensor, torch.Generator], dict[str, torch.Tensor]],
    valid: Mapping[str, torch.Tensor],
    rates: torch.Tensor,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """A simulator's ``sample``: check the arguments, then ``draw`` on the generator's device
    (a CPU generator draws on the CPU and the masks move to ``valid``'s device)."""
    cpu_valid, device = check_valid(valid)
    cpu_rates = check_rates(rates, int(cpu_valid[MODALITIES[0]].shape[0]))
    gen = check_generator(generator, device)
    if gen.device.type == "cpu":
        return to_device(draw(cpu_valid, cpu_rates, gen), device)
    return draw({m: valid[m] for m in MODALITIES}, cpu_rates.to(device), gen)
