"""Load-time checks of a parsed space against its base config, before any Ray work.

Two families:

* reader rules: a field that only some curriculum kinds (or some missingness
  simulators) read must be conditioned on those kinds with ``when`` (unless every
  kind the space can pick reads it), so a trial never samples a parameter its
  configuration ignores;
* feasibility: every bound, choice and off value of every param, alone and
  paired with each other param of the same config section, builds a valid
  config in a trial the space can actually draw (its ``when`` conditions met,
  every other active param at its first value). This catches what one field's
  check cannot, e.g. ``curriculum.start`` ranging above ``curriculum.end``.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fsrf import Config, FSRFError, with_overrides
from fsrf.curriculum import CURRICULA
from fsrf.missing import SIMULATORS
from tuning._space_params import OFF, OFF_STATE, Param


def selector_readers(base: Config) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{field: (selector, the selector values that read field)}`` for fields read only by some values.

    Derived from :data:`fsrf.curriculum.CURRICULA` (each kind's ``params``) and from the
    keyword arguments of the simulators in :data:`fsrf.missing.SIMULATORS`.
    """
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for field in dataclasses.asdict(base.curriculum):
        kinds = tuple(kind for kind, cls in CURRICULA.items() if field in cls.params)
        if field != "kind" and len(kinds) < len(CURRICULA):
            out[f"curriculum.{field}"] = ("curriculum.kind", kinds)
    for field in dataclasses.asdict(base.missing):
        names = tuple(n for n, cls in SIMULATORS.items() if field in inspect.signature(cls).parameters)
        if names and len(names) < len(SIMULATORS):
            out[f"missing.{field}"] = ("missing.simulator", names)
    return out


def check_readers(params: Sequence[Param], base: Config, source: str) -> None:
    """A selector-specific field is searched only under selector values that read it.

    Raises:
        FSRFError: a param lacks the ``when`` its selector needs, names a selector value that
            ignores it, or the selector is fixed to such a value.
    """
    names = {p.name for p in params}
    rules = selector_readers(base)
    for param in params:
        if param.name not in rules:
            continue
        selector, readers = rules[param.name]
        where = f"{source}: params: {param.name}"
        if selector not in names:
            section, key = selector.split(".")
            value = getattr(getattr(base, section), key)
            if value not in readers:
                raise FSRFError(f"{where}: {selector} is fixed to {value!r}, which does not read it "
                                f"(read by {', '.join(readers)})")
            continue
        condition = next((c for c in param.when if c.target == selector), None)
        chooser = next(p for p in params if p.name == selector)
        if condition is None and chooser.kind == "choice" and all(v in readers for v in chooser.choices):
            continue  # every value the space can pick reads it (e.g. `end` without `replay` among the kinds)
        if condition is None:
            raise FSRFError(f"{where}: read only under {selector} {', '.join(readers)}; add "
                            f"`when: {{{selector}: [{', '.join(readers)}]}}`")
        ignoring = [v for v in condition.values if v not in readers]
        if ignoring:
            raise FSRFError(f"{where}: when: {selector} {ignoring[0]!r} does not read it "
                            f"(read by {', '.join(readers)})")


def check_feasible(params: Sequence[Param], base: Config, source: str) -> None:
    """Every probe value, alone and in same-section pairs, builds a valid config.

    Single values go through :func:`fsrf.with_overrides` (the config's own type and
    range checks); pairs rebuild only their section, which is where cross-field rules live.

    Raises:
        FSRFError: one line naming the param(s), the value(s) and the config's complaint.
    """
    by_name = {p.name: p for p in params}
    # Last param first: conditional params come after the choices that switch them on, so a bad
    # bound of theirs fails their own check, not that of a choice drawing them at their low bound.
    for param in reversed(params):
        for value in param.probe_values():
            for assignment, context in _assignments(params, by_name, {param.name: value}):
                try:
                    with_overrides(base, _overrides(by_name, assignment), source="value")
                except FSRFError as err:
                    raise FSRFError(f"{source}: params: {param.name}: {_describe(param, value)}{context} "
                                    f"is invalid: {str(err).removeprefix('value: ')}") from None
    seen: set[tuple[str, frozenset[tuple[str, Any]]]] = set()
    for a, b in itertools.combinations(params, 2):
        section = a.name.split(".")[0]
        if b.name.split(".")[0] != section:
            continue
        for va, vb in itertools.product(a.probe_values(), b.probe_values()):
            for assignment, context in _assignments(params, by_name, {a.name: va, b.name: vb}):
                values = {k.split(".", 1)[1]: v for k, v in _overrides(by_name, assignment).items()
                          if k.split(".")[0] == section}
                key = (section, frozenset(values.items()))
                if key in seen:
                    continue
                seen.add(key)
                try:
                    _rebuild(getattr(base, section), values)
                except FSRFError as err:
                    raise FSRFError(f"{source}: params: {a.name}={_show(va)} with {b.name}={_show(vb)}"
                                    f"{context} is invalid: {section}.{err}") from None


def _rebuild(section: Any, values: Mapping[str, Any]) -> Any:
    current = dataclasses.asdict(section)
    floats = {k for k, v in current.items() if isinstance(v, float)}
    return dataclasses.replace(section, **{k: float(v) if k in floats else v for k, v in values.items()})


def _assignments(
    params: Sequence[Param], by_name: Mapping[str, Param], forced: Mapping[str, Any]
) -> Iterator[tuple[dict[str, Any], str]]:
    """Drawable trials holding ``forced``: each with its ``when`` targets set every allowed way.

    Yields ``(name -> value or OFF for every active param, " (with target=value, ...)")``.
    """
    allowed: dict[str, list[Any]] = {}
    for name in forced:
        for condition in by_name[name].when:
            target = by_name[condition.target]
            values = list(condition.values)
            if condition.switch:  # "off" draws the switch off, "on" the range's low bound
                values = [OFF if v == OFF_STATE else target.low for v in values]
            previous = allowed.get(condition.target)
            allowed[condition.target] = values if previous is None else [v for v in previous if v in values]
    targets = [t for t in allowed if t not in forced]
    for combo in itertools.product(*(allowed[t] for t in targets)):
        context = dict(zip(targets, combo))
        decided: dict[str, Any] = {}
        pinned = {**context, **forced}
        for param in params:
            if param.name in pinned:
                decided[param.name] = pinned[param.name]
            elif param.active(decided):
                decided[param.name] = param.probe_values()[0]
        if all(by_name[n].active(decided) for n in forced):
            shown = ", ".join(f"{t}={_show(v)}" for t, v in context.items())
            yield decided, f" (with {shown})" if shown else ""


def _overrides(by_name: Mapping[str, Param], decided: Mapping[str, Any]) -> dict[str, Any]:
    return {n: by_name[n].off_value if v is OFF else v for n, v in decided.items()}


def _show(value: Any) -> str:
    return repr(value)  # OFF's repr is "off"


def _describe(param: Param, value: Any) -> str:
    if value is OFF:
        return f"off ({param.off_value!r})"
    if param.kind == "choice":
        return f"choice {value!r}"
    return f"{'low' if value == param.low else 'high'} bound {value!r}"
