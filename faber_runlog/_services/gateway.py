"""The event gateway: ``gateway.json``, the backends events are routed through, and the logging switch.

Producers (the CLI, the MCP server, a workflow tool) hand events to a
:class:`Gateway`; it records each one in the run store (the ``local_files``
backend, the system of record) and then tells every other enabled backend
(``s3_archive``, or one you register) about it. With ``enabled: false`` in
``gateway.json`` :meth:`Gateway.emit` does nothing and never raises, so a
workflow is never broken by its log. ``gateway.json`` is checked against a
shipped JSON Schema and never holds credentials: fsspec/s3fs read those from
the environment.
"""

from __future__ import annotations

import abc
import importlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

import attrs
import fastjsonschema

from faber_runlog._base import codec as _codec
from faber_runlog._domain.events import Event
from faber_runlog._domain.registry import Registry, declared_registry, find_config
from faber_runlog._domain.transitions import ENDING_EVENT_TYPES
from faber_runlog._format.layout import CONFIG_ENV, CONFIG_NAME, CONFIG_PATH, PROJECT_DIR
from faber_runlog._format.schemas import LazyValidator, load_schema
from faber_runlog._services.resume import diff_params
from faber_runlog._services.store import DEFAULT_ROOT, Run, RunStore, check_store_url
from faber_runlog.errors import FaberRunlogError, InvalidGatewayConfig

if TYPE_CHECKING:  # imported when used: the gateway must not load the archive for every event
    from faber_runlog._services.archive import Archiver

__all__ = [
    "CONFIG_ENV",
    "CONFIG_NAME",
    "CONFIG_PATH",
    "Backend",
    "BackendFailure",
    "Gateway",
    "GatewayConfig",
    "LocalFilesBackend",
    "LocalFilesConfig",
    "S3ArchiveBackend",
    "S3ArchiveConfig",
    "config_changes",
    "emit_reporting",
    "find_config",
    "gateway_schema",
    "load_config",
    "register_backend",
    "route",
    "write_config",
]

log = logging.getLogger("faber_runlog._services.gateway")

CONFIG_VERSION: Final = 1
ARCHIVE_EVENTS: Final = ENDING_EVENT_TYPES
"""Events that may trigger an automatic archive (the run has ended)."""
# Keys that carry secrets in fsspec/s3fs/adlfs/gcsfs options: never written to gateway.json.
SECRET_KEYS: Final = frozenset({
    "key", "secret", "token", "password", "session_token", "access_key", "secret_key", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "account_key", "sas_token", "client_secret",
    "connection_string", "credentials",
})  # fmt: skip  # a table: one row per line
_RUN_CACHE: Final = 256


# -- the config model ------------------------------------------------------------------------


def _plain_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


@attrs.frozen(slots=True)
class LocalFilesConfig:
    """The ``local_files`` backend: events as sequenced files under ``root`` (the system of record)."""

    enabled: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The ``backends.local_files`` object of gateway.json."""
        return {"enabled": self.enabled}


@attrs.frozen(slots=True)
class S3ArchiveConfig:
    """The ``s3_archive`` backend: finished runs copied to ``s3://bucket/prefix``.

    With ``auto_archive`` a run is archived as soon as one of ``archive_on`` is
    recorded. Archiving seals a run's log, so ``workflow_error`` is not in the
    default list: a failed run usually gets resumed.
    """

    enabled: bool = False
    bucket: str | None = None
    prefix: str = "faber/runs"
    storage_options: dict[str, Any] = attrs.field(factory=dict, converter=_plain_dict)
    auto_archive: bool = True
    archive_on: tuple[str, ...] = attrs.field(default=("workflow_complete", "workflow_cancelled"), converter=_strings)

    @property
    def url(self) -> str | None:
        """``s3://bucket/prefix``, or None without a bucket."""
        if not self.bucket:
            return None
        prefix = self.prefix.strip("/")
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"

    def to_dict(self) -> dict[str, Any]:
        """The ``backends.s3_archive`` object of gateway.json."""
        return {
            "enabled": self.enabled,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "storage_options": dict(self.storage_options),
            "auto_archive": self.auto_archive,
            "archive_on": list(self.archive_on),
        }


@attrs.frozen(slots=True)
class GatewayConfig:
    """What ``gateway.json`` says: the store root, durability, the logging switch and the backends.

    ``root`` may be a folder (relative ones are resolved against the folder
    holding gateway.json) or any fsspec URL. ``other_backends`` holds the
    settings of backends registered with :func:`register_backend`.
    """

    enabled: bool = True
    root: str = "runs"
    storage_options: dict[str, Any] = attrs.field(factory=dict, converter=_plain_dict)
    fsync: bool = True
    snapshot_every: int = 100
    source: str | None = "faber-runlog"
    local_files: LocalFilesConfig = LocalFilesConfig()
    s3_archive: S3ArchiveConfig = S3ArchiveConfig()
    other_backends: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    event_types: dict[str, Any] = attrs.field(factory=dict, converter=_plain_dict)
    """Custom event types by name: a JSON Schema, a path to one (relative to gateway.json), or
    ``{"schema": one of those, "version": N}``."""

    def to_dict(self) -> dict[str, Any]:
        """The whole gateway.json body, every setting spelled out."""
        backends: dict[str, Any] = {"local_files": self.local_files.to_dict(), "s3_archive": self.s3_archive.to_dict()}
        backends.update({k: dict(v) for k, v in sorted(self.other_backends.items())})
        body = {
            "config_version": CONFIG_VERSION,
            "enabled": self.enabled,
            "root": self.root,
            "storage_options": dict(self.storage_options),
            "fsync": self.fsync,
            "snapshot_every": self.snapshot_every,
            "source": self.source,
            "backends": backends,
        }
        if self.event_types:
            body["event_types"] = dict(sorted(self.event_types.items()))
        return body

    @classmethod
    def from_dict(cls, data: Any, *, path: str | None = None) -> GatewayConfig:
        """Validate ``data`` (schema, no credentials, a recording backend) and build the config."""
        validate_config(data, path=path)
        backends = dict(data.get("backends") or {})
        local = backends.pop("local_files", None) or {}
        s3 = dict(backends.pop("s3_archive", None) or {})
        config = cls(
            enabled=data.get("enabled", True),
            root=data.get("root", "runs"),
            storage_options=data.get("storage_options") or {},
            fsync=data.get("fsync", True),
            snapshot_every=data.get("snapshot_every", 100),
            source=data.get("source", "faber-runlog"),
            local_files=LocalFilesConfig(enabled=local.get("enabled", True)),
            s3_archive=S3ArchiveConfig(**s3),
            other_backends={k: dict(v) for k, v in backends.items()},
            event_types=data.get("event_types") or {},
        )
        config.check(path=path)
        return config

    def check(self, *, path: str | None = None) -> None:
        """Refuse settings the schema cannot express; raises :class:`InvalidGatewayConfig`."""
        where = path or CONFIG_NAME
        _refuse_secrets(self.storage_options, self.s3_archive.storage_options, path=path)
        if self.enabled and not self.local_files.enabled:
            raise InvalidGatewayConfig(
                f"{where}: backends.local_files is disabled but logging is enabled; local_files records the "
                'events the other backends receive: enable it, or set "enabled": false to turn logging off',
                path=path,
            )
        if self.s3_archive.enabled and not self.s3_archive.bucket:
            raise InvalidGatewayConfig(
                f'{where}: backends.s3_archive is enabled but has no bucket; set "bucket" or disable it',
                path=path,
            )
        if self.snapshot_every < 1:
            raise InvalidGatewayConfig(f"{where}: snapshot_every must be at least 1, got {self.snapshot_every}")

    def resolve_root(self, base_dir: str | os.PathLike[str] | None) -> str:
        """``root`` as a URL or absolute folder; relative folders are taken from ``base_dir``."""
        check_store_url(self.root)  # "s3:/bucket" is a mistyped URL, not a folder "s3:" beside gateway.json
        if "://" in self.root or os.path.isabs(os.path.expanduser(self.root)):
            return os.path.expanduser(self.root) if "://" not in self.root else self.root
        base = os.path.abspath(os.fspath(base_dir)) if base_dir is not None else os.getcwd()
        # The project is the folder holding .faber_runlog/ or .fractary/ (gateway.json lives below it), else the base.
        parts = base.split(os.sep)
        marker = next((m for m in (PROJECT_DIR, ".fractary") if m in parts), None)
        project = os.sep.join(parts[: parts.index(marker)]) if marker is not None else base
        resolved = os.path.normpath(os.path.join(base, os.path.expanduser(self.root)))
        if os.path.commonpath([resolved, project or os.sep]) != (project or os.sep):
            raise InvalidGatewayConfig(
                f"gateway.json root {self.root!r} leaves the project folder {project} through '..'; give a "
                "folder inside the project, or an absolute path if the runs really live elsewhere"
            )
        return resolved if base_dir is not None else os.path.expanduser(self.root)


def _refuse_secrets(options: Any, archive_options: Any, *, path: str | None) -> None:
    for what, value in (("storage_options", options), ("backends.s3_archive.storage_options", archive_options)):
        found = _find_secret(value, what)
        if found is not None:
            raise InvalidGatewayConfig(
                f"{path or CONFIG_NAME}: {found} looks like a credential; gateway.json never holds secrets: "
                "remove it and set it in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...)",
                path=path,
            )


def _find_secret(value: Any, where: str) -> str | None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if str(k).lower() in SECRET_KEYS:
                return f"{where}.{k}"
            found = _find_secret(v, f"{where}.{k}")
            if found is not None:
                return found
    return None


_validator: Final = LazyValidator("gateway.schema.json")


def gateway_schema() -> dict[str, Any]:
    """The JSON Schema of gateway.json (shipped as ``faber_runlog/schemas/gateway.schema.json``)."""
    return load_schema("gateway.schema.json")


def validate_config(data: Any, *, path: str | None = None) -> None:
    """Raise :class:`InvalidGatewayConfig` naming the file and field when ``data`` fails the schema."""
    if isinstance(data, Mapping):
        backends = data.get("backends")
        archive = backends.get("s3_archive") if isinstance(backends, Mapping) else None
        _refuse_secrets(
            data.get("storage_options"),
            archive.get("storage_options") if isinstance(archive, Mapping) else None,
            path=path,
        )
    try:
        _validator(data)
    except fastjsonschema.JsonSchemaValueException as e:
        what = str(e.message).replace("data.", "", 1).replace("data ", "the top level ", 1)
        raise InvalidGatewayConfig(
            f"{path or CONFIG_NAME} is invalid: {what}; fix it, or run `faber-runlog init` to write a fresh one",
            path=path,
        ) from e


# -- files ---------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a gateway.json; raises :class:`InvalidGatewayConfig` naming the file."""
    p = os.fspath(path)
    try:
        body = Path(p).read_bytes()
    except FileNotFoundError as e:
        raise InvalidGatewayConfig(f"{p} not found; run `faber-runlog init` to write one", path=p) from e
    except OSError as e:
        raise InvalidGatewayConfig(f"{p} cannot be read ({e})", path=p) from e
    try:
        data = _codec.loads(body)
    except _codec.JSONDecodeError as e:
        raise InvalidGatewayConfig(f"{p} is not valid JSON ({e}); fix it or run `faber-runlog init`", path=p) from e
    return GatewayConfig.from_dict(data, path=p)


def config_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What writing ``new`` over ``old`` changes, one ``path: old -> new`` line per setting."""
    if old is None:
        return []
    diff = diff_params(old, new)
    lines = [f"{k}: {_show(v)} (added)" for k, v in diff.added.items()]
    lines += [f"{k}: {_show(v)} (removed)" for k, v in diff.removed.items()]
    lines += [f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in diff.changed.items()]
    return sorted(lines)


def _show(value: Any) -> str:
    return _codec.dumps(value).decode()


def write_config(config: GatewayConfig, path: str | os.PathLike[str]) -> list[str] | None:
    """Write ``config`` to ``path`` (atomically), replacing any old file.

    Returns None when there was no file, else the changes against the old one
    (an unreadable old file counts as every setting changed).
    """
    config.check(path=os.fspath(path))
    p = Path(path)
    old: dict[str, Any] | None = None
    if p.exists():
        try:
            loaded = _codec.loads(p.read_bytes())
            old = loaded if isinstance(loaded, dict) else {}
        except (OSError, _codec.JSONDecodeError):
            old = {}
    new = config.to_dict()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_bytes(_codec.dumps_indented(new))
    os.replace(tmp, p)
    return None if old is None else config_changes(old, new)


# -- declarations: event types and backends named in gateway.json ---------------------------------------


def import_object(path: str, where: str, config_path: str | None = None) -> Any:
    """The object ``module:attr`` names (``attr`` may be dotted); an :class:`InvalidGatewayConfig` naming ``where``."""
    module_name, _, attr = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as e:
        raise InvalidGatewayConfig(
            f"{where} is {path!r}, which cannot be imported ({type(e).__name__}: {e}); install the package that "
            "has it or fix the module:Class path",
            path=config_path,
        ) from e
    return found


# -- backends ---------------------------------------------------------------------------------------


class Backend(abc.ABC):
    """Somewhere the gateway routes events.

    Exactly one enabled backend *records* (``records = True``): it stores the
    event and gives it its ``event_id``. Every other backend is then handed
    the recorded event in :meth:`handle`; its failures are logged, never
    raised to the producer, because the event is already durable.
    """

    name: ClassVar[str] = ""
    records: ClassVar[bool] = False

    def record(self, run: Run, event_type: str, fields: dict[str, Any]) -> Event:
        """Store one event of ``run`` and return it with its id (recording backends only)."""
        raise NotImplementedError(f"backend {self.name!r} does not record events")

    @abc.abstractmethod
    def handle(self, run: Run, event: Event) -> None:
        """React to an event that is already recorded (forward it, archive the run, ...)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what the backend holds (connections, threads); the gateway calls it once."""


BackendFactory = Callable[[dict[str, Any], "Gateway"], Backend]


def register_backend(name: str, factory: BackendFactory, *, replace: bool = False) -> None:
    """Make ``backends.<name>`` in gateway.json build a backend with ``factory(settings, gateway)``.

    It goes into the default registry; ``Registry.register_backend`` registers into one of your own.
    """
    Registry.default().register_backend(name, factory, replace=replace)


class LocalFilesBackend(Backend):
    """Records events in the gateway's run store: one exclusively created file per event."""

    name = "local_files"
    records = True

    def record(self, run: Run, event_type: str, fields: dict[str, Any]) -> Event:
        """Validate and append through the run's :class:`~faber_runlog._log.eventlog.EventLog`."""
        return run.log.emit(event_type, **fields)

    def handle(self, run: Run, event: Event) -> None:
        """Nothing more to do: recording wrote the file (fsynced when configured)."""


class S3ArchiveBackend(Backend):
    """Archives a run to ``s3://bucket/prefix`` when one of ``archive_on`` is recorded."""

    name = "s3_archive"

    def __init__(self, config: S3ArchiveConfig, source: RunStore) -> None:
        self.config = config
        self.source = source
        self._destination: RunStore | None = None

    @property
    def destination(self) -> RunStore:
        """The archive store (opened on first use)."""
        if self._destination is None:
            url = self.config.url
            if url is None:
                raise InvalidGatewayConfig("backends.s3_archive has no bucket; set one in gateway.json")
            self._destination = RunStore(url, storage_options=dict(self.config.storage_options) or None)
        return self._destination

    def archiver(self, *, progress: bool = False) -> Archiver:
        """An :class:`~faber_runlog.Archiver` from the run store to the archive."""
        from faber_runlog._services.archive import Archiver

        return Archiver(self.source, self.destination, progress=progress)

    def handle(self, run: Run, event: Event) -> None:
        """Archive the run when ``event`` ends it and auto-archiving is on."""
        if not self.config.auto_archive or event.type not in self.config.archive_on:
            return
        if not run.state().is_terminal:
            return  # e.g. an approval resolution that did not end the run
        self.archiver().archive(run.id)


@attrs.frozen
class BackendFailure:
    """A backend that failed on an event already recorded: which backend, on which event, why.

    ``sealed`` says whether the run's log was sealed when the failure was seen (an archive that failed
    before its seal leaves the run as it was; one that failed after it leaves a sealed run half copied).
    """

    name: str
    error: BaseException
    run_id: str
    event_type: str
    event_id: int
    sealed: bool = False

    def message(self) -> str:
        """One line: the run, that its event was recorded, what failed, and what to do."""
        why = " ".join(str(self.error).split())
        head = (
            f"run {self.run_id}: {self.event_type} was recorded as event {self.event_id}, but backend "
            f"{self.name} failed ({type(self.error).__name__}: {why})"
        )
        if self.name != S3ArchiveBackend.name:
            return f"{head}; the event itself is recorded"
        command = f"`faber-runlog archive {self.run_id}`"
        if self.sealed:
            return (
                f"{head}; the run is sealed locally (it can no longer be resumed) but its copy in the archive is "
                f"not complete: finish it with {command} once the archive is reachable"
            )
        return (
            f"{head}; the run was not sealed, so nothing is lost and it can still be resumed: archive it with "
            f"{command} once the archive is reachable"
        )


def _sealed(run: Run) -> bool:
    try:
        return run.state().is_sealed
    except Exception:  # noqa: BLE001  (the backend failure is reported either way; say what is safe)
        return False


def route(gateway: Gateway, run: Run, event: Event) -> list[BackendFailure]:
    """Give ``event`` (already recorded) to every backend but the recorder; the failures, each logged.

    A backend that fails never turns the recorded event into an error: the event is durable. Each
    failure is logged as a warning naming the run, the event and what to do, and returned so a
    caller (the CLI, the MCP server) can say so and fail.
    """
    failures: list[BackendFailure] = []
    for backend in gateway.backends[1:]:
        try:
            backend.handle(run, event)
        except Exception as e:  # noqa: BLE001  (a backend is anyone's code; the event is durable and must never break the producer)
            failure = BackendFailure(backend.name, e, run.id, event.type, event.event_id, _sealed(run))
            log.warning("%s", failure.message())
            failures.append(failure)
    return failures


def emit_reporting(
    gateway: Gateway, run_id: str, type: str, **fields: Any
) -> tuple[Event | None, list[BackendFailure]]:
    """:meth:`Gateway.emit`, also returning the backends that failed on the recorded event."""
    return gateway._emit(run_id, type, fields)  # noqa: SLF001  (same module: the gateway's own emit)


# -- the gateway ------------------------------------------------------------------------------------


class Gateway:
    """Routes events to the configured backends; the one door producers use.

    ``Gateway.open()`` finds gateway.json (see :func:`find_config`) or uses the
    defaults; ``root``/``storage_options`` override the config's store.
    """

    def __init__(
        self,
        config: GatewayConfig | None = None,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        config_path: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        store: RunStore | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.config = config if config is not None else GatewayConfig()
        self._registry = registry  # for the store it opens (a given store brings its own)
        self.config_path = None if config_path is None else os.fspath(config_path)
        self.base_dir = os.fspath(base_dir) if base_dir is not None else None
        self._root = os.fspath(root) if root is not None else None
        self._storage_options = storage_options
        self._store = store
        self._backends: list[Backend] | None = None
        self._runs: OrderedDict[str, Run] = OrderedDict()

    @classmethod
    def open(
        cls,
        config_path: str | os.PathLike[str] | None = None,
        *,
        root: str | os.PathLike[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> Gateway:
        """The gateway of gateway.json at ``config_path`` (or found), else the defaults."""
        path = Path(config_path) if config_path is not None else find_config()
        if path is None:
            return cls(
                GatewayConfig(root=os.environ.get("FABER_RUNLOG_ROOT") or DEFAULT_ROOT),
                root=root,
                storage_options=storage_options,
            )
        return cls(
            load_config(path),
            base_dir=path.resolve().parent,
            config_path=path,
            root=root,
            storage_options=storage_options,
        )

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"Gateway({self.root_url!r}, {state})"

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def enabled(self) -> bool:
        """Whether logging is on (``enabled`` in gateway.json)."""
        return self.config.enabled

    @property
    def root_url(self) -> str:
        """Where the run store is: the override, else the config's root."""
        return self._root if self._root is not None else self.config.resolve_root(self.base_dir)

    @property
    def registry(self) -> Registry:
        """The registry the gateway's store uses: the given one, else the default plus gateway.json's ``event_types``.

        With declarations, a copy of the default (:meth:`Registry.isolated`) receives them, so two
        gateways in one process never see each other's types.
        """
        if self._registry is None:
            if self._store is not None:
                self._registry = self._store.registry
            else:  # the one loader the plain RunStore uses too (see _registry.configured_registry)
                where = self.config_path or CONFIG_NAME
                self._registry = declared_registry(self.config.event_types, where=where, base_dir=self.base_dir)
        return self._registry

    @property
    def store(self) -> RunStore:
        """The run store (opened on first use); readable whether or not logging is enabled."""
        if self._store is None:
            # The config's options belong to the config's root, not to an overriding one.
            options = self._storage_options
            if options is None:
                options = self.config.storage_options if self._root is None else {}
            self._store = RunStore(
                self.root_url,
                storage_options=dict(options) or None,
                fsync=self.config.fsync,
                snapshot_every=self.config.snapshot_every,
                source=self.config.source,
                registry=self.registry,
            )
        return self._store

    @property
    def backends(self) -> list[Backend]:
        """The enabled backends, the recording one first."""
        if self._backends is None:
            self._backends = self._build_backends()
        return self._backends

    def backend(self, name: str) -> Backend | None:
        """The enabled backend called ``name``, or None."""
        return next((b for b in self.backends if b.name == name), None)

    def _build_backends(self) -> list[Backend]:
        out: list[Backend] = []
        if self.config.local_files.enabled:
            out.append(LocalFilesBackend())
        if self.config.s3_archive.enabled:
            out.append(S3ArchiveBackend(self.config.s3_archive, self.store))
        for name, settings in sorted(self.config.other_backends.items()):
            if not settings.get("enabled"):
                continue
            factory = self._factory(name, settings)
            try:
                backend = factory(dict(settings), self)
            except FaberRunlogError:
                raise
            except Exception as e:  # the class's own constructor refused its settings
                raise InvalidGatewayConfig(
                    f"{self.config_path or CONFIG_NAME}: backend {name!r} could not be built from its settings "
                    f"({type(e).__name__}: {e}); fix backends.{name} or disable it",
                    path=self.config_path,
                ) from e
            out.append(backend)
        recorders = [b for b in out if b.records]
        if len(recorders) != 1:
            names = ", ".join(b.name for b in recorders) or "none"
            raise InvalidGatewayConfig(
                f"{self.config_path or CONFIG_NAME}: exactly one enabled backend must record events, found {names}",
                path=self.config_path,
            )
        out.sort(key=lambda b: not b.records)
        return out

    def _factory(self, name: str, settings: Mapping[str, Any]) -> BackendFactory:
        """The factory of backend ``name``: its ``class`` import path, else the registered one."""
        where = self.config_path or CONFIG_NAME
        path = settings.get("class")
        if isinstance(path, str):
            found: Any = import_object(path, f"{where}: backends.{name}.class", self.config_path)
            if not callable(found):
                raise InvalidGatewayConfig(f"{where}: backends.{name}.class {path!r} is not callable", path=where)
            return cast(BackendFactory, found)
        factory = self.store.registry.backends.get(name)
        if factory is None:
            raise InvalidGatewayConfig(
                f"{where}: backend {name!r} is enabled but none of that name is known; give its class "
                f'(backends.{name}.class = "module:Class"), install a package that declares it in the '
                "faber_runlog.backends entry point group, or disable it",
                path=self.config_path,
            )
        return factory

    def _run(self, run_id: str) -> Run:
        run = self._runs.get(run_id)
        if run is None:
            run = self.store.get_run(run_id)
            self._runs[run.id] = run
            if len(self._runs) > _RUN_CACHE:
                self._runs.popitem(last=False)
        else:
            self._runs.move_to_end(run_id)
        return run

    def new_run(
        self,
        org: str,
        project: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Run | None:
        """Create a run (see :meth:`RunStore.create_run`); None, and nothing written, when logging is off."""
        if not self.enabled:
            return None
        _ = self.backends  # a misconfigured backend is reported before anything is written
        run = self.store.create_run(org, project, params, tags, **options)
        self._runs[run.id] = run
        return run

    def emit(self, run_id: str, type: str, **fields: Any) -> Event | None:
        """Record one event of ``run_id`` and route it to every backend; returns it.

        ``fields`` are those of :meth:`EventLog.emit` (phase, step, error,
        metadata, idempotency_key, ...). When logging is disabled this returns
        None at once: it writes nothing and never raises, whatever it is given.
        Once recorded the event stands: a backend that fails on it (an auto-archive
        whose bucket cannot be reached) is logged as a warning naming the run, the
        event and what to do (``faber-runlog archive RUN_ID``), and the event is returned.
        """
        return self._emit(run_id, type, fields)[0]

    def _emit(self, run_id: str, type: str, fields: Mapping[str, Any]) -> tuple[Event | None, list[BackendFailure]]:
        """Record and route one event; the event (None when logging is off) and the backends that failed."""
        if not self.enabled:
            return None, []
        backends = self.backends
        run = self._run(run_id)
        event = backends[0].record(run, type, {k: v for k, v in fields.items() if v is not None})
        return event, route(self, run, event)

    def close(self) -> None:
        """Close every backend that was opened."""
        for backend in self._backends or ():
            try:
                backend.close()
            except Exception as e:  # noqa: BLE001  (a backend is anyone's code; closing the others goes on)
                log.warning("closing backend %s failed: %s", backend.name, e)
        self._backends = None
