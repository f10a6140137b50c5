"""Registries: the event types, upcasters, fold handlers and gateway backends a store uses.

The module-level ``register_*`` functions fill the process-wide default registry, which every
store uses unless given another. ``Registry.isolated()`` copies the default into a registry of
its own, so two stores in one process (or two tests) can differ without touching each other.
"""

from __future__ import annotations

import importlib.metadata
import logging
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from faber_runlog import _events, _state
from faber_runlog.errors import InvalidArgument, InvalidEvent

if TYPE_CHECKING:
    from faber_runlog._gateway import Backend, Gateway

__all__ = [
    "BACKENDS_GROUP",
    "BUILTIN_BACKENDS",
    "DEFAULT_BACKENDS",
    "EVENT_TYPES_GROUP",
    "Registry",
    "declaration",
    "event_types_table",
    "load_entry_points",
]

log = logging.getLogger("faber_runlog._registry")

BUILTIN_BACKENDS: Final = ("local_files", "s3_archive")
"""The gateway's own backends (classes in ``_gateway``): never registered here, never replaced."""

EVENT_TYPES_GROUP: Final = "faber_runlog.event_types"
"""Entry point group of custom event types: ``name = "module:OBJECT"`` (a schema, ``{"schema", "version"}``,
or a callable returning one)."""
BACKENDS_GROUP: Final = "faber_runlog.backends"
"""Entry point group of gateway backends: ``name = "module:Class"`` (called as ``factory(settings, gateway)``)."""

DEFAULT_BACKENDS: dict[str, Callable[[dict[str, Any], Gateway], Backend]] = {}
"""The default registry's gateway backend factories (filled by ``register_backend``)."""


class Registry:
    """Event types, upcasters, fold handlers and gateway backends, for the stores that share it.

    ``Registry.default()`` is the process-wide one the module-level ``register_*`` functions fill;
    ``Registry.isolated()`` starts from a copy of it and changes only itself.
    Pass it as ``RunStore(..., registry=...)``. There is one way to get each of the two kinds:
    ``Registry()`` itself is refused (``InvalidArgument``) and names them.
    """

    __slots__ = ("_backends", "_folds", "_types")

    def __init__(self) -> None:
        raise InvalidArgument(
            "Registry() is not how a registry is made: call Registry.isolated() for one of your own (a copy of "
            "the default), or Registry.default() for the process-wide one"
        )

    def _copy_default(self) -> None:
        self._types = _events.EventTypes(_events.DEFAULT_TYPES)
        self._folds: dict[str, _state.RawHandler] = dict(_state.default_folds())
        self._backends: dict[str, Callable[[dict[str, Any], Gateway], Backend]] = dict(DEFAULT_BACKENDS)

    @classmethod
    def default(cls) -> Registry:
        """The process-wide registry (what ``register_event_type`` and friends change, plus the entry points)."""
        load_entry_points()
        return _DEFAULT

    @classmethod
    def isolated(cls) -> Registry:
        """A new registry holding a copy of the default one now; registering in it changes nothing else."""
        load_entry_points()
        reg = cls.__new__(cls)
        reg._copy_default()  # noqa: SLF001  (same class)
        return reg

    @property
    def folds(self) -> Mapping[str, _state.RawHandler]:
        """The fold handlers by event type."""
        return self._folds

    @property
    def backends(self) -> Mapping[str, Callable[[dict[str, Any], Gateway], Backend]]:
        """The gateway backend factories by name."""
        return self._backends

    def event_types(self) -> list[str]:
        """Every registered event type, sorted."""
        return sorted(self._types.types)

    def event_schema(self, event_type: str | None = None) -> dict[str, Any]:
        """The JSON Schema of the base event, or of one type registered here (see :func:`faber_runlog.event_schema`)."""
        return _events.schema_in(self._types, event_type)

    def register_event_type(
        self, name: str, schema: Mapping[str, Any] | None = None, *, version: int = 1, replace: bool = False
    ) -> None:
        """Register a custom event type here (see :func:`faber_runlog.register_event_type`)."""
        _events.add_event_type(self._types, name, schema, version=version, replace=replace)

    def register_upcaster(
        self, event_type: str, from_version: int, upcast: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """Register an upcaster here (see :func:`faber_runlog.register_upcaster`)."""
        _events.add_upcaster(self._types, event_type, from_version, upcast)

    def register_fold(self, event_type: str, handler: _state.Handler, *, replace: bool = False) -> None:
        """Register a fold handler here (see :func:`faber_runlog.register_fold`)."""
        _state.add_fold(self._folds, event_type, handler, replace=replace)

    def register_backend(
        self, name: str, factory: Callable[[dict[str, Any], Gateway], Backend], *, replace: bool = False
    ) -> None:
        """Register a gateway backend here (see :func:`faber_runlog.register_backend`)."""
        if name in BUILTIN_BACKENDS or (name in self._backends and not replace):
            raise InvalidArgument(f"backend {name!r} is already registered; pass replace=True to replace a custom one")
        self._backends[name] = factory

    def __repr__(self) -> str:
        kind = "default" if self is _DEFAULT else "isolated"
        return f"<Registry {kind}: {len(self._types.types)} event types, {len(self._folds)} folds>"


def _default() -> Registry:
    """The process-wide registry: it holds the module-level tables themselves, not copies."""
    reg = Registry.__new__(Registry)
    reg._types = _events.DEFAULT_TYPES  # noqa: SLF001  (same module, before any other exists)
    reg._folds = _state.default_folds()  # noqa: SLF001
    reg._backends = DEFAULT_BACKENDS  # noqa: SLF001
    return reg


_DEFAULT: Final = _default()


def event_types_table(registry: Registry) -> _events.EventTypes:
    """The event types and upcasters of ``registry`` (what a log validates, versions and upcasts with)."""
    return registry._types  # noqa: SLF001  (same module)


def declaration(value: Any, where: str) -> tuple[dict[str, Any], int]:
    """``(schema, version)`` of a declared event type: a schema, or ``{"schema": ..., "version": N}``."""
    if callable(value):
        value = value()
    if isinstance(value, Mapping) and "schema" in value and set(value) <= {"schema", "version"}:
        schema, version = value["schema"], value.get("version", 1)
    else:
        schema, version = value, 1
    if not isinstance(schema, Mapping) or isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidEvent(
            f"{where}: an event type is declared by a JSON Schema object, or {{'schema': ..., 'version': N}} "
            f"with N >= 1; got {value!r}"
        )
    return dict(schema), version


_loaded_for: tuple[str, ...] | None = None  # the sys.path the entry points were last read for


def load_entry_points() -> None:
    """Register the installed entry points' event types and backends in the default registry (once per sys.path).

    A distribution declares them in its ``entry_points``: ``[faber_runlog.event_types]`` and
    ``[faber_runlog.backends]``. A name already registered keeps its first registration; an entry point
    that fails to load is logged (logger ``faber_runlog._registry``) and skipped, so one broken
    plugin never stops a store from opening.
    """
    global _loaded_for
    path = tuple(sys.path)
    if path == _loaded_for:
        return
    _loaded_for = path
    found = importlib.metadata.entry_points()  # one scan of the installed distributions for both groups
    for ep in found.select(group=EVENT_TYPES_GROUP):
        if ep.name in _events.DEFAULT_TYPES.types:
            continue
        try:
            schema, version = declaration(ep.load(), f"entry point {ep.name} = {ep.value}")
            _events.add_event_type(_events.DEFAULT_TYPES, ep.name, schema, version=version)
        except Exception as e:  # noqa: BLE001  (an entry point is anyone's code: a broken plugin is named and skipped)
            log.warning("event type entry point %s = %s not registered: %s", ep.name, ep.value, e)
    for ep in found.select(group=BACKENDS_GROUP):
        if ep.name in DEFAULT_BACKENDS or ep.name in BUILTIN_BACKENDS:
            continue
        try:
            DEFAULT_BACKENDS[ep.name] = ep.load()
        except Exception as e:  # noqa: BLE001  (an entry point is anyone's code: a broken plugin is named and skipped)
            log.warning("backend entry point %s = %s not registered: %s", ep.name, ep.value, e)
