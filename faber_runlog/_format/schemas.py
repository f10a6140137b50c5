"""The shipped JSON Schemas: one loader and one lazily compiled validator for all of them.

Compiling a schema costs milliseconds, so validators are compiled on first use (never at
import time: ``faber-runlog --help`` should not pay for schemas it does not check).
"""

from __future__ import annotations

import importlib.resources
import threading
from collections.abc import Callable, Mapping
from typing import Any

from faber_runlog._base import codec as _codec

__all__ = ["LazyValidator", "compile_schema", "load_schema"]


def load_schema(*parts: str) -> dict[str, Any]:
    """The shipped schema at ``faber_runlog/schemas/<parts>`` as a dict."""
    res = importlib.resources.files("faber_runlog.schemas").joinpath(*parts)
    schema: dict[str, Any] = _codec.loads(res.read_bytes())
    return schema


def compile_schema(schema: Mapping[str, Any]) -> Callable[[Any], Any]:
    """A fastjsonschema validator for ``schema`` (formats are not checked: the schemas use none we rely on)."""
    import fastjsonschema

    validator: Callable[[Any], Any] = fastjsonschema.compile(dict(schema), use_formats=False)
    return validator


class LazyValidator:
    """A validator for one shipped schema, compiled on its first call (once, across threads)."""

    __slots__ = ("_lock", "_parts", "_validator")

    def __init__(self, *parts: str) -> None:
        self._parts = parts
        self._validator: Callable[[Any], Any] | None = None
        self._lock = threading.Lock()

    def __call__(self, data: Any) -> Any:
        """Validate ``data``; raises ``fastjsonschema.JsonSchemaValueException`` naming the field."""
        validator = self._validator
        if validator is None:
            with self._lock:
                if self._validator is None:
                    self._validator = compile_schema(load_schema(*self._parts))
                validator = self._validator
        return validator(data)
