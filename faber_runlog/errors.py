"""Every error faber_runlog raises: one root, six categories, each category one builtin.

Catch ``FaberRunlogError`` for anything of ours, a category for a kind of failure, or the
builtin your code already handles. Messages name the run id, the sequence number or file,
and what to do. Every error pickles with its attributes (multiprocessing, concurrent.futures).

The tree (builtin bases in brackets; a leaf adds a narrower builtin only where it says more)::

    FaberRunlogError [Exception]
    ├── InvalidArgument [ValueError]          bad input: the call is wrong, nothing was touched
    │   ├── InvalidRunId
    │   ├── InvalidParams
    │   ├── InvalidEvent
    │   ├── InvalidEventPosition
    │   ├── InvalidFilter
    │   ├── InvalidRerun
    │   ├── InvalidStoreUrl [+TypeError]
    │   ├── ReadOnlyValue [+TypeError]
    │   └── UnsafePath
    ├── Refused [RuntimeError]                the run's (or store's) current state refuses the call
    │   ├── ActiveRunExists
    │   ├── ApprovalConflict
    │   ├── InvalidTransition
    │   ├── LeaseLost
    │   ├── RunArchived
    │   ├── RunExists
    │   ├── RunNotRerunnable
    │   ├── RunNotResumable
    │   ├── RunStillActive
    │   ├── TooManyActiveRuns
    │   └── TooMuchContention
    ├── NotFound [LookupError]                nothing by that name exists
    │   ├── ApprovalNotFound
    │   └── RunNotFound
    │       └── FaberRunNotImported
    ├── CorruptData [ValueError]              stored bytes are damaged or inconsistent
    │   ├── ConsolidationError
    │   ├── CorruptEvent
    │   └── CorruptState
    ├── StorageError [OSError]                the backend failed or refused us
    │   ├── ArchiveMismatch
    │   ├── BucketNotFound [+LookupError]
    │   ├── CredentialsMissing
    │   ├── SequenceConflict [+FileExistsError]
    │   └── StoreAccessDenied [+PermissionError]
    └── ConfigurationError [RuntimeError]     the environment is set up wrongly
        ├── ConcurrencyUnsupported
        ├── InvalidGatewayConfig
        └── MissingExtra [+ImportError]

Why these bases: bad input is a ``ValueError`` (the value of an argument is wrong; retrying the
same call fails the same way). A refusal is a ``RuntimeError``: the call is well formed, but the
run's current state, which another process may change, forbids it now. Not found is a
``LookupError`` (like ``KeyError``). Corrupt data is a ``ValueError``: a value read back is
malformed, not the call. Storage failures are ``OSError`` (what fsspec and ``open`` raise).
Configuration problems are a ``RuntimeError``: neither the call nor the run is wrong, the
environment is.
"""

from __future__ import annotations

__all__ = [
    "ActiveRunExists",
    "ApprovalConflict",
    "ApprovalNotFound",
    "ArchiveMismatch",
    "BucketNotFound",
    "ConcurrencyUnsupported",
    "ConfigurationError",
    "ConsolidationError",
    "CorruptData",
    "CorruptEvent",
    "CorruptState",
    "CredentialsMissing",
    "FaberRunNotImported",
    "FaberRunlogError",
    "InvalidArgument",
    "InvalidEvent",
    "InvalidEventPosition",
    "InvalidFilter",
    "InvalidGatewayConfig",
    "InvalidParams",
    "InvalidRerun",
    "InvalidRunId",
    "InvalidStoreUrl",
    "InvalidTransition",
    "LeaseLost",
    "MissingExtra",
    "NotFound",
    "ReadOnlyValue",
    "Refused",
    "RunArchived",
    "RunExists",
    "RunNotFound",
    "RunNotRerunnable",
    "RunNotResumable",
    "RunStillActive",
    "SequenceConflict",
    "StorageError",
    "StoreAccessDenied",
    "TooManyActiveRuns",
    "TooMuchContention",
    "UnsafePath",
]


def _rebuild(cls: type[BaseException], args: tuple[object, ...], attrs: dict[str, object]) -> BaseException:
    """Unpickle one of our errors: its args and attributes, without calling ``__init__``.

    ``__init__`` takes keyword-only fields that ``BaseException.__reduce__`` would not pass back,
    so unpickling it the default way raises ``TypeError``.
    """
    args = tuple(args)
    # OSError has its own instance layout, so its __new__ must build an error that mixes it in.
    new = OSError.__new__ if issubclass(cls, OSError) else cls.__new__
    err = new(cls, *args)
    err.args = args
    err.__dict__.update(attrs)
    return err


class FaberRunlogError(Exception):
    """Root of every error raised by faber_runlog."""

    advice: tuple[str, ...] = ()
    """Stable codes of what to do about it (``"rerun"``, ``"list_runs"``); empty when the message says it all.

    The message ends with the advice in Python terms; the CLI and the MCP server word the same codes
    as commands and tools."""

    def __reduce__(self) -> tuple[object, ...]:
        # One rule for every subclass: args plus attributes, so keyword-only fields survive pickling.
        return _rebuild, (type(self), self.args, dict(self.__dict__))


# -- categories --------------------------------------------------------------------------


class InvalidArgument(FaberRunlogError, ValueError):
    """Bad input: an argument is malformed, out of range or of the wrong kind; nothing was touched."""


class Refused(FaberRunlogError, RuntimeError):
    """The call is well formed but the run's (or store's) current state refuses it; nothing was written."""


class NotFound(FaberRunlogError, LookupError):
    """Nothing by the given name (a run, an approval) exists."""


class CorruptData(FaberRunlogError, ValueError):
    """Stored bytes are damaged or disagree with each other; the message names the file."""


class StorageError(FaberRunlogError, OSError):
    """The backend failed or refused us in a way we could not retry away."""


class ConfigurationError(FaberRunlogError, RuntimeError):
    """The environment is set up wrongly (a config file, an optional dependency, a backend's abilities)."""


# -- bad input ---------------------------------------------------------------------------


class InvalidRunId(InvalidArgument):
    """A run id, org or project slug is malformed; nothing was touched."""


class InvalidParams(InvalidArgument):
    """Params, tags, lineage or a plan that JSON cannot hold faithfully (or that are malformed)."""


class UnsafePath(InvalidArgument):
    """A path would leave the store root; refused before any I/O."""


class InvalidEvent(InvalidArgument):
    """An event failed its schema or carries a bad value; nothing was written."""

    def __init__(self, message: str, *, run_id: str | None = None, event_type: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.event_type = event_type


class InvalidStoreUrl(InvalidArgument, TypeError):
    """The store URL is empty, not a string or path, or names a protocol no installed filesystem handles.

    It is a ``ValueError`` for a bad URL and a ``TypeError`` for a value that is no URL at all,
    so callers catching either builtin keep working.
    """


class ReadOnlyValue(InvalidArgument, TypeError):
    """Code tried to change a read-only value (an event's metadata or artifacts); nothing changed.

    A ``TypeError`` too, as for any object that does not support item assignment.
    """


class InvalidFilter(InvalidArgument):
    """A query filter names a value that cannot match (an unknown status); nothing was read."""


class InvalidEventPosition(InvalidArgument):
    """An event id asked of a run is beyond its last event (or negative): the caller's mistake, not damage."""

    def __init__(self, message: str, *, run_id: str, at: int, last_event_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.at = at
        self.last_event_id = last_event_id


class InvalidRerun(InvalidArgument):
    """A re-run was asked with a bad mode or starting event; no run was created."""

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


# -- refused by state --------------------------------------------------------------------


class RunExists(Refused):
    """A run with this id already exists; it was left untouched."""


class ActiveRunExists(Refused):
    """Another active run holds the concurrency key; no run was created."""

    def __init__(self, message: str, *, run_id: str, status: str, concurrency_key: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
        self.concurrency_key = concurrency_key


class TooManyActiveRuns(Refused):
    """The store's maximum of active runs is reached; no run was created."""

    def __init__(self, message: str, *, limit: int, active_run_ids: tuple[str, ...]) -> None:
        super().__init__(message)
        self.limit = limit
        self.active_run_ids = active_run_ids


class TooMuchContention(Refused):
    """Others kept changing what a compare-and-swap or exclusive create built on; it gave up after bounded tries."""

    def __init__(self, message: str, *, run_id: str | None, tries: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.tries = tries


class InvalidTransition(Refused):
    """A lifecycle action is not allowed in the run's current status; nothing was written."""

    def __init__(self, message: str, *, run_id: str, status: str, action: str, last_event_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
        self.action = action
        self.last_event_id = last_event_id


class ApprovalConflict(Refused):
    """An approval decision conflicts with the one already recorded; nothing was written."""

    def __init__(self, message: str, *, run_id: str, approval_id: str, reason: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.approval_id = approval_id
        self.reason = reason


class LeaseLost(Refused):
    """This writer's lease on a run was taken over or swept, so its event was refused (nothing was written)."""

    def __init__(self, message: str, *, run_id: str, epoch: int | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.epoch = epoch


class RunArchived(Refused):
    """The run is consolidated (or archived): its log is sealed, so nothing can be appended."""

    def __init__(self, message: str, *, run_id: str, last_event_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.last_event_id = last_event_id


class RunStillActive(Refused):
    """The run has not finished (not completed, failed or cancelled), so it cannot be consolidated."""

    def __init__(self, message: str, *, run_id: str, status: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status


class RunNotResumable(Refused):
    """A run cannot be resumed now (completed, archived, cancelled, or owned by a live writer)."""

    def __init__(
        self,
        message: str,
        *,
        run_id: str,
        status: str,
        last_event_id: int,
        last_event_type: str | None,
        reason: str,
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
        self.last_event_id = last_event_id
        self.last_event_type = last_event_type
        self.reason = reason


class RunNotRerunnable(Refused):
    """A run cannot be re-run because it has not finished (it is not completed, failed or cancelled)."""

    def __init__(self, message: str, *, run_id: str, status: str, last_event_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
        self.last_event_id = last_event_id


# -- not found ---------------------------------------------------------------------------


class RunNotFound(NotFound):
    """No run with this id exists in the store."""

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class FaberRunNotImported(RunNotFound):
    """The run's folder holds a FABER run (FABER's own files), not one of ours: import it first."""

    def __init__(self, message: str, *, run_id: str, path: str) -> None:
        super().__init__(message, run_id=run_id)
        self.path = path


class ApprovalNotFound(NotFound):
    """No approval with this id was requested in the run."""

    def __init__(self, message: str, *, run_id: str, approval_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.approval_id = approval_id


# -- corrupt data ------------------------------------------------------------------------


class CorruptEvent(CorruptData):
    """A stored event file is unreadable (truncated, not JSON, wrong id)."""

    def __init__(self, message: str, *, run_id: str, seq: int, path: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.seq = seq
        self.path = path


class CorruptState(CorruptData):
    """A stored state.json or metadata.json is unreadable."""

    def __init__(self, message: str, *, run_id: str, path: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.path = path


class ConsolidationError(CorruptData):
    """A run's events cannot be consolidated as they are (a gap, a damaged file); nothing was removed."""

    def __init__(self, message: str, *, run_id: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.seq = seq


# -- storage -----------------------------------------------------------------------------


class SequenceConflict(StorageError, FileExistsError):
    """A sequence number could not be claimed after bounded retries."""

    def __init__(self, message: str, *, run_id: str, seq: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.seq = seq


class ArchiveMismatch(StorageError):
    """What arrived in the archive differs from the source (size or hash); nothing local was removed."""

    def __init__(self, message: str, *, run_id: str, path: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.path = path


class _StoreProblem(StorageError):
    """A store that cannot be used as configured: names the bucket and prefix, and what to do."""

    def __init__(self, message: str, *, bucket: str, prefix: str) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.prefix = prefix

    def __str__(self) -> str:
        return str(self.args[0])


class BucketNotFound(_StoreProblem, LookupError):
    """The store's bucket does not exist (a typo, or another account or region)."""


class StoreAccessDenied(_StoreProblem, PermissionError):
    """The credentials in use may not read or write the store's bucket or prefix."""


class CredentialsMissing(_StoreProblem):
    """No credentials were found for the object store; the message lists where we looked."""


# -- configuration -----------------------------------------------------------------------


class ConcurrencyUnsupported(ConfigurationError):
    """The backend ignores exclusive create, so concurrent writers are unsafe."""


class InvalidGatewayConfig(ConfigurationError):
    """gateway.json is unreadable, fails its schema or holds a credential; nothing was written."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class MissingExtra(ConfigurationError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
