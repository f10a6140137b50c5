"""Every error faber_runlog raises: one root, each subclass also a builtin.

Callers can catch ``FaberRunlogError`` for anything of ours, or the builtin
(``LookupError``, ``ValueError``, ``FileExistsError``) they already handle.
Messages name the run id, the sequence number or file, and what to do.
"""

from __future__ import annotations

__all__ = [
    "ActiveRunExists",
    "ApprovalConflict",
    "ApprovalNotFound",
    "ArchiveMismatch",
    "BucketNotFound",
    "ConcurrencyUnsupported",
    "ConsolidationError",
    "CorruptEvent",
    "CorruptState",
    "CredentialsMissing",
    "FaberRunlogError",
    "InvalidEvent",
    "InvalidEventPosition",
    "InvalidFilter",
    "InvalidGatewayConfig",
    "InvalidRerun",
    "InvalidRunId",
    "InvalidStoreUrl",
    "InvalidTransition",
    "LeaseLost",
    "MissingExtra",
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
    "UnsafePath",
]


class FaberRunlogError(Exception):
    """Root of every error raised by faber_runlog."""


class InvalidRunId(FaberRunlogError, ValueError):
    """A run id, org or project slug is malformed; nothing was touched."""


class InvalidArgument(FaberRunlogError, ValueError):
    """A caller passed an argument out of range or of the wrong kind; nothing was touched."""


class UnsafePath(FaberRunlogError, ValueError):
    """A path would leave the store root; refused before any I/O."""


class InvalidEvent(FaberRunlogError, ValueError):
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


class InvalidFilter(InvalidArgument):
    """A query filter names a value that cannot match (an unknown status); nothing was read."""


class InvalidEventPosition(InvalidArgument):
    """An event id asked of a run is beyond its last event (or negative): the caller's mistake, not damage."""

    def __init__(self, message: str, *, run_id: str, at: int, last_event_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.at = at
        self.last_event_id = last_event_id

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), self.__dict__))


def _rebuild(cls: type[Exception], message: str, attrs: dict[str, object]) -> Exception:
    """Unpickle an error whose constructor takes keyword-only fields: message and fields, no __init__ call."""
    err = cls.__new__(cls, message)
    err.args = (message,)
    err.__dict__.update(attrs)
    return err


class InvalidGatewayConfig(FaberRunlogError, ValueError):
    """gateway.json is unreadable, fails its schema or holds a credential; nothing was written."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class RunNotFound(FaberRunlogError, LookupError):
    """No run with this id exists in the store."""

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id



class RunExists(FaberRunlogError, FileExistsError):
    """A run with this id already exists; it was left untouched."""


class SequenceConflict(FaberRunlogError, FileExistsError):
    """A sequence number could not be claimed after bounded retries."""

    def __init__(self, message: str, *, run_id: str, seq: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.seq = seq



class CorruptEvent(FaberRunlogError, ValueError):
    """A stored event file is unreadable (truncated, not JSON, wrong id)."""

    def __init__(self, message: str, *, run_id: str, seq: int, path: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.seq = seq
        self.path = path


class CorruptState(FaberRunlogError, ValueError):
    """A stored state.json or metadata.json is unreadable."""

    def __init__(self, message: str, *, run_id: str, path: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.path = path


class ConcurrencyUnsupported(FaberRunlogError, RuntimeError):
    """The backend ignores exclusive create, so concurrent writers are unsafe."""


class StorageError(FaberRunlogError, OSError):
    """The backend failed in a way we could not retry away."""


class _StoreProblem(StorageError):
    """A store that cannot be used as configured: names the bucket and prefix, and what to do."""

    def __init__(self, message: str, *, bucket: str, prefix: str) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.prefix = prefix

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild, (type(self), str(self.args[0]), {"bucket": self.bucket, "prefix": self.prefix})


class BucketNotFound(_StoreProblem, LookupError):
    """The store's bucket does not exist (a typo, or another account or region)."""


class StoreAccessDenied(_StoreProblem, PermissionError):
    """The credentials in use may not read or write the store's bucket or prefix."""


class CredentialsMissing(_StoreProblem):
    """No credentials were found for the object store; the message lists where we looked."""


class LeaseLost(FaberRunlogError, RuntimeError):
    """This writer's lease on a run was taken over or swept, so its event was refused (nothing was written)."""

    def __init__(self, message: str, *, run_id: str, epoch: int | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.epoch = epoch

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild, (type(self), str(self.args[0]), {"run_id": self.run_id, "epoch": self.epoch})


class RunArchived(FaberRunlogError, RuntimeError):
    """The run is consolidated (or archived): its log is sealed, so nothing can be appended."""

    def __init__(self, message: str, *, run_id: str, last_event_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.last_event_id = last_event_id


class RunStillActive(FaberRunlogError, RuntimeError):
    """The run has not finished (not completed, failed or cancelled), so it cannot be consolidated."""

    def __init__(self, message: str, *, run_id: str, status: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status


class ConsolidationError(FaberRunlogError, ValueError):
    """A run's events cannot be consolidated as they are (a gap, a damaged file); nothing was removed."""

    def __init__(self, message: str, *, run_id: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.seq = seq


class MissingExtra(FaberRunlogError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class ArchiveMismatch(FaberRunlogError, RuntimeError):
    """What arrived in the archive differs from the source (size or hash); nothing local was removed."""

    def __init__(self, message: str, *, run_id: str, path: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.path = path


class RunNotResumable(FaberRunlogError, RuntimeError):
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


class RunNotRerunnable(FaberRunlogError, RuntimeError):
    """A run cannot be re-run because it has not finished (it is not completed, failed or cancelled)."""

    def __init__(self, message: str, *, run_id: str, status: str, last_event_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
        self.last_event_id = last_event_id


class InvalidRerun(FaberRunlogError, ValueError):
    """A re-run was asked with a bad mode or starting event; no run was created."""

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class InvalidTransition(FaberRunlogError, ValueError):
    """A lifecycle action is not allowed in the run's current status; nothing was written."""

    def __init__(self, message: str, *, run_id: str, status: str, action: str, last_event_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
        self.action = action
        self.last_event_id = last_event_id


class ApprovalNotFound(FaberRunlogError, LookupError):
    """No approval with this id was requested in the run."""

    def __init__(self, message: str, *, run_id: str, approval_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.approval_id = approval_id


class ApprovalConflict(FaberRunlogError, ValueError):
    """An approval decision conflicts with the one already recorded; nothing was written."""

    def __init__(self, message: str, *, run_id: str, approval_id: str, reason: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.approval_id = approval_id
        self.reason = reason


class ActiveRunExists(FaberRunlogError, FileExistsError):
    """Another active run holds the concurrency key; no run was created."""

    def __init__(self, message: str, *, run_id: str, status: str, concurrency_key: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
        self.concurrency_key = concurrency_key


class TooManyActiveRuns(FaberRunlogError, RuntimeError):
    """The store's maximum of active runs is reached; no run was created."""

    def __init__(self, message: str, *, limit: int, active_run_ids: tuple[str, ...]) -> None:
        super().__init__(message)
        self.limit = limit
        self.active_run_ids = active_run_ids
