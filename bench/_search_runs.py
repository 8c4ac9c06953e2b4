"""Helpers shared by the search benchmarks: run a search in-process and read its store back."""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import replace
from pathlib import Path

from tuning import SearchOptions, run_search
from tuning.store import read_events, read_results

ROOT = Path(__file__).resolve().parents[1]
SPACE = str(ROOT / "tuning" / "spaces" / "default.yaml")


def run_quietly(options: SearchOptions) -> tuple[Path, float]:
    """Run a search with its terminal output captured; return (experiment dir, wall seconds)."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        exp = run_search(options)
    return exp, time.perf_counter() - start


def base_options(storage: Path, name: str, **changes: object) -> SearchOptions:
    return replace(SearchOptions(space=SPACE, name=name, storage=str(storage), num_cpus=2), **changes)


def results_in_time_order(exp: Path) -> list[dict]:
    """Every stored result row (de-duplicated), ordered by when it was written."""
    rows = read_results(exp).to_pylist()
    return sorted(rows, key=lambda r: r["ts"])


def events(exp: Path) -> list[dict]:
    return read_events(exp).to_pylist()
