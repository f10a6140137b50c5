"""Registries: the event types, upcasters, fold handlers and gateway backends a store uses.

The module-level ``register_*`` functions fill the process-wide default registry, which every
store uses unless given another. ``Registry.isolated()`` copies the default into a registry of
its own, so two stores in one process (or two tests) can differ without touching each other.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from faber_runlog._base import codec as _codec
from faber_runlog._domain import events as _events
from faber_runlog._domain import state as _state
from faber_runlog._format.layout import CONFIG_ENV, CONFIG_NAME, CONFIG_PATH, LEGACY_CONFIG_PATH
from faber_runlog.errors import InvalidArgument, InvalidEvent, InvalidGatewayConfig

__all__ = [
    "BACKENDS_GROUP",
    "BUILTIN_BACKENDS",
    "DEFAULT_BACKENDS",
    "EVENT_TYPES_GROUP",
    "Registry",
    "configured_registry",
    "declaration",
    "declared_registry",
    "event_types_table",
    "find_config",
    "load_entry_points",
]

log = logging.getLogger("faber_runlog._domain.registry")

BUILTIN_BACKENDS: Final = ("local_files", "s3_archive")
"""The gateway's own backends (classes in ``_gateway``): never registered here, never replaced."""

EVENT_TYPES_GROUP: Final = "faber_runlog.event_types"
"""Entry point group of custom event types: ``name = "module:OBJECT"`` (a schema, ``{"schema", "version"}``,
or a callable returning one)."""
BACKENDS_GROUP: Final = "faber_runlog.backends"
"""Entry point group of gateway backends: ``name = "module:Class"`` (called as ``factory(settings, gateway)``)."""

BackendFactory = Callable[[dict[str, Any], Any], Any]
"""Builds a gateway backend: ``factory(entry, gateway) -> Backend``, from its gateway.json entry and the gateway.

Typed loosely here on purpose: the registry sits in the domain layer, below the gateway that defines
``Backend`` and ``Gateway``; ``Gateway.register_backend`` and the backends themselves are typed exactly."""
DEFAULT_BACKENDS: dict[str, BackendFactory] = {}
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
        self._backends: dict[str, BackendFactory] = dict(DEFAULT_BACKENDS)

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
    def backends(self) -> Mapping[str, BackendFactory]:
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

    def register_backend(self, name: str, factory: BackendFactory, *, replace: bool = False) -> None:
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
    that fails to load is logged (logger ``faber_runlog._domain.registry``) and skipped, so one broken
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


# -- gateway.json's declarations: one loader for the gateway (CLI, MCP) and the plain RunStore ----------------


def find_config(start: str | os.PathLike[str] | None = None) -> Path | None:
    """``$FABER_RUNLOG_CONFIG``, else the nearest ``.faber_runlog/gateway.json`` at or above ``start``.

    A ``gateway.json`` at the old place (``.fractary/plugins/faber/gateway.json``)
    is still found, after the new one in the same folder, and named once in a notice.
    """
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_PATH
        if candidate.is_file():
            return candidate
        legacy = folder / LEGACY_CONFIG_PATH
        if legacy.is_file():
            _name_legacy_config(legacy)
            return legacy
    return None


_legacy_config_named: set[str] = set()


def _name_legacy_config(path: Path) -> None:
    if str(path) not in _legacy_config_named:
        _legacy_config_named.add(str(path))
        log.warning(
            "using %s (the old place, inside FABER's folder); `faber-runlog init` now writes %s", path, CONFIG_PATH
        )


def _schema_file(value: str, name: str, base_dir: str | None, where: str) -> Any:
    path = Path(os.path.expanduser(value))
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    try:
        return _codec.loads(path.read_bytes())
    except OSError as e:
        raise InvalidGatewayConfig(
            f"{where}: the schema of event type {name!r} is {value!r}, but {path} cannot be read ({e}); "
            "give a path relative to gateway.json, or the schema inline",
            path=where,
        ) from e
    except _codec.JSONDecodeError as e:
        raise InvalidGatewayConfig(f"{where}: {path} (event type {name!r}) is not valid JSON ({e})", path=where) from e


def declared_registry(event_types: Mapping[str, Any], *, where: str, base_dir: str | None) -> Registry:
    """The default registry, or a copy of it with the event types gateway.json declares.

    ``event_types`` is gateway.json's ``event_types`` object: by name, a JSON Schema, a path to one
    (relative to ``base_dir``, gateway.json's folder), or ``{"schema": one of those, "version": N}``.
    """
    if not event_types:
        return Registry.default()
    registry = Registry.isolated()
    for name, value in sorted(event_types.items()):
        if isinstance(value, Mapping) and "schema" in value and set(value) <= {"schema", "version"}:
            value = dict(value)
            if isinstance(value["schema"], str):
                value["schema"] = _schema_file(value["schema"], name, base_dir, where)
        elif isinstance(value, str):
            value = _schema_file(value, name, base_dir, where)
        try:
            schema, version = declaration(value, f"{where}: event_types.{name}")
            registry.register_event_type(name, schema, version=version)
        except InvalidArgument as e:
            raise InvalidGatewayConfig(f"{where}: event_types.{name}: {e}", path=where) from e
    return registry


def configured_registry(root_folder: str | None = None) -> Registry:
    """The registry of the store's gateway.json (:func:`find_config`), else the default one.

    What a plain ``RunStore(root)`` uses: the event types gateway.json declares are known to Python
    code as they are to ``faber-runlog`` and the MCP server, read by the same :func:`declared_registry`.
    The file is ``$FABER_RUNLOG_CONFIG``, else the nearest ``.faber_runlog/gateway.json`` at or above
    ``root_folder`` (a local store's folder: the project it belongs to), else at or above the current
    folder, as the CLI looks for it. A gateway.json that cannot be read raises
    :class:`InvalidGatewayConfig` naming it, as the CLI does.
    """
    path = find_config(root_folder) if root_folder is not None else None
    path = path if path is not None else find_config()
    if path is None:
        return Registry.default()
    try:
        data = _codec.loads(path.read_bytes())
    except FileNotFoundError as e:
        raise InvalidGatewayConfig(f"{path} ({CONFIG_ENV}) not found; run `faber-runlog init` to write one") from e
    except OSError as e:
        raise InvalidGatewayConfig(f"{path} cannot be read ({e})", path=str(path)) from e
    except _codec.JSONDecodeError as e:
        raise InvalidGatewayConfig(
            f"{path} is not valid JSON ({e}); fix it or run `faber-runlog init`", path=str(path)
        ) from e
    declared = data.get("event_types") if isinstance(data, Mapping) else None
    if not isinstance(declared, Mapping):
        return Registry.default()
    return declared_registry(declared, where=str(path) or CONFIG_NAME, base_dir=str(path.resolve().parent))
