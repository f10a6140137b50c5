"""Run ids as people type them: a full id, a unique uuid prefix, a bare uuid; close matches when none fits.

:meth:`RunStore.resolve_run_id` is the one home of this: the CLI resolves every ``RUN_ID``
through it, and Python callers may too (``store.get_run`` itself stays exact and cheap).
Resolving reads folder listings only (one ``org/project`` folder for ``org/project/3f2b``;
every project folder for a bare uuid or uuid prefix), never metadata or events.
"""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Final

from faber_runlog._format import RunLayout
from faber_runlog._ids import RunId, validate_slug
from faber_runlog.errors import InvalidRunId, RunNotFound

if TYPE_CHECKING:
    from faber_runlog._store import RunStore

__all__ = ["MIN_BARE_PREFIX", "resolve_run_id"]

MIN_BARE_PREFIX: Final = 6
"""Hex digits a uuid prefix needs when no ``org/project/`` comes before it (fewer would match too much)."""
_PREFIX: Final = re.compile(r"[0-9a-f][0-9a-f-]{0,35}", re.ASCII)
_SHOWN: Final = 5


def resolve_run_id(store: RunStore, text: object) -> str:
    """The full id of the one run ``text`` names in ``store``.

    ``text`` is a full id ``org/project/uuid``, ``org/project/`` plus a unique prefix of
    the uuid, a bare uuid, or a unique uuid prefix of at least :data:`MIN_BARE_PREFIX`
    hex digits. An ambiguous prefix raises :class:`InvalidRunId` listing the candidates;
    a run that does not exist raises :class:`RunNotFound` with the close matches.
    """
    if not isinstance(text, str):
        return str(RunId.parse(text))  # a RunId passes through; anything else gets the usual refusal
    parts = text.split("/")
    if len(parts) == 3 and _PREFIX.fullmatch(parts[2]):
        org, project, tail = parts
        try:
            rid = RunId.parse(text)
        except InvalidRunId:
            rid = None
        if rid is not None:
            if store.has_run(rid):
                return str(rid)
            raise _not_found(store, str(rid), _close_runs(store, rid), rid=str(rid))
        validate_slug(org, "org")
        validate_slug(project, "project")
        from faber_runlog._store import run_ids

        found = [r for r in run_ids(store, org, project) if r.uuid.startswith(tail)]
        return _the_one(store, text, found)
    if len(parts) == 1 and len(text.replace("-", "")) >= MIN_BARE_PREFIX and _PREFIX.fullmatch(text):
        from faber_runlog._store import run_ids

        found = [r for r in run_ids(store) if r.uuid.startswith(text)]
        return _the_one(store, text, found)
    return str(RunId.parse(text))  # malformed: RunId says precisely how


def _the_one(store: RunStore, text: str, found: list[RunId]) -> str:
    if len(found) == 1:
        return str(found[0])
    if not found:
        close: list[str] = []
        parts = text.split("/")
        if len(parts) == 3:
            close = _close_folders(store, parts[0], parts[1])
        raise _not_found(store, text, close, rid=text, prefix=True)
    more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    shown = ", ".join(str(r) for r in found[:_SHOWN]) + more
    raise InvalidRunId(
        f"run id {text!r} is ambiguous: it matches {len(found)} runs in {store.url} ({shown}); type more of the uuid"
    )


def _not_found(store: RunStore, text: str, close: list[str], *, rid: str, prefix: bool = False) -> RunNotFound:
    what = f"no run id starts with {text!r}" if prefix else f"run {text} not found"
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return RunNotFound(f"{what} in {store.url}{hint}; check the id, or list_runs() to see what exists", run_id=rid)


def _close(word: str, names: list[str], cutoff: float = 0.6) -> list[str]:
    return difflib.get_close_matches(word, names, n=3, cutoff=cutoff)


def _close_folders(store: RunStore, org: str, project: str) -> list[str]:
    """``org/project/`` folders close to a mistyped pair (two listings at most)."""
    orgs = store.storage.list_names("")
    out: list[str] = []
    for o in [org] if org in orgs else _close(org, orgs):
        projects = store.storage.list_names(o)
        out += [f"{o}/{p}/" for p in ([project] if project in projects else _close(project, projects))]
    return [c for c in out if c != f"{org}/{project}/"]


def _close_runs(store: RunStore, rid: RunId) -> list[str]:
    """Runs close to a full id that names none: the same uuid under a close org or project, or a close uuid."""
    orgs = store.storage.list_names("")
    out: list[str] = []
    for o in [rid.org] if rid.org in orgs else _close(rid.org, orgs):
        projects = store.storage.list_names(o)
        for p in [rid.project] if rid.project in projects else _close(rid.project, projects):
            if (o, p) == (rid.org, rid.project):
                uuids = store.storage.list_names(f"{o}/{p}")
                out += [f"{o}/{p}/{u}" for u in _close(rid.uuid, uuids, cutoff=0.8)]
            else:
                try:
                    other = RunId(o, p, rid.uuid)
                except InvalidRunId:
                    continue
                if store.storage.exists(RunLayout(other).metadata):
                    out.append(str(other))
    return out
