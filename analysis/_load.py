"""Loading experiments: a search's trial store (through :mod:`tuning.store`'s readers) and its state.

An experiment is ``<storage>/<name>/`` as ``fsrf tune`` leaves it: ``store/`` (the trial
store), ``fsrf_search.json`` (the search's options; ``options.space`` is the space YAML)
and ``best.yaml``. A path may also name the store itself, or an object-store URI
(``s3://bucket/fsrf/<name>``) that the readers understand. Nothing here writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fsrf import FSRFError
from tuning import BASE_COLUMNS, is_uri, resolve_uri
from tuning.store import CONFIG_PREFIX, read_results, read_trials, store_root

STATE_FILE = "fsrf_search.json"
"""The search's state file in the experiment directory (see ``tuning/_run.py``)."""


@dataclass(frozen=True)
class Experiment:
    """One search as stored: its de-duplicated results and one row per trial.

    Attributes:
        name: the experiment name (from the store's rows; else the directory name).
        path: the path or URI given to :func:`load_experiment` (the experiment or its store).
        results: :func:`tuning.store.read_results`: one row per (trial, iteration).
        trials: :func:`tuning.store.read_trials`: one row per trial (status, error, config.*).
        space: the search space YAML the search ran over, or None when unknown or missing.
        options: the search's options from ``fsrf_search.json`` (empty when absent).
    """

    name: str
    path: str
    results: pa.Table = field(repr=False)
    trials: pa.Table = field(repr=False)
    space: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_pandas(self, which: str = "results") -> Any:
        """``results`` or ``trials`` as a pandas DataFrame."""
        if which not in ("results", "trials"):
            raise FSRFError(f"Experiment.to_pandas: {which!r} is not results or trials")
        return getattr(self, which).to_pandas()

    def results_pandas(self) -> Any:
        """The result rows as a pandas DataFrame."""
        return self.results.to_pandas()

    def trials_pandas(self) -> Any:
        """One row per trial as a pandas DataFrame."""
        return self.trials.to_pandas()

    @property
    def metrics(self) -> list[str]:
        """The numeric reported keys the store holds (``objective``, ``valid/robust/MAE``, ...)."""
        return [f.name for f in self.results.schema
                if f.name not in BASE_COLUMNS and not f.name.startswith(CONFIG_PREFIX)
                and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]

    @property
    def config_columns(self) -> list[str]:
        """The trials' ``config.*`` columns."""
        return [c for c in self.trials.column_names if c.startswith(CONFIG_PREFIX)]


def _read_state(path: str) -> tuple[dict[str, Any], str | None]:
    """The state file's content and the directory (or URI) of the experiment; ``{}`` if none."""
    if is_uri(path):
        fs, base = resolve_uri(path)
        import pyarrow.fs as pafs

        uri = path.rstrip("/")
        for exp_base, exp_uri in ((base, uri), (base.rsplit("/", 1)[0], uri.rsplit("/", 1)[0])):
            if fs.get_file_info(f"{exp_base}/{STATE_FILE}").type == pafs.FileType.File:
                with fs.open_input_stream(f"{exp_base}/{STATE_FILE}") as src:
                    return _parse_state(src.read().decode(), f"{exp_uri}/{STATE_FILE}"), exp_uri
        return {}, None
    root = store_root(path)  # raises a one-line FSRFError for a missing path or no store
    exp = root.parent  # the store is <experiment>/store/ (or given directly)
    state_file = exp / STATE_FILE
    if not state_file.is_file():
        return {}, str(exp)
    try:
        text = state_file.read_text(encoding="utf-8")
    except OSError as err:
        raise FSRFError(f"{state_file}: cannot read ({err.strerror})") from None
    return _parse_state(text, str(state_file)), str(exp)


def _parse_state(text: str, where: str) -> dict[str, Any]:
    try:
        state = json.loads(text)
    except json.JSONDecodeError as err:
        raise FSRFError(f"{where}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(state, dict) or not isinstance(state.get("options", {}), dict):
        raise FSRFError(f"{where}: expected an object with `options`, as fsrf tune writes it")
    return state


def _space_path(options: Mapping[str, Any], exp_dir: str | None) -> str | None:
    """The space YAML of the search, if it can be found: as stored, or relative to the experiment."""
    space = options.get("space")
    if not space:
        return None
    candidates = [Path(space).expanduser()]
    if exp_dir is not None and not is_uri(exp_dir) and not Path(space).is_absolute():
        candidates.append(Path(exp_dir) / space)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.resolve())
    return None


def load_experiment(path: str | os.PathLike[str]) -> Experiment:
    """Load one experiment (a finished or running search) from its directory, its store, or a URI.

    Raises:
        FSRFError: one line: a missing path, no store there, an empty store, an unreadable state file.
    """
    where = str(path)
    if not is_uri(where):
        where = str(Path(where).expanduser())
    state, exp_dir = _read_state(where)
    try:
        results = read_results(where)
        trials = read_trials(where)
    except (pa.ArrowException, OSError) as err:  # a damaged Parquet part (a torn WAL tail only warns)
        detail = " ".join(str(err).split())[:200]
        raise FSRFError(f"trial store {where}: unreadable, a part is damaged "
                        f"({type(err).__name__}: {detail})") from None
    if trials.num_rows == 0:
        raise FSRFError(f"trial store {where}: holds no trials (every trial was discarded)")
    options = state.get("options", {}) if state else {}
    names = pc.unique(results["experiment"]).drop_null().to_pylist() if results.num_rows else []
    name = names[-1] if names else (options.get("name") or Path(str(exp_dir or where).rstrip("/")).name)
    return Experiment(name=str(name), path=where, results=results, trials=trials,
                      space=_space_path(options, exp_dir), options=dict(options))


def load_experiments(paths: Iterable[str | os.PathLike[str]]) -> list[Experiment]:
    """Load several experiments (for comparison), in the order given.

    Raises:
        FSRFError: no path, or the first experiment that cannot be loaded (its one-line message).
    """
    experiments = [load_experiment(p) for p in paths]
    if not experiments:
        raise FSRFError("no experiment given; expected one or more experiment directories or URIs")
    return experiments
