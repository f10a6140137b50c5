"""The one filter vocabulary (RunQuery): the same checked keywords on list_runs, the frames, to_arrow and the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from faber_runlog import RunStore
from faber_runlog._domain.query import RunQuery
from faber_runlog._frontends.cli import main
from faber_runlog.errors import InvalidArgument, InvalidFilter


@pytest.fixture(scope="module")
def shop() -> dict[str, Any]:
    """A small store: four runs of acme/web (two failed) and one of acme/api, with params and tags."""
    store = RunStore(f"memory://query-{uuid.uuid4().hex}")
    ids: dict[str, str] = {}
    for name, project, work_id, fail in (
        ("a", "web", "220", True),
        ("b", "web", "221", False),
        ("c", "web", "220", False),
        ("d", "web", 220, True),
        ("e", "api", "220", False),
    ):
        run = store.create_run("acme", project, params={"work_id": work_id}, tags={"name": name})
        run.start()
        run.log.emit("step_start", phase="build", step="compile")
        if fail:
            run.log.emit("step_error", phase="build", step="compile", error="boom")
            run.fail("boom")
        ids[name] = run.id
    return {"store": store, "ids": ids}


def _names(shop: dict[str, Any], runs: Any) -> list[str]:
    by_id = {v: k for k, v in shop["ids"].items()}
    return [by_id[r.run_id] for r in runs]


def test_list_runs_is_newest_first_and_oldest_first_on_request(shop: dict[str, Any]) -> None:
    store = shop["store"]
    assert ["e", "d", "c", "b", "a"] == _names(shop, store.list_runs())
    assert ["a", "b", "c", "d", "e"] == _names(shop, store.list_runs(order="oldest"))


def test_params_match_as_given_or_as_text(shop: dict[str, Any]) -> None:
    store = shop["store"]
    assert ["d", "c", "a"] == _names(shop, store.list_runs(project="web", params={"work_id": "220"}))
    assert ["d"] == _names(shop, store.list_runs(params={"work_id": 220}))


def test_status_takes_one_value_or_several(shop: dict[str, Any]) -> None:
    store = shop["store"]
    assert ["d", "a"] == _names(shop, store.list_runs(status="failed"))
    assert ["e", "d", "c", "b", "a"] == _names(shop, store.list_runs(status=["failed", "running"]))


def test_a_single_run_id_string_is_one_run_not_its_characters(shop: dict[str, Any]) -> None:
    store, ids = shop["store"], shop["ids"]
    assert ["b"] == _names(shop, store.list_runs(run_ids=ids["b"]))
    assert [ids["b"]] == list(store.runs_frame(run_ids=ids["b"])["run_id"])
    assert {ids["b"]} == set(store.events_frame(run_ids=ids["b"])["run_id"])


def test_a_single_type_string_is_one_type(shop: dict[str, Any]) -> None:
    frame = shop["store"].events_frame(types="step_error")
    assert ["step_error", "step_error"] == list(frame["type"])


def test_limit_and_cursor_page_through_every_run_once(shop: dict[str, Any]) -> None:
    store = shop["store"]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = store.list_runs(limit=2, cursor=cursor)
        seen += _names(shop, page)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert (["e", "d", "c", "b", "a"], 3) == (seen, pages)


def test_since_and_until_bound_the_creation_time(shop: dict[str, Any]) -> None:
    store = shop["store"]
    runs = store.list_runs(order="oldest")
    middle = runs[2].created_at
    assert ["c", "d", "e"] == _names(shop, store.list_runs(order="oldest", since=middle))
    assert ["a", "b"] == _names(shop, store.list_runs(order="oldest", until=middle))


def test_ended_since_and_until_bound_the_end_time_and_a_run_still_going_matches_neither(shop: dict[str, Any]) -> None:
    store = shop["store"]
    ended = store.list_runs(order="oldest", status="failed")
    assert ["a", "d"] == _names(shop, ended)
    assert all(r.ended_at is not None and r.started_at is not None for r in ended)
    assert [None] * 3 == [r.ended_at for r in store.list_runs(status="running")]
    first, last = ended[0].ended_at, ended[1].ended_at
    assert ["a", "d"] == _names(shop, store.list_runs(order="oldest", ended_since="2000-01-01"))
    assert ["d"] == _names(shop, store.list_runs(order="oldest", ended_since=last))
    assert ["a"] == _names(shop, store.list_runs(order="oldest", ended_until=last))
    assert [] == _names(shop, store.list_runs(ended_since=first, ended_until=first))
    frame = store.runs_frame(ended_since=first)
    assert [shop["ids"]["a"], shop["ids"]["d"]] == list(frame["run_id"])


def test_frames_take_the_same_filters_as_list_runs(shop: dict[str, Any]) -> None:
    store, ids = shop["store"], shop["ids"]
    frame = store.runs_frame(status="failed", params={"work_id": "220"}, order="newest")
    assert [ids["d"], ids["a"]] == list(frame["run_id"])
    table = store.to_arrow("runs", tags={"name": "c"})
    assert [ids["c"]] == table.column("run_id").to_pylist()
    events = store.to_arrow(status="failed", types=["workflow_error"])
    assert [ids["a"], ids["d"]] == events.column("run_id").to_pylist()


CALLS: list[tuple[str, Callable[[RunStore, dict[str, Any]], object]]] = [
    ("list_runs()", lambda s, f: s.list_runs(**f)),
    ("runs_frame()", lambda s, f: s.runs_frame(**f)),
    ("events_frame()", lambda s, f: s.events_frame(**f)),
    ("to_arrow()", lambda s, f: s.to_arrow(**f)),
]


@pytest.mark.parametrize(("where", "call"), CALLS, ids=[c[0] for c in CALLS])
def test_a_misspelt_keyword_names_the_accepted_ones(
    shop: dict[str, Any], where: str, call: Callable[[RunStore, dict[str, Any]], object]
) -> None:
    with pytest.raises(InvalidArgument) as info:
        call(shop["store"], {"stauts": "failed"})
    assert f"{where} got an unknown filter 'stauts' (did you mean 'status'" in str(info.value)
    assert "it accepts: org, project, run_ids, status, " in str(info.value)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"limit": -1}, "limit takes a whole number >= 0 (or None for all), got -1"),
        ({"limit": math.nan}, "limit takes a whole number >= 0 (or None for all), got nan"),
        ({"since": "yesterday"}, "since='yesterday' is not an ISO 8601 date or time"),
        ({"until": 12}, "until takes an ISO 8601 string, a date or a datetime, got int 12"),
        ({"ended_since": "last week"}, "ended_since='last week' is not an ISO 8601 date or time"),
        ({"params": {"x": math.nan}}, "params['x'] is NaN"),
        ({"order": "newer"}, "order takes 'newest' or 'oldest', got 'newer' (did you mean 'newest'?)"),
        ({"cursor": "nope"}, "cursor='nope' is not a cursor this library handed out"),
        ({"run_ids": ["acme/web"]}, "run_ids holds 'acme/web', which is no run id"),
        ({"types": 3}, "types takes one str or a list of them, got int 3"),
        ({"tags": ["a"]}, "tags takes a mapping"),
    ],
)
def test_bad_values_are_refused_precisely(shop: dict[str, Any], filters: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        RunQuery.of("list_runs()", **filters)
    assert expected in str(info.value)


def test_an_unknown_status_and_an_empty_time_range_are_refused() -> None:
    with pytest.raises(InvalidFilter, match="did you mean 'failed'"):
        RunQuery.of(status=["failed", "failure"])
    with pytest.raises(InvalidFilter, match=r"until=2026-01-01T00:00:00\.000000Z is before since"):
        RunQuery.of(since="2026-02-01", until="2026-01-01")
    with pytest.raises(InvalidFilter, match=r"ended_until=2026-01-01T00:00:00\.000000Z is before ended_since"):
        RunQuery.of(ended_since="2026-02-01", ended_until="2026-01-01")


def _cli(store: RunStore, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--root", store.url, *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_list_filters_by_param_and_pages_with_a_cursor(tmp_path: Any) -> None:
    store = RunStore(str(tmp_path / "runs"))
    made = [store.create_run("acme", "web", params={"work_id": str(i % 2)}).id for i in range(5)]
    code, out, _ = _cli(store, "list", "--param", "work_id=0", "--order", "oldest", "--json")
    assert (0, [made[0], made[2], made[4]]) == (code, [r["run_id"] for r in json.loads(out)])
    code, out, _ = _cli(store, "list", "--limit", "3", "--json")
    first = json.loads(out)
    assert [made[4], made[3], made[2]] == [r["run_id"] for r in first["runs"]]
    code, out, _ = _cli(store, "list", "--limit", "3", "--cursor", first["next_cursor"], "--json")
    assert ([made[1], made[0]], None) == (
        [r["run_id"] for r in json.loads(out)["runs"]],
        json.loads(out)["next_cursor"],
    )
    code, out, err = _cli(store, "list", "--limit", "1")
    assert "more runs: add --cursor" in err
    code, _, err = _cli(store, "list", "--since", "last tuesday")
    assert (2, True) == (code, "--since 'last tuesday' is not an ISO 8601 date or time" in err)


def test_the_querying_page_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = (Path(__file__).parent.parent / "docs" / "querying.md").read_text()
    blocks = re.findall(r"```(python|console)\n(.*?)```", page, re.S)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FABER_RUNLOG_ROOT", raising=False)
    namespace: dict[str, Any] = {}
    printed = io.StringIO()
    for kind, body in blocks:
        if kind == "python":
            with contextlib.redirect_stdout(printed):
                exec(compile(body, "docs/querying.md", "exec"), namespace)
            continue
        lines = body.splitlines()
        command = lines[0].removeprefix("$ ").replace("faber-runlog", f"{sys.executable} -m faber_runlog", 1)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False, env=os.environ)
        assert (lines[1:], "") == (done.stdout.splitlines(), done.stderr)
    assert [
        "2 ['failed', 'failed']",
        "['failed', 'failed'] True",
        "[2, 1]",
        "2",
        "list_runs() got an unknown filter 'stauts' (did you mean 'status' or 'tags'?)",
        "[('220', 2)]",
        "[('created', 1), ('failed', 1)]",
    ] == printed.getvalue().splitlines()


def test_cli_list_filters_by_end_time_and_refuses_a_bad_one_in_its_own_terms(tmp_path: Any) -> None:
    store = RunStore(str(tmp_path / "runs"))
    done = store.create_run("acme", "web")
    done.start()
    done.complete()
    store.create_run("acme", "web").start()
    ended_at = done.state().ended_at
    assert ended_at is not None
    code, out, _ = _cli(store, "list", "--ended-since", ended_at, "--json")
    assert (0, [(done.id, ended_at)]) == (code, [(r["run_id"], r["ended_at"]) for r in json.loads(out)])
    code, out, err = _cli(store, "list", "--ended-until", "soon")
    assert 2 == code
    assert "--ended-until 'soon' is not an ISO 8601 date or time" in err
