"""Issue 19, sections 3-5: hostile values, one bad run among many, and smaller wrong results.

Each test names a defect found by the third adversarial campaign; it failed before its fix.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from faber_runlog import Archiver, RetentionPolicy, RunStore
from faber_runlog._cli import main
from faber_runlog.errors import InvalidArgument, InvalidEvent, InvalidParams

NAN = float("nan")
INF = float("inf")


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def local(tmp_path: Path) -> RunStore:
    return RunStore(str(tmp_path / "runs"))


# -- numbers: NaN, infinity, 1e10, floats for ints -----------------------------------------------


@pytest.mark.parametrize("keep_days", [NAN, INF, 1e10, -1, True, "3"])
def test_retention_policy_refuses_a_keep_days_that_is_no_finite_bounded_number(keep_days: Any) -> None:
    with pytest.raises(InvalidArgument, match="keep_days"):
        RetentionPolicy(keep_days=keep_days)


@pytest.mark.parametrize("older_than", [NAN, INF, 1e10, -2.0])
def test_archive_finished_refuses_an_age_that_is_no_finite_bounded_number(local: RunStore, older_than: float) -> None:
    archiver = Archiver(local, RunStore("memory://harden-archive"))
    with pytest.raises(InvalidArgument, match="older_than"):
        archiver.archive_finished(older_than=older_than)


def test_read_and_get_refuse_an_event_id_that_is_a_float(local: RunStore) -> None:
    run = local.create_run("acme", "web")
    run.start()
    with pytest.raises(InvalidArgument, match="since"):
        list(run.log.read(since=2.5))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="event_id"):
        run.log.get(1.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="limit"):
        list(run.log.read(limit=NAN))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="until"):
        list(run.log.read(until=INF))  # type: ignore[arg-type]
    assert [1] == [e.event_id for e in run.log.read(limit=5)]


@pytest.mark.parametrize("older_than", [NAN, INF, -1.0, 1e300])
def test_sweep_stale_refuses_an_older_than_that_is_no_finite_bounded_number(local: RunStore, older_than: float) -> None:
    with pytest.raises(InvalidArgument, match="older_than"):
        local.sweep_stale(older_than=older_than)


def test_status_view_refuses_a_tail_that_is_no_integer(local: RunStore) -> None:
    run = local.create_run("acme", "web")
    for tail in (NAN, 2.5, True, -1):
        with pytest.raises(InvalidArgument, match="tail"):
            run.status_view(tail=tail)  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [INF, NAN, 1e300, 0, -1])
def test_a_heartbeat_ttl_must_be_a_finite_positive_number(local: RunStore, ttl: float) -> None:
    run = local.create_run("acme", "web")
    with pytest.raises(InvalidArgument, match="ttl"):
        run.heartbeat(ttl=ttl)
    with pytest.raises(InvalidArgument, match="ttl"):
        run.start_heartbeat(ttl=ttl)
    with pytest.raises(InvalidArgument, match="lease_ttl"):
        RunStore("memory://harden-ttl", lease_ttl=ttl)


def test_create_run_refuses_a_plan_that_is_no_list_of_phases(local: RunStore) -> None:
    before = sorted(os.listdir(local.url)) if os.path.isdir(local.url) else []
    with pytest.raises(InvalidParams, match="phases"):
        local.create_run("acme", "web", phases=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidParams, match="steps"):
        local.create_run("acme", "web", phases=["build"], steps=[1])  # type: ignore[arg-type]
    with pytest.raises(InvalidParams, match="steps"):
        local.create_run("acme", "web", phases=["build"], steps={"build": 7})  # type: ignore[dict-item]
    after = sorted(os.listdir(local.url)) if os.path.isdir(local.url) else []
    assert before == after


# -- timestamps: parsed, not pattern-matched -------------------------------------------------------


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-02-30T00:00:00Z",  # no such day
        "2024-02-03T00:00:00.123456789Z",  # nanoseconds: no reader of ours holds them
        "2024-13-01T00:00:00Z",
        "2024-02-03T25:00:00Z",
        "2024-02-03T00:00:00",  # no offset
        "2024-02-03T00:00:00+24:00",
        "soon",
    ],
)
def test_append_refuses_an_impossible_timestamp(local: RunStore, stamp: str) -> None:
    run = local.create_run("acme", "web")
    with pytest.raises(InvalidEvent, match="timestamp"):
        run.log.append({"type": "workflow_start"}, timestamp=stamp)
    assert 0 == run.log.last_event_id()


def test_append_keeps_a_real_timestamp_with_an_offset(local: RunStore) -> None:
    run = local.create_run("acme", "web")
    event = run.log.append({"type": "workflow_start"}, timestamp="2024-02-29T23:59:59.5+01:00")
    assert "2024-02-29T23:59:59.5+01:00" == event.timestamp


# -- the CLI: exit 2 and one line ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300"])
def test_cli_sweep_refuses_an_older_than_that_is_no_finite_number(tmp_path: Path, value: str) -> None:
    code, out, err = _cli("--root", str(tmp_path / "runs"), "sweep", f"--older-than={value}")
    assert (2, "") == (code, out)
    assert 1 == len(err.strip().splitlines()) and "--older-than" in err, err


def test_cli_refuses_deeply_nested_json_as_bad_usage(tmp_path: Path) -> None:
    root = str(tmp_path / "runs")
    deep = "[" * 100_000 + "]" * 100_000
    code, out, err = _cli("--root", root, "new", "acme", "web", "--param", f"x:={deep}")
    assert (2, "") == (code, out)
    assert "internal error" not in err and 1 == len(err.strip().splitlines()), err
    assert not os.path.exists(root) or [] == os.listdir(root)
