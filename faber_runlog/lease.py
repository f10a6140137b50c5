"""The writer lease of a run: who is executing it, and until when.

A run being executed has ``lease.json`` next to its metadata. Its holder
refreshes ``heartbeat_at``/``expires_at`` (a heartbeat); a lease whose
``expires_at`` has passed belongs to a process that is presumed dead. An
absent lease means no live writer.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import attrs

from faber_runlog import _codec
from faber_runlog._converter import converter
from faber_runlog.ids import RunId
from faber_runlog.layout import RunLayout
from faber_runlog.storage import Storage

__all__ = ["LEASE_NAME", "Lease", "lease_key", "read_lease"]

LEASE_NAME = "lease.json"


@attrs.frozen(slots=True)
class Lease:
    """A writer's claim on a run, valid until ``expires_at`` (ISO 8601, UTC)."""

    owner: str
    acquired_at: str
    heartbeat_at: str
    expires_at: str
    host: str | None = None
    pid: int | None = None

    def is_live(self, now: _dt.datetime | None = None) -> bool:
        """True while the lease has not expired."""
        now = now or _dt.datetime.now(_dt.UTC)
        return _dt.datetime.fromisoformat(self.expires_at) > now

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the ``lease.json`` body)."""
        return converter.unstructure(self)  # type: ignore[no-any-return]


def lease_key(run_id: RunId) -> str:
    """Key of a run's lease object."""
    return f"{RunLayout(run_id).dir}/{LEASE_NAME}"


def read_lease(storage: Storage, run_id: RunId) -> Lease | None:
    """The run's lease, or None if there is none (or it is unreadable)."""
    body = storage.read(lease_key(run_id))
    if body is None:
        return None
    try:
        return converter.structure(_codec.loads(body), Lease)
    except Exception:
        return None
