"""YAML files of configs: reading with ``--set`` overrides, atomic writing."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from fsrf._config import Config, config_from_dict, config_to_dict, with_overrides
from fsrf._errors import FSRFError


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file, with one-line errors for a missing or malformed file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FSRFError(f"{path}: no such file") from None
    except OSError as err:
        raise FSRFError(f"{path}: cannot read ({err.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise FSRFError(f"{path}: invalid YAML{where}: {getattr(err, 'problem', err)}") from None


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["model.homo=0.5", "train.epochs=3"]`` -> ``{"model.homo": 0.5, "train.epochs": 3}``.

    Values are parsed as YAML scalars or lists (``missing.valid_rates=[0.0,0.5]``).
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FSRFError(f"--set {pair!r}: expected KEY=VALUE, e.g. model.homo=0.5")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise FSRFError(f"--set {pair!r}: value {value!r} is not valid YAML") from None
    return out


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> Config:
    """Load a config YAML (or the defaults when ``path`` is None) and apply ``--set`` pairs.

    A YAML written by :func:`save_config` may carry a top-level ``provenance``
    mapping (where an exported config came from); it is ignored here.
    """
    if path is None:
        config = Config()
    else:
        raw = read_yaml(path) or {}
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k != "provenance"}
        config = config_from_dict(raw, source=str(path))
    if overrides:
        config = with_overrides(config, parse_overrides(overrides), source="--set")
    return config


def dump_config(config: Config, *, provenance: dict[str, Any] | None = None) -> str:
    """The YAML text of a config (sections in their fixed order)."""
    data: dict[str, Any] = config_to_dict(config)
    if provenance:
        data = {"provenance": provenance, **data}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], *, fsync: bool = True,
                 sync_dir: bool = False) -> Path:
    """Call ``write`` on a temporary file beside ``path``, fsync it, and rename it into place.

    Readers see the old file or the complete new one, never a torn one; a failed write
    leaves no temporary file behind (the temporary's name starts with a dot and ends in
    ``.tmp``, so directory readers that skip dot-files never see it). The project's one
    atomic write: configs, results, figures, datasets and the trial store's Parquet parts.

    Args:
        path: the destination.
        write: writes the content to the binary handle it is given.
        fsync: fsync the file before the rename (off only where speed matters more, in tests).
        sync_dir: also fsync the directory after the rename, so the rename itself survives a
            power loss (the trial store's parts).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0o600; results and configs are for every reader
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir and fsync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) atomically, see :func:`atomic_write`."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def save_config(config: Config, path: str | os.PathLike[str], *, provenance: dict[str, Any] | None = None) -> None:
    """Write a config YAML atomically (``fsrf train --config`` reads it back as is)."""
    atomic_write_text(path, dump_config(config, provenance=provenance))
