"""The error tree keeps its promise: one root, six categories, builtins chosen once, every error pickles."""

from __future__ import annotations

import ast
import inspect
import pickle
from pathlib import Path

import pytest

import faber_runlog
from faber_runlog import errors
from faber_runlog.errors import (
    ConfigurationError,
    CorruptData,
    FaberRunlogError,
    InvalidArgument,
    NotFound,
    Refused,
    StorageError,
)

PKG = Path(faber_runlog.__file__).parent

CATEGORIES: dict[type[FaberRunlogError], type[Exception]] = {
    InvalidArgument: ValueError,
    Refused: RuntimeError,
    NotFound: LookupError,
    CorruptData: ValueError,
    StorageError: OSError,
    ConfigurationError: RuntimeError,
}

# A leaf may add a builtin that says more than its category's (a narrower OSError, TypeError for a
# value of the wrong kind).
EXTRA_BUILTINS: dict[str, set[type[BaseException]]] = {
    "InvalidStoreUrl": {TypeError},
    "ReadOnlyValue": {TypeError},
    "SequenceConflict": {FileExistsError},
    "BucketNotFound": {LookupError},
    "StoreAccessDenied": {PermissionError},
    "MissingExtra": {ImportError},
}

ERROR_CLASSES = [
    getattr(errors, n)
    for n in errors.__all__
    if isinstance(getattr(errors, n), type) and issubclass(getattr(errors, n), BaseException)
]


def _builtins_of(cls: type[BaseException]) -> set[type[BaseException]]:
    """The most derived builtin exception classes among ``cls``'s bases (transitively)."""
    found = {b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (object, BaseException, Exception)}
    return {b for b in found if not any(o is not b and issubclass(o, b) for o in found)}


def test_every_error_the_package_exports_is_in_the_facade() -> None:
    assert set(errors.__all__) <= set(faber_runlog.__all__)


def test_every_category_has_exactly_its_chosen_builtin_base() -> None:
    for category, builtin in CATEGORIES.items():
        assert {builtin} == _builtins_of(category), category.__name__
        assert (FaberRunlogError, builtin) == category.__bases__


def test_every_leaf_sits_under_exactly_one_category_and_adds_only_listed_builtins() -> None:
    leaves = [c for c in ERROR_CLASSES if c is not FaberRunlogError and c not in CATEGORIES]
    assert len(leaves) >= 30
    for leaf in leaves:
        under = [c for c in CATEGORIES if issubclass(leaf, c)]
        assert 1 == len(under), f"{leaf.__name__} is under {under}"
        expected = {CATEGORIES[under[0]]} | EXTRA_BUILTINS.get(leaf.__name__, set())
        # A narrower builtin (FileExistsError under OSError) replaces the category's in the most-derived set.
        expected = {b for b in expected if not any(o is not b and issubclass(o, b) for o in expected)}
        assert expected == _builtins_of(leaf), leaf.__name__


def test_the_drawn_tree_names_every_error() -> None:
    doc = errors.__doc__ or ""
    page = (PKG.parent / "docs" / "errors.md").read_text()
    for cls in ERROR_CLASSES:
        assert cls.__name__ in doc, cls.__name__
        assert cls.__name__ in page, cls.__name__


def _example(cls: type[BaseException]) -> BaseException:
    """An instance of ``cls`` with every keyword-only field set to a value of its annotated type."""
    values = {"int": 7, "int | None": 7, "str": "x", "str | None": "x", "tuple[str, ...]": ("a/b/c",)}
    kwargs = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if param.kind is inspect.Parameter.KEYWORD_ONLY:
            kwargs[name] = values[str(param.annotation)]
    return cls(f"{cls.__name__} happened", **kwargs)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_pickles_and_unpickles_with_its_attributes(cls: type[BaseException]) -> None:
    err = _example(cls)
    back = pickle.loads(pickle.dumps(err))
    assert type(err) is type(back)
    assert str(err) == str(back)
    assert err.args == back.args
    assert vars(err) == vars(back)


def test_a_store_error_with_an_errno_keeps_it_through_pickling() -> None:
    err = StorageError(5, "input/output error")
    back = pickle.loads(pickle.dumps(err))
    assert (5, "input/output error") == (back.errno, back.strerror)


def _bare_builtin_raises(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in ("ValueError", "RuntimeError", "TypeError"):
                found.append(f"{path.name}:{node.lineno} raise {exc.id}")
    return found


def test_no_module_raises_a_bare_value_runtime_or_type_error() -> None:
    found = [hit for path in sorted(PKG.rglob("*.py")) for hit in _bare_builtin_raises(path)]
    assert [] == found
