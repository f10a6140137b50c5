"""Progress bars: quiet without a terminal, switchable by parameter and $FABER_RUNLOG_PROGRESS, a real bar when shown."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from faber_runlog import RunStore
from faber_runlog._base.progress import PROGRESS_ENV, Progress, progress_wanted
from faber_runlog._services.archive import Archiver


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROGRESS_ENV, raising=False)


def test_the_default_follows_whether_stderr_is_a_terminal() -> None:
    assert (True, False) == (
        progress_wanted(progress=None, stream=Terminal()),
        progress_wanted(progress=None, stream=io.StringIO()),
    )


@pytest.mark.parametrize(("env", "expected"), [("0", False), ("off", False), ("1", True), ("yes", True)])
def test_the_environment_variable_switches_it_when_no_parameter_is_given(
    monkeypatch: pytest.MonkeyPatch, env: str, expected: bool
) -> None:
    monkeypatch.setenv(PROGRESS_ENV, env)
    assert (expected, expected) == (
        progress_wanted(progress=None, stream=Terminal()),
        progress_wanted(progress=None, stream=io.StringIO()),
    )
    assert (True, False) == (
        progress_wanted(progress=True, stream=io.StringIO()),
        progress_wanted(progress=False, stream=Terminal()),
    )


def test_on_a_terminal_it_redraws_one_bar_in_place() -> None:
    tty = Terminal()
    with Progress("archiving", 4, stream=tty) as bar:
        for _ in range(4):
            bar.update()
    text = tty.getvalue()
    assert text.startswith("\rarchiving [") and text.endswith("\n")
    assert 1 == text.count("\n")
    assert f"[{'#' * 24}] 4/4 100%" in text.split("\r")[-1]


def test_forced_on_without_a_terminal_it_writes_plain_lines() -> None:
    log = io.StringIO()
    with Progress("reading runs", 3, enabled=True, stream=log) as bar:
        bar.update(3)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[-1].startswith("reading runs [") and "3/3 100%" in lines[-1]


def test_without_a_terminal_long_operations_write_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pandas")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    source = RunStore(str(tmp_path / "src"))
    run = source.create_run("acme", "web")
    run.start()
    run.complete()
    source.events_frame()
    source.runs_frame()
    archiver = Archiver(source, RunStore(f"memory://progress-{tmp_path.name}"))
    archiver.archive_many([run.id])
    archiver.cleanup(dry_run=True)
    assert "" == err.getvalue()
    monkeypatch.setenv(PROGRESS_ENV, "1")
    source.events_frame()
    archiver.cleanup(dry_run=True)
    shown = err.getvalue().splitlines()
    assert ["reading runs", "cleaning up"] == [line.split(" [")[0] for line in shown if "100%" in line]
