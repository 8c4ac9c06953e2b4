"""Packages use each other's public names only (Optuna's cut): a private module stays private."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fsrf", "tuning", "analysis")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_another_packages_private_modules(package: str) -> None:
    offences = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] in PACKAGES and parts[0] != package and any(p.startswith("_") for p in parts[1:]):
                offences.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert not offences, "\n".join(offences)


def test_the_public_surfaces_resolve() -> None:
    import fsrf
    import fsrf.constants
    import tuning

    for module in (fsrf, fsrf.constants, tuning):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
    assert not any(n.startswith("_") for n in fsrf.constants.__all__)
