"""faber_runlog: run ids, an append-only event log and folded run state on fsspec."""

from faber_runlog._version import __version__
from faber_runlog.errors import (
    ActiveRunExists,
    ApprovalConflict,
    ApprovalNotFound,
    ConcurrencyUnsupported,
    CorruptEvent,
    CorruptState,
    FaberRunlogError,
    InvalidEvent,
    InvalidRerun,
    InvalidRunId,
    InvalidTransition,
    RunExists,
    RunNotFound,
    RunNotRerunnable,
    RunNotResumable,
    SequenceConflict,
    StorageError,
    TooManyActiveRuns,
    UnsafePath,
)
from faber_runlog.events import Event, event_schema, event_types, register_event_type, register_upcaster
from faber_runlog.ids import RunId
from faber_runlog.lease import Heartbeat, Lease
from faber_runlog.lifecycle import StatusView, SweptRun
from faber_runlog.log import EventLog
from faber_runlog.metadata import RunMetadata
from faber_runlog.resume import ParamDiff, ResumePlan, Resumer, diff_params
from faber_runlog.state import ApprovalState, PhaseState, RunState, StepState, fold, register_fold
from faber_runlog.store import Lineage, Run, RunStore, RunSummary
from faber_runlog.verify import ReconstructReport, StateDifference, VerifyProblem, VerifyReport

__all__ = [
    "ActiveRunExists",
    "ApprovalConflict",
    "ApprovalNotFound",
    "ApprovalState",
    "ConcurrencyUnsupported",
    "CorruptEvent",
    "CorruptState",
    "Event",
    "EventLog",
    "FaberRunlogError",
    "Heartbeat",
    "InvalidEvent",
    "InvalidRerun",
    "InvalidRunId",
    "InvalidTransition",
    "Lease",
    "Lineage",
    "ParamDiff",
    "PhaseState",
    "ReconstructReport",
    "ResumePlan",
    "Resumer",
    "Run",
    "RunExists",
    "RunId",
    "RunMetadata",
    "RunNotFound",
    "RunNotRerunnable",
    "RunNotResumable",
    "RunState",
    "RunStore",
    "RunSummary",
    "SequenceConflict",
    "StateDifference",
    "StatusView",
    "StepState",
    "StorageError",
    "SweptRun",
    "TooManyActiveRuns",
    "UnsafePath",
    "VerifyProblem",
    "VerifyReport",
    "__version__",
    "diff_params",
    "event_schema",
    "event_types",
    "fold",
    "register_event_type",
    "register_fold",
    "register_upcaster",
]
