"""One optimistic-retry helper: one bound, one exhaustion error, used by every compare-and-swap loop."""

from __future__ import annotations

import pickle

import pytest

from faber_runlog import Refused, RunStore, TooMuchContention
from faber_runlog._base.ids import RunId
from faber_runlog._base.retry import AGAIN, TRIES, Again, optimistic
from faber_runlog._log.index import IndexWriter
from faber_runlog._log.lease import acquire_lease, release_lease, renew_lease


def test_optimistic_returns_the_first_answer_that_is_not_again() -> None:
    calls: list[int] = []

    def attempt() -> int | Again:
        calls.append(1)
        return AGAIN if len(calls) < 3 else 42

    assert (42, 3) == (optimistic(attempt, what="x"), len(calls))


def test_optimistic_gives_up_after_the_one_bound_with_the_one_error() -> None:
    calls: list[int] = []

    def attempt() -> int | Again:
        calls.append(1)
        return AGAIN

    with pytest.raises(TooMuchContention, match=r"^taking the thing: .* 50 times in a row.*stop them") as info:
        optimistic(attempt, what="taking the thing", run_id="acme/web/r", advice="stop them")
    assert (TRIES, TRIES, "acme/web/r") == (len(calls), info.value.tries, info.value.run_id)
    assert isinstance(info.value, Refused)
    again = pickle.loads(pickle.dumps(info.value))
    assert (str(info.value), again.tries, again.run_id) == (str(again), TRIES, "acme/web/r")


def test_a_lease_that_always_loses_its_compare_and_swap_gives_up_with_the_one_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = RunStore("memory://retry-lease")
    rid = RunId.parse(store.create_run("acme", "web").id)
    acquire_lease(store.storage, rid, owner="me")
    monkeypatch.setattr(store.storage, "swap", lambda *_a, **_k: None)  # every other process wins
    monkeypatch.setattr(store.storage, "create", lambda *_a, **_k: False)
    with pytest.raises(TooMuchContention, match="taking the lease of run"):
        acquire_lease(store.storage, rid, owner="other")
    assert renew_lease(store.storage, rid, owner="me") is None  # lost, as before: it cannot count on it
    assert release_lease(store.storage, rid, owner="me") is False


def test_an_index_commit_that_always_loses_is_bounded_not_endless(monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore("memory://retry-index")
    writer = IndexWriter(store.storage)
    tries: list[str] = []

    def lose(key: str, data: bytes) -> bool:
        tries.append(key)
        return False

    monkeypatch.setattr(store.storage, "create", lose)
    with pytest.raises(TooMuchContention, match="run index of acme/web"):
        writer.commit("acme", "web", [{"op": "entry"}])
    assert TRIES == len(tries)
