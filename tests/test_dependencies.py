"""Every third-party module that the packages import at run time is declared.

The test environment has many packages installed (trio pulls in sniffio, for
example), so a missing dependency would pass every other test and still break a
plain ``pip install``.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
OWN = {"smtpproto", "smtpproto_anyio"}
# Modules that only the pytest plugin imports: pytest loads the plugin, so pytest
# is there, and the plugin imports trustme only when a test asks for TLS.
PLUGIN_ONLY = {"pytest", "trustme"}


def runtime_imports(path: Path) -> set[str]:
    """Return top-level modules imported outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement)
        assert name is not None, requirement
        names.add(name.group(0).lower().replace("-", "_"))
    return names


def test_runtime_imports_declared() -> None:
    imported: set[str] = set()
    for path in sorted((ROOT / "src").rglob("*.py")):
        modules = runtime_imports(path)
        if path.name == "pytest_plugin.py":
            modules -= PLUGIN_ONLY
        imported |= modules
    third_party = imported - set(sys.stdlib_module_names) - OWN - {"__future__"}
    assert third_party <= declared_dependencies()


def test_engine_has_no_dependencies() -> None:
    imported: set[str] = set()
    for path in sorted((ROOT / "src" / "smtpproto").rglob("*.py")):
        imported |= runtime_imports(path)
    assert imported - set(sys.stdlib_module_names) - OWN - {"__future__"} == set()
