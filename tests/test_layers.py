"""The floors of the house, enforced: programs import the contracts and the ground below them, never each other.

Read from the source with `ast` (no import runs), every `import` and `from ... import` anywhere in a file,
function bodies included, so a lazy import cannot slip past. See docs/architecture.md, "Floors".
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TOP = {"edgectl"}  # the command line: composes the programs
PROGRAMS = {"toolchain", "mobile_export", "device_agent", "cloud_registry"}
CONTRACTS = {"registry_api", "edgewire", "edgebundle"}
GROUND = {"targets", "edgetrt", "edgebase"}
PACKAGES = TOP | PROGRAMS | CONTRACTS | GROUND

# what each package may import besides itself; anything else of ours is a violation
ALLOWED = {
    "edgectl": PROGRAMS | CONTRACTS | GROUND,
    **{program: CONTRACTS | GROUND for program in PROGRAMS},
    "registry_api": {"edgewire", "edgebundle", "edgebase"},
    "edgewire": {"edgebundle", "edgebase"},
    "edgebundle": {"edgebase"},
    "targets": {"edgebase"},
    "edgetrt": {"edgebundle", "edgebase"},
    "edgebase": set(),
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) for every absolute import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, imported in imports_of(path):
            if imported in PACKAGES and imported != package and imported not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    return bad


def test_every_package_has_a_floor() -> None:
    """A new top-level package must be placed on a floor here, or it escapes the rule."""
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert on_disk <= PACKAGES, f"packages without a floor: {sorted(on_disk - PACKAGES)}"
    assert set(ALLOWED) == PACKAGES


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_point_down(package: str) -> None:
    assert violations(package) == []


def test_the_checker_sees_a_sideways_import(tmp_path: Path) -> None:
    """The rule can fail: a lazy import inside a function is found, with its line."""
    source = tmp_path / "sideways.py"
    source.write_text("import json\n\n\ndef f():\n    from cloud_registry.main import create_app\n")
    assert (5, "cloud_registry") in imports_of(source)
    assert "cloud_registry" not in ALLOWED["toolchain"]
