"""What a run was made with: package versions, the git commit of a checkout, the data file's SHA-256.

One writer (:func:`record_provenance`) appends an entry per session (a resumed run adds one) to
``provenance.json`` in a run directory; searches record the same entry in their state file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from fsrf._config import DataConfig
from fsrf._yaml import atomic_write_text

PROVENANCE_FILE = "provenance.json"
PACKAGES = ("fsrf-tune", "torch", "numpy", "transformers", "ray", "optuna", "pyarrow")
"""Distributions whose versions are recorded (those installed)."""

_ROOT = Path(__file__).resolve().parents[1]


def fsrf_version() -> str:
    """The installed fsrf-tune version (``unknown`` when run from a tree that was never installed)."""
    try:
        return metadata.version("fsrf-tune")
    except metadata.PackageNotFoundError:
        return "unknown"


def version_line() -> str:
    """What ``--version`` prints: fsrf-tune's version, the git commit of a checkout, torch's and Python's."""
    git = git_commit()
    where = f" (git {git['commit'][:12]}{', modified' if git['dirty'] else ''})" if git else ""
    torch_version = next((v for k, v in package_versions().items() if k == "torch"), "not installed")
    return f"fsrf-tune {fsrf_version()}{where}, torch {torch_version}, Python {platform.python_version()}"


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    versions = [("python", platform.python_version())]
    for name in PACKAGES:
        try:
            versions.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return tuple(versions)


def package_versions() -> dict[str, str]:
    """Python's and each installed distribution of :data:`PACKAGES`'s version (looked up once per process)."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def git_commit() -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` when fsrf runs from a git checkout, else None."""
    if not (_ROOT / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(status.strip())}


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The file's SHA-256 (computed once per process for an unchanged file)."""
    stat = os.stat(path)
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def data_identity(data: DataConfig) -> dict[str, Any]:
    """The data file's path, size and SHA-256; for the generated dataset, what generates it."""
    if data.path is None:
        return {"dataset": data.dataset, "generated": data.synthetic_kind, "seed": data.synthetic_seed}
    path = Path(data.path)
    if not path.is_file():
        return {"dataset": data.dataset, "path": str(path), "sha256": None}
    return {"dataset": data.dataset, "path": str(path.resolve()), "bytes": path.stat().st_size,
            "sha256": file_sha256(path)}


def provenance(data: DataConfig) -> dict[str, Any]:
    """One session's record: time, host platform, versions, git commit, data identity."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": f"{platform.system()} {platform.machine()}",
        "argv": list(sys.argv),
        "versions": package_versions(),
        "git": git_commit(),
        "data": data_identity(data),
    }


def record_provenance(run_dir: str | os.PathLike[str], data: DataConfig) -> dict[str, Any]:
    """Append this session's :func:`provenance` to ``run_dir/provenance.json`` (atomically); return it."""
    path = Path(run_dir) / PROVENANCE_FILE
    sessions: list[Any] = []
    if path.is_file():
        try:
            sessions = list(json.loads(path.read_text()).get("sessions", []))
        except (ValueError, AttributeError):  # a damaged file: start afresh rather than fail the run
            sessions = []
    entry = provenance(data)
    atomic_write_text(path, json.dumps({"sessions": [*sessions, entry]}, indent=2))
    return entry


__all__ = ["PROVENANCE_FILE", "data_identity", "provenance", "record_provenance"]
