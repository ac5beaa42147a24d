"""The folders are layers: a module imports only from its own layer or the ones below it.

    core < formats < adapters < config < state < routing < observe < http < the daemon's root

Every import counts, those inside functions and under TYPE_CHECKING too: a type-only
import of an upper layer is still a dependency a reader has to follow upwards.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "formats", "adapters", "config", "state", "routing", "observe", "http", "process")
FOLDERS = {"daemon/core": "core", "daemon/formats": "formats", "adapters": "adapters", "daemon/config": "config",
           "daemon/state": "state",
           "daemon/routing": "routing", "daemon/observe": "observe", "daemon/http": "http", "daemon": "process"}


def layer_of_file(path: Path) -> str:
    folder = path.parent.relative_to(ROOT).as_posix()
    return FOLDERS[folder]


def layer_of_module(module: str) -> str | None:
    """The layer of a gatewayd module name; None for anything outside gatewayd."""
    parts = module.split(".")
    if parts[0] != "gatewayd" or len(parts) < 2:
        return None
    if parts[1] == "adapters":
        return "adapters"
    if parts[1] == "schema":
        return "core"  # the schema file's package: data only
    if parts[1] == "daemon":
        return parts[2] if len(parts) > 2 and parts[2] in LAYERS else "process"
    return None


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
            # `from gatewayd.daemon.http import catalog` names a module of that package
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


SOURCES = sorted(p for folder in FOLDERS for p in (ROOT / folder).glob("*.py"))


def test_every_source_folder_is_a_known_layer():
    on_disk = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "daemon").rglob("*.py")}
    assert on_disk <= set(FOLDERS), "a new folder under daemon/ needs its place in LAYERS"
    assert len(SOURCES) > 40


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_imports_from_a_layer_above_its_own(path):
    own = LAYERS.index(layer_of_file(path))
    upward = []
    for line, module in imports_of(path):
        layer = layer_of_module(module)
        if layer is not None and LAYERS.index(layer) > own:
            upward.append(f"line {line}: {module} ({layer})")
    assert not upward, f"{path.relative_to(ROOT)} ({LAYERS[own]}) imports upward: {upward}"


def test_the_check_sees_an_upward_import(tmp_path):
    """The walk above is not vacuous: a core module importing the router is caught."""
    sample = tmp_path / "sample.py"
    sample.write_text("from gatewayd.daemon.routing.router import Router\n"
                      "def f():\n    from gatewayd.daemon.http import guard\n")
    layers = {layer_of_module(module) for _line, module in imports_of(sample)}
    assert {"routing", "http"} <= layers
