"""Run metadata (written once, at creation) and the environment it records."""

from __future__ import annotations

import functools
import getpass
import os
import platform
import socket
import subprocess
from typing import TYPE_CHECKING, Any, Final

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base.converter import converter, to_dict
from faber_runlog._domain.events import SCHEMA_VERSION
from faber_runlog._format.faber import faber_run_hint, looks_like_faber_metadata
from faber_runlog._format.layout import RunLayout
from faber_runlog._version import __version__
from faber_runlog.errors import CorruptState, FaberRunNotImported

if TYPE_CHECKING:
    from faber_runlog._base.ids import RunId
    from faber_runlog._storage.backends import Storage

__all__ = ["USER", "RunMetadata", "capture_environment", "parse_metadata"]


LISTING_BYTES: Final = 1024
"""The most metadata a summary carries for listings, so a listing reads about 1 KB per run."""


@attrs.frozen(slots=True)
class RunMetadata:
    """What a run is: its id, parameters, tags, lineage, workflow plan and where it was started."""

    org: str
    project: str
    uuid: str
    created_at: str
    params: dict[str, Any] = attrs.field(factory=dict)
    params_hash: str = ""
    tags: dict[str, str] = attrs.field(factory=dict)
    library_version: str = __version__
    schema_version: int = SCHEMA_VERSION
    environment: dict[str, Any] = attrs.field(factory=dict)
    parent_run_id: str | None = None
    root_run_id: str | None = None
    lineage: dict[str, Any] = attrs.field(factory=dict)
    phases: list[str] = attrs.field(factory=list)
    """The planned phases, in order (the workflow plan; empty when none was given)."""
    steps: dict[str, list[str]] = attrs.field(factory=dict)
    """Planned steps of some planned phases, in order, keyed by phase."""
    imported_from: dict[str, Any] | None = None
    """Where an imported run came from (format, original id, path, original metadata)."""
    seal_grace: float | None = None
    """The ``seal_grace`` of the store that created the run: writers and cleaners of this run use it, so
    a handle opened with another setting can neither clean too early nor skip its check too long
    (docs/concurrency.md, protocol rule 6). None: created before it was recorded."""

    def listing(self) -> dict[str, Any]:
        """What a listing shows of this metadata; summaries carry it, so listings read one small object per run."""
        return {
            "created_at": self.created_at,
            "params": self.params,
            "tags": self.tags,
            "parent_run_id": self.parent_run_id,
        }

    def summary_listing(self) -> dict[str, Any] | None:
        """:meth:`listing` for ``summary.json``, or None when too large to carry (listings then read the metadata)."""
        listing = self.listing()
        return listing if len(_codec.dumps(listing)) <= LISTING_BYTES else None

    @property
    def run_id(self) -> str:
        """``org/project/uuid``: derived, so ``metadata.json`` does not store it (files that do still load)."""
        return f"{self.org}/{self.project}/{self.uuid}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the ``metadata.json`` body)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunMetadata:
        """Rebuild from :meth:`to_dict` output."""
        return converter.structure(data, cls)


def _git(args: list[str], cwd: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value else None


def _default_user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):  # no passwd entry in some containers
        return None


USER: Final = _default_user()
"""This process's user: what metadata records and what every event of a log carries by default."""


def parse_metadata(storage: Storage, rid: RunId, body: bytes) -> RunMetadata:
    """Run ``rid``'s metadata.json ``body`` as read from ``storage``.

    A damaged file is a :class:`CorruptState` naming it; FABER's own metadata (a run folder not
    imported yet) is a :class:`FaberRunNotImported` that says how to import it.
    """
    try:
        return RunMetadata.from_dict(_codec.loads(body))
    except Exception as e:
        path = storage.path(RunLayout(rid).metadata)
        if looks_like_faber_metadata(body):
            folder = storage.path(RunLayout(rid).dir)
            raise FaberRunNotImported(
                f"{faber_run_hint(folder, str(rid))}; faber_runlog reads it once imported",
                run_id=str(rid),
                path=folder,
            ) from None
        raise CorruptState(
            f"metadata.json of run {rid} at {path} is unreadable ({e}); restore it from a backup",
            run_id=str(rid),
            path=path,
        ) from e


@functools.lru_cache(maxsize=8)
def _git_info(cwd: str) -> tuple[str | None, str | None]:
    return _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd), _git(["rev-parse", "HEAD"], cwd)


def capture_environment() -> dict[str, Any]:
    """Host, user, Python and (inside a git checkout) branch and commit."""
    branch, commit = _git_info(os.getcwd())
    env: dict[str, Any] = {
        "host": socket.gethostname(),
        "user": USER,  # the same user the events carry
        "python": platform.python_version(),
        "pid": os.getpid(),
    }
    if branch is not None:
        env["git_branch"] = branch
    if commit is not None:
        env["git_commit"] = commit
    return env
