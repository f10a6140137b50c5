"""The run index: a log of run summaries per org/project on the store itself (docs/concurrency.md, "The run index").

Writers commit small numbered JSON files under ``.index/{org}/{project}/log/``
(claimed by exclusive create, like events; a folder per :data:`SHARD` commits
so that a listing after a number stays short): an *intent* before a change
that may move a run's status or touches an ended run, an *entry* (the run's
listing row) after the event is durable. Every :data:`CHECKPOINT_EVERY`
commits the writer that claimed the boundary compacts the commits since the
last checkpoint into it: the rows live in *parts* (``parts/*.jsonl``, one JSON
line per run, one status per part, newest first, at most about
``2 * PART_ROWS`` rows), and the checkpoint's *manifest* names the parts with
their status, row count and the (created_at, uuid) range they hold, so a
reader skips every part its query cannot need (Iceberg's manifest list). A
compaction rewrites only the parts whose rows changed; the others are carried
over by name. The hint ``_last_checkpoint`` holds a copy of the newest
manifest.

A reader reads the hint, LISTs the commits after it, reads the commits since
the checkpoint (at most 9), and then only the parts its query needs; it
re-reads from the runs themselves the runs an open intent names (their row
may lag). The index is a cache: a missing one (no genesis commit), a damaged
manifest or part, or a gap makes the listing fall back to reading every run.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from faber_runlog._base import codec as _codec
from faber_runlog._base.ids import RunId, is_uuid4
from faber_runlog._base.retry import AGAIN, Again, optimistic
from faber_runlog._domain.transitions import TERMINAL_STATUSES
from faber_runlog._format import parquet as _parquet
from faber_runlog.errors import CorruptData

if TYPE_CHECKING:
    from faber_runlog._domain.state import RunDigest
    from faber_runlog._storage.backends import Storage

__all__ = [
    "CHECKPOINT_EVERY",
    "INDEX_DIR",
    "PART_ROWS",
    "IndexReport",
    "IndexSnapshot",
    "IndexView",
    "IndexWriter",
    "NoIndex",
    "Stale",
    "compare",
    "folder",
    "load",
    "read",
    "rebuild",
    "row_of",
    "select",
]

log = logging.getLogger("faber_runlog._log.index")

INDEX_DIR: Final = ".index"
"""The reserved folder of the index logs: ``.index`` is no slug (a dot), so no run listing meets it."""
CHECKPOINT_EVERY: Final = 10
"""A checkpoint is written by the writer that claims a commit number that is a multiple of this."""
PART_ROWS = 256
"""Rows a part is cut to when it is split (a part is split once it holds more than twice this)."""
SHARD = 100
"""Commits per folder of the index log (``log/{(n - 1) // SHARD}/``): a LIST after a number lists one short folder."""
HINT: Final = "_last_checkpoint"
FORMAT: Final = "faber_runlog.index/2"
_AFTER: Final = ".~"  # sorts after "{n:020d}.json" and "{n:020d}.checkpoint.json", before "{n+1:020d}"
_ROW_FIELDS: Final = (
    "status",
    "last_event_id",
    "updated_at",
    "current_phase",
    "current_step",
    "started_at",
    "ended_at",
)
_LISTING_FIELDS: Final = ("created_at", "params", "tags", "parent_run_id")

Key = tuple[str, str]
"""Where a row sorts: (created_at, uuid), as listings sort runs of one project."""


def folder(org: str, project: str) -> str:
    """The index folder of ``org/project``."""
    return f"{INDEX_DIR}/{org}/{project}"


def _shard(org: str, project: str, n: int) -> str:
    # Commits 1..SHARD in folder 0, and so on: the commits after a checkpoint never cross a folder.
    return f"{folder(org, project)}/log/{(n - 1) // SHARD:014d}"


def _commit_key(org: str, project: str, n: int) -> str:
    return f"{_shard(org, project, n)}/{n:020d}.json"


def _manifest_key(org: str, project: str, n: int) -> str:
    return f"{_shard(org, project, n)}/{n:020d}.checkpoint.json"


def _part_key(org: str, project: str, name: str) -> str:
    return f"{folder(org, project)}/parts/{name}"


def row_of(digest: RunDigest, listing: Mapping[str, Any] | None) -> dict[str, Any]:
    """The index row of a run: what a listing shows (``listing`` None: unknown here, the reader reads the run)."""
    row: dict[str, Any] = {"u": RunId.parse(digest.run_id).uuid}
    for name in _ROW_FIELDS:
        row[name] = getattr(digest, name)
    row["listing"] = dict(listing) if listing is not None else None
    return row


def _key(row: Mapping[str, Any]) -> Key | None:
    listing = row.get("listing")
    if not isinstance(listing, dict) or not isinstance(listing.get("created_at"), str):
        return None
    return (listing["created_at"], str(row["u"]))


def _flat(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as a part stores it: the listing's fields as columns (what DuckDB and Polars read)."""
    out = {k: v for k, v in row.items() if k != "listing"}
    out.update(row["listing"])
    return out


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    if not is_uuid4(flat.get("u")):
        raise CorruptData(f"an index row names no run uuid: {flat.get('u')!r}")
    listing = {k: flat.pop(k) for k in _LISTING_FIELDS}
    flat["listing"] = listing
    return flat


# -- manifests and parts ----------------------------------------------------------------------------


@attrs.frozen
class Part:
    """One part of a checkpoint: its file name, status, row count, the range of keys it holds, and of end times.

    ``ended`` is (earliest, latest) ``ended_at`` of its rows that ended, ``()`` when
    none has, None when not known (a manifest written before end times were kept):
    a query on end times skips a part whose range cannot meet it. ``parquet``
    names the part's Parquet copy (for DuckDB, Polars and Spark), None when
    there is none (a part written by a version before the copies).
    """

    name: str
    status: str
    rows: int
    hi: Key
    lo: Key
    ended: tuple[str, str] | tuple[()] | None = None
    parquet: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest entry."""
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "rows": self.rows,
            "hi": list(self.hi),
            "lo": list(self.lo),
        }
        if self.ended is not None:
            out["ended"] = list(self.ended)
        if self.parquet is not None:
            out["parquet"] = self.parquet
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Part:
        """Read a manifest entry (damage raises)."""
        hi, lo = data["hi"], data["lo"]
        ended = data.get("ended")
        span: tuple[str, str] | tuple[()] | None = None
        if ended is not None:
            span = (str(ended[0]), str(ended[1])) if ended else ()
        parquet = data.get("parquet")
        return cls(
            str(data["name"]),
            str(data["status"]),
            int(data["rows"]),
            (hi[0], hi[1]),
            (lo[0], lo[1]),
            span,
            str(parquet) if parquet is not None else None,
        )

    def may_hold_ended(self, since: str | None, until: str | None) -> bool:
        """Whether a row that ended in ``[since, until)`` can be in this part."""
        if self.ended is None:
            return True
        if not self.ended:
            return False
        first, last = self.ended
        return (since is None or last >= since) and (until is None or first < until)


@attrs.define
class Manifest:
    """A checkpoint: its parts (by status, newest first), rows that cannot be placed, open intents with floors.

    ``intents`` maps a nonce to (run uuid, when, floor): the floor is the
    event of the run's row in this checkpoint, so an entry the intent's
    writer commits later for an older event is not taken over it.
    ``retired`` names the parts this checkpoint stopped using; the next
    checkpoint deletes them (a reader still holding an older manifest then
    re-reads, or scans).
    """

    version: int = 0
    parts: list[Part] = attrs.field(factory=list)
    loose: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    intents: dict[str, tuple[str, str, int]] = attrs.field(factory=dict)
    retired: list[str] = attrs.field(factory=list)

    def to_json(self) -> dict[str, Any]:
        """The manifest file's body (also the hint's)."""
        return {
            "format": FORMAT,
            "version": self.version,
            "runs": sum(p.rows for p in self.parts) + len(self.loose),
            "parts": [p.to_json() for p in self.parts],
            "loose": self.loose,
            "intents": {n: list(v) for n, v in self.intents.items()},
            "retired": self.retired,
        }

    @classmethod
    def from_json(cls, data: Any, version: int | None = None) -> Manifest:
        """Read a manifest (damage raises :class:`CorruptData`)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CorruptData("not an index manifest of this format")
        if version is not None and data.get("version") != version:
            raise CorruptData(f"manifest of checkpoint {data.get('version')} where {version} was expected")
        try:
            return cls(
                version=int(data["version"]),
                parts=[Part.from_json(p) for p in data["parts"]],
                loose={str(u): dict(r) for u, r in data["loose"].items()},
                intents={str(n): (str(v[0]), str(v[1]), int(v[2])) for n, v in data["intents"].items()},
                retired=[str(r) for r in data["retired"]],
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CorruptData(f"a damaged index manifest ({type(e).__name__}: {e})") from e


def _part_body(rows: list[dict[str, Any]]) -> bytes:
    return b"\n".join(_codec.dumps(_flat(r)) for r in rows) + b"\n"


def _decode_part(body: bytes | None, part: Part) -> list[dict[str, Any]]:
    if body is None:
        raise Stale(f"part {part.name} is gone")
    try:
        rows = _codec.loads(b"[" + body.strip().replace(b"\n", b",") + b"]")  # one parse, not one per line
        out = [_nested(r) for r in rows]
    except Exception as e:
        raise CorruptData(f"index part {part.name} does not decode: {e}") from e
    if len(out) != part.rows or any(r.get("status") != part.status for r in out):
        raise CorruptData(f"index part {part.name} holds other rows than its manifest says")
    return out


def _first_rows(
    body: bytes | None, part: Part, *, newest: bool, take: int, accept: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The first ``take`` rows of a part that ``accept`` keeps, in the query's order, decoding only those read.

    A part is sorted, so no row after them can be among the query's first ``take``.
    """
    if body is None:
        raise Stale(f"part {part.name} is gone")
    lines = body.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    if len(lines) != part.rows:
        raise CorruptData(f"index part {part.name} holds {len(lines)} rows where its manifest says {part.rows}")
    out: list[dict[str, Any]] = []
    for line in lines if newest else reversed(lines):
        try:
            row = _nested(_codec.loads(line))
        except Exception as e:
            raise CorruptData(f"index part {part.name} does not decode: {e}") from e
        if row.get("status") != part.status:
            raise CorruptData(f"index part {part.name} holds a row of status {row.get('status')!r}")
        if accept(row):
            out.append(row)
            if len(out) >= take:
                break
    return out


class Stale(Exception):
    """A part the manifest names is gone (a newer checkpoint retired it): read the index again."""


class NoIndex(Exception):
    """The project has no index (no genesis commit): list it by reading the runs."""


# -- reading ----------------------------------------------------------------------------------------


@attrs.define
class IndexSnapshot:
    """What a reader knows before it reads parts: the manifest and the commits after it, folded.

    ``delta`` holds the rows committed after the checkpoint (they replace the
    parts' rows of those runs), ``removed`` the runs removed since (with their
    keys where known), ``intents`` the open intents, ``floors`` the event below
    which an entry for a run is older than its row in a part.
    """

    manifest: Manifest
    version: int
    delta: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    removed: dict[str, Key | None] = attrs.field(factory=dict)
    intents: dict[str, tuple[str, str]] = attrs.field(factory=dict)
    floors: dict[str, int] = attrs.field(factory=dict)

    @classmethod
    def of(cls, manifest: Manifest) -> IndexSnapshot:
        """The snapshot of ``manifest`` with no commit after it."""
        floors: dict[str, int] = {}
        for u, _, floor in manifest.intents.values():
            floors[u] = max(floors.get(u, -1), floor)
        intents = {n: (u, at) for n, (u, at, _) in manifest.intents.items()}
        return cls(manifest, manifest.version, intents=intents, floors=floors)

    def lagging(self) -> set[str]:
        """Runs whose row may lag their log (an open intent), or that no part can hold (no creation time)."""
        out = {u for u, _ in self.intents.values()}
        out.update(u for u in self.manifest.loose if u not in self.delta)
        out.update(u for u, r in self.delta.items() if _key(r) is None)
        return out

    def fold(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Apply one commit's records (entries keep the row of the highest event; intents open and close)."""
        for rec in records:
            op = rec.get("op")
            if op == "intent":
                self.intents[str(rec["nonce"])] = (str(rec["u"]), str(rec.get("at", "")))
            elif op == "entry":
                row = dict(rec["row"])
                u, event = str(row["u"]), int(row["last_event_id"])
                old = self.delta.get(u)
                if row.get("listing") is None and old is not None and old.get("listing") is not None:
                    row["listing"] = old["listing"]  # what a run was created with never changes
                if event >= self.floors.get(u, -1) and (old is None or event >= int(old["last_event_id"])):
                    self.delta[u] = row
                    self.removed.pop(u, None)
                if rec.get("nonce") is not None:
                    self.intents.pop(str(rec["nonce"]), None)
            elif op == "close":
                self.intents.pop(str(rec["nonce"]), None)
            elif op == "removed":
                u = str(rec["u"])
                c = rec.get("c")
                self.removed[u] = (c, u) if isinstance(c, str) else None
                self.delta.pop(u, None)
            # "genesis" carries nothing to fold


def _hint(storage: Storage, org: str, project: str) -> Manifest | None:
    body = storage.read(f"{folder(org, project)}/{HINT}")
    if body is None:
        return None
    try:
        return Manifest.from_json(_codec.loads(body))
    except Exception:  # noqa: BLE001  (the hint is a cache: a damaged one costs a longer LIST, never an answer)
        return None


def _listing(storage: Storage, org: str, project: str, after: int) -> tuple[dict[int, str], list[int]]:
    """Commit numbers -> keys, and checkpoint numbers, after number ``after`` (one LIST per shard it spans)."""
    commits: dict[int, str] = {}
    checkpoints: list[int] = []
    shard = after // SHARD
    start = f"{after:020d}{_AFTER}" if after else ""
    while True:
        top = f"{folder(org, project)}/log/{shard:014d}"
        for name in storage.list_after(top, start):
            head, _, rest = name.partition(".")
            if not (len(head) == 20 and head.isdigit()):
                continue
            if rest == "json":
                commits[int(head)] = f"{top}/{name}"
            elif rest == "checkpoint.json":
                checkpoints.append(int(head))
        if (shard + 1) * SHARD not in commits:
            return commits, checkpoints  # this folder is not full: nothing is in the next one yet
        shard, start = shard + 1, ""


def load(storage: Storage, org: str, project: str, upto: int | None = None) -> IndexSnapshot:
    """The index of ``org/project`` up to commit ``upto``, without its parts (raises when there is none or damage).

    Costs the hint (which holds the newest manifest), one LIST after it, the
    newest manifest when the hint lags, and the commits after the checkpoint
    (read concurrently where the backend batches reads).
    """
    return _load(storage, org, project, upto, _hint(storage, org, project))


def _load(storage: Storage, org: str, project: str, upto: int | None, hint: Manifest | None) -> IndexSnapshot:
    if hint is not None and upto is not None and hint.version > upto:
        hint = None
    commits, checkpoints = _listing(storage, org, project, hint.version if hint is not None else 0)
    if upto is not None:
        commits = {k: v for k, v in commits.items() if k <= upto}
        checkpoints = [c for c in checkpoints if c <= upto]
    manifest = hint
    if checkpoints and (hint is None or max(checkpoints) > hint.version):
        base = max(checkpoints)
        body = storage.read(_manifest_key(org, project, base))
        if body is None:
            raise Stale(f"checkpoint {base} vanished (pruned after a newer one: index rule 9)")
        manifest = Manifest.from_json(_codec.loads(body), base)
    if manifest is None:
        if 1 not in commits:
            raise NoIndex("no index (no genesis commit)")
        manifest = Manifest()
    snap = IndexSnapshot.of(manifest)
    base = manifest.version
    after = sorted(k for k in commits if k > base)
    if after and after != list(range(base + 1, base + 1 + len(after))):
        raise CorruptData(f"a gap in the commits after {base}")
    bodies = storage.read_many(commits[k] for k in after)
    for k in after:
        b = bodies.get(commits[k])
        if b is None:
            raise Stale(f"commit {k} vanished (pruned after a newer checkpoint: index rule 9)")
        recs = _decode_commit(b)
        if k == 1 and not any(r.get("op") == "genesis" for r in recs):
            raise CorruptData("commit 1 is no genesis")
        snap.fold(recs)
        snap.version = k
    return snap


def _decode_commit(body: bytes) -> list[dict[str, Any]]:
    data = _codec.loads(body)
    recs = data["records"] if isinstance(data, dict) else None
    if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
        raise CorruptData("not an index commit")
    return recs


def _read_parts(storage: Storage, org: str, project: str, parts: list[Part]) -> dict[str, list[dict[str, Any]]]:
    bodies = storage.read_many(_part_key(org, project, p.name) for p in parts)
    return {p.name: _decode_part(bodies.get(_part_key(org, project, p.name)), p) for p in parts}


def select(
    storage: Storage,
    org: str,
    project: str,
    snap: IndexSnapshot,
    *,
    statuses: Collection[str] | None,
    keep: Callable[[dict[str, Any]], bool],
    beyond: Callable[[Key], bool],
    newest: bool,
    need: int | None,
    since: str | None = None,
    until: str | None = None,
    ended: tuple[str | None, str | None] | None = None,
) -> list[dict[str, Any]]:
    """The rows a query wants, best first: at most ``need`` (None: all), reading only the parts that can hold them.

    ``since``/``until`` bound the creation time and ``ended`` (since, until) the
    end time of the rows wanted: parts whose ranges miss them are not read.

    ``keep(row)`` is the query's filters on a row, ``beyond(key)`` its cursor.
    Rows of runs in :meth:`IndexSnapshot.lagging` are left out (the caller
    reads those runs). Parts are read in the query's order, a status at a
    time where one is asked for, until the rows found beat every part not read.
    """
    lagging = snap.lagging()
    skip = lagging | set(snap.delta) | set(snap.removed)

    def wanted(row: dict[str, Any]) -> bool:
        k = _key(row)
        return k is not None and (statuses is None or row["status"] in statuses) and beyond(k) and keep(row)

    found = [r for u, r in snap.delta.items() if u not in lagging and wanted(r)]
    parts = [
        p
        for p in snap.manifest.parts
        if (statuses is None or p.status in statuses)
        and beyond(p.lo if newest else p.hi)
        and (since is None or p.hi[0] >= since)
        and (until is None or p.lo[0] < until)
        and (ended is None or p.may_hold_ended(*ended))
    ]
    parts.sort(key=(lambda p: p.hi) if newest else (lambda p: p.lo), reverse=newest)
    width = len(parts) if need is None else max(1, len(statuses) if statuses is not None else 8)
    i = 0
    while i < len(parts):
        if need is not None and len(found) >= need:
            found.sort(key=_sort_key, reverse=newest)
            cut = _sort_key(found[need - 1])
            first = parts[i].hi if newest else parts[i].lo
            if (first < cut) if newest else (first > cut):
                break
        batch = parts[i : i + width]
        i += width
        if need is None:
            for rows in _read_parts(storage, org, project, batch).values():
                found.extend(r for r in rows if r["u"] not in skip and wanted(r))
            continue
        bodies = storage.read_many(_part_key(org, project, p.name) for p in batch)
        for p in batch:
            body = bodies.get(_part_key(org, project, p.name))
            found += _first_rows(body, p, newest=newest, take=need, accept=lambda r: r["u"] not in skip and wanted(r))
    found.sort(key=_sort_key, reverse=newest)
    return found if need is None else found[:need]


def _sort_key(row: Mapping[str, Any]) -> Key:
    return (row["listing"]["created_at"], row["u"])


@attrs.define
class IndexView:
    """The folded index of one project, every row read: rows by run uuid, open intents, the commit it reaches."""

    rows: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    intents: dict[str, tuple[str, str]] = attrs.field(factory=dict)  # nonce -> (uuid, when)
    version: int = 0
    uncopied: int = 0  # parts of its checkpoint without a Parquet copy


def read(
    storage: Storage, org: str, project: str, upto: int | None = None, *, strict: bool = False
) -> IndexView | None:
    """The whole index of ``org/project`` (every part read), or None when there is none or it is damaged.

    With ``strict`` a damaged index raises the exception that says what is damaged.
    """
    try:
        snap = load(storage, org, project, upto)
        rows: dict[str, dict[str, Any]] = {}
        for part_rows in _read_parts(storage, org, project, snap.manifest.parts).values():
            rows.update((r["u"], r) for r in part_rows)
        rows.update(snap.manifest.loose)
        for u, r in snap.delta.items():
            old = rows.get(u)
            if old is None or int(r["last_event_id"]) >= int(old["last_event_id"]):
                rows[u] = r if r.get("listing") is not None or old is None else {**r, "listing": old["listing"]}
        for u in snap.removed:
            rows.pop(u, None)
        uncopied = sum(1 for p in snap.manifest.parts if p.parquet is None)
        return IndexView(rows, dict(snap.intents), snap.version, uncopied)
    except NoIndex as e:
        log.debug("index of %s/%s not used: %s", org, project, e)
        return None
    except Exception:
        if strict:
            raise
        return None


# -- writing ----------------------------------------------------------------------------------------


def _target(parts: list[Part], k: Key) -> Part | None:
    """The part of one status (newest first) a row with key ``k`` goes into (None: the status has none)."""
    for p in parts:
        if p.lo <= k:
            return p
    return parts[-1] if parts else None


def _needed(base: Manifest, touched: Mapping[str, dict[str, Any] | None], keys: list[Key | None]) -> list[Part]:
    """The parts a compaction reads: those that may hold a touched run's old row, and those its new rows go into."""
    if any(k is None for k in keys):
        return list(base.parts)  # a row we cannot place by its key: look everywhere
    by_status = _by_status(base.parts)
    wanted = {p.name for p in base.parts for k in keys if k is not None and p.lo <= k <= p.hi}
    for r in touched.values():
        k = _key(r) if r is not None else None
        t = _target(by_status.get(r["status"], []), k) if r is not None and k is not None else None
        if t is not None:
            wanted.add(t.name)
    return [p for p in base.parts if p.name in wanted]


def _by_status(parts: Iterable[Part]) -> dict[str, list[Part]]:
    out: dict[str, list[Part]] = {}
    for p in parts:
        out.setdefault(p.status, []).append(p)
    return out


def _compact(
    storage: Storage, org: str, project: str, snap: IndexSnapshot, n: int, *, recopy: bool = False
) -> Manifest:
    """Checkpoint ``n``: ``snap``'s manifest with the commits after it folded in; only changed parts are rewritten.

    With ``recopy`` the parts without a Parquet copy (written before the copies) are rewritten too, with one.
    """
    base = snap.manifest
    touched: dict[str, dict[str, Any] | None] = dict.fromkeys(snap.removed)
    touched.update(snap.delta)
    needed = _needed(base, touched, [_key(r) if r is not None else snap.removed[u] for u, r in touched.items()])
    uncopied = [p for p in base.parts if p.parquet is None] if recopy else []
    needed += [p for p in uncopied if p not in needed]
    loaded = _read_parts(storage, org, project, needed)
    status_of = {p.name: p.status for p in needed}
    by_status = _by_status(base.parts)
    where = {r["u"]: name for name, rows in loaded.items() for r in rows if r["u"] in touched}
    fresh: dict[str, list[dict[str, Any]]] = {}  # rows for a status that has no part yet
    loose = dict(base.loose)
    changed: set[str] = {p.name for p in uncopied}
    final: dict[str, int] = {}
    for u, new in touched.items():
        old_name = where.get(u)
        old = next(r for r in loaded[old_name] if r["u"] == u) if old_name is not None else loose.get(u)
        new = _newer(old, new)
        if old_name is not None:
            loaded[old_name] = [r for r in loaded[old_name] if r["u"] != u]
            changed.add(old_name)
        loose.pop(u, None)
        if new is None:
            continue
        final[u] = int(new["last_event_id"])
        k = _key(new)
        t = _target(by_status.get(new["status"], []), k) if k is not None else None
        if k is None:
            loose[u] = new
        elif t is None:
            fresh.setdefault(new["status"], []).append(new)
        else:
            loaded[t.name].append(new)
            changed.add(t.name)
    groups = [(loaded[name], status_of[name]) for name in sorted(changed)]
    groups += [(rows, status) for status, rows in sorted(fresh.items())]
    parts = [p for p in base.parts if p.name not in changed] + _write_parts(storage, org, project, n, groups)
    parts.sort(key=lambda p: (p.status, p.hi), reverse=True)
    intents = {nonce: (u, at, max(snap.floors.get(u, -1), final.get(u, -1))) for nonce, (u, at) in snap.intents.items()}
    return Manifest(n, parts, loose, intents, retired=sorted(changed))


def _newer(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any] | None:
    """The row to keep of a run's ``old`` row and the ``new`` one committed since (None: removed)."""
    if new is None or old is None:
        return new
    if int(old["last_event_id"]) > int(new["last_event_id"]):
        return old
    if new.get("listing") is None and old.get("listing") is not None:
        return {**new, "listing": old["listing"]}
    return new


def _write_parts(
    storage: Storage, org: str, project: str, n: int, groups: list[tuple[list[dict[str, Any]], str]]
) -> list[Part]:
    """Write each group of rows of one status as parts of checkpoint ``n``, newest first, split when large."""
    token = uuid.uuid4().hex[:8]
    written: dict[str, bytes] = {}
    parts: list[Part] = []
    for rows, status in groups:
        if not rows:
            continue
        rows.sort(key=_sort_key, reverse=True)
        pieces = math.ceil(len(rows) / PART_ROWS) if len(rows) > 2 * PART_ROWS else 1
        size = math.ceil(len(rows) / pieces)
        for j in range(pieces):
            chunk = rows[j * size : (j + 1) * size]
            stem = f"{n:020d}-{token}-{len(parts):04d}"
            written[_part_key(org, project, f"{stem}.jsonl")] = _part_body(chunk)
            columnar = _parquet_body(chunk)
            if columnar is not None:
                written[_part_key(org, project, f"{stem}.parquet")] = columnar
            parquet = f"{stem}.parquet" if columnar is not None else None
            span = _ended(chunk)
            parts.append(
                Part(f"{stem}.jsonl", status, len(chunk), _sort_key(chunk[0]), _sort_key(chunk[-1]), span, parquet)
            )
    for key, result in storage.put_many(written, create=True).items():
        if result.error is not None or not result.created:
            raise CorruptData(f"index part {key} not written: {result.error}")
    return parts


PARQUET_COLUMNS: Final = (
    "u",
    "status",
    "last_event_id",
    *_ROW_FIELDS[2:],
    *_LISTING_FIELDS,
)
"""The columns of a Parquet part, in order: times as the log's ISO text, ``params`` and ``tags`` as JSON text."""


def _parquet_body(rows: list[dict[str, Any]]) -> bytes | None:
    """The rows as a Parquet file (``params`` and ``tags`` as JSON text), for the engines that read the index."""
    flat = [_flat(r) for r in rows]
    table = [
        [_codec.dumps(r[name]).decode() if name in ("params", "tags") else r.get(name) for name in PARQUET_COLUMNS]
        for r in flat
    ]
    return _parquet.encode(_PARQUET_KINDS, table)


_PARQUET_KINDS: Final[tuple[tuple[str, _parquet.ColumnType], ...]] = tuple(
    (name, "int64" if name == "last_event_id" else "text") for name in PARQUET_COLUMNS
)


def _twin(name: str) -> str:
    """The Parquet copy's name of JSON lines part ``name``."""
    return name.removesuffix(".jsonl") + ".parquet"


def _ended(rows: list[dict[str, Any]]) -> tuple[str, str] | tuple[()] | None:
    """The (earliest, latest) end time of ``rows`` that ended; None when a row of an older format lacks it."""
    if any("ended_at" not in r for r in rows):
        return None
    times = [r["ended_at"] for r in rows if isinstance(r["ended_at"], str)]
    return (min(times), max(times)) if times else ()


def _write_checkpoint(storage: Storage, org: str, project: str, manifest: Manifest, *, replace: bool) -> bool:
    """Create the manifest (``replace``: or overwrite it), then point the hint at it. Whether it was written."""
    body = _codec.dumps(manifest.to_json())
    key = _manifest_key(org, project, manifest.version)
    if not storage.create(key, body):
        if not replace:
            return False
        storage.replace(key, body)
    # A writer that read an older hint may still move it back a little: readers then LIST a few more
    # commits and read the newer manifest they find (index rule 5), never a wrong answer.
    storage.replace(f"{folder(org, project)}/{HINT}", body)
    return True


class IndexWriter:
    """Commits to the index logs of one store; one per :class:`RunStore` handle (tails cached, never trusted)."""

    def __init__(self, storage: Storage, checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        self._storage = storage
        self._every = checkpoint_every
        self._tails: dict[tuple[str, str], int] = {}
        self._indexed: set[tuple[str, str]] = set()

    def indexed(self, org: str, project: str) -> bool:
        """Whether ``org/project`` has an index (its genesis commit exists; once seen, remembered)."""
        key = (org, project)
        if key in self._indexed:
            return True
        if self._storage.exists(_commit_key(org, project, 1)):
            self._indexed.add(key)
            return True
        return False

    def start(self, org: str, project: str) -> bool:
        """Make sure ``org/project`` is indexed when it holds no run yet (the first create); whether it is."""
        if self.indexed(org, project):
            return True
        if self._storage.list_names(f"{org}/{project}"):
            return False  # runs from before the index: only reindex() may start it (it reads them all)
        self.genesis(org, project)
        return True

    def genesis(self, org: str, project: str) -> None:
        """Create commit 1, the genesis (if another writer did, that is the same)."""
        self._storage.create(_commit_key(org, project, 1), _codec.dumps({"records": [{"op": "genesis"}]}))
        self._indexed.add((org, project))
        self._tails[(org, project)] = max(self._tails.get((org, project), 0), 1)

    def intent(self, rid: RunId) -> str | None:
        """Commit an intent for ``rid`` before a change that may move its status; its nonce (None: no index).

        Raises when the intent cannot be written: the change must not happen
        unannounced, or a reader could trust an entry its log has overtaken.
        """
        if not self.indexed(rid.org, rid.project):
            return None
        nonce = uuid.uuid4().hex
        self.commit(
            rid.org,
            rid.project,
            [{"op": "intent", "u": rid.uuid, "nonce": nonce, "at": _codec.now_iso(self._storage.clock.now())}],
        )
        return nonce

    def entry(self, rid: RunId, digest: RunDigest, listing: Mapping[str, Any] | None, nonce: str | None) -> None:
        """Commit the run's row after its event is durable, closing intent ``nonce``. Never raises."""
        try:
            if nonce is None and not self.indexed(rid.org, rid.project):
                return
            rec = {"op": "entry", "u": rid.uuid, "nonce": nonce, "row": row_of(digest, listing)}
            self.commit(rid.org, rid.project, [rec])
        except Exception as e:  # noqa: BLE001  (the index is a cache: the intent stays open, readers check this run)
            log.warning("index entry of run %s at event %d not written: %s", rid, digest.last_event_id, e)

    def commit(self, org: str, project: str, records: list[dict[str, Any]]) -> int:
        """Claim the next commit number for ``records`` (exclusive create); write a checkpoint on a boundary."""
        key = (org, project)
        body = _codec.dumps({"records": records})
        n = self._tails.get(key)
        if n is None:
            n = self._tail(org, project)
        tried = [n + 1]

        def claim() -> int | Again:
            if self._storage.create(_commit_key(org, project, tried[0]), body):
                return tried[0]
            # Others committed since this handle's cached tail: learn the new one (hint + one LIST), not one by one.
            tried[0] = max(tried[0], self._tail(org, project)) + 1
            return AGAIN

        n = optimistic(claim, what=f"claiming a commit of the run index of {org}/{project}")
        self._tails[key] = n
        if n % self._every == 0:
            self.checkpoint(org, project, n)
        return n

    def _tail(self, org: str, project: str) -> int:
        hint = _hint(self._storage, org, project)
        v = hint.version if hint is not None else 0
        commits, _ = _listing(self._storage, org, project, v)
        return max(commits, default=v)

    def prune(self, org: str, project: str, base: int) -> int:
        """Delete the commits and manifests a checkpoint ``base`` covers in the folders before its own (index rule 9).

        Only folders wholly below ``base``'s are touched, and in each the genesis
        (commit 1) and its last commit stay: a reader listing from an old hint
        walks from folder to folder by finding the last commit of each. Costs
        one LIST per checkpoint, and one batched delete when there is something
        to delete (once per :data:`SHARD` commits). Returns how many keys went.
        """
        shard = (base - 1) // SHARD - 1
        if shard < 0:
            return 0
        top = f"{folder(org, project)}/log/{shard:014d}"
        keep = {f"{1:020d}.json", f"{(shard + 1) * SHARD:020d}.json"}
        doomed = [f"{top}/{name}" for name in self._storage.list_names(top) if name not in keep]
        if doomed:
            self._storage.delete_many(doomed)
        return len(doomed)

    def checkpoint(self, org: str, project: str, n: int, *, recopy: bool = False) -> bool:
        """Compact the index up to commit ``n`` into checkpoint ``n`` and point the hint at it. Never raises.

        Rewrites only the parts whose rows changed since the previous checkpoint
        (``recopy``: and those without a Parquet copy), then deletes the parts
        that checkpoint had retired.
        """
        try:
            hint = _hint(self._storage, org, project)
            if hint is not None and hint.version >= n:
                return False  # a newer checkpoint is already there: this one would be read by no one
            snap = _load(self._storage, org, project, n, hint)
            if snap.version != n or snap.manifest.version == n:
                return False
            manifest = _compact(self._storage, org, project, snap, n, recopy=recopy)
            if not _write_checkpoint(self._storage, org, project, manifest, replace=False):
                return False
            retired = snap.manifest.retired
            self._storage.delete_many([_part_key(org, project, x) for name in retired for x in (name, _twin(name))])
            self.prune(org, project, snap.manifest.version)
            return True
        except Exception as e:  # noqa: BLE001  (the index is a cache: a lost checkpoint costs readers a longer read)
            log.warning("index checkpoint %d of %s/%s not written: %s", n, org, project, e)
            return False


@attrs.frozen(slots=True)
class IndexReport:
    """What :meth:`RunStore.reindex` found and fixed (or :meth:`RunStore.verify_index` found) in one project's index.

    ``added``: runs the index did not name; ``corrected``: runs whose row differed
    from their log (status, or the listing fields); ``removed``: rows naming no run;
    ``closed``: open intents closed; ``started``: the index did not exist (or could
    not be read) and was (or would be) started; ``copied``: parts written without a
    Parquet copy (by a version before the copies) that were (or would be) rewritten
    with one; ``ok``: the index matched every run's log (copies are no part of that).
    """

    org: str
    project: str
    added: tuple[str, ...] = ()
    corrected: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    closed: int = 0
    started: bool = False
    copied: int = 0

    @property
    def ok(self) -> bool:
        """True when the index matched every run's log."""
        return not (self.added or self.corrected or self.removed or self.closed or self.started)


def compare(
    org: str,
    project: str,
    view: IndexView | None,
    truth: Mapping[str, tuple[RunDigest, Mapping[str, Any]]],
    older_than: str = "",
) -> tuple[IndexReport, list[dict[str, Any]]]:
    """Compare ``view`` with ``truth`` (uuid -> the log's digest and listing); the report and the records that fix it.

    Open intents written before ``older_than`` (an ISO time) are closed: their
    writer's claim is over, so the runs' logs read here are past their events.
    Younger ones stay open (readers keep checking those runs).
    """
    rows = view.rows if view is not None else {}
    added: list[str] = []
    corrected: list[str] = []
    records: list[dict[str, Any]] = []
    for u, (digest, listing) in sorted(truth.items()):
        want = row_of(digest, listing)
        have = rows.get(u)
        if have is None:
            added.append(digest.run_id)
        elif (
            any(have.get(k) != want[k] for k in ("status", "listing"))
            or (want["status"] in TERMINAL_STATUSES and have.get("last_event_id") != want["last_event_id"])
            or any(k not in have for k in ("started_at", "ended_at"))  # a row of an older format: no times
        ):
            corrected.append(digest.run_id)
        else:
            continue
        records.append({"op": "entry", "u": u, "nonce": None, "row": want})
    gone = [u for u in sorted(rows) if u not in truth]
    removed = [f"{org}/{project}/{u}" for u in gone]
    records += [{"op": "removed", "u": u, "c": (_key(rows[u]) or (None,))[0]} for u in gone]
    closed = sorted(n for n, (_, at) in view.intents.items() if at < older_than) if view is not None else []
    records += [{"op": "close", "nonce": n} for n in closed]
    report = IndexReport(
        org, project, tuple(added), tuple(corrected), tuple(removed), len(closed), started=view is None
    )
    return report, records


def rebuild(storage: Storage, org: str, project: str, n: int, records: list[dict[str, Any]]) -> None:
    """Write checkpoint ``n`` from ``records`` alone (a reindex of a damaged index) and point the hint at it."""
    snap = IndexSnapshot(Manifest(), n)
    snap.fold(records)
    _write_checkpoint(storage, org, project, _compact(storage, org, project, snap, n), replace=True)
