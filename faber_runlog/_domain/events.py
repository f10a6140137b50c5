"""Typed events, their JSON Schemas, custom types and upcasters.

Events are validated at the edge (``emit``) against the shipped base schema
plus the schema of their type; validators are compiled once, on first use.
Stored events are trusted when read back: they are only lifted through
registered upcasters, never re-validated unless a caller asks (``verify``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NoReturn

import attrs
import fastjsonschema

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.advice import advise
from faber_runlog._base.converter import converter
from faber_runlog._domain.hints import did_you_mean
from faber_runlog._format.schemas import compile_schema, load_schema
from faber_runlog.errors import InvalidEvent, ReadOnlyValue

__all__ = [
    "BUILTIN_EVENT_TYPES",
    "SCHEMA_VERSION",
    "Event",
    "FrozenDict",
    "FrozenList",
    "event_schema",
    "event_types",
    "register_event_type",
    "register_upcaster",
    "validate_event_dict",
]

SCHEMA_VERSION: Final = 1
"""Schema version written into every event emitted by this release."""

BUILTIN_EVENT_TYPES: Final = (
    "workflow_start", "workflow_complete", "workflow_error", "workflow_cancelled",
    "workflow_resumed", "workflow_rerun",
    "phase_start", "phase_skip", "phase_complete", "phase_error",
    "step_start", "step_complete", "step_error", "step_retry",
    "artifact_create", "artifact_modify",
    "commit_create", "branch_create", "pr_create", "pr_merge",
    "spec_generate", "spec_validate", "test_run", "docs_update",
    "checkpoint", "skill_invoke", "agent_invoke", "decision_point",
    "retry_loop_enter", "retry_loop_exit",
    "workflow_paused", "approval_requested", "approval_resolved", "step_skip", "log_sealed",
)  # fmt: skip  # a table: one row per line

_MAX_DEPTH: Final = 32
_MAX_STRING: Final = 1 << 20


def _refuse(self: object, *_args: object, **_kwargs: object) -> NoReturn:
    """Refused: an event's values are read-only (raises :class:`~faber_runlog.errors.ReadOnlyValue`)."""
    raise ReadOnlyValue(
        f"an event's {type(self).__name__.strip('_').lower()} is read-only (events are immutable); "
        "copy it first: dict(event.metadata), list(event.artifacts)"
    )


class FrozenDict(dict[str, Any]):
    """A read-only, hashable ``dict``: what an :class:`Event` holds for ``metadata`` (and a dict ``error``).

    A ``dict`` subclass so that reading code, ``==`` and JSON encoding treat it as the dict it was;
    every mutating method raises :class:`~faber_runlog.errors.ReadOnlyValue` (a ``TypeError``).
    """

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __hash__(self) -> int:  # type: ignore[override]  # dict sets __hash__ = None; read-only, so hashable
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[object, ...]:
        # The default protocol rebuilds a dict subclass through __setitem__, which refuses.
        return type(self), (dict(self),)


class FrozenList(list[Any]):
    """A read-only, hashable ``list``: what an :class:`Event` holds for ``artifacts`` and lists in metadata."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __hash__(self) -> int:  # type: ignore[override]  # list sets __hash__ = None; read-only, so hashable
        return hash(tuple(self))

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (list(self),)


def freeze(value: Any) -> Any:
    """``value`` with every dict and list in it (at any depth) made read-only; other values as they are."""
    cls = value.__class__
    if cls in _SCALARS:
        return value
    if cls is dict or cls is FrozenDict:
        if not value:
            return _EMPTY
        # This runs for every event read; most metadata is flat, so copy it in C unless a value needs freezing.
        for v in value.values():
            if v.__class__ not in _SCALARS:
                return FrozenDict({k: freeze(v) for k, v in value.items()})
        return FrozenDict(value)
    if cls is list or cls is FrozenList or cls is tuple:
        for v in value:
            if v.__class__ not in _SCALARS:
                return FrozenList([freeze(v) for v in value])
        return FrozenList(value)
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    return value


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def thaw(value: Any) -> Any:
    """``value`` with every frozen dict and list in it turned back into a plain, mutable one."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value


_EMPTY: Final = FrozenDict()


def _freeze_mapping(value: Mapping[str, Any] | None) -> FrozenDict:
    if not value:
        return _EMPTY
    frozen: FrozenDict = freeze(value)
    return frozen


def _freeze_optional(value: Any) -> Any:
    return value if value is None or value.__class__ is str else freeze(value)


@attrs.frozen(slots=True)
class Event:
    """One immutable entry of a run's log; ``event_id`` is its gapless sequence number.

    Immutable all the way down: ``metadata`` (and a dict ``error``) is a :class:`FrozenDict`, ``artifacts``
    and every list inside them a :class:`FrozenList`, so an event can neither be changed through them nor
    disagree with its file. Equal events hash equal, so events work in sets and as dict keys.
    """

    event_id: int
    type: str
    timestamp: str
    run_id: str
    phase: str | None = None
    step: str | None = None
    user: str | None = None
    source: str | None = None
    status: str | None = None
    message: str | None = None
    duration_ms: float | None = None
    error: str | Mapping[str, Any] | None = attrs.field(default=None, converter=_freeze_optional)
    artifacts: Sequence[Any] | None = attrs.field(default=None, converter=_freeze_optional)
    metadata: Mapping[str, Any] = attrs.field(factory=FrozenDict, converter=_freeze_mapping)
    schema_version: int = SCHEMA_VERSION
    idempotency_key: str | None = None
    nonce: str | None = None
    lease_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of plain (mutable) dicts and lists; fields that are ``None`` are omitted."""
        return {k: thaw(v) for k, v in _event_to_dict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Build an event from a stored dict (after upcasting); unknown keys are dropped."""
        return _event_from_dict(data)  # the converter's hook, called directly on this hot path

    @property
    def error_message(self) -> str | None:
        """The error as text, from ``error`` or ``metadata['error']``."""
        return error_text(self.error if self.error is not None else self.metadata.get("error"))


def error_text(err: Any) -> str | None:
    """An event's ``error`` value (text, or an object with a ``message``) as text; None for no error."""
    if err is None:
        return None
    if isinstance(err, dict):
        return str(err.get("message", _codec.dumps(err).decode()))
    return str(err)


def given_duration(e: Mapping[str, Any]) -> float | None:
    """The duration a producer gave on a stored event (``duration_ms``, else ``metadata.duration_ms``), or None.

    The one rule for "the producer's value where given": the fold (step and
    phase ``duration_ms``), the frames and the reports all read it here, and
    compute the time between start and end only when this is None.
    """
    value = e.get("duration_ms")
    if value is None:
        meta = e.get("metadata")
        value = meta.get("duration_ms") if isinstance(meta, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


EVENT_FIELDS: Final = frozenset(a.name for a in attrs.fields(Event))
_EVENT_FIELD_ORDER: Final = tuple(a.name for a in attrs.fields(Event))


def _event_to_dict(event: Event) -> dict[str, Any]:
    # Hand-written because it runs once per stored event: None fields are
    # omitted to keep files small, schema_version and metadata always kept.
    out: dict[str, Any] = {}
    for name in _EVENT_FIELD_ORDER:
        value = getattr(event, name)
        if value is not None:
            out[name] = value
    return out


def _event_from_dict(data: Mapping[str, Any], _: Any = None) -> Event:
    # Stored events are trusted (validated when emitted); keys a later
    # release added are dropped rather than failing an older reader.
    try:
        return Event(**data)  # the common case, without a per-event key check
    except TypeError:
        if data.keys() <= EVENT_FIELDS:
            raise
    return Event(**{k: v for k, v in data.items() if k in EVENT_FIELDS})


converter.register_unstructure_hook(Event, _event_to_dict)
converter.register_structure_hook(Event, _event_from_dict)


@attrs.frozen(slots=True)
class _TypeSpec:
    name: str
    schema: Mapping[str, Any]
    version: int
    builtin: bool


class EventTypes:
    """One table of event types (with their compiled validators) and upcasters.

    The process-wide default holds what the module-level functions register; a
    :class:`~faber_runlog.Registry` may hold an isolated copy for one store.
    """

    def __init__(self, parent: EventTypes | None = None) -> None:
        self.lock = threading.Lock()
        self.types: dict[str, _TypeSpec] = dict(parent.types) if parent else {}
        self.validators: dict[str, Callable[[Any], Any]] = dict(parent.validators) if parent else {}
        self.upcasters: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = (
            dict(parent.upcasters) if parent else {}
        )


_DEFAULT_TYPES: Final = EventTypes()
DEFAULT_TYPES: Final = _DEFAULT_TYPES
"""The process-wide event types (the default registry's)."""
_lock = _DEFAULT_TYPES.lock
_types = _DEFAULT_TYPES.types
_validators = _DEFAULT_TYPES.validators
_upcasters = _DEFAULT_TYPES.upcasters


_load_json = load_schema
_compile = compile_schema


_BASE_SCHEMA: Final = _load_json("event.schema.json")
_base_validator: Callable[[Any], Any] | None = None

for _name in BUILTIN_EVENT_TYPES:
    _types[_name] = _TypeSpec(_name, _load_json("event-types", f"{_name}.json"), SCHEMA_VERSION, True)


def _paused_from_enum() -> None:
    """``workflow_paused``'s ``paused_from`` choices are the statuses the transition table lets a pause leave.

    Generated, not written twice: the schema once lacked ``failing``, which the table allows.
    """
    from faber_runlog._domain.transitions import TRANSITIONS

    paused_from = _types["workflow_paused"].schema["properties"]["metadata"]["properties"]["paused_from"]
    paused_from["enum"] = list(TRANSITIONS["workflow_paused"].allowed())


_paused_from_enum()


def event_schema(event_type: str | None = None) -> dict[str, Any]:
    """The JSON Schema of the base event, or of one type registered in the default registry.

    A store's own registry answers the same question: ``store.registry.event_schema(name)``.
    """
    return schema_in(_DEFAULT_TYPES, event_type)


def schema_in(table: EventTypes, event_type: str | None = None) -> dict[str, Any]:
    """:func:`event_schema` in ``table`` (a registry's)."""
    if event_type is None:
        return dict(_BASE_SCHEMA)
    spec = table.types.get(event_type)
    if spec is None:
        raise InvalidEvent(
            f"unknown event type {event_type!r}{did_you_mean(event_type, table.types)}: declare it first "
            "(gateway.json event_types, the faber_runlog.event_types entry point, or register_event_type)",
            event_type=event_type,
        )
    return dict(spec.schema)


def event_types() -> list[str]:
    """Every type registered in the default registry, sorted (a store's own: ``store.registry.event_types()``)."""
    return sorted(_types)


def register_event_type(
    name: str, schema: Mapping[str, Any] | None = None, *, version: int = 1, replace: bool = False
) -> None:
    """Register a custom event type with a JSON Schema for the whole event (in the default registry).

    ``version`` is the schema version new events of this type are written with;
    older stored events are lifted by upcasters (:func:`register_upcaster`).
    """
    add_event_type(_DEFAULT_TYPES, name, schema, version=version, replace=replace)


def add_event_type(
    table: EventTypes, name: str, schema: Mapping[str, Any] | None = None, *, version: int = 1, replace: bool = False
) -> None:
    """:func:`register_event_type` into ``table`` (a registry's)."""
    import re

    if not isinstance(name, str) or re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name, re.ASCII) is None:
        raise InvalidEvent(
            f"invalid event type name {name!r}: use lowercase a-z, 0-9 and '_', starting with a letter",
            event_type=str(name),
        )
    schema = dict(schema or {"type": "object"})
    try:
        validator = _compile(schema)
    except fastjsonschema.JsonSchemaDefinitionException as e:
        raise InvalidEvent(f"schema for event type {name!r} is not a valid JSON Schema: {e}") from e
    with table.lock:
        old = table.types.get(name)
        if old is not None:
            if old.builtin:
                raise InvalidEvent(f"{name!r} is a built-in event type and cannot be redefined", event_type=name)
            evolves = version > old.version  # a new version of the schema (old events: upcasters)
            if not replace and not evolves and (old.schema != schema or old.version != version):
                raise InvalidEvent(
                    f"event type {name!r} is already registered (version {old.version}) with another schema; "
                    f"register it as version {old.version + 1} (with an upcaster), or pass replace=True",
                    event_type=name,
                )
        table.types[name] = _TypeSpec(name, schema, version, False)
        table.validators[name] = validator


def register_upcaster(event_type: str, from_version: int, upcast: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Lift stored events of ``event_type`` at ``from_version`` to ``from_version + 1`` on read.

    Stored files are never rewritten; the upcaster runs each time such an event is read
    and must return a dict whose ``schema_version`` is ``from_version + 1``. (In the default registry.)
    """
    add_upcaster(_DEFAULT_TYPES, event_type, from_version, upcast)


def add_upcaster(
    table: EventTypes, event_type: str, from_version: int, upcast: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """:func:`register_upcaster` into ``table`` (a registry's)."""
    with table.lock:
        table.upcasters[(event_type, from_version)] = upcast


def upcast(data: dict[str, Any], table: EventTypes = _DEFAULT_TYPES) -> dict[str, Any]:
    """Apply registered upcasters until the event is at its type's current version."""
    upcasters = table.upcasters
    if not upcasters:
        return data
    etype = data.get("type")
    version = data.get("schema_version", 1)
    while (fn := upcasters.get((etype, version))) is not None:  # type: ignore[arg-type]  # a stored dict's values are Any
        data = fn(dict(data))
        new_version = data.get("schema_version", version)
        if new_version == version:
            data["schema_version"] = new_version = version + 1
        version = new_version
    return data


def _validator_for(event_type: str, table: EventTypes = _DEFAULT_TYPES) -> Callable[[Any], Any]:
    v = table.validators.get(event_type)
    if v is None:
        spec = table.types.get(event_type)
        if spec is None:
            unknown = InvalidEvent(
                f"unknown event type {event_type!r}{did_you_mean(event_type, table.types)}", event_type=event_type
            )
            raise advise(unknown, "declare_type")
        with table.lock:
            v = table.validators.get(event_type)
            if v is None:
                v = table.validators[event_type] = _compile(spec.schema)
    return v


def type_version(event_type: str, table: EventTypes = _DEFAULT_TYPES) -> int:
    """The schema version new events of ``event_type`` are written with."""
    spec = table.types.get(event_type)
    return spec.version if spec is not None else SCHEMA_VERSION


def _check_utf8(text: str, where: str, error: type[ValueError]) -> None:
    # Lone surrogates (from bad decoding upstream) have no UTF-8 form.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = text[e.start : e.end]
            raise error(f"{where} holds {bad!r}, which has no UTF-8 form; fix the text's decoding") from e


def check_json_value(value: Any, where: str, depth: int = 0, error: type[ValueError] = InvalidEvent) -> None:
    """Refuse what JSON cannot carry faithfully (NaN, non-str keys, deep nests)."""
    if depth > _MAX_DEPTH:
        raise error(f"{where} is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, str):
        if len(value) > _MAX_STRING:
            raise error(f"{where} is a string of {len(value)} characters; the limit is {_MAX_STRING}")
        _check_utf8(value, where, error)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        # orjson stores 64-bit integers only; a bigger one would fail deep in the write.
        if not -(1 << 63) <= value < (1 << 64):
            raise error(f"{where} is an integer outside the 64-bit range JSON readers agree on; store it as a string")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise error(f"{where} is {value!r}; JSON has no NaN or Infinity, use null or a string")
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise error(f"{where} has a non-string key {k!r}; JSON object keys are strings")
            _check_utf8(k, where, error)
            check_json_value(v, f"{where}.{k}", depth + 1, error)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_json_value(v, f"{where}[{i}]", depth + 1, error)
    else:
        raise error(f"{where} has a value of type {type(value).__name__}, which JSON cannot store")


_INT_MIN: Final = -(1 << 63)
_INT_END: Final = 1 << 64


def _plain_json(value: Any, depth: int = 0) -> bool:
    """True when :func:`check_json_value` would accept ``value`` for sure (plain types, ASCII text).

    The append's fast path: no message is built on the way. False means "look closer" (the
    checker then decides, and says where): other text, subclasses and anything refused.
    """
    if depth > _MAX_DEPTH:
        return False
    cls = value.__class__
    if cls is str:
        return len(value) <= _MAX_STRING and value.isascii()
    if cls is int:
        return bool(_INT_MIN <= value < _INT_END)
    if cls is bool or value is None:
        return True
    if cls is float:
        return math.isfinite(value)
    if cls is dict:
        for k, v in value.items():
            if k.__class__ is not str or not k.isascii() or not _plain_json(v, depth + 1):
                return False
        return True
    if cls is list:
        return all(_plain_json(v, depth + 1) for v in value)
    return False


def _explain(e: fastjsonschema.JsonSchemaValueException) -> str:
    """A schema failure in the caller's words: the missing field by name, close matches of a bad choice."""
    field = e.name.replace("data.", "", 1) if e.name and e.name != "data" else None
    if e.rule == "required" and isinstance(e.value, dict) and isinstance(e.rule_definition, list):
        missing = [f for f in e.rule_definition if f not in e.value]
        where = f" in {field!r}" if field else ""
        names = ", ".join(repr(f) for f in missing)
        return f"missing the field{'s' if len(missing) > 1 else ''} {names}{where}"
    if e.rule == "enum" and isinstance(e.rule_definition, list):
        choices = [c for c in e.rule_definition if isinstance(c, str)]
        hint = did_you_mean(e.value, choices)
        return f"field {field!r} is {e.value!r}{hint}; use one of {', '.join(map(repr, e.rule_definition))}"
    message = e.message.replace("data.", "", 1).replace("data ", "event ", 1)
    return f"{message} (field {field or 'event'!r})"


_good_stamp = ""  # the last timestamp validate_event_dict found valid


def validate_event_dict(
    data: dict[str, Any], *, run_id: str | None = None, table: EventTypes = _DEFAULT_TYPES, stored: bool = False
) -> None:
    """Validate one event dict against the base schema and its type's schema.

    ``stored=True`` checks an event already in a log: a type ``table`` does not know is never an
    error on read (it was registered by whoever wrote it), so only the base schema applies to it.
    """
    global _base_validator, _good_stamp
    etype = data.get("type")
    where = f"event {etype!r}" + (f" for run {run_id}" if run_id else "")
    if not isinstance(etype, str):
        raise InvalidEvent(f"{where}: 'type' must be a string", run_id=run_id)
    type_validator = None if stored and etype not in table.types else _validator_for(etype, table)
    for key, value in data.items():
        if not _plain_json(value):
            check_json_value(value, f"{where}: field {key!r}")
    stamp = data.get("timestamp")
    problem = None if stamp is None or stamp == _good_stamp else _validate.timestamp_problem(stamp)
    if problem is None and stamp.__class__ is str:
        _good_stamp = stamp  # appends probe with one stamp: checked once, not per event
    if problem is not None:
        raise InvalidEvent(
            f"{where} is invalid: field 'timestamp': {problem}; nothing was written", run_id=run_id, event_type=etype
        )
    if _base_validator is None:
        _base_validator = _compile(_BASE_SCHEMA)
    for validator in (_base_validator, type_validator):
        if validator is None:
            continue
        try:
            validator(data)
        except fastjsonschema.JsonSchemaValueException as e:
            raise InvalidEvent(
                f"{where} is invalid: {_explain(e)}; fix the value and emit again, nothing was written",
                run_id=run_id,
                event_type=etype,
            ) from e
