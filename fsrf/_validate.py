"""One-line checks of config values, shared by the run config and every model's section."""

from __future__ import annotations

from collections.abc import Sequence

from fsrf._errors import FSRFError


def check(ok: bool, key: str, message: str) -> None:
    """Raise ``FSRFError("<key>: <message>")`` unless ``ok``."""
    if not ok:
        raise FSRFError(f"{key}: {message}")


def check_unit(value: float, key: str) -> None:
    """``value`` must lie in [0, 1]."""
    check(0.0 <= value <= 1.0, key, f"{value!r} is out of range, expected a value in [0, 1]")


def check_one_of(value: str, key: str, allowed: Sequence[str]) -> None:
    """``value`` must be one of ``allowed``."""
    check(value in allowed, key, f"{value!r} is not one of {', '.join(allowed)}")


def check_weights(section: object, names: Sequence[str]) -> None:
    """Every field of ``section`` named in ``names`` is a weight >= 0."""
    for key in names:
        value = getattr(section, key)
        check(value >= 0.0, key, f"{value} is negative, expected a weight >= 0")
