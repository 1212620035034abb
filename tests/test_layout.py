"""The package's shape, checked so that it cannot drift: every subpackage ships in the wheel, pruning
imports nothing from data/, optional packages fail with a message that names their pip extra, and no
class is longer than a newcomer can read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import setuptools
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "advprune"


def test_every_subpackage_is_in_the_wheel():
    """pyproject.toml listed three packages by hand: advprune/pruning/ was missing from the wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = set(setuptools.find_packages(str(ROOT), **config["tool"]["setuptools"]["packages"]["find"]))
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert on_disk and on_disk <= found
    assert "torchattacks==3.5.1" in config["project"]["optional-dependencies"]["eval"]


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_pruning_imports_nothing_from_data():
    for path in (PACKAGE / "pruning").glob("*.py"):
        bad = sorted(n for n in imports_of(path) if n.startswith("advprune.data"))
        assert not bad, f"{path.name} imports {bad}"


def test_a_missing_optional_package_names_its_extra(monkeypatch):
    import importlib

    from advprune import _deps

    real = importlib.import_module

    def no_torchattacks(name, *args):
        if name.startswith("torchattacks"):
            raise ImportError("No module named 'torchattacks'")
        return real(name, *args)

    monkeypatch.setattr(_deps.importlib, "import_module", no_torchattacks)
    with pytest.raises(_deps.MissingDependency, match=r"AutoAttack needs torchattacks.*pip install 'advprune\[eval\]'"):
        _deps.require("torchattacks", extra="eval", purpose="AutoAttack")


def test_no_class_is_longer_than_150_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 150:
                long.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
