"""faber_runlog: run ids, an append-only event log and folded run state on fsspec."""

from faber_runlog._version import __version__
from faber_runlog.errors import (
    ConcurrencyUnsupported,
    CorruptEvent,
    CorruptState,
    FaberRunlogError,
    InvalidEvent,
    InvalidRunId,
    RunExists,
    RunNotFound,
    SequenceConflict,
    StorageError,
    UnsafePath,
)
from faber_runlog.events import Event, event_schema, event_types, register_event_type, register_upcaster
from faber_runlog.ids import RunId
from faber_runlog.log import EventLog
from faber_runlog.metadata import RunMetadata
from faber_runlog.state import PhaseState, RunState, StepState, fold, register_fold
from faber_runlog.store import Run, RunStore, RunSummary

__all__ = [
    "ConcurrencyUnsupported",
    "CorruptEvent",
    "CorruptState",
    "Event",
    "EventLog",
    "FaberRunlogError",
    "InvalidEvent",
    "InvalidRunId",
    "PhaseState",
    "Run",
    "RunExists",
    "RunId",
    "RunMetadata",
    "RunNotFound",
    "RunState",
    "RunStore",
    "RunSummary",
    "SequenceConflict",
    "StepState",
    "StorageError",
    "UnsafePath",
    "__version__",
    "event_schema",
    "event_types",
    "fold",
    "register_event_type",
    "register_fold",
    "register_upcaster",
]
