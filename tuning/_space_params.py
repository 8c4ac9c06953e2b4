"""One searched config field: its parsed form, its Optuna suggestion and its value checks.

A param's YAML entry (see ``tuning/spaces/default.yaml``) is parsed by :func:`parse_param`
into a :class:`Param`; every error is one line naming the space file and the param.
"""

from __future__ import annotations

import math
import numbers
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fsrf import FSRFError

KINDS = ("float", "int", "choice")
"""The three ways to search a field; an entry names exactly one."""

SPEC_KEYS = (*KINDS, "log", "step", "off_switch", "when")
"""Every key a param's entry may hold."""

ON, OFF_STATE = "on", "off"
"""The two states of an ``off_switch: true`` param, as ``when`` conditions name them."""


class _Off:
    """The type of :data:`OFF`."""

    def __repr__(self) -> str:
        return "off"


OFF = _Off()
"""What a param switched off was drawn as (in the ``decided`` mappings of sampling and checks)."""

SWITCH_SUFFIX = ":off"
"""An ``off_switch: true`` param ``model.homo`` is switched by the categorical ``model.homo:off``."""


@dataclass(frozen=True, kw_only=True)
class Condition:
    """``when: {target: values}``: the param is sampled only if ``target`` took one of ``values``.

    Attributes:
        target: an earlier param's dotted name.
        values: choices of the target, or ``"on"`` / ``"off"`` for a target with an off-switch.
        switch: whether ``target`` is an off-switched param (``values`` are then on/off).
    """

    target: str
    values: tuple[Any, ...]
    switch: bool = False

    def holds(self, decided: Mapping[str, Any]) -> bool:
        """Whether the target was drawn with an allowed value (``decided[target]`` is :data:`OFF` if off)."""
        if self.target not in decided:
            return False
        value = decided[self.target]
        if self.switch:
            return (OFF_STATE if value is OFF else ON) in self.values
        return any(_same(value, v) for v in self.values)


@dataclass(frozen=True, kw_only=True)
class Param:
    """A searched field.

    Attributes:
        name: the dotted config path, also the Optuna parameter name.
        kind: ``float`` (uniform or log-uniform), ``int`` or ``choice`` (categorical).
        low: a range's lower bound (None for a choice).
        high: a range's upper bound, inclusive.
        log: sample the range log-uniformly.
        step: a range's grid step (None: continuous for floats, 1 for ints).
        choices: a choice's values, already of the field's type.
        off_value: with ``off_switch: true``, the value an "off" draw sets (0 or 0.0); else None.
        when: conditions that must all hold for the param to be sampled.
    """

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    off_value: float | int | None = None
    when: tuple[Condition, ...] = ()

    @property
    def switch_name(self) -> str:
        """The Optuna name of the off-switch (``model.homo:off``)."""
        return self.name + SWITCH_SUFFIX

    @property
    def has_switch(self) -> bool:
        """Whether the param was declared with ``off_switch: true``."""
        return self.off_value is not None

    def active(self, decided: Mapping[str, Any]) -> bool:
        """Whether every ``when`` condition holds for the values sampled so far."""
        return all(c.holds(decided) for c in self.when)

    def suggest(self, trial: Any) -> Any:
        """Sample the value (not the switch) from an Optuna trial under :attr:`name`."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def probe_values(self) -> tuple[Any, ...]:
        """The values whose validity stands for the whole param: bounds or choices, and off."""
        values = self.choices if self.kind == "choice" else (self.low, self.high)
        return (*values, OFF) if self.has_switch else values

    def normalize(self, value: Any, source: str) -> Any:
        """``value`` as a draw of this param would be (ints as int, floats as float).

        Raises:
            FSRFError: the value is of the wrong type or outside the range or choices.
        """
        where = f"{source}: {self.name}"
        if self.kind == "choice":
            for choice in self.choices:
                if _same(value, choice):
                    return choice
            raise FSRFError(f"{where}: {value!r} is not one of the searched choices {list(self.choices)}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise FSRFError(f"{where}: {value!r} is not a number")
        if self.kind == "int":
            if not float(value).is_integer():
                raise FSRFError(f"{where}: {value!r} is not an integer")
            value = int(value)
        else:
            value = float(value)
        assert self.low is not None and self.high is not None
        slack = 1e-9 * max(1.0, abs(self.high))
        if not self.low - slack <= value <= self.high + slack:
            raise FSRFError(f"{where}: {value!r} is outside the searched range [{self.low}, {self.high}]")
        return value

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain form (for the fingerprint)."""
        return {
            "name": self.name, "kind": self.kind, "low": self.low, "high": self.high, "log": self.log,
            "step": self.step, "choices": list(self.choices), "off_value": self.off_value,
            "when": [[c.target, list(c.values)] for c in self.when],
        }


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps bools and None apart from numbers and strings apart from numbers (1 == 1.0)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return bool(a == b)


def field_type(hint: Any) -> tuple[type | None, bool]:
    """``(scalar type, accepts None)`` of a config field's type hint; type None if not a scalar."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner, _ = field_type(args[0]) if len(args) == 1 else (None, False)
        return inner, True
    return (hint, False) if hint in (float, int, str, bool) else (None, False)


def _number(value: Any, *, integer: bool, where: str, what: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise FSRFError(f"{where}: {what} {value!r} is not a finite number")
    if integer and not isinstance(value, numbers.Integral):
        raise FSRFError(f"{where}: {what} {value!r} is not an integer (an `int:` range takes integer bounds)")
    return int(value) if integer else float(value)


def parse_param(
    name: str, spec: Any, *, hint: Any, earlier: Mapping[str, Param], declared: Sequence[str], where: str
) -> Param:
    """Parse one ``params`` entry against its config field's type (ranges and cross-field checks come later).

    Args:
        name: the dotted config path.
        spec: the YAML value, a mapping like ``{float: [0.01, 3.0], log: true, off_switch: true}``.
        hint: the config field's type hint.
        earlier: the params declared before this one (``when`` may name only those).
        declared: every param name of the space, in order (for a clearer error).
        where: ``"<file>: params: <name>"``, the prefix of every error.

    Raises:
        FSRFError: one line naming ``where`` and what is wrong.
    """
    if not isinstance(spec, Mapping):
        raise FSRFError(f"{where}: expected a mapping like {{float: [low, high]}}, got {spec!r}")
    if any(isinstance(k, bool) for k in spec):
        raise FSRFError(f"{where}: a key reads as a YAML boolean (bare off/on/yes/no); "
                        f"the off-switch key is `off_switch: true`")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise FSRFError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(SPEC_KEYS)})")
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise FSRFError(f"{where}: give exactly one of float, int, choice (got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    scalar, nullable = field_type(hint)
    if scalar is None:
        raise FSRFError(f"{where}: this field ({hint}) cannot be searched; set it under `fixed`")
    for flag in ("log", "off_switch"):
        if not isinstance(spec.get(flag, False), bool):
            raise FSRFError(f"{where}: {flag}: expected true or false, got {spec[flag]!r}")
    log, off = bool(spec.get("log", False)), bool(spec.get("off_switch", False))
    when = _parse_when(spec.get("when", {}), earlier=earlier, declared=declared, name=name, where=where)
    if kind == "choice":
        if log or off or "step" in spec:
            raise FSRFError(f"{where}: log, step and off_switch apply to float/int ranges, not to a choice")
        choices = _parse_choices(spec[kind], scalar, nullable, where)
        return Param(name=name, kind=kind, choices=choices, when=when)
    integer = kind == "int"
    if scalar not in (float, int):
        raise FSRFError(f"{where}: {'an int' if integer else 'a float'} range on a {scalar.__name__} field; "
                        f"use `choice: [...]`")
    if kind == "float" and scalar is int:
        raise FSRFError(f"{where}: a float range on an int field; use `int: [low, high]`")
    bounds = spec[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise FSRFError(f"{where}: {kind}: expected [low, high], got {bounds!r}")
    low, high = (_number(b, integer=integer, where=where, what=w) for b, w in zip(bounds, ("low", "high")))
    if low >= high:
        raise FSRFError(f"{where}: empty or inverted range [{low}, {high}] (low must be < high)")
    if log and low <= 0:
        raise FSRFError(f"{where}: log range [{low}, {high}] touches or crosses 0 "
                        f"(use `off_switch: true` for 0)")
    step = None
    if "step" in spec:
        if log:
            raise FSRFError(f"{where}: step and log cannot be combined")
        step = _number(spec["step"], integer=integer, where=where, what="step")
        if step <= 0 or not math.isclose((high - low) / step, round((high - low) / step), abs_tol=1e-9):
            raise FSRFError(f"{where}: step {step} must be > 0 and divide high - low = {high - low}")
    off_value = (0 if scalar is int else 0.0) if off else None
    return Param(name=name, kind=kind, low=low, high=high, log=log, step=step, off_value=off_value, when=when)


def _parse_choices(values: Any, scalar: type, nullable: bool, where: str) -> tuple[Any, ...]:
    if not isinstance(values, list) or not values:
        raise FSRFError(f"{where}: choice: expected a non-empty list of values, got {values!r}")
    out: list[Any] = []
    for value in values:
        if value is None and nullable:
            out.append(None)
        elif scalar is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            out.append(float(value))
        elif isinstance(value, scalar) and not (scalar is int and isinstance(value, bool)):
            out.append(value)
        else:
            raise FSRFError(f"{where}: choice {value!r} has type {type(value).__name__}, "
                            f"the field expects {scalar.__name__}")
        if any(_same(out[-1], v) for v in out[:-1]):
            raise FSRFError(f"{where}: choice {value!r} is listed twice")
    return tuple(out)


def _parse_when(
    raw: Any, *, earlier: Mapping[str, Param], declared: Sequence[str], name: str, where: str
) -> tuple[Condition, ...]:
    if not isinstance(raw, Mapping):
        raise FSRFError(f"{where}: when: expected a mapping like {{curriculum.kind: [linear, step]}}, "
                        f"got {raw!r}")
    conditions = []
    for target, values in raw.items():
        if target not in earlier:
            why = ("itself" if target == name else "declared below this param" if target in declared
                   else "not a param of this space")
            raise FSRFError(f"{where}: when: {target!r} is {why} (a condition names a param declared above)")
        dep = earlier[target]
        values = values if isinstance(values, list) else [values]
        if not values:
            raise FSRFError(f"{where}: when: {target}: expected at least one value")
        if dep.has_switch:
            # YAML 1.1 reads a bare on/off as true/false
            states = {True: ON, False: OFF_STATE, ON: ON, OFF_STATE: OFF_STATE}
            bad = [v for v in values if not isinstance(v, (bool, str)) or v not in states]
            if bad:
                raise FSRFError(f"{where}: when: {target}: {bad[0]!r} is not on or off")
            conditions.append(Condition(target=target, values=tuple(sorted({states[v] for v in values})),
                                        switch=True))
        elif dep.kind == "choice":
            bad = [v for v in values if not any(_same(v, c) for c in dep.choices)]
            if bad:
                raise FSRFError(f"{where}: when: {target}: {bad[0]!r} is not one of its choices "
                                f"{list(dep.choices)}")
            conditions.append(Condition(target=target, values=tuple(dep.normalize(v, where) for v in values)))
        else:
            raise FSRFError(f"{where}: when: {target!r} is a range; a condition names a choice "
                            f"or an off_switch param")
    return tuple(conditions)

