"""Registries: the event types, upcasters, fold handlers and gateway backends a store uses.

The module-level ``register_*`` functions fill the process-wide default registry, which every
store uses unless given another. ``Registry.isolated()`` copies the default into a registry of
its own, so two stores in one process (or two tests) can differ without touching each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from faber_runlog import _events, _state
from faber_runlog.errors import InvalidArgument

if TYPE_CHECKING:
    from faber_runlog._gateway import Backend, Gateway

__all__ = ["BUILTIN_BACKENDS", "DEFAULT_BACKENDS", "Registry", "event_types_table"]

BUILTIN_BACKENDS: Final = ("local_files", "s3_archive")
"""The gateway's own backends (classes in ``_gateway``): never registered here, never replaced."""

DEFAULT_BACKENDS: dict[str, Callable[[dict[str, Any], Gateway], Backend]] = {}
"""The default registry's gateway backend factories (filled by ``register_backend``)."""


class Registry:
    """Event types, upcasters, fold handlers and gateway backends, for the stores that share it.

    ``Registry.default()`` is the process-wide one the module-level ``register_*`` functions fill;
    ``Registry()`` (or ``Registry.isolated()``) starts from a copy of it and changes only itself.
    Pass it as ``RunStore(..., registry=...)``.
    """

    __slots__ = ("_backends", "_folds", "_types")

    def __init__(self) -> None:
        self._types = _events.EventTypes(_events.DEFAULT_TYPES)
        self._folds: dict[str, _state.RawHandler] = dict(_state.default_folds())
        self._backends: dict[str, Callable[[dict[str, Any], Gateway], Backend]] = dict(DEFAULT_BACKENDS)

    @classmethod
    def default(cls) -> Registry:
        """The process-wide registry (what ``register_event_type`` and friends change)."""
        return _DEFAULT

    @classmethod
    def isolated(cls) -> Registry:
        """A new registry holding a copy of the default one now; registering in it changes nothing else."""
        return cls()

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
