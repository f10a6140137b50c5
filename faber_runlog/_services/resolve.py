"""Run ids in a store: the run folders under a root, and ids as people type them.

:func:`run_ids` lists the runs of a root from folder names alone (never metadata or
events): listings, frames, reindexing and resolving all start from it.

:func:`resolve_run_id` takes a full id, a unique uuid prefix or a bare uuid, and names
close matches when none fits; :meth:`RunStore.resolve_run_id` is its public face, the CLI
resolves every ``RUN_ID`` through it (``store.get_run`` itself stays exact and cheap).
Resolving reads folder listings only (one ``org/project`` folder for ``org/project/3f2b``;
every project folder for a bare uuid or uuid prefix), never metadata or events.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterator
from typing import Final

from faber_runlog._base.advice import advise
from faber_runlog._base.ids import RunId, is_slug, validate_slug
from faber_runlog._format.layout import RunLayout
from faber_runlog._services.lifecycle import RunProblem
from faber_runlog._storage.backends import Storage
from faber_runlog.errors import InvalidRunId, RunNotFound, UnsafePath

__all__ = ["MIN_BARE_PREFIX", "folder_names", "resolve_run_id", "run_ids"]

log = logging.getLogger("faber_runlog._services.resolve")

MIN_BARE_PREFIX: Final = 6
"""Hex digits a uuid prefix needs when no ``org/project/`` comes before it (fewer would match too much)."""
_PREFIX: Final = re.compile(r"[0-9a-f][0-9a-f-]{0,35}", re.ASCII)
_SHOWN: Final = 5


def folder_names(storage: Storage, folder: str, problems: list[RunProblem] | None = None) -> list[str]:
    """The names in ``folder``; none, reported to ``problems``, when a symlink leads it out of the root."""
    try:
        return storage.list_names(folder)
    except UnsafePath as e:
        log.warning("skipping %s: %s", folder, e)
        if problems is not None:
            problems.append(RunProblem(folder, f"UnsafePath: {e}"))
        return []


def run_ids(
    storage: Storage, org: str | None = None, project: str | None = None, problems: list[RunProblem] | None = None
) -> Iterator[RunId]:
    """Every run id under ``storage``'s root (a listing only: no metadata or events read).

    A folder a symlink leads out of the root is skipped, with a warning, and added to ``problems``.
    """
    orgs = [validate_slug(org, "org")] if org is not None else storage.list_names("")
    for o in orgs:
        projects = [validate_slug(project, "project")] if project is not None else folder_names(storage, o, problems)
        for p in projects:
            for u in folder_names(storage, f"{o}/{p}", problems) if is_slug(o) and is_slug(p) else ():
                try:
                    rid = RunId(o, p, u)
                except InvalidRunId:
                    continue  # not a run folder (a probe, a stray file)
                why = storage.unsafe(RunLayout(rid).dir)
                if why is None:
                    yield rid
                else:
                    log.warning("skipping run %s: %s", rid, why)
                    if problems is not None:
                        problems.append(RunProblem(str(rid), f"UnsafePath: {why}"))


def resolve_run_id(storage: Storage, text: object) -> str:
    """The full id of the one run ``text`` names in the store at ``storage``.

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
            if storage.exists(RunLayout(rid).metadata):
                return str(rid)
            raise _not_found(storage, str(rid), _close_runs(storage, rid), rid=str(rid))
        validate_slug(org, "org")
        validate_slug(project, "project")
        found = [r for r in run_ids(storage, org, project) if r.uuid.startswith(tail)]
        return _the_one(storage, text, found)
    if len(parts) == 1 and len(text.replace("-", "")) >= MIN_BARE_PREFIX and _PREFIX.fullmatch(text):
        found = [r for r in run_ids(storage) if r.uuid.startswith(text)]
        return _the_one(storage, text, found)
    return str(RunId.parse(text))  # malformed: RunId says precisely how


def _the_one(storage: Storage, text: str, found: list[RunId]) -> str:
    if len(found) == 1:
        return str(found[0])
    if not found:
        close: list[str] = []
        parts = text.split("/")
        if len(parts) == 3:
            close = _close_folders(storage, parts[0], parts[1])
        raise _not_found(storage, text, close, rid=text, prefix=True)
    more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    shown = ", ".join(str(r) for r in found[:_SHOWN]) + more
    raise InvalidRunId(
        f"run id {text!r} is ambiguous: it matches {len(found)} runs in {storage.url} ({shown}); type more of the uuid"
    )


def _not_found(storage: Storage, text: str, close: list[str], *, rid: str, prefix: bool = False) -> RunNotFound:
    what = f"no run id starts with {text!r}" if prefix else f"run {text} not found"
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return advise(RunNotFound(f"{what} in {storage.url}{hint}", run_id=rid), "list_runs")


def _close(word: str, names: list[str], cutoff: float = 0.6) -> list[str]:
    return difflib.get_close_matches(word, names, n=3, cutoff=cutoff)


def _close_folders(storage: Storage, org: str, project: str) -> list[str]:
    """``org/project/`` folders close to a mistyped pair (two listings at most)."""
    orgs = storage.list_names("")
    out: list[str] = []
    for o in [org] if org in orgs else _close(org, orgs):
        projects = storage.list_names(o)
        out += [f"{o}/{p}/" for p in ([project] if project in projects else _close(project, projects))]
    return [c for c in out if c != f"{org}/{project}/"]


def _close_runs(storage: Storage, rid: RunId) -> list[str]:
    """Runs close to a full id that names none: the same uuid under a close org or project, or a close uuid."""
    orgs = storage.list_names("")
    out: list[str] = []
    for o in [rid.org] if rid.org in orgs else _close(rid.org, orgs):
        projects = storage.list_names(o)
        for p in [rid.project] if rid.project in projects else _close(rid.project, projects):
            if (o, p) == (rid.org, rid.project):
                uuids = storage.list_names(f"{o}/{p}")
                out += [f"{o}/{p}/{u}" for u in _close(rid.uuid, uuids, cutoff=0.8)]
            else:
                try:
                    other = RunId(o, p, rid.uuid)
                except InvalidRunId:
                    continue
                if storage.exists(RunLayout(other).metadata):
                    out.append(str(other))
    return out
