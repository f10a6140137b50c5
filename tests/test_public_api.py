from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import faber_runlog
from faber_runlog.errors import FaberRunlogError

PKG = Path(faber_runlog.__file__).parent


def test_all_is_sorted_and_every_name_exists() -> None:
    assert sorted(faber_runlog.__all__) == faber_runlog.__all__
    for name in faber_runlog.__all__:
        assert hasattr(faber_runlog, name), name


def test_py_typed_is_shipped() -> None:
    assert (PKG / "py.typed").is_file()


def test_every_public_error_derives_from_the_root_and_a_builtin() -> None:
    errors = [getattr(faber_runlog, n) for n in faber_runlog.__all__ if n[0].isupper()]
    errors = [e for e in errors if isinstance(e, type) and issubclass(e, BaseException)]
    assert errors
    for err in errors:
        if err is FaberRunlogError:
            continue
        assert issubclass(err, FaberRunlogError), err
        builtin_bases = [
            b for b in err.__mro__ if b.__module__ == "builtins" and b not in (object, BaseException, Exception)
        ]
        assert builtin_bases, f"{err.__name__} inherits no builtin error"


def test_importing_does_not_import_optional_extras() -> None:
    import subprocess
    import sys

    code = "import sys, faber_runlog; print(sorted(m for m in ('pandas','pyarrow','mcp','moto') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "[]" == out.stdout.strip()


def test_no_module_uses_the_global_cattrs_converter() -> None:
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cattrs":
                assert node.attr not in ("structure", "unstructure"), f"{path.name} uses cattrs.{node.attr}"


def test_every_module_imports_cleanly() -> None:
    for info in pkgutil.walk_packages([str(PKG)], prefix="faber_runlog."):
        if info.name.endswith(("__main__", "mcp_server")):
            continue
        importlib.import_module(info.name)


def test_there_is_one_public_way_to_append_an_event() -> None:
    from faber_runlog import AsyncEventLog, EventLog

    for cls in (EventLog, AsyncEventLog):
        writers = {name for name in ("emit", "append", "commit") if hasattr(cls, name)}
        assert {"emit"} == writers, cls
    assert "Commit" not in faber_runlog.__all__
