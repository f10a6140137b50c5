"""The run index: a log of run summaries per org/project on the store itself (docs/concurrency.md, "The run index").

Writers commit small numbered JSON files under ``.index/{org}/{project}/``
(claimed by exclusive create, like events): an *intent* before a change that
may move a run's status (creating it, or an append whose transition-table row
moves the status it is checked against), an *entry* (the run's listing row)
after the event is durable. Every :data:`CHECKPOINT_EVERY` commits the writer
that claimed the boundary folds the previous checkpoint and the commits since
into ``{n:020d}.checkpoint.jsonl`` and points the hint ``_last_checkpoint`` at it.

A reader reads the hint, LISTs the folder after it, reads the newest
checkpoint and the commits after it, and re-reads from the runs themselves
only the runs an open intent names (their index entry may lag). The index is a
cache: a missing one (no genesis commit), a damaged checkpoint or a gap makes
the listing fall back to reading every run (:func:`read` returns None).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from faber_runlog import _codec
from faber_runlog._ids import RunId
from faber_runlog._retry import AGAIN, Again, optimistic
from faber_runlog.errors import CorruptData

if TYPE_CHECKING:
    from faber_runlog._state import RunDigest
    from faber_runlog._storage import Storage

__all__ = [
    "CHECKPOINT_EVERY",
    "INDEX_DIR",
    "IndexReport",
    "IndexView",
    "IndexWriter",
    "checkpoint_body",
    "compare",
    "fold",
    "folder",
    "read",
    "rebuild",
    "row_of",
]

log = logging.getLogger("faber_runlog._index")

INDEX_DIR: Final = ".index"
"""The reserved folder of the index logs: ``.index`` is no slug (a dot), so no run listing meets it."""
CHECKPOINT_EVERY: Final = 10
"""A checkpoint is written by the writer that claims a commit number that is a multiple of this."""
HINT: Final = "_last_checkpoint"
FORMAT: Final = "faber_runlog.index/1"
_AFTER: Final = ".~"  # sorts after "{n:020d}.json" and "{n:020d}.checkpoint.jsonl", before "{n+1:020d}"
_ROW_FIELDS: Final = (
    "status",
    "last_event_id",
    "updated_at",
    "current_phase",
    "current_step",
)


def folder(org: str, project: str) -> str:
    """The index log folder of ``org/project``."""
    return f"{INDEX_DIR}/{org}/{project}"


def _commit_key(org: str, project: str, n: int) -> str:
    return f"{folder(org, project)}/{n:020d}.json"


def _checkpoint_key(org: str, project: str, n: int) -> str:
    return f"{folder(org, project)}/{n:020d}.checkpoint.jsonl"


def row_of(digest: RunDigest, listing: Mapping[str, Any] | None) -> dict[str, Any]:
    """The index row of a run: what a listing shows (``listing`` None: unknown here, the reader reads the run)."""
    row: dict[str, Any] = {"u": RunId.parse(digest.run_id).uuid}
    for name in _ROW_FIELDS:
        row[name] = getattr(digest, name)
    row["listing"] = dict(listing) if listing is not None else None
    return row


@attrs.define
class IndexView:
    """The folded index of one project: rows by run uuid, open intents, and the commit it reaches."""

    rows: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    intents: dict[str, tuple[str, str]] = attrs.field(factory=dict)  # nonce -> (uuid, when)
    version: int = 0

    def lagging(self) -> set[str]:
        """Runs whose row may lag their log: named by an open intent, or without the listing fields."""
        out = {u for u, _ in self.intents.values()}
        out.update(u for u, r in self.rows.items() if r.get("listing") is None)
        return out


def fold(view: IndexView, records: Iterable[Mapping[str, Any]]) -> None:
    """Apply one commit's records to ``view`` (entries keep the row of the highest event; intents open/close)."""
    for rec in records:
        op = rec.get("op")
        if op == "intent":
            view.intents[str(rec["nonce"])] = (str(rec["u"]), str(rec.get("at", "")))
        elif op == "entry":
            row = rec["row"]
            old = view.rows.get(row["u"])
            if row.get("listing") is None and old is not None and old.get("listing") is not None:
                row = {**row, "listing": old["listing"]}  # what a run was created with never changes
            if old is None or int(row["last_event_id"]) >= int(old["last_event_id"]):
                view.rows[row["u"]] = dict(row)
            if rec.get("nonce") is not None:
                view.intents.pop(str(rec["nonce"]), None)
        elif op == "close":
            view.intents.pop(str(rec["nonce"]), None)
        elif op == "removed":
            view.rows.pop(str(rec["u"]), None)
        # "genesis" carries nothing to fold


def checkpoint_body(view: IndexView) -> bytes:
    """A checkpoint: a header line, one line per run (newest first by creation time), one per open intent."""
    rows = sorted(
        view.rows.values(), key=lambda r: ((r.get("listing") or {}).get("created_at") or "", r["u"]), reverse=True
    )
    lines = [_codec.dumps({"format": FORMAT, "version": view.version, "runs": len(rows), "intents": len(view.intents)})]
    lines += [_codec.dumps({"op": "run", **r}) for r in rows]
    lines += [_codec.dumps({"op": "intent", "nonce": n, "u": u, "at": at}) for n, (u, at) in view.intents.items()]
    return b"\n".join(lines) + b"\n"


def _decode_checkpoint(body: bytes, version: int) -> IndexView:
    lines = [ln for ln in body.split(b"\n") if ln.strip()]
    head = _codec.loads(lines[0])
    if not isinstance(head, dict) or head.get("format") != FORMAT or head.get("version") != version:
        raise CorruptData("not an index checkpoint of this version")
    recs = _codec.loads(b"[" + b",".join(lines[1:]) + b"]")  # one parse, not one per line
    if len(recs) != head["runs"] + head["intents"]:
        raise CorruptData(f"{len(recs)} lines where the header counts {head['runs'] + head['intents']}")
    view = IndexView(version=version)
    for rec in recs:
        if rec["op"] == "run":
            rec.pop("op")
            int(rec["last_event_id"])
            view.rows[str(rec["u"])] = rec
        else:
            view.intents[str(rec["nonce"])] = (str(rec["u"]), str(rec.get("at", "")))
    return view


def _decode_commit(body: bytes) -> list[dict[str, Any]]:
    data = _codec.loads(body)
    recs = data["records"] if isinstance(data, dict) else None
    if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
        raise CorruptData("not an index commit")
    return recs


def _numbered(names: Iterable[str]) -> tuple[dict[int, str], list[int]]:
    """Commit numbers -> names, and checkpoint numbers, among listed ``names``."""
    commits: dict[int, str] = {}
    checkpoints: list[int] = []
    for name in names:
        head, _, rest = name.partition(".")
        if not (len(head) == 20 and head.isdigit()):
            continue
        if rest == "json":
            commits[int(head)] = name
        elif rest == "checkpoint.jsonl":
            checkpoints.append(int(head))
    return commits, checkpoints


class _Broken(Exception):
    """The index cannot answer (missing, damaged, a gap): list by reading the runs."""


def _hint(storage: Storage, org: str, project: str) -> int:
    body = storage.read(f"{folder(org, project)}/{HINT}")
    if body is None:
        return 0
    try:
        n = _codec.loads(body)["version"]
        return n if isinstance(n, int) and n > 0 else 0
    except _codec.DECODE_ERRORS:
        return 0  # a damaged hint costs a longer LIST, never an answer


def read(
    storage: Storage, org: str, project: str, upto: int | None = None, *, strict: bool = False
) -> IndexView | None:
    """The folded index of ``org/project`` (commits up to ``upto``), or None when there is none.

    Costs the hint, one LIST after it, the newest checkpoint and the commits after it
    (read concurrently where the backend batches reads). A damaged index is None
    too, or, with ``strict``, the exception that says what is damaged.
    """
    try:
        return _read(storage, org, project, upto)
    except _Broken as e:
        log.debug("index of %s/%s not used: %s", org, project, e)
        return None
    except Exception:
        if strict:
            raise
        return None


def _read(storage: Storage, org: str, project: str, upto: int | None) -> IndexView:
    hint = _hint(storage, org, project)
    top = folder(org, project)
    names = storage.list_after(top, f"{hint:020d}{_AFTER}" if hint else "")
    commits, checkpoints = _numbered(names)
    if upto is not None:
        commits = {k: v for k, v in commits.items() if k <= upto}
        checkpoints = [c for c in checkpoints if c <= upto]
    base = max(checkpoints, default=hint if (upto is None or hint <= upto) else 0)
    if base:
        body = storage.read(_checkpoint_key(org, project, base))
        if body is None:
            if not checkpoints:  # the hint names a checkpoint that is gone: read everything
                return _read_all(storage, org, project, upto)
            raise _Broken(f"checkpoint {base} vanished")
        view = _decode_checkpoint(body, base)
    else:
        view = IndexView()
        if 1 not in commits:
            raise _Broken("no index (no genesis commit)")
    after = sorted(k for k in commits if k > base)
    if after and after != list(range(base + 1, base + 1 + len(after))):
        raise CorruptData(f"a gap in the commits after {base}")
    bodies = storage.read_many(f"{top}/{commits[k]}" for k in after)
    for k in after:
        b = bodies.get(f"{top}/{commits[k]}")
        if b is None:
            raise CorruptData(f"commit {k} vanished")
        recs = _decode_commit(b)
        if k == 1 and not any(r.get("op") == "genesis" for r in recs):
            raise CorruptData("commit 1 is no genesis")
        fold(view, recs)
        view.version = k
    return view


def _read_all(storage: Storage, org: str, project: str, upto: int | None) -> IndexView:
    commits, _ = _numbered(storage.list_after(folder(org, project), ""))
    if 1 not in commits:
        raise _Broken("no index (no genesis commit)")
    view = IndexView()
    n = 1
    while n in commits and (upto is None or n <= upto):
        body = storage.read(_commit_key(org, project, n))
        if body is None:
            raise CorruptData(f"commit {n} vanished")
        fold(view, _decode_commit(body))
        view.version = n
        n += 1
    return view


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
        self.commit(rid.org, rid.project, [{"op": "intent", "u": rid.uuid, "nonce": nonce, "at": _codec.now_iso()}])
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
        commits, _ = _numbered(self._storage.list_after(folder(org, project), f"{hint:020d}{_AFTER}" if hint else ""))
        return max(commits, default=hint)

    def checkpoint(self, org: str, project: str, n: int) -> bool:
        """Fold the index up to commit ``n`` into checkpoint ``n`` and point the hint at it. Never raises."""
        try:
            view = read(self._storage, org, project, upto=n)
            if view is None or view.version != n:
                return False
            self._storage.create(_checkpoint_key(org, project, n), checkpoint_body(view))
            if _hint(self._storage, org, project) < n:
                self._storage.replace(f"{folder(org, project)}/{HINT}", _codec.dumps({"version": n}))
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
    not be read) and was (or would be) started; ``ok``: nothing to fix.
    """

    org: str
    project: str
    added: tuple[str, ...] = ()
    corrected: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    closed: int = 0
    started: bool = False

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
        elif any(have.get(k) != want[k] for k in ("status", "listing")):
            corrected.append(digest.run_id)
        else:
            continue
        records.append({"op": "entry", "u": u, "nonce": None, "row": want})
    removed = [f"{org}/{project}/{u}" for u in sorted(rows) if u not in truth]
    records += [{"op": "removed", "u": u} for u in sorted(rows) if u not in truth]
    closed = sorted(n for n, (_, at) in view.intents.items() if at < older_than) if view is not None else []
    records += [{"op": "close", "nonce": n} for n in closed]
    report = IndexReport(
        org, project, tuple(added), tuple(corrected), tuple(removed), len(closed), started=view is None
    )
    return report, records


def rebuild(storage: Storage, org: str, project: str, n: int, records: list[dict[str, Any]]) -> None:
    """Write checkpoint ``n`` from ``records`` alone (a reindex of a damaged index) and point the hint at it."""
    view = IndexView(version=n)
    fold(view, records)
    key = _checkpoint_key(org, project, n)
    if not storage.create(key, checkpoint_body(view)):
        storage.replace(key, checkpoint_body(view))  # the damaged one a boundary writer could not build
    storage.replace(f"{folder(org, project)}/{HINT}", _codec.dumps({"version": n}))
