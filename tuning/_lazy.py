"""Tune callbacks built on first access, so that importing their modules does not import Ray."""

from __future__ import annotations

import importlib
import types
from typing import Any


def lazy_class(namespace: dict[str, Any], name: str, *, wanted: str, hooks: type, base: str) -> type:
    """A module ``__getattr__``'s body: ``wanted`` = ``hooks`` mixed into Ray's class ``base``
    (``"ray.tune.Callback"``), built once and kept in the module's ``namespace`` (picklable by name).

    Raises:
        AttributeError: ``name`` is not ``wanted``.
    """
    module = namespace["__name__"]
    if name != wanted:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    where, attr = base.rsplit(".", 1)
    cls = types.new_class(wanted, (hooks, getattr(importlib.import_module(where), attr)))
    cls.__module__ = module
    cls.__qualname__ = wanted
    cls.__doc__ = hooks.__doc__
    namespace[wanted] = cls
    return cls
