"""Package hygiene: the public surface is explicit, and the pure layers stay pure."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import replidb

SRC = Path(replidb.__file__).parent
FORBIDDEN = {
    "asyncio",
    "socket",
    "apsw",
    "sqlite3",
    "time",
    "random",
    "threading",
    "os",
    "selectors",
    "subprocess",
    "datetime",
}


def _modules() -> list[str]:
    names = (m.name for m in pkgutil.walk_packages([str(SRC)], "replidb."))
    return sorted(n for n in names if not n.endswith("__main__"))  # importing it runs the CLI


@pytest.mark.parametrize("layer", ["core", "stream"])
def test_pure_layers_import_no_io_clock_or_global_random(layer: str) -> None:
    offenders = []
    for path in sorted((SRC / layer).rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.relative_to(SRC)}: import {name}")
    # random is allowed only as the *type* of an injected generator: core/replica.py takes
    # a random.Random instance and never calls the module-level functions.
    allowed = {"core/replica.py: import random"}
    assert [o for o in offenders if o not in allowed] == []


def test_core_never_calls_module_level_random() -> None:
    tree = ast.parse((SRC / "core" / "replica.py").read_text())
    calls = [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "random"
    ]
    assert calls == []


def test_the_purity_check_can_fail(tmp_path: Path) -> None:
    """Guard the guard: the same scan flags a module that imports time."""
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom asyncio import sleep\n")
    tree = ast.parse(bad.read_text())
    found = {
        (n.names[0].name if isinstance(n, ast.Import) else n.module)
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
    }
    assert found & FORBIDDEN == {"time", "asyncio"}


@pytest.mark.parametrize("name", _modules())
def test_every_module_declares_all_and_it_is_accurate(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert sorted(exported) == sorted(set(exported)), f"{name}.__all__ has duplicates"
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.__all__ names missing {symbol}"


def test_top_level_api() -> None:
    assert replidb.apilevel == "2.0"
    assert replidb.paramstyle == "qmark"
    assert issubclass(replidb.OutcomeUnknown, replidb.Error)
    assert issubclass(replidb.IntegrityError, replidb.DatabaseError)
    public = {n for n in dir(replidb) if not n.startswith("_")}
    assert set(replidb.__all__) <= public
    for module_name in (
        "client",
        "sqla",
        "loadgen",
        "multileader",
        "kv_coordinator",
        "errors",
        "cli",
        "core",
        "node",
        "storage",
        "stream",
        "testing",
        "transport",
    ):
        public.discard(module_name)
    assert public == set(replidb.__all__), "top-level names must all be listed in __all__"


def test_error_tree_is_drawn_in_the_docstring() -> None:
    from replidb import errors

    doc = errors.__doc__ or ""
    for cls in errors.__all__:
        obj = getattr(errors, cls)
        if obj.__name__ == cls:  # aliases (DB-API names) are not drawn
            assert cls in doc or cls == "Warning", f"{cls} missing from the error tree"
