"""The one private cattrs converter used for every model (never the global one)."""

from __future__ import annotations

from typing import Any, TypeVar

import cattrs
from cattrs.preconf.orjson import make_converter

__all__ = ["converter", "from_dict", "to_dict"]

converter: cattrs.Converter = make_converter(omit_if_default=True, forbid_extra_keys=False)

T = TypeVar("T")


def to_dict(obj: object) -> dict[str, Any]:
    """``obj`` (an attrs model) as a JSON-ready dict: the one typed way every model's ``to_dict`` goes."""
    out: dict[str, Any] = converter.unstructure(obj)
    return out


def from_dict(data: Any, cls: type[T]) -> T:
    """``data`` structured as ``cls`` (the typed counterpart of :func:`to_dict`)."""
    return converter.structure(data, cls)
