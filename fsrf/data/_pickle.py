"""A restricted unpickler for MMSA feature files.

MMSA ships its datasets as pickles, and a plain unpickler runs whatever callable
a file names. :func:`load_pickle_restricted` resolves only the handful of globals
that numpy arrays, numpy scalars and ordered dicts need; dicts, lists, tuples,
strings and numbers are pickle opcodes and need none. Any other global is refused
before anything is called, so a hostile file cannot run code.

Nothing in :mod:`fsrf` uses the unrestricted module-level loader; every read goes
through :class:`_RestrictedUnpickler` (``Unpickler(...).load()``).
"""

from __future__ import annotations

import importlib
import os
import pickle
import struct
from pathlib import Path
from typing import IO, Any

from fsrf._errors import FSRFError

_REFUSAL = "MMSA files hold only dicts, lists, strings and numpy arrays"

# (module, name) as written in a pickle -> (module, name) to import. The legacy
# ``numpy.core`` paths (numpy < 2 writers) resolve to ``numpy._core`` where it
# exists, so loading old files does not touch numpy's deprecated shim.
_ALLOWED: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"): ("_codecs", "encode"),
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
}

# What a truncated or corrupt stream raises from inside the C unpickler.
_CORRUPT = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    struct.error,
)


def _import_global(module: str, name: str) -> Any:
    """Import ``module.name``, falling back from ``numpy._core`` to ``numpy.core``."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:  # numpy < 2 has no numpy._core
        legacy = module.replace("numpy._core", "numpy.core", 1)
        return getattr(importlib.import_module(legacy), name)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are the numpy/collections ones in ``_ALLOWED``."""

    def __init__(self, file: IO[bytes], *, source: str) -> None:
        # latin1 lets numpy arrays written by Python 2 decode; Python 3 files are unaffected.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global, or refuse (nothing has been called yet)."""
        target = _ALLOWED.get((module, name))
        if target is None:
            raise FSRFError(f"{self._source}: refusing to unpickle '{module}.{name}': {_REFUSAL}")
        return _import_global(*target)


def load_pickle_restricted(path: str | os.PathLike[str]) -> object:
    """Read a pickle that may hold only dicts, lists, strings, numbers and numpy arrays.

    Args:
        path: the pickle file.

    Returns:
        The unpickled object.

    Raises:
        FSRFError: the file is missing or unreadable, is truncated or corrupt, or
            names a global other than numpy array reconstruction, numpy dtypes and
            scalars, ``_codecs.encode`` and ``collections.OrderedDict``.
    """
    source = str(path)
    file_path = Path(path)
    if not file_path.is_file():
        raise FSRFError(f"{source}: no such file, expected an MMSA pickle")
    try:
        with file_path.open("rb") as handle:
            return _RestrictedUnpickler(handle, source=source).load()
    except FSRFError:
        raise
    except OSError as err:
        raise FSRFError(f"{source}: cannot read the file ({err.strerror or err})") from err
    except MemoryError as err:
        raise FSRFError(f"{source}: ran out of memory while unpickling") from err
    except _CORRUPT as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise FSRFError(
            f"{source}: truncated or corrupt pickle ({type(err).__name__}: {reason})"
        ) from err
