"""Every third-party module the code imports is declared in pyproject.toml.

A fresh ``pip install -e ".[dev]"`` must be enough to import every module and run every test:
a package that happens to be installed by hand on one machine must not hide a missing
declaration. The check walks the source with :mod:`ast` (imports inside functions included),
maps each top-level module to the distribution that provides it with
:func:`importlib.metadata.packages_distributions`, and compares with the declared requirements.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
# The project's packages, plus the helper modules that tests/ and bench/ import from beside them.
FIRST_PARTY = {"fsrf", "tuning", "analysis", "tune", *(p.stem for d in ("tests", "bench")
                                                      for p in (ROOT / d).glob("*.py"))}
# Packages that a third-party package needs at run time only when the code uses it, with the
# distribution that must be declared for it (optuna's fANOVA importance fits scikit-learn forests).
INDIRECT = {"analysis": {"scikit-learn"}}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {_normalise(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules(paths: list[Path], root: Path = ROOT) -> dict[str, set[str]]:
    """Top-level module name -> files importing it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(root)))
    return found


def _undeclared(paths: list[Path], declared: set[str], root: Path = ROOT) -> list[str]:
    providers = packages_distributions()
    problems = []
    for module, files in sorted(_imported_modules(paths, root).items()):
        if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
            continue
        dists = {_normalise(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) is installed by no distribution")
        elif not dists & declared:
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) comes from "
                            f"{', '.join(sorted(dists))}, which pyproject.toml does not declare")
    return problems


def _package_sources() -> list[Path]:
    paths = [ROOT / "tune.py"]
    for package in ("fsrf", "tuning", "analysis"):
        paths += sorted((ROOT / package).rglob("*.py"))
    return paths


def _declared(*extras: str) -> set[str]:
    project = _pyproject()["project"]
    names = _names(project["dependencies"])
    for extra in extras:
        names |= _names(project["optional-dependencies"][extra])
    return names


def test_the_packages_import_only_declared_distributions() -> None:
    optional = _pyproject()["project"].get("optional-dependencies", {})
    runtime_extras = [e for e in optional if e != "dev"]
    assert _undeclared(_package_sources(), _declared(*runtime_extras)) == []


def test_the_tests_and_benches_import_only_declared_distributions() -> None:
    paths = sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    assert _undeclared(paths, _declared("dev")) == []


def test_dev_includes_every_runtime_extra() -> None:
    optional = _pyproject()["project"].get("optional-dependencies", {})
    dev = _names(optional["dev"])
    for extra, requirements in optional.items():
        if extra != "dev":
            assert _names(requirements) <= dev, f"extra {extra!r} is not all in dev"


def test_indirect_runtime_needs_are_declared() -> None:
    declared = _declared()
    for package, needs in INDIRECT.items():
        assert needs <= declared, f"{package}/ needs {sorted(needs - declared)} at run time"


def test_the_walk_finds_an_undeclared_import(tmp_path: Path) -> None:
    module = tmp_path / "tests" / "_undeclared_probe.py"  # outside the checkout, same relative name
    module.parent.mkdir()
    module.write_text("def f():\n    import pytest\n    from yaml import safe_load\n")
    problems = _undeclared([module], _names(["pyyaml"]), root=tmp_path)
    assert len(problems) == 1 and problems[0].startswith("pytest (imported by tests/_undeclared_probe.py)")
