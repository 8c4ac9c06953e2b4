"""Missing-rate curricula: the training missing rate as a function of the epoch.

Every curriculum but ``replay`` gives a rate in ``[start, end]`` (a subset of [0, 1]) that
never decreases. The scheduled kinds depend on the epoch alone; :class:`AdaptiveCurriculum`
raises its rate when the validation objective stops improving; :class:`ReplayCurriculum`
follows a given (epoch, rate) schedule, e.g. one a population-based search learned. A curriculum is
described by ``to_dict()`` (``{"kind": ..., <params>}``) and rebuilt by
:func:`build_curriculum`; its mutable state (adaptive only) travels in a checkpoint
through ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

import abc
import bisect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from fsrf._errors import FSRFError

_IMPROVEMENT = 1e-12
"""A score must be lower than the best by more than this to count as an improvement."""


def _number(key: str, value: Any, ok: Callable[[Any], bool], expected: str, kind: type = numbers.Real) -> Any:
    """``value`` if it is a ``kind`` number (not a bool) satisfying ``ok``, else FSRFError."""
    if isinstance(value, bool) or not isinstance(value, kind) or not ok(value):
        raise FSRFError(f"{key}: got {value!r}, expected {expected}")
    return value


def _rate(name: str, value: Any) -> float:
    return float(_number(f"curriculum.{name}", value, lambda x: 0.0 <= x <= 1.0, "a rate in [0, 1]"))


def _count(name: str, value: Any, minimum: int) -> int:
    ok = lambda x: x >= minimum
    return int(_number(f"curriculum.{name}", value, ok, f"an integer >= {minimum}", numbers.Integral))


def _step_size(value: Any) -> float:
    return float(_number("curriculum.step_size", value, lambda x: 0.0 < x <= 1.0, "a value in (0, 1]"))


def _check_order(start: float, end: float) -> None:
    if start > end:
        raise FSRFError(f"curriculum.start: {start!r} exceeds curriculum.end={end!r}, expected start <= end")


class BaseCurriculum(abc.ABC):
    """The training missing rate per epoch.

    Contract:

    * ``rate(epoch)`` takes the epoch counted from 0 and returns a float in [0, 1];
      for a given history of ``observe`` calls it is deterministic and
      non-decreasing in the epoch.
    * ``observe(score)`` is called once after each epoch's validation with the
      objective as "lower is better" (the trainer negates maximised metrics; NaN
      counts as no improvement). The default ignores it.
    * ``state_dict()`` returns only plain Python floats, ints, bools and None (so it
      fits a ``torch.load(weights_only=True)`` checkpoint); ``load_state_dict``
      restores it. The default state is empty.
    * ``to_dict()`` is ``{"kind": kind, <each of params>: value}``, and
      ``build_curriculum(**c.to_dict())`` rebuilds an equal curriculum.

    Subclasses set ``kind``, name their keyword-only constructor parameters in
    ``params`` and store each as an attribute of the same name.
    """

    kind: ClassVar[str]
    params: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def _at(self, epoch: int) -> float:
        """The rate at a validated epoch."""

    def rate(self, epoch: int) -> float:
        """The missing rate for ``epoch`` (counted from 0).

        Raises:
            FSRFError: a negative or non-integer epoch.
        """
        return self._at(int(_number("epoch", epoch, lambda x: x >= 0, "an integer >= 0", numbers.Integral)))

    def observe(self, score: float) -> None:
        """Take the epoch's validation objective (lower is better); ignored by default."""
        del score

    def state_dict(self) -> dict[str, Any]:
        """The mutable state, as plain Python values (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            FSRFError: the state has keys this kind does not know.
        """
        if state:
            raise FSRFError(f"curriculum state: unexpected keys {sorted(state)} for kind {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., <params>}``, the arguments of :func:`build_curriculum`."""
        return {"kind": self.kind, **{p: getattr(self, p) for p in self.params}}

    def __repr__(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)!r}" for p in self.params)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseCurriculum):
            return NotImplemented
        return self.to_dict() == other.to_dict() and self.state_dict() == other.state_dict()

    __hash__ = None  # type: ignore[assignment]


class ConstantCurriculum(BaseCurriculum):
    """The same rate ``end`` at every epoch."""

    kind = "constant"
    params = ("end",)

    def __init__(self, *, end: float) -> None:
        self.end = _rate("end", end)

    def _at(self, epoch: int) -> float:
        return self.end


class _Ramp(BaseCurriculum):
    """``start`` until ``warmup_epochs``, then ``start + (end - start) * shape(t)``
    with ``t = (epoch - warmup_epochs) / ramp_epochs`` in [0, 1], then ``end``."""

    def __init__(self, *, start: float, end: float, warmup_epochs: int, ramp_epochs: int) -> None:
        self.start = _rate("start", start)
        self.end = _rate("end", end)
        _check_order(self.start, self.end)
        self.warmup_epochs = _count("warmup_epochs", warmup_epochs, 0)
        self.ramp_epochs = _count("ramp_epochs", ramp_epochs, 1)

    @abc.abstractmethod
    def _shape(self, t: float) -> float:
        """A non-decreasing map of [0, 1] onto [0, 1] with shape(0) = 0, shape(1) = 1."""

    def _at(self, epoch: int) -> float:
        t = (epoch - self.warmup_epochs) / self.ramp_epochs
        if t <= 0.0:
            return self.start
        if t >= 1.0:
            return self.end
        value = self.start + (self.end - self.start) * self._shape(t)
        return min(self.end, max(self.start, value))


class LinearCurriculum(_Ramp):
    """``start``, then a straight line to ``end``, reached at ``warmup_epochs + ramp_epochs``."""

    kind = "linear"
    params = ("start", "end", "warmup_epochs", "ramp_epochs")

    def _shape(self, t: float) -> float:
        return t


class CosineCurriculum(_Ramp):
    """``start``, then a half cosine (slow, fast, slow) to ``end`` over the ramp."""

    kind = "cosine"
    params = ("start", "end", "warmup_epochs", "ramp_epochs")

    def _shape(self, t: float) -> float:
        return 0.5 * (1.0 - math.cos(math.pi * t))


class ExponentialCurriculum(_Ramp):
    """``start``, then ``(1 - exp(-sharpness t)) / (1 - exp(-sharpness))`` of the way to
    ``end``: a fast early rise that flattens, steeper for a larger ``sharpness``."""

    kind = "exponential"
    params = ("start", "end", "warmup_epochs", "ramp_epochs", "sharpness")

    def __init__(self, *, start: float, end: float, warmup_epochs: int, ramp_epochs: int,
                 sharpness: float) -> None:
        super().__init__(start=start, end=end, warmup_epochs=warmup_epochs, ramp_epochs=ramp_epochs)
        ok = lambda x: 0.0 < x < math.inf
        self.sharpness = float(_number("curriculum.sharpness", sharpness, ok, "a finite number > 0"))

    def _shape(self, t: float) -> float:
        return math.expm1(-self.sharpness * t) / math.expm1(-self.sharpness)


class StepCurriculum(BaseCurriculum):
    """``start``, raised by ``step_size`` every ``step_epochs`` epochs after the warm-up,
    capped at ``end``: epochs ``warmup_epochs + k * step_epochs`` onwards get
    ``min(end, start + k * step_size)``."""

    kind = "step"
    params = ("start", "end", "warmup_epochs", "step_epochs", "step_size")

    def __init__(self, *, start: float, end: float, warmup_epochs: int, step_epochs: int,
                 step_size: float) -> None:
        self.start = _rate("start", start)
        self.end = _rate("end", end)
        _check_order(self.start, self.end)
        self.warmup_epochs = _count("warmup_epochs", warmup_epochs, 0)
        self.step_epochs = _count("step_epochs", step_epochs, 1)
        self.step_size = _step_size(step_size)

    def _at(self, epoch: int) -> float:
        steps = max(0, epoch - self.warmup_epochs) // self.step_epochs
        return min(self.end, self.start + steps * self.step_size)


class AdaptiveCurriculum(BaseCurriculum):
    """``start``, raised by ``step_size`` (capped at ``end``) whenever the objective has
    not improved for ``patience`` consecutive observations.

    An observation improves when it is lower than the best so far by more than 1e-12
    (NaN never does). After a raise the counter restarts; the best score is kept.
    ``rate(epoch)`` returns the current rate whatever the epoch.
    """

    kind = "adaptive"
    params = ("start", "end", "step_size", "patience")

    def __init__(self, *, start: float, end: float, step_size: float, patience: int) -> None:
        self.start = _rate("start", start)
        self.end = _rate("end", end)
        _check_order(self.start, self.end)
        self.step_size = _step_size(step_size)
        self.patience = _count("patience", patience, 1)
        self._current = self.start
        self._best: float | None = None
        self._bad = 0

    def _at(self, epoch: int) -> float:
        return self._current

    def observe(self, score: float) -> None:
        """Track the best score and raise the rate after ``patience`` bad observations."""
        score = float(score)
        if not math.isnan(score) and (self._best is None or score < self._best - _IMPROVEMENT):
            self._best, self._bad = score, 0
            return
        self._bad += 1
        if self._bad >= self.patience:
            self._current = min(self.end, self._current + self.step_size)
            self._bad = 0

    def state_dict(self) -> dict[str, Any]:
        """``{"rate": float, "best": float | None, "bad_epochs": int}``."""
        return {"rate": self._current, "best": self._best, "bad_epochs": self._bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            FSRFError: missing or unexpected keys, or values of the wrong type or range.
        """
        if set(state) != {"rate", "best", "bad_epochs"}:
            raise FSRFError(f"curriculum state: keys {sorted(state)}, expected bad_epochs, best, rate")
        rate = _number("curriculum state rate", state["rate"], lambda x: self.start <= x <= self.end,
                       f"a rate in [{self.start}, {self.end}]")
        best = state["best"]
        if best is not None:
            best = float(_number("curriculum state best", best, lambda x: True, "a number or None"))
        bad = _number("curriculum state bad_epochs", state["bad_epochs"], lambda x: 0 <= x < self.patience,
                      f"an integer in [0, {self.patience})", numbers.Integral)
        self._current, self._best, self._bad = float(rate), best, int(bad)


class ReplayCurriculum(BaseCurriculum):
    """A schedule given point by point: from ``replay_epochs[i]`` on, the rate is
    ``replay_rates[i]`` (before the first point, the first rate).

    For replaying a schedule that was followed, e.g. the missing rate per epoch that a
    population-based search's winner trained with: a piecewise-constant schedule is exact for
    per-epoch rates. Unlike the other kinds it may go down as well as up (the contract's
    "non-decreasing" does not hold for it).
    """

    kind = "replay"
    params = ("replay_epochs", "replay_rates")

    def __init__(self, *, replay_epochs: Sequence[int], replay_rates: Sequence[float]) -> None:
        epochs = tuple(replay_epochs)
        rates = tuple(replay_rates)
        if not epochs:
            raise FSRFError("curriculum.replay_epochs: empty, expected the epochs (from 0) where the rate changes")
        if len(epochs) != len(rates):
            raise FSRFError(f"curriculum.replay_rates: {len(rates)} rates for {len(epochs)} replay_epochs, "
                            "expected one rate per epoch")
        self.replay_epochs = tuple(int(_number(f"curriculum.replay_epochs[{i}]", e, lambda x: x >= 0,
                                               "an integer >= 0", numbers.Integral)) for i, e in enumerate(epochs))
        for i, (a, b) in enumerate(zip(self.replay_epochs, self.replay_epochs[1:])):
            if b <= a:
                raise FSRFError(f"curriculum.replay_epochs: {list(self.replay_epochs)} is not strictly increasing "
                                f"(position {i + 1}: {b} after {a})")
        self.replay_rates = tuple(float(_number(f"curriculum.replay_rates[{i}]", r, lambda x: 0.0 <= x <= 1.0,
                                                "a rate in [0, 1]")) for i, r in enumerate(rates))

    def _at(self, epoch: int) -> float:
        return self.replay_rates[max(0, bisect.bisect_right(self.replay_epochs, epoch) - 1)]


CURRICULA: dict[str, type[BaseCurriculum]] = {
    cls.kind: cls
    for cls in (ConstantCurriculum, LinearCurriculum, StepCurriculum, CosineCurriculum, ExponentialCurriculum,
                AdaptiveCurriculum, ReplayCurriculum)
}
"""The curriculum classes by ``kind``."""


def build_curriculum(kind: str, **params: Any) -> BaseCurriculum:
    """Build the curriculum ``kind`` from exactly its ``params``.

    Args:
        kind: one of :data:`CURRICULA`.
        **params: every parameter named by that class's ``params``, and no other.

    Raises:
        FSRFError: an unknown kind, missing or unexpected parameters, or bad values.
    """
    if kind not in CURRICULA:
        raise FSRFError(f"curriculum.kind: {kind!r} is not one of {', '.join(CURRICULA)}")
    cls = CURRICULA[kind]
    missing = [p for p in cls.params if p not in params]
    if missing:
        raise FSRFError(f"curriculum: kind {kind!r} is missing parameters {', '.join(missing)}")
    extra = sorted(set(params) - set(cls.params))
    if extra:
        raise FSRFError(f"curriculum: kind {kind!r} takes no parameters {', '.join(extra)}, "
                        f"expected only {', '.join(cls.params)}")
    return cls(**params)


__all__ = [
    "CURRICULA", "AdaptiveCurriculum", "BaseCurriculum", "ConstantCurriculum", "CosineCurriculum",
    "ExponentialCurriculum", "LinearCurriculum", "ReplayCurriculum", "StepCurriculum", "build_curriculum",
]
