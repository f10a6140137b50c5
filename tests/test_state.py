from __future__ import annotations

from typing import Any

import pytest

from faber_runlog import Event, RunState, fold
from faber_runlog._domain.state import LATEST_KEPT, RunDigest, fold_all

RID = "acme/web/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55"


def events(*specs: tuple[str, dict[str, Any]]) -> list[Event]:
    return [
        Event(event_id=i, type=t, timestamp=f"2026-11-23T10:00:{i:02d}.000000Z", run_id=RID, **kw)
        for i, (t, kw) in enumerate(specs, start=1)
    ]


def run(*specs: tuple[str, dict[str, Any]]) -> RunState:
    return fold_all(RunState(run_id=RID), events(*specs))


def test_fold_is_pure() -> None:
    before = RunState(run_id=RID)
    after = fold(before, events(("workflow_start", {}))[0])
    assert "created" == before.status
    assert 0 == before.last_event_id
    assert "running" == after.status


def test_workflow_events_set_run_status() -> None:
    assert "running" == run(("workflow_start", {})).status
    assert "completed" == run(("workflow_start", {}), ("workflow_complete", {})).status
    assert "failed" == run(("workflow_start", {}), ("workflow_error", {"error": "x"})).status
    assert "cancelled" == run(("workflow_start", {}), ("workflow_cancelled", {})).status
    resumed = run(("workflow_start", {}), ("workflow_error", {}), ("workflow_resumed", {}))
    assert ("running", 1) == (resumed.status, resumed.resume_count)


def test_step_error_fails_step_phase_and_run_with_the_error() -> None:
    events: tuple[tuple[str, dict[str, Any]], ...] = (
        ("workflow_start", {}),
        ("phase_start", {"phase": "build"}),
        ("step_start", {"phase": "build", "step": "compile"}),
        ("step_error", {"phase": "build", "step": "compile", "metadata": {"error": "exit 2"}}),
    )
    s = run(*events)
    # The run is failing (active, resumable), not failed: only workflow_error ends it.
    assert ("failing", True) == (s.status, s.is_resumable)
    assert "failed" == run(*events, ("workflow_error", {"error": "exit 2"})).status
    assert "failed" == s.phases["build"].status
    step = s.phases["build"].steps["compile"]
    assert ("failed", 1, "exit 2") == (step.status, step.attempts, step.error)
    assert 1000.0 == step.duration_ms
    assert step == s.failed_step
    assert ["exit 2"] == [e.message for e in s.errors]


def test_retry_counts_attempts_and_reopens_the_run() -> None:
    s = run(
        ("phase_start", {"phase": "b"}),
        ("step_start", {"phase": "b", "step": "s"}),
        ("step_error", {"phase": "b", "step": "s", "error": "e1"}),
        ("step_retry", {"phase": "b", "step": "s"}),
        ("step_start", {"phase": "b", "step": "s"}),
        ("step_complete", {"phase": "b", "step": "s", "duration_ms": 7}),
        ("phase_complete", {"phase": "b"}),
    )
    step = s.phases["b"].steps["s"]
    assert ("completed", 2, None, 7) == (step.status, step.attempts, step.error, step.duration_ms)
    assert ("running", "completed", None) == (s.status, s.phases["b"].status, s.failed_step)


def test_phase_events() -> None:
    s = run(
        ("phase_start", {"phase": "a"}),
        ("phase_complete", {"phase": "a"}),
        ("phase_skip", {"phase": "b"}),
        ("phase_start", {"phase": "c"}),
        ("phase_error", {"phase": "c", "error": {"message": "bad"}}),
    )
    assert ["a", "b", "c"] == list(s.phases)
    assert ["completed", "skipped", "failed"] == [p.status for p in s.phases.values()]
    assert "bad" == s.phases["c"].error
    assert ("failing", True) == (s.status, s.is_resumable)  # a phase error does not end the run


def test_artifacts_and_git_events() -> None:
    s = run(
        ("artifact_create", {"metadata": {"path": "a.txt"}, "artifacts": ["b.txt"]}),
        ("artifact_modify", {"metadata": {"path": "a.txt"}}),
        ("commit_create", {"metadata": {"sha": "abc1234", "message": "m"}}),
        ("branch_create", {"metadata": {"branch": "feat"}}),
        ("pr_create", {"metadata": {"number": 7, "url": "u"}}),
        ("pr_merge", {"metadata": {"number": 7, "sha": "def5678"}}),
    )
    assert [("a.txt", "create"), ("b.txt", "create"), ("a.txt", "modify")] == [(a.path, a.action) for a in s.artifacts]
    assert ["abc1234"] == [c["sha"] for c in s.commits]
    assert ["feat"] == [b["branch"] for b in s.branches]
    assert ("merged", "def5678") == (s.pull_requests["7"].status, s.pull_requests["7"].merge_sha)


def test_other_seed_types() -> None:
    s = run(
        ("spec_generate", {"metadata": {"path": "s.md"}}),
        ("spec_validate", {"metadata": {"valid": True}}),
        ("docs_update", {"metadata": {"paths": ["r.md"]}}),
        ("test_run", {"metadata": {"passed": 3, "failed": 1}}),
        ("checkpoint", {"metadata": {"label": "c1"}}),
        ("skill_invoke", {"metadata": {"skill": "lint"}}),
        ("skill_invoke", {"metadata": {"skill": "lint"}}),
        ("agent_invoke", {"metadata": {"agent": "rev"}}),
        ("decision_point", {"metadata": {"decision": "ship"}}),
        ("retry_loop_enter", {"metadata": {"loop": "fix"}}),
        ("retry_loop_exit", {"metadata": {"loop": "fix", "attempts": 2}}),
        ("workflow_rerun", {"metadata": {"parent_run_id": "p"}}),
    )
    assert 3 == len(s.specs)
    assert [(3, 1)] == [(t["passed"], t["failed"]) for t in s.tests]
    assert ["c1"] == [c["label"] for c in s.checkpoints]
    assert {"skill:lint": 2, "agent:rev": 1} == s.invocations
    assert ["ship"] == [d["decision"] for d in s.decisions]
    assert (False, 2) == (s.retry_loops["fix"]["active"], s.retry_loops["fix"]["attempts"])
    assert {"parent_run_id": "p"} == s.rerun
    assert 12 == s.last_event_id


def test_unknown_types_are_counted_and_ignored() -> None:
    s = run(("workflow_start", {}), ("from_the_future", {}))
    assert ("running", 1, 2) == (s.status, s.unknown_events, s.last_event_id)
    assert {"workflow_start": 1, "from_the_future": 1} == s.event_counts


def test_state_round_trips_through_its_dict() -> None:
    s = run(
        ("workflow_start", {}),
        ("phase_start", {"phase": "b"}),
        ("step_start", {"phase": "b", "step": "s"}),
        ("pr_create", {"metadata": {"number": 1}}),
        ("artifact_create", {"metadata": {"path": "x"}}),
        ("step_error", {"phase": "b", "step": "s", "error": "e"}),
    )
    assert s == RunState.from_dict(s.to_dict())


@pytest.mark.parametrize("cut", range(0, 7))
def test_folding_from_any_midpoint_equals_folding_at_once(cut: int) -> None:
    evs = events(
        ("workflow_start", {}),
        ("phase_start", {"phase": "b"}),
        ("step_start", {"phase": "b", "step": "s"}),
        ("step_error", {"phase": "b", "step": "s", "error": "e"}),
        ("step_retry", {"phase": "b", "step": "s"}),
        ("step_start", {"phase": "b", "step": "s"}),
    )
    whole = fold_all(RunState(run_id=RID), evs)
    mid = RunState.from_dict(fold_all(RunState(run_id=RID), evs[:cut]).to_dict())
    assert whole == fold_all(mid, evs[cut:])


def test_growing_lists_keep_the_latest_records_and_count_them_all() -> None:
    specs: list[tuple[str, dict[str, Any]]] = [("workflow_start", {})]
    for i in range(LATEST_KEPT + 15):
        specs += [
            ("step_start", {"phase": "build", "step": "test"}),
            ("step_error", {"phase": "build", "step": "test", "error": f"exit {i}"}),
            ("step_retry", {"phase": "build", "step": "test"}),
            ("checkpoint", {"metadata": {"label": f"c{i}"}}),
            ("artifact_create", {"metadata": {"path": f"out/{i}.txt"}}),
            ("commit_create", {"metadata": {"sha": f"{i:07x}"}}),
            ("test_run", {"metadata": {"passed": i, "failed": 0}}),
        ]
    specs.append(("step_complete", {"phase": "build", "step": "test"}))
    s = run(*specs)
    n = LATEST_KEPT + 15
    assert {"errors": n, "checkpoints": n, "artifacts": n, "commits": n, "tests": n} == s.totals
    assert [f"exit {i}" for i in range(15, n)] == [e.message for e in s.errors]
    assert [f"c{i}" for i in range(15, n)] == [c["label"] for c in s.checkpoints]
    assert [f"out/{i}.txt" for i in range(15, n)] == [a.path for a in s.artifacts]
    # What the workflow bounds stays whole: the step, its attempts, the run's status.
    step = s.step("build", "test")
    assert step is not None
    assert ("completed", n, "running") == (step.status, step.attempts, s.status)
    assert s == RunState.from_dict(s.to_dict())


def test_the_failed_step_survives_however_many_errors_came_before() -> None:
    specs: list[tuple[str, dict[str, Any]]] = [("workflow_start", {})]
    specs += [("step_error", {"phase": "p", "step": f"s{i}", "error": "x"}) for i in range(LATEST_KEPT * 2)]
    s = run(*specs)
    assert s.failed_step is not None
    assert (f"s{LATEST_KEPT * 2 - 1}", LATEST_KEPT, LATEST_KEPT * 2) == (
        s.failed_step.name,
        len(s.errors),
        s.totals["errors"],
    )


def test_a_digest_carries_the_fields_it_shares_with_the_state_and_a_copy_of_the_totals() -> None:
    s = run(
        ("workflow_start", {}),
        ("phase_start", {"phase": "build"}),
        ("step_start", {"phase": "build", "step": "compile"}),
        ("step_error", {"phase": "build", "step": "compile", "metadata": {"error": "exit 2"}}),
    )
    digest = RunDigest.of(s, "fp")
    expected = {
        "run_id": RID,
        "status": "failing",
        "last_event_id": 4,
        "last_event": "fp",
        "started_at": s.started_at,
        "updated_at": s.updated_at,
        "current_phase": s.current_phase,
        "current_step": s.current_step,
        "failed_phase": "build",
        "failed_step": "compile",
        "error": "exit 2",
        "resume_count": 0,
        "sealed_at": None,
        "totals": s.totals,
    }
    assert expected == {k: getattr(digest, k) for k in expected}
    s.totals["errors"] = 99
    assert 99 != digest.totals.get("errors")
