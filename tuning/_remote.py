"""Experiments whose ``--storage`` is an object-store URI (``s3://bucket/prefix``, ``gs://...``).

Ray Tune writes its own files there directly. Our files (the search state, the
best config and the Arrow trial store) need appends and renames, which object
stores lack, so the driver keeps them in a local staging directory and mirrors
it to ``<uri>/<name>/``: new and changed files are uploaded whole (each PUT is
atomic), files gone locally (compacted WAL segments) are deleted remotely. The
store callback mirrors every ``MIRROR_PERIOD_S`` seconds and when the search
ends; a head lost in between loses at most that window of store rows (Tune's
own checkpoints and experiment state are on the URI already).

Readers of a URI download the store first. Credentials and endpoints come from
the environment as pyarrow reads them (``AWS_*``, ``AWS_ENDPOINT_URL``, ...).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from fsrf import FSRFError
from tuning._store_write import STORE_DIR

MIRROR_PERIOD_S = 30.0
STAGING_ROOT = Path("~/.cache/fsrf-tune/staging")


def is_uri(path: str | os.PathLike[str]) -> bool:
    """``s3://...``, ``gs://...``: an object-store location rather than a local path."""
    return "://" in str(path) and not str(path).startswith("file://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for ``uri`` and the path inside it, with a one-line error."""
    try:
        return pafs.FileSystem.from_uri(uri.rstrip("/"))
    except Exception as err:  # noqa: BLE001 (pyarrow raises ArrowInvalid/OSError with long messages)
        raise FSRFError(f"{uri}: cannot open ({str(err).splitlines()[0][:200]})") from None


def staging_dir(uri: str) -> Path:
    """The local mirror of ``uri`` on this machine."""
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return STAGING_ROOT.expanduser() / digest


def _local_files(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def _remote_files(fs: pafs.FileSystem, base: str) -> dict[str, int]:
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return {i.path[len(base) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}


def download(uri: str, local: Path) -> Path:
    """Copy every file under ``uri`` into ``local`` (created); returns ``local``."""
    fs, base = resolve(uri)
    local.mkdir(parents=True, exist_ok=True)
    for rel in _remote_files(fs, base):
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(f"{base}/{rel}") as src, open(target, "wb") as dst:
            dst.write(src.read())
    return local


def mirror(local: Path, uri: str, *, delete: bool = False) -> None:
    """Upload the new or changed files of ``local`` to ``uri``; with ``delete``, also delete the
    files under ``uri`` that ``local`` lacks (only for a location that holds our files alone,
    never for an experiment directory, where Tune keeps its own)."""
    fs, base = resolve(uri)
    here, there = _local_files(local), _remote_files(fs, base)
    for rel, size in here.items():
        if there.get(rel) != size or rel.endswith((".json", ".yaml")):
            with open(local / rel, "rb") as src, fs.open_output_stream(f"{base}/{rel}") as dst:
                dst.write(src.read())
    for rel in (there.keys() - here.keys()) if delete else ():
        fs.delete_file(f"{base}/{rel}")


def store_copy(uri: str, store_dir: str = STORE_DIR) -> tempfile.TemporaryDirectory:
    """A temporary local copy of the trial store at ``uri`` (a store, or an experiment holding
    ``store/``; Tune's own files are not fetched). Use as a context manager."""
    fs, base = resolve(uri)
    nested = fs.get_file_info(f"{base}/{store_dir}").type == pafs.FileType.Directory
    if not nested and fs.get_file_info(base).type != pafs.FileType.Directory:
        raise FSRFError(f"trial store {uri}: no such location")
    tmp = tempfile.TemporaryDirectory(prefix="fsrf-remote-")
    download(f"{uri.rstrip('/')}/{store_dir}" if nested else uri, Path(tmp.name))
    return tmp
