"""Every code block of README.md and docs/*.md runs as written (one test per page).

The convention (also in CONTRIBUTING.md):

- A page runs in a fresh, empty temporary folder, its blocks in page order.
- ```python blocks run in ONE namespace per page, with that folder as the current directory
  (so ``RunStore()`` is a local store there).
- ```console blocks run line by line with bash in that folder: a ``$ `` line is a command (with
  ``faber-runlog`` on PATH, this checkout's code), the lines after it, up to the next ``$ ``, its expected
  output (stdout and stderr together). Variables assigned by a command (``RUN=$(...)``, ``export X=...``)
  are seen by later commands. A command must exit 0 unless its trailing comment says ``# exits N``.
  Expected output is checked for its substance: each shown line must match an output line, in order;
  ``...`` skips lines; uuids, timestamps and durations may differ; runs of spaces match any spacing;
  ``/work/app`` stands for the page's folder.
- ```bash and ```sh blocks run as bash scripts (``set -e``) in that folder.
- ``<!-- docs-test: skip (reason) -->`` on the line before a fence skips that block; skipped blocks are few
  and each says why (installing packages, running the test suite).
- ``<!-- docs-test: file NAME -->`` on the line before a fence writes the block into ``NAME`` in that folder
  instead of running it (a test module, a ``conftest.py``); a later console block runs it (``python`` there is
  this interpreter, so ``python -m pytest`` runs a page's tests with this checkout).
- ``s3://`` URLs reach a moto S3 server (``AWS_ENDPOINT_URL``), with the buckets the page names created.

The CLI starts through a fork server that has imported the package once (``_docs_forkserver``), so a
console session of forty commands costs well under a second of CPU per command.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import S3Server

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((.+)\)\s*-->")
FILE = re.compile(r"<!--\s*docs-test:\s*file\s+([\w.-]+)\s*-->")
EXITS = re.compile(r"#.*\bexits? (\d+)\b")
RUNNABLE = {"python", "console", "bash", "sh"}
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
UUIDISH = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:\d\d)?")
DURATION = re.compile(r"\b\d+(?:\.\d+)?(?:ms|s)\b")
APP = "/work/app"
COMMAND_TIMEOUT = 60
KNOWN_FAILING: dict[str, str] = {}
"""Pages not yet fixed: strict xfail, so the day one passes the entry must go."""


@attrs.frozen
class Block:
    """One fenced code block of a page."""

    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None  # the reason, when marked skip
    file: str | None = None  # the file name, when the block is written to a file instead of run


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, in order, with their skip markers."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        marker = SKIP.search(lines[start - 1]) if start > 0 else None
        into = FILE.search(lines[start - 1]) if start > 0 else None
        found.append(
            Block(
                path.name,
                start + 1,
                lang,
                "\n".join(body) + "\n",
                marker.group(1) if marker else None,
                into.group(1) if into else None,
            )
        )
    return found


@attrs.frozen
class Command:
    """One ``$ `` line of a console block and the output the page shows for it."""

    line: int
    text: str
    expected: list[str]


def commands(block: Block) -> list[Command]:
    """The commands of a console block; a line ending in a backslash continues on the next."""
    found: list[Command] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if found:
                found[-1].expected.append(line)
            elif line.strip():
                raise AssertionError(f"{block.page}:{block.line + i + 1}: output before the first '$ ' command")
            i += 1
            continue
        text, number = line[2:], block.line + i + 1
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + "\n" + lines[i]
        found.append(Command(number, text, []))
        i += 1
    for command in found:
        while command.expected and not command.expected[-1].strip():
            command.expected.pop()
    return found


def line_pattern(shown: str) -> re.Pattern[str]:
    """A shown output line as a pattern: uuids, timestamps and durations vary; spacing is free."""
    parts: list[str] = []
    tokens = re.compile(rf"({UUID})|({STAMP.pattern})|({DURATION.pattern})|(\s+)|(\.\.\.)")
    pos = 0
    text = shown.strip()
    for m in tokens.finditer(text):
        parts.append(re.escape(text[pos : m.start()]))
        if m.group(1):
            parts.append(UUID)
        elif m.group(2):
            parts.append(STAMP.pattern)
        elif m.group(3):
            parts.append(DURATION.pattern)
        elif m.group(4):
            parts.append(r"\s+")
        else:
            parts.append(r".*")
        pos = m.end()
    parts.append(re.escape(text[pos:]))
    return re.compile("".join(parts))


def check_output(where: str, command: str, expected: list[str], actual: str) -> None:
    """Each shown line matches an actual line, in order; a ``...`` line skips any number of lines."""
    shown = [line for line in expected if line.strip() and line.strip() != "..."]
    got = [line.rstrip() for line in actual.splitlines()]
    j = 0
    for line in shown:
        pattern = line_pattern(line)
        while j < len(got) and not pattern.fullmatch(got[j].strip()):
            j += 1
        if j == len(got):
            raise AssertionError(
                f"{where}: `{command}` should print a line like\n    {line}\nbut printed:\n" + _indent(actual)
            )
        j += 1


def _indent(text: str) -> str:
    return "".join(f"    {line}\n" for line in text.splitlines()) or "    (nothing)\n"


class Shell:
    """Runs console commands with bash in one folder; exported variables carry from one command to the next."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.state = folder.parent / f".{folder.name}.shell-state"
        self.state.write_text("")

    def run(self, command: str) -> tuple[int, str]:
        script = (
            f"set -a; . {shlex.quote(str(self.state))}; set +a\n"
            f"set -a\n{command}\n__rc=$?\nset +a\n"
            f"export -p | grep -v -E '^declare -x (PWD|OLDPWD|SHLVL|_|__rc)=' > {shlex.quote(str(self.state))}\n"
            "exit $__rc\n"
        )
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.folder,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        return done.returncode, done.stdout.replace(str(self.folder.resolve()), APP).replace(str(self.folder), APP)


@pytest.fixture(scope="session")
def cli_bin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with ``faber-runlog`` on it: a client of a fork server that has imported this checkout."""
    folder = tmp_path_factory.mktemp("bin")
    with ForkServer(folder) as server:
        script = folder / "faber-runlog"
        script.write_text(
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -S -I {shlex.quote(str(server.client))} "
            f'{shlex.quote(str(server.socket))} "$@"\n'
        )
        script.chmod(0o755)
        python = folder / "python"  # a page's `python -m pytest` runs with this interpreter and this checkout
        python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        python.chmod(0o755)
        yield folder


class ForkServer:
    """Starts ``_docs_forkserver.py`` on a unix socket; stops it at exit."""

    def __init__(self, folder: Path) -> None:
        here = Path(__file__).parent
        self.client = here / "_docs_forkclient.py"
        self.socket = folder / "cli.sock"
        env = {**os.environ, "PYTHONPATH": _pythonpath()}
        self.process = subprocess.Popen(
            [sys.executable, str(here / "_docs_forkserver.py"), str(self.socket)], env=env, stdout=subprocess.PIPE
        )

    def __enter__(self) -> ForkServer:
        assert self.process.stdout is not None
        assert b"ready\n" == self.process.stdout.readline()
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.communicate(timeout=30)  # waits, and closes its pipe (an unclosed pipe is a ResourceWarning)


def _pythonpath() -> str:
    return os.pathsep.join([str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])


def _buckets(text: str) -> set[str]:
    return set(re.findall(r"s3://([a-z0-9][a-z0-9.-]+[a-z0-9])", text))


def page_env(
    folder: Path, cli: Path, monkeypatch: pytest.MonkeyPatch, s3: S3Server | None, text: str
) -> dict[str, str]:
    """The environment a page runs in, set for this process (python blocks) and returned for bash."""
    for name in ("FABER_RUNLOG_ROOT", "FABER_RUNLOG_CONFIG", "FABER_RUNLOG_STORAGE_OPTIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(folder.parent))
    monkeypatch.setenv("PYTHONPATH", _pythonpath())
    if s3 is not None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
        fs = s3.filesystem()
        for bucket in _buckets(text):
            if not fs.exists(bucket):
                fs.mkdir(bucket)
    env = {**os.environ, "PATH": f"{cli}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def run_console(block: Block, shell: Shell) -> None:
    for command in commands(block):
        where = f"{block.page}:{command.line}"
        m = EXITS.search(command.text.splitlines()[-1])
        want = int(m.group(1)) if m else 0
        code, output = shell.run(command.text)
        assert want == code, f"{where}: `{command.text}` exited {code} (the page expects {want}):\n{_indent(output)}"
        check_output(where, command.text, command.expected, output)


def run_script(block: Block, shell: Shell) -> None:
    code, output = shell.run("set -e\n" + block.text)
    assert 0 == code, f"{block.page}:{block.line}: the {block.lang} block exited {code}:\n{_indent(output)}"


def run_python(block: Block, namespace: dict[str, Any]) -> None:
    code = compile("\n" * block.line + block.text, f"{block.page}", "exec")
    exec(code, namespace)


@pytest.fixture
def default_registry_restored() -> Iterator[None]:
    """Pages register event types, folds and backends in the default registry: undo that after each page."""
    from faber_runlog._domain import events as _events
    from faber_runlog._domain import registry as _registry
    from faber_runlog._domain import state as _state

    table = _events.DEFAULT_TYPES
    saved = (dict(table.types), dict(table.validators), dict(table.upcasters))
    folds, backends = dict(_state.default_folds()), dict(_registry.DEFAULT_BACKENDS)
    yield
    lives: list[dict[Any, Any]] = [table.types, table.validators, table.upcasters]
    olds: list[dict[Any, Any]] = list(saved)
    for live, old in zip(lives, olds, strict=True):
        live.clear()
        live.update(old)
    _state.default_folds().clear()
    _state.default_folds().update(folds)
    _registry.DEFAULT_BACKENDS.clear()
    _registry.DEFAULT_BACKENDS.update(backends)


def _forget_memory_stores(text: str) -> None:
    """Empty the ``memory://`` stores a page names: the memory filesystem lives as long as the process,
    so a page run after another test (or after itself) in the same worker starts as a reader would."""
    import fsspec

    memory = fsspec.filesystem("memory")
    for name in sorted(set(re.findall(r"memory://([\w.-]+)", text))):
        if memory.exists(f"/{name}"):
            memory.rm(f"/{name}", recursive=True)


@pytest.mark.usefixtures("default_registry_restored")
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_block_of_the_page_runs_as_written(
    page: Path,
    cli_bin: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    if page.name in KNOWN_FAILING:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_FAILING[page.name], strict=True))
    found = [b for b in blocks(page) if b.lang in RUNNABLE]
    if not [b for b in found if b.skip is None]:
        pytest.skip(f"{page.name} has no runnable block")
    text = page.read_text()
    s3: S3Server | None = request.getfixturevalue("s3_server") if _buckets(text) else None
    folder = tmp_path / "app"
    folder.mkdir()
    monkeypatch.chdir(folder)
    env = page_env(folder, cli_bin, monkeypatch, s3, text)
    _forget_memory_stores(text)
    shell = Shell(folder, env)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for block in found:
        if block.skip is not None:
            continue
        if block.file is not None:
            (folder / block.file).write_text(block.text)
        elif block.lang == "python":
            run_python(block, namespace)
        elif block.lang == "console":
            run_console(block, shell)
        else:
            run_script(block, shell)


def test_skipped_blocks_are_few_and_say_why() -> None:
    skipped = [b for page in PAGES for b in blocks(page) if b.skip is not None]
    runnable = [b for page in PAGES for b in blocks(page) if b.lang in RUNNABLE]
    assert all(len(b.skip or "") >= 10 for b in skipped), [(b.page, b.line, b.skip) for b in skipped]
    assert len(skipped) * 8 <= len(runnable), [(b.page, b.line, b.skip) for b in skipped]


def test_the_harness_checks_exit_codes_output_and_variables(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```console\n$ X=$(echo hello)   # a comment\n$ echo $X world\nhello world\n"
        "$ false   # exits 1\n$ printf 'run: acme/web/3f2b8c1e-9a4d-4c6e-8f10-2b7d9e0a1c55\\nb\\n'\n"
        "run: acme/web/58dc29f4-8dc1-4f2b-9543-25372535cb4d\n...\n```\n"
        "<!-- docs-test: skip (needs real AWS credentials) -->\n```console\n$ false\n```\n"
    )
    found = blocks(page)
    assert ["console", "console"] == [b.lang for b in found]
    assert [None, None] == [b.file for b in found]
    written = tmp_path / "files.md"
    written.write_text("<!-- docs-test: file test_x.py -->\n```python\nx = 1\n```\n")
    assert [("test_x.py", "x = 1\n")] == [(b.file, b.text) for b in blocks(written)]
    assert [None, "needs real AWS credentials"] == [b.skip for b in found]
    folder = tmp_path / "app"
    folder.mkdir()
    run_console(found[0], Shell(folder, dict(os.environ)))
    bad = Block("page.md", 1, "console", "$ echo one\ntwo\n", None)
    with pytest.raises(AssertionError, match="should print a line like"):
        run_console(bad, Shell(folder, dict(os.environ)))
    with pytest.raises(AssertionError, match="exited 1"):
        run_console(Block("page.md", 1, "console", "$ false\n", None), Shell(folder, dict(os.environ)))
