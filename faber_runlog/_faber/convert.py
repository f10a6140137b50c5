"""FABER compatibility: import FABER run folders, export runs as FABER folders, map shapes both ways.

FABER's run-manager scripts keep one folder per run: ``metadata.json``,
``state.json`` (never folded by the scripts) and ``events/NNN-{type}.json``
numbered by a counter in ``events/.next-id``. Under concurrency those scripts
lose and duplicate numbers, so an importer must take folders as they are:
events are imported in the numeric order of their file prefix, every gap and
duplicate is reported, and nothing is renumbered silently (the new log is
gapless, each event keeps its FABER ``event_id`` and file name in
``metadata["_faber"]``).

Import is idempotent: a run's id is its FABER id when that is an
``org/project/uuid`` id, and a uuid derived from the FABER id otherwise, so a
second import finds the runs it wrote and appends only events that are new.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs
from fsspec.implementations.local import LocalFileSystem

from faber_runlog._base import codec as _codec
from faber_runlog._base import validate as _validate
from faber_runlog._base.advice import advise
from faber_runlog._base.converter import to_dict
from faber_runlog._base.ids import RunId, validate_slug
from faber_runlog._base.progress import Progress
from faber_runlog._domain.events import Event, EventTypes, register_event_type, validate_event_dict
from faber_runlog._domain.metadata import RunMetadata
from faber_runlog._domain.plan import normalize_plan
from faber_runlog._domain.registry import event_types_table
from faber_runlog._domain.state import ErrorRecord, PhaseState, RunState
from faber_runlog._format.faber import (
    FABER_BASE_PATHS,
    NON_RUN_NAMES,
    PLAN_RUN_MARKER,
    canonical_faber_id,
    faber_base_paths,
    plan_timestamp,
)
from faber_runlog._log.eventlog import append_event
from faber_runlog._services.store import Run, RunStore
from faber_runlog._storage.backends import open_filesystem
from faber_runlog.errors import (
    FaberRunlogError,
    InvalidArgument,
    InvalidEvent,
    InvalidRunId,
    RunExists,
    StorageError,
    UnsafePath,
)

__all__ = [
    "EXPORT_KEY",
    "FABER_BASE_PATHS",
    "FABER_DRIFT_TYPES",
    "FABER_EVENT_TYPES",
    "FABER_ONLY_TYPES",
    "FABER_PHASES",
    "IMPORT_KEY",
    "UNMAPPED_TYPE",
    "ExportResult",
    "ImportReport",
    "ImportedRun",
    "export_faber",
    "faber_event",
    "faber_metadata",
    "faber_phase_status",
    "faber_run_status",
    "faber_state",
    "import_faber",
    "mapped_run_id",
    "runlog_event_fields",
    "runlog_statuses",
]

log = logging.getLogger("faber_runlog.faber")

# -- facts about FABER (from its run-manager scripts, event schema and MCP gateway) ------------------

FABER_EVENT_TYPES: Final = (
    "workflow_start", "workflow_complete", "workflow_error", "workflow_cancelled", "workflow_resumed",
    "workflow_rerun", "phase_start", "phase_skip", "phase_complete", "phase_error",
    "step_start", "step_complete", "step_error", "step_retry", "artifact_create", "artifact_modify",
    "commit_create", "branch_create", "pr_create", "pr_merge", "spec_generate", "spec_validate",
    "test_run", "docs_update", "checkpoint", "skill_invoke", "agent_invoke", "decision_point",
    "retry_loop_enter", "retry_loop_exit", "approval_request", "approval_granted", "approval_denied",
    "hook_execute",
)  # fmt: skip  # a table: one row per line
FABER_ONLY_TYPES: Final = ("approval_request", "approval_granted", "approval_denied", "hook_execute")
"""FABER event types faber_runlog has no built-in for; registered as custom types (kept, not folded)."""
FABER_PHASES: Final = ("frame", "architect", "build", "evaluate", "release")
FABER_EVENT_STATUSES: Final = ("started", "completed", "failed", "skipped", "pending", "cancelled")
FABER_RUN_STATUSES: Final = ("pending", "in_progress", "completed", "failed", "cancelled")
FABER_ARTIFACT_TYPES: Final = ("branch", "commit", "spec", "pr", "deployment", "tag", "document", "file", "other")

FABER_DRIFT_TYPES: Final = (
    "feedback_request", "feedback_received", "guard_executed", "retry_attempt", "workflow_rerun_request",
)  # fmt: skip  # a table: one row per line
"""Types FABER's docs and executors write outside its schema whose meaning has no counterpart here: kept as they are."""
_DRIFT: Final = {
    "step_failed": "step_error", "workflow_failed": "workflow_error", "phase_failed": "phase_error",
    "step_skipped": "step_skip", "phase_skipped": "phase_skip", "workflow_completed": "workflow_complete",
}  # fmt: skip  # a table: one row per line
"""FABER types outside its schema whose meaning is one of ours: imported as ours (the FABER type in ``_faber.type``)."""
_NEVER_IMPORTED: Final = frozenset({"log_sealed"})
UNMAPPED_TYPE: Final = "faber_unmapped"
"""Type of an imported event that faber_runlog's schema for its type refuses; ``metadata._faber.type`` names it."""
IMPORT_KEY: Final = "_faber"
"""Metadata key of an imported event: its FABER ``event_id``, file name and whatever had to be moved aside."""
EXPORT_KEY: Final = "faber_runlog"
"""Metadata key of an exported event (and metadata.json): what FABER's shapes cannot hold, to restore on import."""
DEFAULT_PLAN_ORG: Final = "local"
"""Org given to runs whose FABER id is plan-based (FABER's own fallback org name)."""

_EVENT_FILE: Final = re.compile(r"(\d+)-([A-Za-z0-9_.-]+)\.json")
_OPTIONAL: Final = ("phase", "step", "status", "user", "source", "message", "duration_ms", "error", "artifacts")
_RESTORABLE: Final = frozenset({*_OPTIONAL, "idempotency_key"})
"""Fields an export marker may restore (anything else there, ``lease_epoch`` or ``nonce``, is not a field)."""
_FABER_FIELDS: Final = frozenset({"event_id", "type", "timestamp", "run_id", "metadata", *_OPTIONAL})
_PARAM_KEYS: Final = ("work_id", "target", "workflow_id", "autonomy", "source_type")

_TO_FABER_RUN: Final = {
    "created": "pending", "running": "in_progress", "paused": "in_progress",
    "awaiting_approval": "in_progress", "failing": "failed", "completed": "completed", "failed": "failed",
    "cancelled": "cancelled",
}  # fmt: skip  # a table: one row per line
_TO_FABER_PHASE: Final = {
    "pending": "pending", "running": "in_progress", "retrying": "in_progress", "awaiting_approval": "in_progress",
    "completed": "completed", "failed": "failed", "skipped": "skipped", "cancelled": "failed",
}  # fmt: skip  # a table: one row per line


def _register_types() -> None:
    # Registered when the package is imported, so every process (verify, MCP) reads them the same way.
    schemas: dict[str, dict[str, Any]] = {t: {"type": "object"} for t in (*FABER_ONLY_TYPES, *FABER_DRIFT_TYPES)}
    schemas[UNMAPPED_TYPE] = {
        "type": "object",
        "required": ["metadata"],
        "properties": {"metadata": {"type": "object", "required": [IMPORT_KEY]}},
    }
    for name, schema in schemas.items():
        try:
            register_event_type(name, schema)
        except InvalidEvent as e:  # the application registered its own schema first: it wins
            log.warning("FABER event type %s not registered: %s", name, e)


_register_types()


# -- status words ------------------------------------------------------------------------------------


def faber_run_status(status: str) -> str:
    """FABER's word for a run status of ours (``running`` -> ``in_progress``, ``created`` -> ``pending``)."""
    return _TO_FABER_RUN.get(status, status)


def runlog_statuses(faber_status: str) -> tuple[str, ...]:
    """Our run statuses that FABER calls ``faber_status`` (``in_progress`` is running, paused or awaiting)."""
    found = tuple(ours for ours, theirs in _TO_FABER_RUN.items() if theirs == faber_status)
    return found or (faber_status,)


def faber_phase_status(status: str) -> str:
    """FABER's word for a phase or step status of ours (``running`` -> ``in_progress``)."""
    return _TO_FABER_PHASE.get(status, status)


# -- ids ---------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9_-]+", "-", text.lower())
    s = re.sub(r"-{2,}", "-", s).strip("-")[:64].strip("-")
    return s or "plan"


def mapped_run_id(original: str, plan_org: str = DEFAULT_PLAN_ORG) -> RunId:
    """The faber_runlog id of a FABER run id.

    An ``org/project/uuid`` id is kept as it is. A plan-based id such as
    ``fractary-faber-258/2026-02-11T18-56-42`` becomes ``{plan_org}/{plan slug}/{uuid}``
    with a uuid derived from the whole FABER id, so the same FABER run always
    maps to the same run (which makes imports idempotent).
    """
    try:
        return RunId.parse(original)
    except InvalidRunId:
        pass
    validate_slug(plan_org, "plan org")
    original = canonical_faber_id(original)  # the state-side {plan_id}-run-{ts} is the same run
    digest = hashlib.sha256(b"faber-run:" + original.encode()).hexdigest()
    return RunId(plan_org, _slug(original.split("/", 1)[0]), str(uuid.UUID(hex=digest[:32], version=4)))


# -- FABER event -> our event fields -------------------------------------------------------------------


def _restore(metadata: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Undo what an export to FABER changed (the ``faber_runlog`` key): our type and field values."""
    marker = metadata.pop(EXPORT_KEY, None)
    if not isinstance(marker, dict):
        return None, {}
    etype = marker.get("type")
    fields = marker.get("fields")
    original_metadata = marker.get("metadata")
    if isinstance(original_metadata, dict):
        metadata.clear()
        metadata.update(original_metadata)
    kept = {k: v for k, v in fields.items() if k in _RESTORABLE} if isinstance(fields, dict) else {}
    return (etype if isinstance(etype, str) else None), kept


def _derive(our_type: str, fields: dict[str, Any], metadata: dict[str, Any]) -> list[str]:
    """Fill what our schema needs from what FABER wrote elsewhere; the names of the filled keys."""
    derived: list[str] = []
    if "step" not in fields and our_type.startswith("step_") and isinstance(metadata.get("step_id"), str):
        fields["step"] = metadata["step_id"]
        derived.append("step")
    artifacts = fields.get("artifacts")
    if our_type in ("artifact_create", "artifact_modify") and "path" not in metadata and isinstance(artifacts, list):
        first = next((a for a in artifacts if isinstance(a, dict)), None)
        where = (
            None
            if first is None
            else next((first[k] for k in ("path", "url", "name") if isinstance(first.get(k), str) and first[k]), None)
        )
        if where is not None:
            metadata["path"] = where
            derived.append("metadata.path")
            if "kind" not in metadata and isinstance(first.get("type"), str):  # type: ignore[union-attr]
                metadata["kind"] = first["type"]  # type: ignore[index]
                derived.append("metadata.kind")
    if our_type == "workflow_paused" and "paused_from" not in metadata:
        metadata["paused_from"] = "running"
        derived.append("metadata.paused_from")
    return derived


def _valid(fields: dict[str, Any], run_id: str, timestamp: str, types: EventTypes | None) -> str | None:
    """None if ``fields`` would be accepted by ``append`` (of a store with event types ``types``), else why not."""
    probe = dict(fields, run_id=run_id, event_id=1, timestamp=timestamp, schema_version=1)
    try:
        if types is None:
            validate_event_dict(probe, run_id=run_id)
        else:
            validate_event_dict(probe, run_id=run_id, table=types)
    except InvalidEvent as e:
        return str(e)
    return None


def runlog_event_fields(  # noqa: C901  (a field-by-field translation of FABER's format: one branch per field)
    raw: Mapping[str, Any],
    *,
    run_id: str,
    original_run_id: str | None = None,
    file: str | None = None,
    fallback_timestamp: str | None = None,
    default_user: str | None = "unknown",
    types: EventTypes | None = None,
) -> tuple[dict[str, Any], str, list[str]]:
    """Turn one FABER event into ``(fields, timestamp, notes)`` ready for ``EventLog.append``.

    ``types`` are the event types of the store it goes to (default: the default registry's).

    Nothing is dropped: a type our schema refuses is kept as :data:`UNMAPPED_TYPE`,
    a field that cannot be kept where it was moves to ``metadata._faber.fields``,
    unknown top-level keys go to ``metadata._faber.extra``. ``notes`` says what moved.
    """
    notes: list[str] = []
    bookkeeping: dict[str, Any] = {}
    if raw.get("event_id") is not None:
        bookkeeping["event_id"] = raw["event_id"]
    if file is not None:
        bookkeeping["file"] = file
    raw_meta = raw.get("metadata")
    moved: dict[str, Any] = {}
    if isinstance(raw_meta, dict):
        metadata = dict(raw_meta)
    else:
        metadata = {}
        if raw_meta is not None:
            moved["metadata"] = raw_meta
    restored_type, restored = _restore(metadata)
    prior = metadata.pop(IMPORT_KEY, None)  # an event exported after an import: its old bookkeeping goes
    del prior
    etype = restored_type or raw.get("type")
    fields: dict[str, Any] = {k: raw[k] for k in _OPTIONAL if raw.get(k) is not None}
    kind = etype
    if isinstance(etype, str) and restored_type is None:
        kind = _DRIFT.get(etype, etype)
        derived = _derive(kind, fields, metadata)
        if derived:
            bookkeeping["derived"] = derived
    for key, value in restored.items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    extra = {k: v for k, v in raw.items() if k not in _FABER_FIELDS}
    if extra:
        bookkeeping["extra"] = extra
    if original_run_id is not None and raw.get("run_id") not in (None, original_run_id):
        bookkeeping["run_id"] = raw.get("run_id")
    if default_user is not None:
        fields.setdefault("user", default_user)  # what FABER's own scripts write when $USER is unset
    timestamp = raw.get("timestamp")
    if not isinstance(timestamp, str) or _validate.timestamp_problem(timestamp) is not None:
        moved["timestamp"] = timestamp
        timestamp = fallback_timestamp or _codec.now_iso()
        notes.append(f"timestamp {raw.get('timestamp')!r} is not ISO 8601; used {timestamp} (original kept)")

    def build(kind: str, own: dict[str, Any], aside: dict[str, Any]) -> dict[str, Any]:
        book = dict(bookkeeping)
        if kind != etype:
            book["type"] = etype
        if aside:
            book["fields"] = aside
        return dict(own, type=kind, metadata={**metadata, IMPORT_KEY: book})

    first_error: str | None = None
    if isinstance(kind, str) and kind in _NEVER_IMPORTED:
        first_error = f"a {kind} event is faber_runlog's own seal and is never copied into a log"
    elif isinstance(kind, str):
        candidate = build(kind, fields, moved)
        first_error = _valid(candidate, run_id, timestamp, types)
        if first_error is None:
            return candidate, timestamp, notes
    else:
        first_error = f"its type {etype!r} is not a string"
    candidate = build(UNMAPPED_TYPE, fields, moved)
    if _valid(candidate, run_id, timestamp, types) is None:
        notes.append(f"kept as {UNMAPPED_TYPE} because {first_error}")
        return candidate, timestamp, notes
    # Last resort: every optional field moves aside, so only type, time and metadata remain.
    keep = {k: v for k, v in fields.items() if k == "user" and isinstance(v, str) and len(v) <= 256}
    aside = dict(moved, **{k: v for k, v in fields.items() if k not in keep})
    candidate = build(UNMAPPED_TYPE, keep, aside)
    problem = _valid(candidate, run_id, timestamp, types)
    if problem is not None:
        raise InvalidEvent(f"FABER event {file or raw.get('event_id')!r} cannot be stored at all: {problem}")
    notes.append(f"kept as {UNMAPPED_TYPE} with its fields in metadata._faber.fields because {first_error}")
    return candidate, timestamp, notes


# -- reading FABER folders ---------------------------------------------------------------------------


@attrs.define(slots=True)
class _Folder:
    """One FABER run folder as found in the source."""

    path: str
    original_id: str
    base: str
    files: dict[str, str] = attrs.field(factory=dict)  # name in events/ -> full path
    metadata_path: str | None = None
    jsonl_path: str | None = None
    plan_path: str | None = None  # v5: the plan folder's plan.json
    state_path: str | None = None  # v5: the plan folder's state-{ts}.json
    notes: list[str] = attrs.field(factory=list)


def _search_roots(fs: Any, root: str) -> list[tuple[str, str]]:
    """``(folder, base name)`` to search: a project's FABER base paths only, else the folder given."""
    bases = []
    for base in faber_base_paths():
        folder = base if base.startswith("/") or "://" in base else f"{root}/{base}"
        try:
            if fs.isdir(folder):
                bases.append((folder.rstrip("/"), base))
        except OSError as e:
            raise StorageError(f"cannot look for FABER runs in {folder}: {e}") from e
    return bases or [(root, "")]


def _local_real(fs: Any) -> bool:
    return isinstance(fs, LocalFileSystem)


def _leaves(folder: str, path: str) -> bool:
    """Whether a local ``path`` under ``folder`` goes through a symlink (so it may lead out of the folder)."""
    rel = os.path.relpath(path, folder)
    return os.path.realpath(path) != os.path.join(os.path.realpath(folder), rel)


def _find_folders(fs: Any, root: str) -> list[_Folder]:  # noqa: C901  (one branch per kind of FABER file)
    """Every FABER run folder under ``root`` (a project, a base folder or one run folder)."""
    root = root.rstrip("/")
    folders: dict[str, _Folder] = {}
    plans: dict[str, str] = {}  # plan folder -> its plan.json
    skipped: list[str] = []
    for search, base in _search_roots(fs, root):

        def folder(rel: str, search: str = search, base: str = base) -> _Folder:
            key = f"{search}/{rel}" if rel else search
            f = folders.get(key)
            if f is None:
                original = rel if base else (rel or "")
                f = folders[key] = _Folder(path=key, original_id=canonical_faber_id(original), base=base)
            return f

        try:
            found = fs.find(search, withdirs=False, detail=False)
        except FileNotFoundError:
            found = []
        except OSError as e:
            raise StorageError(f"cannot list the FABER runs under {search}: {e}") from e
        for path in sorted(str(p) for p in found):
            rel = path[len(search) + 1 :] if path.startswith(search + "/") else posixpath.basename(path)
            top = rel.split("/", 1)[0]
            if top in NON_RUN_NAMES or (top.startswith(".") and "/" not in rel):
                continue  # FABER's workflow state, manifests, changelog, .active-run-id: not runs
            if _local_real(fs) and _leaves(search, path):
                skipped.append(path)
                continue
            parent, _, name = rel.rpartition("/")
            grand, _, parent_name = parent.rpartition("/")
            if parent_name == "events" and (name == ".next-id" or _EVENT_FILE.fullmatch(name)):
                folder(grand if "/" in parent else "").files[name] = path
            elif name == "events.jsonl":
                folder(parent).jsonl_path = path
            elif name == "metadata.json":
                folder(parent).metadata_path = path
            elif name == "plan.json":
                plans[f"{search}/{parent}" if parent else search] = path
            elif name.startswith("state-") and name.endswith(".json") and plan_timestamp(name[6:-5]):
                folder(f"{parent}/{name[6:-5]}" if parent else name[6:-5]).state_path = path
    out = []
    for f in folders.values():
        plan_dir = posixpath.dirname(f.path)
        if f.state_path is not None or plan_dir in plans:
            f.plan_path = plans.get(plan_dir)
        if f.path in plans:
            f.plan_path = plans[f.path]  # a flat plan-slug run: its events sit in the plan folder
        if not f.files and f.jsonl_path is None and f.state_path is None:
            continue  # a metadata.json alone (a faber_runlog store's run) is not a FABER run
        if f.jsonl_path is not None and not f.files and fs.exists(posixpath.join(f.path, "consolidation.json")):
            continue  # a consolidated faber_runlog run: import that with the archive tools instead
        f.notes.extend(
            f"{p} is a symlink (or lies below one): not followed, not imported" for p in skipped if p.startswith(f.path)
        )
        out.append(f)
    for p in skipped:
        if not any(p.startswith(f.path + "/") for f in out):
            log.warning("FABER import: %s is a symlink (or lies below one): not followed", p)
    return sorted(out, key=lambda f: f.path)


def _read_bodies(fs: Any, paths: list[str]) -> dict[str, bytes | Exception]:
    if not paths:
        return {}
    try:
        got = fs.cat(paths, on_error="return")
    except OSError as e:
        raise StorageError(f"cannot read FABER files ({paths[0]} ...): {e}") from e
    if not isinstance(got, dict):  # a single path comes back as bytes
        got = {paths[0]: got}
    return {str(k): v for k, v in got.items()}


# -- the import report -------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class ImportedRun:
    """What happened to one FABER run folder: where it went and exactly what was damaged."""

    original_run_id: str
    run_id: str
    path: str
    outcome: str  # imported, updated, unchanged, conflict, failed
    events_found: int
    events_imported: int
    missing_event_ids: tuple[int, ...] = ()
    duplicate_event_ids: tuple[tuple[int, tuple[str, ...]], ...] = ()  # (FABER id, the files that share it)
    next_id: int | None = None
    next_id_expected: int | None = None
    notes: tuple[str, ...] = ()
    status: str | None = None

    @property
    def damaged(self) -> bool:
        """Whether FABER lost, duplicated or miscounted events in this run."""
        return bool(self.missing_event_ids or self.duplicate_event_ids or self.next_id != self.next_id_expected)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        body: dict[str, Any] = _codec.loads(_codec.dumps(attrs.asdict(self)))
        body["duplicate_event_ids"] = {str(k): list(v) for k, v in self.duplicate_event_ids}
        body["damaged"] = self.damaged
        return body


@attrs.frozen(slots=True)
class ImportReport:
    """The result of :func:`import_faber`: one entry per FABER run folder found."""

    source: str
    destination: str
    runs: tuple[ImportedRun, ...]

    @property
    def events_imported(self) -> int:
        """Events appended by this import (0 when run again on the same folders)."""
        return sum(r.events_imported for r in self.runs)

    @property
    def ok(self) -> bool:
        """True when no run was refused (``conflict``) or failed."""
        return all(r.outcome not in ("conflict", "failed") for r in self.runs)

    def count(self, outcome: str) -> int:
        """How many runs had ``outcome``."""
        return sum(1 for r in self.runs if r.outcome == outcome)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            "source": self.source,
            "destination": self.destination,
            "ok": self.ok,
            "events_imported": self.events_imported,
            "runs": [r.to_dict() for r in self.runs],
        }

    def lines(self) -> list[str]:
        """A human-readable summary, one line per run plus one per problem."""
        out = []
        for r in self.runs:
            name = r.original_run_id if r.original_run_id == r.run_id else f"{r.original_run_id} -> {r.run_id}"
            out.append(
                f"{r.outcome:<9} {name}: {r.events_imported} of {r.events_found} events imported"
                + (f", status {r.status}" if r.status else "")
            )
            if r.missing_event_ids:
                out.append(f"          missing FABER event ids: {_ranges(r.missing_event_ids)}")
            for eid, files in r.duplicate_event_ids:
                out.append(f"          FABER event id {eid} is used by {len(files)} files: {', '.join(files)}")
            if r.next_id != r.next_id_expected:
                out.append(f"          events/.next-id says {r.next_id}, the files say {r.next_id_expected}")
            out.extend(f"          {n}" for n in r.notes)
        kinds = ("imported", "updated", "unchanged", "conflict", "failed")
        totals = ", ".join(f"{self.count(k)} {k}" for k in kinds if self.count(k))
        out.append(f"{len(self.runs)} FABER runs ({totals or 'none found'}); {self.events_imported} events imported")
        return out


def _ranges(ids: Iterable[int]) -> str:
    parts: list[tuple[int, int]] = []
    for i in sorted(ids):
        if parts and parts[-1][1] == i - 1:
            parts[-1] = (parts[-1][0], i)
        else:
            parts.append((i, i))
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


# -- import ------------------------------------------------------------------------------------------


@attrs.define(slots=True)
class _Planned:
    """A FABER run read and converted, before anything is written."""

    folder: _Folder
    original_id: str
    rid: RunId
    metadata: dict[str, Any]
    events: list[tuple[dict[str, Any], str]]  # (fields, timestamp) in import order
    missing: tuple[int, ...]
    duplicates: tuple[tuple[int, tuple[str, ...]], ...]
    next_id: int | None
    next_expected: int
    notes: list[str]


def _read_folder(fs: Any, folder: _Folder, plan_org: str, types: EventTypes | None = None) -> _Planned:  # noqa: C901  (reads every optional FABER file; each branch is one tolerated variant)
    notes: list[str] = list(folder.notes)
    paths = [p for n, p in folder.files.items() if n != ".next-id"]
    optional = (folder.metadata_path, folder.jsonl_path, folder.files.get(".next-id"), folder.plan_path)
    extra = [p for p in (*optional, folder.state_path) if p is not None]
    bodies = _read_bodies(fs, paths + extra)

    def body(path: str | None) -> bytes | None:
        value = None if path is None else bodies.get(path)
        return value if isinstance(value, bytes) else None

    metadata = _codec.load_object(body(folder.metadata_path)) or {}
    if folder.metadata_path is not None and not metadata:
        notes.append("metadata.json is unreadable or not an object; imported without it")
    if folder.metadata_path is None and (folder.plan_path is not None or folder.state_path is not None):
        metadata = _plan_metadata(
            _codec.load_object(body(folder.plan_path)) or {}, _codec.load_object(body(folder.state_path)) or {}
        )
    # Events in the numeric order of their file prefix; FABER ids shared by several files keep all of them.
    numbered: list[tuple[int, str, dict[str, Any] | None, str | None]] = []
    for name, path in folder.files.items():
        m = _EVENT_FILE.fullmatch(name)
        if m is None:
            continue
        raw_body = bodies.get(path)
        data: dict[str, Any] | None = None
        problem: str | None = None
        if isinstance(raw_body, bytes):
            try:
                parsed = _codec.loads(raw_body)
                data = parsed if isinstance(parsed, dict) else None
                problem = None if data is not None else f"holds JSON {type(parsed).__name__}, not an object"
            except _codec.JSONDecodeError as e:
                problem = f"is not JSON ({e})"
        else:
            problem = f"could not be read ({raw_body})"
        numbered.append((int(m.group(1)), name, data, problem))
    if not numbered and folder.jsonl_path is not None:
        for i, line in enumerate((body(folder.jsonl_path) or b"").splitlines(), 1):
            if not line.strip():
                continue
            try:
                parsed = _codec.loads(line)
            except _codec.JSONDecodeError as e:
                numbered.append((i, f"events.jsonl:{i}", None, f"is not JSON ({e})"))
                continue
            eid = parsed.get("event_id") if isinstance(parsed, dict) else None
            number = eid if isinstance(eid, int) and not isinstance(eid, bool) else i
            numbered.append((number, f"events.jsonl:{i}", parsed if isinstance(parsed, dict) else None, None))
    numbered.sort(key=lambda e: (e[0], str((e[2] or {}).get("timestamp", "")), e[1]))
    # The original id: the folder's path under the base, else metadata, else the events themselves.
    original = folder.original_id
    parts = original.split("/")
    if len(parts) > 3:  # e.g. the folder above the base was given: the id is the last three parts
        try:
            original = str(RunId.parse("/".join(parts[-3:])))
        except InvalidRunId:
            pass
    if not original:
        named = metadata.get("run_id") or next((d.get("run_id") for _, _, d, _ in numbered if d), None)
        original = named if isinstance(named, str) and named else posixpath.basename(folder.path.rstrip("/"))
    if isinstance(metadata.get("run_id"), str) and metadata["run_id"] != original:
        notes.append(f"metadata.json names run {metadata['run_id']!r}; the folder's id {original!r} is used")
    rid = mapped_run_id(original, plan_org)
    ours = metadata.get(EXPORT_KEY)
    if isinstance(ours, dict) and isinstance(ours.get("run_id"), str):
        try:
            rid = RunId.parse(ours["run_id"])  # exported by faber_runlog: back into the run it came from
        except InvalidRunId:
            notes.append(f"the export marker names run {ours['run_id']!r}, not an id; {rid} is used")
    counts: dict[int, list[str]] = {}
    for number, name, _, _ in numbered:
        counts.setdefault(number, []).append(name)
    duplicates = tuple((n, tuple(names)) for n, names in sorted(counts.items()) if len(names) > 1)
    highest = max(counts, default=0)
    next_id: int | None = None
    next_text = body(folder.files.get(".next-id"))
    if next_text is not None:
        text = next_text.strip()[:40]
        if text.isdigit() and len(text) <= 18:
            next_id = int(text)
        else:
            notes.append(f"events/.next-id holds {next_text[:40]!r}, not a number")
    elif folder.files or (folder.jsonl_path is None and folder.state_path is None):
        notes.append("events/.next-id is missing")
    claimed = max(highest, (next_id - 1) if next_id else 0)
    missing, more = _missing_ids(sorted(counts), claimed)
    if more:
        notes.append(f"{more} more FABER event ids are missing (not listed; the report lists {len(missing)})")
    events: list[tuple[dict[str, Any], str]] = []
    keys: set[Any] = set()
    last_stamp = metadata.get("created_at") if isinstance(metadata.get("created_at"), str) else None
    for number, name, data, problem in numbered:
        if data is None:
            # Unreadable: its bytes are kept as text in an unmapped event, in its place in the order.
            raw_text = (body(folder.files.get(name)) or b"").decode("utf-8", "replace")[:65536]
            data = {"event_id": number, "type": UNMAPPED_TYPE, "metadata": {}, "_unreadable": raw_text}
            notes.append(f"{name} {problem}; kept as {UNMAPPED_TYPE} with its text in metadata._faber.extra")
        elif isinstance(data.get("event_id"), int) and data["event_id"] != number and not name.startswith("events."):
            notes.append(f"{name} carries event_id {data['event_id']}; its file number {number} orders it")
        fields, stamp, event_notes = runlog_event_fields(
            data, run_id=str(rid), original_run_id=original, file=name, fallback_timestamp=last_stamp, types=types
        )
        fields["metadata"][IMPORT_KEY].setdefault("event_id", number)
        key = fields.get("idempotency_key")
        if key is not None:
            if key in keys:
                # Two FABER events carry one key: appending both with it would keep only the first. Both are kept.
                fields["metadata"][IMPORT_KEY].setdefault("fields", {})["idempotency_key"] = fields.pop(
                    "idempotency_key"
                )
                notes.append(f"{name} repeats idempotency key {key!r} of an earlier event; kept without it")
            keys.add(key)
        last_stamp = stamp
        notes.extend(f"{name}: {n}" for n in event_notes)
        events.append((fields, stamp))
    return _Planned(folder, original, rid, metadata, events, missing, duplicates, next_id, highest + 1, notes)


_MAX_LISTED: Final = 10_000
"""Most missing FABER ids an import report lists (a ``.next-id`` of 10^12 must not fill memory)."""


def _missing_ids(present: list[int], claimed: int) -> tuple[tuple[int, ...], int]:
    """The ids 1..``claimed`` not in ``present`` (sorted), at most :data:`_MAX_LISTED`, and how many more."""
    out: list[int] = []
    more = 0
    expected = 1
    for n in [*present, claimed + 1]:
        if n > expected:
            gap = min(n, claimed + 1) - expected
            take = max(0, min(gap, _MAX_LISTED - len(out)))
            out.extend(range(expected, expected + take))
            more += gap - take
        expected = max(expected, n + 1)
        if expected > claimed:
            break
    return tuple(out), more


def _plan_metadata(plan: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """A v5 plan-based run's ``metadata.json`` equivalent, built from ``plan.json`` and ``state-{ts}.json``."""
    out: dict[str, Any] = {}
    issue: Any = plan.get("issue")
    work_id = state.get("work_id") or (issue.get("id") if isinstance(issue, dict) else None)
    if isinstance(work_id, (str, int)) and not isinstance(work_id, bool):
        out["work_id"] = str(work_id)
    for key, value in (
        ("workflow_id", state.get("workflow_id") or plan.get("workflow")),
        ("autonomy", plan.get("autonomy")),
    ):
        if isinstance(value, str) and value:
            out[key] = value
    created = state.get("started_at") or plan.get("created_at")
    if isinstance(created, str):
        out["created_at"] = created
    names: list[str] = []
    planned: Any = plan.get("phases")
    for item in planned if isinstance(planned, list) else ():
        name = item.get("phase") if isinstance(item, dict) else item
        if isinstance(name, str) and name and name not in names:
            names.append(name)
    if not names and isinstance(state.get("phases"), dict):
        names = [n for n in state["phases"] if isinstance(n, str) and n]
    phases: list[Any] = []
    for name in names:
        own = state.get("phases", {}).get(name) if isinstance(state.get("phases"), dict) else None
        steps = own.get("steps") if isinstance(own, dict) else None
        ids = [k for k in steps if isinstance(k, str) and k] if isinstance(steps, dict) else []
        phases.append({"name": name, "steps": ids} if ids else name)
    if phases:
        out["phases"] = phases
    out["plan"] = {"plan_id": plan.get("plan_id"), "state_run_id": state.get("run_id"), "status": state.get("status")}
    if isinstance(state.get(EXPORT_KEY), dict):
        out[EXPORT_KEY] = {"run_id": state[EXPORT_KEY].get("run_id")}
    return out


def _environment(faber_env: Any) -> dict[str, Any]:
    env = dict(faber_env) if isinstance(faber_env, dict) else {}
    if "hostname" in env and "host" not in env:
        env["host"] = env["hostname"]  # our name for it, next to FABER's
    return env


def _run_metadata(planned: _Planned, store: RunStore, source: str, notes: list[str], plan_org: str) -> RunMetadata:
    fm = planned.metadata
    marker = fm.get(EXPORT_KEY)
    ours: dict[str, Any] = marker if isinstance(marker, dict) else {}
    params: dict[str, Any] = {k: fm[k] for k in _PARAM_KEYS if fm.get(k) not in (None, "")}
    if isinstance(ours.get("params"), dict):
        params = dict(ours["params"])
    tags = dict(ours["tags"]) if isinstance(ours.get("tags"), dict) else {}
    phases: list[str] = []
    steps: dict[str, list[str]] = {}
    raw_phases = ours.get("phases", fm.get("phases"))
    if raw_phases is not None and not isinstance(raw_phases, list):
        notes.append(f"planned phases {raw_phases!r} not kept: FABER's phases are a list of names")
        raw_phases = None
    if raw_phases is not None:
        try:
            own_steps = ours.get("steps") if isinstance(ours.get("steps"), dict) else None
            phases, steps = normalize_plan(raw_phases, own_steps)
        except (FaberRunlogError, ValueError, TypeError) as e:
            notes.append(f"planned phases {raw_phases!r} not kept: {e}")
    relationships = fm.get("relationships")
    rel: dict[str, Any] = relationships if isinstance(relationships, dict) else {}
    parent_original = rel.get("rerun_of") or rel.get("parent_run_id")
    parent_id: str | None = None
    root_id: str | None = None
    if isinstance(parent_original, str) and parent_original:
        try:
            parent = mapped_run_id(parent_original, plan_org)
        except InvalidRunId as e:
            notes.append(f"parent run {parent_original!r} not linked: {e}")
        else:
            if store.has_run(parent):
                parent_id = str(parent)
                root_id = store.get_run(parent).metadata.root_run_id or parent_id
            else:
                notes.append(
                    f"parent run {parent_original} is not in the store; the link is kept in lineage['faber'] only"
                )
    lineage: dict[str, Any] = {}
    if rel:
        lineage["faber"] = {k: rel.get(k) for k in ("parent_run_id", "rerun_of", "child_runs") if k in rel}
    created = fm.get("created_at")
    if not isinstance(created, str) or _validate.timestamp_problem(created) is not None:
        created = planned.events[0][1] if planned.events else _codec.now_iso()
    rid = planned.rid
    try:
        _codec.dumps(params)
    except TypeError:
        params = {}
    return RunMetadata(
        org=rid.org,
        project=rid.project,
        uuid=rid.uuid,
        created_at=created,
        params=params,
        params_hash=_codec.canonical_hash(params),
        tags={k: v for k, v in tags.items() if isinstance(v, str)},
        environment=_environment(fm.get("environment")),
        parent_run_id=parent_id,
        root_run_id=root_id,
        lineage=lineage,
        phases=phases,
        steps=steps,
        imported_from={
            "format": "faber",
            "run_id": planned.original_id,
            "path": planned.folder.path,
            "source": source,
            "metadata": {k: v for k, v in fm.items() if k != EXPORT_KEY},
        },
    )


def _same_event(stored: Event, fields: dict[str, Any], stamp: str) -> bool:
    book = stored.metadata.get(IMPORT_KEY)
    want = fields["metadata"][IMPORT_KEY]
    return stored.type == fields["type"] and stamp == stored.timestamp and book == want


def _import_one(planned: _Planned, store: RunStore, source: str, plan_org: str, bar: Progress) -> ImportedRun:
    notes = list(planned.notes)
    rid = planned.rid

    def result(outcome: str, imported: int, status: str | None) -> ImportedRun:
        return ImportedRun(
            original_run_id=planned.original_id,
            run_id=str(rid),
            path=planned.folder.path,
            outcome=outcome,
            events_found=len(planned.events),
            events_imported=imported,
            missing_event_ids=planned.missing,
            duplicate_event_ids=planned.duplicates,
            next_id=planned.next_id,
            next_id_expected=planned.next_expected,
            notes=tuple(notes),
            status=status,
        )

    run: Run
    start = 0
    outcome = "imported"
    if store.has_run(rid):
        run = store.get_run(rid)
        came_from = run.metadata.imported_from or {}
        if came_from.get("format") != "faber" or came_from.get("run_id") != planned.original_id:
            notes.append(
                f"run {rid} already exists and was not imported from FABER run {planned.original_id}; left as it is"
            )
            bar.update(len(planned.events))
            return result("conflict", 0, run.state().status)
        stored = [e for e in run.log.read(limit=len(planned.events) + 2) if e.type not in _NEVER_IMPORTED]
        for i, event in enumerate(stored):
            if i >= len(planned.events) or not _same_event(event, *planned.events[i]):
                notes.append(
                    f"event {i + 1} of run {rid} differs from the FABER folder (or the folder lost "
                    "events since the last import); nothing was written"
                )
                bar.update(len(planned.events))
                return result("conflict", 0, run.state().status)
        start = len(stored)
        outcome = "unchanged" if start == len(planned.events) else "updated"
        bar.update(start)
        if outcome == "updated" and run.state().sealed_at is not None:
            notes.append(
                f"run {rid} is consolidated (its log is sealed): the folder's {len(planned.events) - start} newer "
                "events were not imported"
            )
            bar.update(len(planned.events) - start)
            return result("conflict", 0, run.state().status)
    else:
        meta = _run_metadata(planned, store, source, notes, plan_org)
        try:
            run = store.create_run_from(meta)
        except RunExists:  # another import created it a moment ago: take the existing path next time
            notes.append(f"run {rid} was created by someone else during this import; run the import again")
            bar.update(len(planned.events))
            return result("conflict", 0, None)
    appended = 0
    for fields, stamp in planned.events[start:]:
        event = append_event(run.log, fields, timestamp=stamp, unchecked=True)  # a copy of a log as it was
        if event.event_id == start + appended + 1:
            appended += 1
        else:  # answered by an earlier event (the same idempotency key): say so rather than count it
            notes.append(f"event {fields['metadata'][IMPORT_KEY].get('file')} was answered by event {event.event_id}")
        bar.update()
    state = run.log.snapshot() if start < len(planned.events) or outcome == "imported" else run.state()
    return result(outcome, appended, state.status)


def _parents_first(planned: list[_Planned], plan_org: str) -> list[_Planned]:
    by_id = {str(p.rid): p for p in planned}
    out: list[_Planned] = []
    placed: set[str] = set()

    def parent_of(p: _Planned) -> str | None:
        rel = p.metadata.get("relationships")
        if not isinstance(rel, dict):
            return None
        original = rel.get("rerun_of") or rel.get("parent_run_id")
        if not isinstance(original, str) or not original:
            return None
        try:
            return str(mapped_run_id(original, plan_org))
        except InvalidRunId:
            return None

    # Iterative (a re-run chain may be thousands of runs deep): walk up to the first placed ancestor, place downwards.
    for p in sorted(planned, key=lambda p: (str(p.metadata.get("created_at", "")), p.folder.path)):
        chain: list[_Planned] = []
        seen: set[str] = set()
        current: _Planned | None = p
        while current is not None and str(current.rid) not in placed and str(current.rid) not in seen:
            seen.add(str(current.rid))
            chain.append(current)
            parent = parent_of(current)
            current = by_id.get(parent) if parent is not None else None
        for q in reversed(chain):
            placed.add(str(q.rid))
            out.append(q)
    return out


def import_faber(
    source: str,
    store: RunStore,
    *,
    plan_org: str = DEFAULT_PLAN_ORG,
    storage_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> ImportReport:
    """Import every FABER run under ``source`` into ``store``; returns what happened to each.

    ``source`` is a project folder (its ``.fractary/plugins/faber/runs`` and
    ``.fractary/faber/runs`` are searched), a FABER base folder, or one run
    folder; any fsspec URL works. Runs keep their ``org/project/uuid`` id; a
    plan-based id gets ``{plan_org}/{plan}/{derived uuid}`` with the original in
    ``metadata.imported_from``. Events are appended in the numeric order of their
    file prefix with their own timestamps; damage (gaps, duplicate ids, a wrong
    ``.next-id``) is reported, never repaired silently. Running it again imports
    only what is new; a run that exists with other content is left alone and
    reported as a ``conflict``. ``progress`` draws a progress line on stderr.
    """
    validate_slug(plan_org, "plan org")
    fs, root = open_filesystem(str(source), storage_options)
    folders = _find_folders(fs, root)
    planned: list[_Planned] = []
    failed: list[ImportedRun] = []
    for folder in folders:
        try:
            planned.append(_read_folder(fs, folder, plan_org, event_types_table(store.registry)))
        except (FaberRunlogError, ValueError) as e:
            failed.append(
                ImportedRun(
                    folder.original_id or folder.path,
                    "",
                    folder.path,
                    "failed",
                    0,
                    0,
                    notes=(" ".join(str(e).split()),),
                )
            )
    results: list[ImportedRun] = list(failed)
    total = sum(len(p.events) for p in planned)
    with Progress("importing FABER events", total, enabled=progress) as bar:
        for p in _parents_first(planned, plan_org):
            try:
                results.append(_import_one(p, store, str(source), plan_org, bar))
            except (FaberRunlogError, OSError) as e:  # one bad run (damaged since its last import) stops no other
                results.append(
                    ImportedRun(
                        p.original_id,
                        str(p.rid),
                        p.folder.path,
                        "failed",
                        len(p.events),
                        0,
                        notes=(*p.notes, " ".join(str(e).split())),
                    )
                )
    return ImportReport(source=str(source), destination=store.url, runs=tuple(results))


# -- export: our run -> FABER shapes -----------------------------------------------------------------


def _faber_artifact(item: Any) -> dict[str, Any]:
    if isinstance(item, str):
        return {"type": "file", "name": posixpath.basename(item.rstrip("/")) or item, "path": item}
    out = dict(item)
    path = out.get("path")
    if out.get("type") not in FABER_ARTIFACT_TYPES:
        out["type"] = "file" if isinstance(path, str) else "other"
    if not isinstance(out.get("name"), str) or not out["name"]:
        out["name"] = posixpath.basename(path.rstrip("/")) if isinstance(path, str) and path else "artifact"
    for key in ("path", "url", "sha"):
        if key in out and not isinstance(out[key], str):
            out[key] = str(out[key])
    if "size_bytes" in out and (not isinstance(out["size_bytes"], int) or isinstance(out["size_bytes"], bool)):
        del out["size_bytes"]
    return out


def _metadata_fits(etype: str, metadata: dict[str, Any]) -> bool:
    """FABER's per-type rules on metadata (workflow_start and phase_start)."""

    def strings(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    if etype == "workflow_start":
        for key in ("work_id", "target", "workflow_id", "autonomy"):
            if key in metadata and not isinstance(metadata[key], str):
                return False
        return "phases" not in metadata or strings(metadata["phases"])
    if etype == "phase_start":
        return all(key not in metadata or strings(metadata[key]) for key in ("steps", "hooks"))
    return True


_TYPE_TO_FABER: Final = {
    "approval_requested": "approval_request", "workflow_paused": "checkpoint", "step_skip": "step_complete",
}  # fmt: skip  # a table: one row per line


def faber_event(event: Event, faber_run_id: str | None = None) -> dict[str, Any]:  # noqa: C901  (the reverse mapping table, one branch per event type)
    """One of our events as a FABER event that validates against FABER's ``event.schema.json``.

    What FABER's shapes cannot hold (a phase outside FABER's five, a status word
    FABER does not know, a string error, a type FABER lacks, an idempotency key)
    is kept in ``metadata.faber_runlog`` so that importing the file gives the
    same event back.
    """
    metadata = dict(event.metadata)
    book = metadata.pop(IMPORT_KEY, None)
    original_type = book.get("type") if isinstance(book, dict) else None
    derived = book.get("derived") if isinstance(book, dict) else None
    for key in derived if isinstance(derived, list) else ():
        if isinstance(key, str) and key.startswith("metadata."):
            metadata.pop(key[len("metadata.") :], None)
    etype = event.type
    if etype == UNMAPPED_TYPE and isinstance(original_type, str) and original_type in FABER_EVENT_TYPES:
        etype = original_type  # an imported FABER event goes back under its own type
    changed: dict[str, Any] = {}
    if etype == "approval_resolved":
        etype = "approval_granted" if metadata.get("action") == "approve" else "approval_denied"
    elif etype not in FABER_EVENT_TYPES:
        etype = _TYPE_TO_FABER.get(etype, "checkpoint")
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "type": etype,
        "timestamp": event.timestamp,
        "run_id": faber_run_id or event.run_id,
    }
    if event.phase is not None:
        if event.phase in FABER_PHASES:
            out["phase"] = event.phase
        else:
            changed["phase"] = event.phase
    if event.step is not None:
        out["step"] = event.step
    if event.status is not None:
        if event.status in FABER_EVENT_STATUSES:
            out["status"] = event.status
        else:
            changed["status"] = event.status
    for key in ("user", "source", "message"):
        value = getattr(event, key)
        if value is not None:
            out[key] = value
    if event.duration_ms is not None:
        as_int = round(event.duration_ms)
        out["duration_ms"] = max(0, as_int)
        if out["duration_ms"] != event.duration_ms:
            changed["duration_ms"] = event.duration_ms
    if event.error is not None:
        if isinstance(event.error, dict):
            err = {k: v for k, v in event.error.items()}
            for key in ("code", "message", "stack"):
                if key in err and not isinstance(err[key], str):
                    err[key] = str(err[key])
            if "recoverable" in err and not isinstance(err["recoverable"], bool):
                err["recoverable"] = bool(err["recoverable"])
            if err != event.error:
                changed["error"] = event.error
        else:
            err = {"message": str(event.error)}
            changed["error"] = event.error
        out["error"] = err
    if etype.endswith("_error") and "error" not in out:
        out["error"] = {"message": event.error_message or event.message or etype}
        changed["error"] = None
    if event.artifacts:
        converted = [_faber_artifact(a) for a in event.artifacts]
        out["artifacts"] = converted
        if converted != event.artifacts:
            changed["artifacts"] = event.artifacts
    if etype == "step_complete":
        if event.type == "step_skip" and "status" not in out:
            out["status"] = "skipped"
            changed.setdefault("status", None)
        for key, default in (("status", "completed"), ("duration_ms", 0)):
            if key not in out:
                out[key] = default
                changed.setdefault(key, None)
    if etype == "step_complete" and ("phase" not in out or "step" not in out):
        etype = out["type"] = "checkpoint"  # FABER requires a FABER phase and a step for step_complete
    if etype == "phase_start" and "phase" not in out:
        etype = out["type"] = "checkpoint"
    if event.idempotency_key is not None:
        changed["idempotency_key"] = event.idempotency_key
    if event.schema_version != 1:
        changed["schema_version"] = event.schema_version
    marker: dict[str, Any] = {}
    if not _metadata_fits(etype, metadata):
        marker["metadata"] = metadata
        metadata = {}
    if etype != event.type and not (event.type == UNMAPPED_TYPE and etype == original_type):
        marker["type"] = event.type  # (an imported FABER event under its own type needs no marker)
    if changed:
        marker["fields"] = changed
    if marker:
        metadata[EXPORT_KEY] = marker
    if metadata:
        out["metadata"] = metadata
    return out


def faber_metadata(run: Run) -> dict[str, Any]:
    """The run's ``metadata.json`` in FABER's shape (work_id, phases, relationships, environment)."""
    meta = run.metadata
    came_from = meta.imported_from or {}
    original = came_from.get("metadata") if came_from.get("format") == "faber" else None
    params = meta.params
    env = meta.environment
    faber_lineage = meta.lineage.get("faber")
    lineage: dict[str, Any] = faber_lineage if isinstance(faber_lineage, dict) else {}
    phases = list(meta.phases) or [p for p in run.state().phases]
    body: dict[str, Any] = {
        "run_id": run.id,
        "work_id": str(params.get("work_id", "")),
        "target": params.get("target"),
        "workflow_id": str(params.get("workflow_id", "default")),
        "autonomy": str(params.get("autonomy", "guarded")),
        "source_type": str(params.get("source_type", "manual")),
        "phases": phases,
        "created_at": meta.created_at,
        "created_by": str(env.get("user") or "unknown"),
        "relationships": {
            "parent_run_id": lineage.get("parent_run_id"),
            "rerun_of": meta.parent_run_id,
            "child_runs": run.store.children(run.id),
        },
        "environment": {
            "hostname": str(env.get("hostname") or env.get("host") or "unknown"),
            "git_branch": str(env.get("git_branch") or "unknown"),
            "git_commit": str(env.get("git_commit") or "unknown"),
            "working_directory": str(env.get("working_directory") or ""),
        },
    }
    if isinstance(original, dict):
        body = {**original, "run_id": run.id}
    body[EXPORT_KEY] = {
        "run_id": run.id,
        "params": params,
        "tags": meta.tags,
        "phases": list(meta.phases),
        "steps": meta.steps,
    }
    return body


def _faber_phase(p: PhaseState) -> dict[str, Any]:
    body: dict[str, Any] = {"status": faber_phase_status(p.status)}
    if p.started_at:
        body["started_at"] = p.started_at
    if p.ended_at and p.status in ("completed", "failed", "skipped", "cancelled"):
        body["completed_at"] = p.ended_at
    body["steps"] = [
        {
            k: v
            for k, v in {
                "name": s.name,
                "status": faber_phase_status(s.status),
                "started_at": s.started_at,
                "completed_at": s.ended_at,
                "duration_ms": s.duration_ms,
            }.items()
            if v is not None
        }
        for s in p.steps.values()
    ]
    if p.attempts > 1:
        body["retry_count"] = p.attempts - 1
    return body


def _faber_error(e: ErrorRecord) -> dict[str, Any]:
    body = {"code": e.type, "message": e.message, "phase": e.phase, "step": e.step, "event_id": e.event_id}
    return {k: v for k, v in body.items() if v is not None}


def faber_state(run: Run, state: RunState | None = None) -> dict[str, Any]:
    """The run's folded state in the shape of FABER's ``state.json`` (status words mapped)."""
    state = state if state is not None else run.state()
    work_id = run.metadata.params.get("work_id")
    return {
        "run_id": run.id,
        "work_id": "" if work_id is None else str(work_id),
        "workflow_version": "2.1",
        "status": faber_run_status(state.status),
        "current_phase": state.current_phase,
        "last_event_id": state.last_event_id,
        "started_at": state.started_at,
        "updated_at": state.updated_at or run.metadata.created_at,
        "completed_at": state.ended_at if state.is_terminal else None,
        "phases": {p.name: _faber_phase(p) for p in state.phases.values()},
        "artifacts": {a.kind or a.path: a.path for a in state.artifacts},
        "errors": [_faber_error(e) for e in state.errors],
        EXPORT_KEY: {"status": state.status},
    }


def _refuse_symlinks(fs: Any, root: str, path: str) -> None:
    """Refuse (``UnsafePath``) a local ``path`` under ``root`` that is, or lies below, a symlink."""
    if not _local_real(fs):
        return
    root = root.rstrip("/")
    here = root
    for part in posixpath.relpath(path, root).split("/"):
        here = f"{here}/{part}"
        if os.path.islink(here):
            raise UnsafePath(
                f"refusing to write the FABER export through {here}: it is a symlink (to "
                f"{os.path.realpath(here)}), so the write could land outside {root}; remove the symlink "
                "or export somewhere else"
            )


@attrs.frozen(slots=True)
class ExportResult:
    """Where :func:`export_faber` wrote a run and how many events."""

    run_id: str
    path: str
    events: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return to_dict(self)


ID_FORMS: Final = ("uuid", "plan")
"""How :func:`export_faber` names a run: FABER's ``org/project/uuid`` folders, or v5's plan-based layout."""


def _plan_names(run: Run) -> tuple[str, str]:
    """``(plan_id, ts)`` of a run exported in v5's plan-based layout."""
    work = run.metadata.params.get("work_id")
    plan_id = _slug(f"{run.run_id.org}-{run.run_id.project}-{work if work not in (None, '') else run.run_id.uuid[:8]}")
    ts = re.sub(r"[:.]", "-", run.metadata.created_at[:19]) + "Z"
    return plan_id, ts


def _plan_files(run: Run, state: RunState, plan_id: str, ts: str) -> dict[str, dict[str, Any]]:
    """``plan.json`` and ``state-{ts}.json`` of a plan-based export, by name relative to the plan folder."""
    faber = faber_state(run, state)
    params = run.metadata.params
    plan = {
        "plan_id": plan_id,
        "created_by": "api",
        "created_at": run.metadata.created_at,
        "workflow": str(params.get("workflow_id", "default")),
        "autonomy": str(params.get("autonomy", "guarded")),
        "phases": [{"phase": name, "description": name, "steps": []} for name in faber["phases"]],
    }
    phases = {
        name: {
            "status": body["status"],
            "steps": {s["name"]: {"status": s["status"]} for s in body["steps"]},
            "retry_count": body.get("retry_count", 0),
        }
        for name, body in faber["phases"].items()
    }
    state_body = {
        "run_id": f"{plan_id}{PLAN_RUN_MARKER}{ts}",
        "plan_id": plan_id,
        "work_id": faber["work_id"] or None,
        "workflow_id": plan["workflow"],
        "status": faber["status"],
        "current_phase": faber["current_phase"],
        "current_step_id": state.current_step,
        "phases": phases,
        "steps_completed": [],
        "artifacts": faber["artifacts"],
        "started_at": faber["started_at"] or run.metadata.created_at,
        "updated_at": faber["updated_at"],
        EXPORT_KEY: {"run_id": run.id, "status": state.status},
    }
    return {"plan.json": plan, f"state-{ts}.json": state_body}


def export_faber(
    store: RunStore,
    run_id: str | RunId,
    dest: str,
    *,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    id_form: str = "uuid",
) -> ExportResult:
    """Write a run as a FABER run folder under the FABER base folder ``dest`` (FABER v5 reads both forms).

    ``id_form="uuid"``: ``{dest}/{org}/{project}/{uuid}`` with ``metadata.json``
    and ``state.json`` in FABER's shapes, ``events/NNN-{type}.json`` (``%03d``
    numbering, the event ids of our gapless log) and ``events/.next-id``.
    ``id_form="plan"``: v5's plan-based layout, ``{dest}/{plan_id}/plan.json``,
    ``state-{ts}.json``, ``.run-{ts}`` and ``{plan_id}/{ts}/events/`` with
    ``plan_id = {org}-{project}-{work_id}``. Each event validates against
    FABER's ``event.schema.json``; importing the folder gives the same events
    back, into the same run. An existing folder with event files is refused
    (:class:`RunExists`) unless ``overwrite``; a symlink in the way is refused
    (:class:`UnsafePath`), so nothing is written or deleted outside ``dest``.
    """
    if id_form not in ID_FORMS:
        raise InvalidArgument(f"id_form must be one of {', '.join(ID_FORMS)}, got {id_form!r}")
    run = store.get_run(run_id)
    fs, root = open_filesystem(str(dest), storage_options)
    base = root.rstrip("/")
    extra: dict[str, bytes] = {}
    state = run.state()
    if id_form == "plan":
        plan_id, ts = _plan_names(run)
        folder, faber_id = f"{base}/{plan_id}/{ts}", f"{plan_id}/{ts}"
        for name, body in _plan_files(run, state, plan_id, ts).items():
            extra[f"{base}/{plan_id}/{name}"] = _codec.dumps_indented(body)
        extra[f"{base}/{plan_id}/.run-{ts}"] = b"1"
    else:
        folder, faber_id = f"{base}/{run.id}", run.id
        extra[f"{folder}/metadata.json"] = _codec.dumps_indented(faber_metadata(run))
        extra[f"{folder}/state.json"] = _codec.dumps_indented(faber_state(run, state))
    events_dir = f"{folder}/events"
    for path in (f"{events_dir}/.next-id", *extra):
        _refuse_symlinks(fs, root, path)
    try:
        existing = [p for p in fs.find(events_dir, withdirs=False, detail=False)]
    except FileNotFoundError:
        existing = []
    if existing and not overwrite:
        raise advise(RunExists(f"{folder} already holds a FABER run with {len(existing)} files"), "overwrite")
    try:
        for path in existing:
            _refuse_symlinks(fs, root, path)
            fs.rm_file(path)
        events = list(run.log.read(until=state.last_event_id))
        fs.makedirs(events_dir, exist_ok=True)
        with Progress("exporting events", len(events), enabled=progress) as bar:
            for event in events:
                body = faber_event(event, faber_id)
                fs.pipe_file(f"{events_dir}/{event.event_id:03d}-{body['type']}.json", _codec.dumps_indented(body))
                bar.update()
        fs.pipe_file(f"{events_dir}/.next-id", f"{len(events) + 1}\n".encode())
        for path, data in extra.items():
            fs.pipe_file(path, data)
    except OSError as e:
        raise StorageError(f"cannot write the FABER export of run {run.id} to {folder}: {e}") from e
    return ExportResult(run_id=run.id, path=folder, events=len(events))
