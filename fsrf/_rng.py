"""Explicit randomness: every draw comes from a generator made from a seed.

Torch modules draw parameter initialisations and dropout masks from the global
generator; :func:`isolated_rng` runs such code on a forked copy of the global
state seeded from an explicit value, and restores the caller's state afterwards,
so nothing outside leaks in or out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_SEED_BOUND = 2**62


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(int(seed))


def draw_seed(generator: torch.Generator) -> int:
    """Draw a fresh integer seed from ``generator``."""
    return int(torch.randint(_SEED_BOUND, (1,), generator=generator).item())


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the body with torch's global RNG seeded to ``seed``, then restore it.

    Args:
        seed: the seed for the forked state.
        device: a CUDA device whose RNG is forked too (ignored on CPU).
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(int(seed))
        if devices:
            with torch.cuda.device(devices[0]):
                torch.cuda.manual_seed(int(seed))
        yield
