"""Fixed evaluation masks: a pure function of (seed, rate, split) and the validity masks.

Shape legend: N samples in a split, B samples in a batch, T_m steps of modality m.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Mapping, Sequence

import torch

from fsrf._constants import MODALITIES
from fsrf._errors import FSRFError
from fsrf.missing._base import BaseMissingness
from fsrf.missing._checks import check_unit, check_valid
from fsrf.missing._random_drop import RandomDrop


def _rate_key(rate: float) -> str:
    return f"{rate:.4f}"


def eval_generator_seed(seed: int, rate: float, split: str) -> int:
    """The generator seed of the evaluation masks of ``split`` at ``rate``.

    A BLAKE2b digest of ``"{seed}|{split}|{rate:.4f}"`` (never Python's salted
    ``hash``), so it is the same in every process, run and platform, and
    different splits or rates get unrelated masks.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise FSRFError(f"seed: {seed!r} has type {type(seed).__name__}, expected an integer")
    if not isinstance(split, str):
        raise FSRFError(f"split: {split!r} has type {type(split).__name__}, expected a split name")
    text = f"{int(seed)}|{split}|{_rate_key(check_unit(rate, 'rate'))}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & (2**63 - 1)


def eval_keep(
    valid: Mapping[str, torch.Tensor],
    *,
    rate: float,
    seed: int,
    split: str,
    simulator: BaseMissingness | None = None,
) -> dict[str, torch.Tensor]:
    """The fixed evaluation keep masks of a whole split at one missing rate.

    Every sample and modality gets the same ``rate``. The generator is built
    locally from :func:`eval_generator_seed`, so the masks are the same every
    epoch and every run, touch no global RNG, and differ between splits and
    rates.

    Args:
        valid: modality -> (N, T_m) bool, the whole split's validity masks.
        rate: the missing rate in [0, 1] (rates equal to 4 decimals share the noise).
        seed: the evaluation seed (``missing.eval_seed``).
        split: the split name, e.g. ``"valid"`` or ``"test"``.
        simulator: how positions are dropped; :class:`RandomDrop` (LNLN protocol) by default.

    Returns:
        modality -> (N, T_m) bool keep masks on valid's device.

    Raises:
        FSRFError: a bad rate, seed, split, simulator or validity mask.
    """
    sim = RandomDrop() if simulator is None else simulator
    if not isinstance(sim, BaseMissingness):
        raise FSRFError(f"simulator: {sim!r} is not a BaseMissingness (see fsrf.missing.SIMULATORS)")
    generator = torch.Generator().manual_seed(eval_generator_seed(seed, rate, split))
    cpu_valid, _ = check_valid(valid)
    n = int(cpu_valid[MODALITIES[0]].shape[0])
    rates = torch.full((n, len(MODALITIES)), float(rate), dtype=torch.float64)
    return sim.sample(valid, rates, generator)


class EvalMaskCache:
    """:func:`eval_keep` of one split at several rates, computed once and sliced per batch.

    Evaluation then does no random work per epoch. Memory: one N x T_m bool per
    modality and rate, on valid's device.

    Args:
        valid: modality -> (N, T_m) bool, the whole split's validity masks.
        rates: the missing rates to precompute, each in [0, 1].
        seed: the evaluation seed.
        split: the split name.
        simulator: as in :func:`eval_keep`; RandomDrop by default.

    Examples:
        >>> valid = {m: torch.ones(10, 4, dtype=torch.bool) for m in MODALITIES}
        >>> cache = EvalMaskCache(valid, rates=(0.0, 0.5), seed=1111, split="valid")
        >>> cache.keep(0.5, torch.tensor([3, 7]))["audio"].shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        valid: Mapping[str, torch.Tensor],
        *,
        rates: Sequence[float],
        seed: int,
        split: str,
        simulator: BaseMissingness | None = None,
    ) -> None:
        if isinstance(rates, str) or not isinstance(rates, Sequence) or len(rates) == 0:
            raise FSRFError(f"rates: {rates!r} given, expected a non-empty sequence of rates in [0, 1]")
        self.seed, self.split = seed, split
        self._masks: dict[str, dict[str, torch.Tensor]] = {}
        self._rates: list[float] = []
        for rate in rates:
            key = _rate_key(check_unit(rate, "rates"))
            if key not in self._masks:
                self._masks[key] = eval_keep(valid, rate=rate, seed=seed, split=split, simulator=simulator)
                self._rates.append(float(rate))

    @property
    def rates(self) -> tuple[float, ...]:
        """The cached rates, in the order given (duplicates removed)."""
        return tuple(self._rates)

    def __contains__(self, rate: object) -> bool:
        return isinstance(rate, numbers.Real) and _rate_key(float(rate)) in self._masks

    def keep(self, rate: float, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The cached masks at ``rate``, for the samples ``index`` (all when None).

        Args:
            rate: one of :attr:`rates` (compared to 4 decimals).
            index: (B,) integer sample indices into the split, any device.

        Returns:
            modality -> (B, T_m) bool (or (N, T_m) when ``index`` is None); the
            full masks are shared, not copied, so do not modify them in place.

        Raises:
            FSRFError: ``rate`` was not cached.
        """
        key = _rate_key(float(rate)) if isinstance(rate, numbers.Real) else None
        if key not in self._masks:
            cached = ", ".join(f"{r:g}" for r in self._rates)
            raise FSRFError(f"rate: {rate!r} is not cached for split {self.split!r}, expected one of {cached}")
        masks = self._masks[key]
        if index is None:
            return dict(masks)
        return {m: k.index_select(0, index.to(k.device)) for m, k in masks.items()}

    def __repr__(self) -> str:
        return f"EvalMaskCache(split={self.split!r}, seed={self.seed!r}, rates={self.rates!r})"
