"""The public surface and the tooling rules: exact exports, reachable types, docstrings, light CLI import."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import faber_runlog

PKG = Path(faber_runlog.__file__).parent
ROOT = PKG.parent


def _exported() -> dict[str, Any]:
    return {name: getattr(faber_runlog, name) for name in faber_runlog.__all__}


def test_the_facade_exports_exactly_the_names_docs_api_lists() -> None:
    documented = set(re.findall(r"^- `(\w+)`", (ROOT / "docs" / "api.md").read_text(), re.M))
    assert set(faber_runlog.__all__) == documented


def _types_in(annotation: object, out: set[type]) -> None:
    if isinstance(annotation, type):
        out.add(annotation)
        return
    origin = typing.get_origin(annotation)
    if isinstance(origin, type):
        out.add(origin)
    for arg in typing.get_args(annotation):
        _types_in(arg, out)


def _public_signatures() -> dict[str, object]:
    """Every exported function, class (its fields), public method and property, by a readable name."""
    found: dict[str, object] = {}
    for name, obj in _exported().items():
        if inspect.isclass(obj):
            if issubclass(obj, BaseException):
                continue
            found[name] = obj
            for member, value in vars(obj).items():
                if member.startswith("_") and member != "__init__":
                    continue
                if isinstance(value, property) and value.fget is not None:
                    found[f"{name}.{member}"] = value.fget
                elif isinstance(value, (classmethod, staticmethod)):
                    found[f"{name}.{member}"] = value.__func__
                elif inspect.isfunction(value):
                    found[f"{name}.{member}"] = value
        elif inspect.isfunction(obj):
            found[name] = obj
    return found


def test_every_type_reachable_from_a_public_signature_is_exported() -> None:
    namespace: dict[str, Any] = {n: getattr(faber_runlog, n) for n in faber_runlog.__all__}
    # Optional extras named in signatures under TYPE_CHECKING (the test extra installs them).
    namespace.update(pandas=importlib.import_module("pandas"), pyarrow=importlib.import_module("pyarrow"))
    unexported: dict[str, list[str]] = {}
    for where, obj in _public_signatures().items():
        hints = typing.get_type_hints(obj, None, namespace)
        reached: set[type] = set()
        for hint in hints.values():
            _types_in(hint, reached)
        for tp in reached:
            if tp.__module__.startswith("faber_runlog") and namespace.get(tp.__name__) is not tp:
                unexported.setdefault(f"{tp.__module__}.{tp.__name__}", []).append(where)
    assert {} == unexported


def test_every_exported_object_and_its_public_methods_have_a_docstring() -> None:
    undocumented = [
        where
        for where, obj in _public_signatures().items()
        if not where.endswith(".__init__") and not (getattr(obj, "__doc__", None) or "").strip()
    ]
    assert [] == undocumented


def test_every_fmt_skip_says_why() -> None:
    marker = re.compile(r"# fmt" + r": skip(.*)$")  # split so this line is no marker itself
    bare = []
    for folder in ("faber_runlog", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                m = marker.search(line)
                if m and not re.match(r"\s+#\s*\S", m.group(1)):
                    bare.append(f"{path.relative_to(ROOT)}:{n}")
    assert [] == bare


def test_the_cli_imports_no_archive_analysis_gateway_or_async_code() -> None:
    code = (
        "import sys, faber_runlog._frontends.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'fsspec', 's3fs', 'aiohttp') "
        "or m in ('faber_runlog._services.archive', 'faber_runlog._services.analysis', 'faber_runlog._services.gateway', 'faber_runlog._services.store')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "[]" == out.stdout.strip()


def test_importing_the_package_loads_only_the_errors_until_a_name_is_used() -> None:
    code = "import sys, faber_runlog; print(sorted(m for m in sys.modules if m.startswith('faber_runlog')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "['faber_runlog', 'faber_runlog._version', 'faber_runlog.errors']" == out.stdout.strip()


def test_every_benchmark_module_runs_standalone_with_its_keyword_only_size() -> None:
    # Each suite's `run(*, quick)` is keyword-only; a standalone `python benchmarks/bench_x.py` that passed the
    # size positionally failed with a TypeError before it measured anything.
    import ast

    for path in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        tree = ast.parse(path.read_text())
        calls = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "run"
        ]
        assert [] == [ast.unparse(c) for c in calls if c.args], path.name
        assert all(["quick"] == [k.arg for k in c.keywords] for c in calls), path.name
