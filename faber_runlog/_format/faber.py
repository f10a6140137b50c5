"""Facts about FABER's folders, shared by the importer, the exporter, the store and the MCP tools.

FABER (``fractary/faber``) keeps its runs under a base path: the earlier
plugin used ``.fractary/plugins/faber/runs``, FABER v5 uses
``.fractary/faber/runs`` (``$FABER_RUNS_PATH`` overrides it). A base folder
holds two generations of runs:

- uuid runs, ``{base}/{org}/{project}/{uuid}/`` with ``metadata.json``,
  ``state.json`` and ``events/NNN-{type}.json`` numbered by ``events/.next-id``;
- plan-based runs (v5): ``{base}/{plan_id}/`` holds ``plan.json``, one
  ``state-{ts}.json`` and one sentinel ``.run-{ts}`` per run, and each run's
  events under ``{plan_id}/{ts}/events/``. The events name the run
  ``{plan_id}/{ts}``, the state names it ``{plan_id}-run-{ts}``: both
  spellings are one run.

Next to runs a base folder holds files that are not runs (``.active-run-id``,
``workflows/``, ``active/``, ``checkpoints/``, ``manifests/``,
``changelog.ndjson``): readers skip them quietly.

This module imports nothing of the store, so the store can use it to name a
FABER run it meets instead of calling it damaged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Final

from faber_runlog._base import codec as _codec

__all__ = [
    "FABER_BASE_PATHS",
    "FABER_RUNS_ENV",
    "NON_RUN_NAMES",
    "PLAN_RUN_MARKER",
    "canonical_faber_id",
    "faber_base_paths",
    "faber_run_hint",
    "is_faber_event_name",
    "looks_like_faber_metadata",
    "plan_parts",
    "plan_timestamp",
]

FABER_BASE_PATHS: Final = (".fractary/plugins/faber/runs", ".fractary/faber/runs")
"""Where FABER keeps runs under a project: the earlier plugin's base path and FABER v5's."""
FABER_RUNS_ENV: Final = "FABER_RUNS_PATH"
"""FABER v5's environment variable naming its base path (relative to the project, or absolute)."""
NON_RUN_NAMES: Final = frozenset(
    {".active-run-id", "workflows", "active", "checkpoints", "manifests", "changelog.ndjson"}
)
"""Entries of a FABER base folder that are not runs (FABER's workflow state, manifests, changelog)."""
PLAN_RUN_MARKER: Final = "-run-"
"""The separator of a plan-based run's state-side id ``{plan_id}-run-{ts}``."""

_PLAN_SLUG: Final = re.compile(r"[a-z0-9][a-z0-9-]*[a-z0-9]")
_PLAN_TS: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:-\d{1,9})?Z?")
_EVENT_NAME: Final = re.compile(r"\d+-[A-Za-z0-9_.-]+\.json")
_FABER_METADATA_KEYS: Final = frozenset({"run_id", "work_id", "created_by", "relationships", "source_type"})
_OUR_METADATA_KEYS: Final = frozenset({"uuid", "params_hash"})


def faber_base_paths(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """FABER's base paths under a project: ``$FABER_RUNS_PATH`` (if set) first, then both defaults."""
    env = os.environ if environ is None else environ
    extra = (env.get(FABER_RUNS_ENV) or "").strip().rstrip("/")
    out = [extra] if extra else []
    out.extend(p for p in FABER_BASE_PATHS if p not in out)
    return tuple(out)


def plan_timestamp(text: str) -> bool:
    """Whether ``text`` is a plan-based run's suffix (``2026-02-11T18-56-42``, with or without ``Z``)."""
    return _PLAN_TS.fullmatch(text) is not None


def plan_parts(run_id: str) -> tuple[str, str] | None:
    """``(plan_id, ts)`` of a plan-based run id in either spelling (``{plan_id}/{ts}``, ``{plan_id}-run-{ts}``)."""
    if "/" in run_id:
        plan_id, _, ts = run_id.partition("/")
    else:
        plan_id, sep, ts = run_id.rpartition(PLAN_RUN_MARKER)
        if not sep:
            return None
    if _PLAN_SLUG.fullmatch(plan_id) is None or not plan_timestamp(ts):
        return None
    return plan_id, ts


def canonical_faber_id(run_id: str) -> str:
    """One spelling per FABER run: a state-side ``{plan_id}-run-{ts}`` becomes the event-side ``{plan_id}/{ts}``."""
    parts = plan_parts(run_id)
    return f"{parts[0]}/{parts[1]}" if parts is not None else run_id


def is_faber_event_name(name: str) -> bool:
    """Whether ``name`` is a FABER event file name (``NNN-{type}.json``)."""
    return _EVENT_NAME.fullmatch(name) is not None


def looks_like_faber_metadata(body: bytes | Mapping[str, Any] | None) -> bool:
    """Whether a ``metadata.json`` body is FABER's (``run_id``, ``work_id``, ``relationships`` ...), not ours."""
    if body is None:
        return False
    data: Any = body
    if isinstance(body, bytes):
        data = _codec.load_object(body)
    if not isinstance(data, Mapping) or _OUR_METADATA_KEYS & set(data):
        return False
    return len(_FABER_METADATA_KEYS & set(data)) >= 2


def faber_run_hint(where: str, run_id: str | None = None) -> str:
    """The words every surface uses for a FABER run met in a store: what it is and the command that imports it."""
    name = f"{run_id} is " if run_id else ""
    return (
        f"{name}a FABER run (written by FABER's own scripts, not by faber_runlog): import it with "
        f"`faber-runlog import {where}` (the FABER folder is left as it is)"
    )
