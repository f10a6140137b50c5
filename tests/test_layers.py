"""The layers of the package hold: no upward import, no import cycle, deferred imports included.

The contract is ``[tool.importlinter]`` in pyproject.toml (CONTRIBUTING.md, "Layers"); import-linter
checks it (it reads imports inside functions too). The cycle check below reads the code itself with
``ast``, so an import the linter would miss still fails here. ``lint-imports`` runs the same check
from the command line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import faber_runlog

PKG = Path(faber_runlog.__file__).parent
ROOT = PKG.parent

# The upward imports allowed (none: a lower layer that needs a higher one gets a function passed down).
# Never add one: put the code in the right layer instead.
KNOWN_UPWARD: list[str] = []


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts: list[dict[str, object]] = config["contracts"]
    return contracts


def _module_names() -> set[str]:
    """Every module of the package, dotted from the package (``_log.eventlog``); a folder is its ``__init__``."""
    names = set()
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names - {""}


def test_the_layer_contract_holds_with_deferred_imports() -> None:
    pytest.importorskip("importlinter")
    # In a process of its own: the linter reconfigures logging, which other tests' caplog relies on.
    check = f"from importlinter.cli import lint_imports; raise SystemExit(lint_imports({str(ROOT / 'pyproject.toml')!r}, no_cache=True))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, check=False)
    assert (0, "") == (done.returncode, done.stderr), done.stdout


def test_the_contracts_ignore_only_the_known_upward_imports() -> None:
    ignored = {edge for contract in _contracts() for edge in contract.get("ignore_imports", [])}  # type: ignore[attr-defined]
    assert set(KNOWN_UPWARD) == ignored


def test_every_module_of_the_package_has_a_layer_in_its_folder() -> None:
    placed = set()
    for contract in _contracts():
        if contract.get("type") != "layers":
            continue
        for container in contract["containers"]:  # type: ignore[attr-defined]
            prefix = container.removeprefix("faber_runlog").removeprefix(".")
            for row in contract["layers"]:  # type: ignore[attr-defined]
                placed |= {f"{prefix}.{n.strip()}" if prefix else n.strip() for n in row.split("|")}
            placed |= {f"{prefix}.{n}" if prefix else n for n in contract.get("exhaustive_ignores", [])}  # type: ignore[attr-defined]
    unplaced = {m for m in _module_names() if m not in placed and m.rpartition(".")[0] not in {"schemas"}}
    assert set() == unplaced


def test_the_folders_are_the_layers() -> None:
    top = next(c for c in _contracts() if c.get("containers") == ["faber_runlog"])
    folders = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()} - {"schemas"}
    layered = {n.strip() for row in top["layers"] for n in row.split("|")}  # type: ignore[attr-defined]
    assert folders <= layered
    assert {"_base", "_storage", "_format", "_domain", "_log", "_services", "_frontends"} <= folders


def _runtime_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports when it runs (module level and inside functions; not typing-only)."""
    modules = _module_names()
    graph: dict[str, set[str]] = {}
    for name in modules:
        path = PKG / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = PKG / name.replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text())
        typing_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for stmt in block.body
            for node in ast.walk(stmt)
        }
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "faber_runlog":
                base = node.module.removeprefix("faber_runlog").removeprefix(".")
                found |= {base} if base else set()
                found |= {f"{base}.{a.name}" if base else a.name for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {
                    a.name.removeprefix("faber_runlog.") for a in node.names if a.name.startswith("faber_runlog.")
                }
        graph[name] = (found & modules) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def test_the_only_import_cycles_are_the_ones_the_known_upward_imports_make() -> None:
    graph = _runtime_imports()
    for edge in KNOWN_UPWARD:
        source, target = (side.strip().removeprefix("faber_runlog.") for side in edge.split("->"))
        graph[source].discard(target)
    assert [] == _cycles(graph)


def test_the_cycle_check_sees_a_cycle_made_by_a_deferred_import() -> None:
    assert [["a", "b"]] == _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})


# One owner per fact: a storage key or a shared constant is spelled in one module and imported elsewhere.
OWNED_STRINGS = {
    "lease.json": "_format.layout",
    "report.json": "_format.layout",
    "report.md": "_format.layout",
    "archived.json": "_format.layout",
    "gateway.json": "_format.layout",
}
OWNED_TUPLES: dict[tuple[object, ...], str] = {
    ("approve", "reject", "request_changes", "abort"): "_domain.transitions",
    ("reject", "abort"): "_domain.transitions",
    ("local_files", "s3_archive"): "_domain.registry",
}
INTERNAL_DIR_OWNER = (
    "_storage.backends"  # ".faber_runlog" as a key or a folder of the project: _storage and _format only
)


def _code_constants(tree: ast.Module) -> tuple[list[str], list[tuple[object, ...]]]:
    """The string constants and the constant tuples of a module's code (docstrings left out)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    strings = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]
    tuples: list[tuple[object, ...]] = [
        tuple(e.value for e in node.elts if isinstance(e, ast.Constant))
        for node in ast.walk(tree)
        if isinstance(node, ast.Tuple) and node.elts and all(isinstance(e, ast.Constant) for e in node.elts)
    ]
    return strings, tuples


def test_shared_keys_and_constants_are_spelled_only_by_their_owner() -> None:
    strays = []
    for path in sorted(PKG.rglob("*.py")):
        strings, tuples = _code_constants(ast.parse(path.read_text()))
        name = ".".join(path.relative_to(PKG).with_suffix("").parts)
        strays += [(name, s) for s in strings if OWNED_STRINGS.get(s, name) != name]
        strays += [
            (name, s)
            for s in strings
            if s.startswith(".faber_runlog") and name not in (INTERNAL_DIR_OWNER, "_format.layout")
        ]
        strays += [(name, str(t)) for t in tuples if OWNED_TUPLES.get(t, name) != name]
    assert [] == strays


def test_run_state_renders_html_with_the_view_the_html_layer_hands_down() -> None:
    # In a fresh process: RunState alone (no upward import) has no HTML; loading the views gives it theirs.
    check = (
        "import sys; from faber_runlog._domain.state import RunState; s = RunState(run_id='acme/web/x'); "
        "before = (s._repr_html_(), 'faber_runlog._services.html' in sys.modules); "
        "import faber_runlog._services.html as h; print(before, s._repr_html_() == h.repr_html(s))"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, check=False)
    assert ("(None, False) True", "") == (done.stdout.strip(), done.stderr)
