"""A fork server for the docs tests: imports the CLI once, then forks one child per ``faber-runlog`` call.

Usage: ``python _docs_forkserver.py SOCKET``; prints ``ready`` once listening. A client
(``_docs_forkclient.py``) sends its stdin, stdout and stderr descriptors, argv, folder and environment;
the child runs ``faber_runlog._frontends.cli.main`` with them exactly as ``python -m faber_runlog`` would and sends
back the exit code. Starting Python and importing the package is most of a CLI call's cost; forking
skips both, so a docs page of forty commands stays cheap.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from typing import Any

import faber_runlog._frontends.cli
import faber_runlog._frontends.mcp_server
import faber_runlog._services.resume
import faber_runlog._services.verify  # noqa: F401

CHILD_TIMEOUT = 120  # seconds: a command the test has given up on (a blocking --follow) is ended


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _child(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.alarm(CHILD_TIMEOUT)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["faber-runlog", *request["argv"]]
    code = 1
    try:
        from faber_runlog._frontends.cli import main

        code = main(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001  (the forked child reports any failure as its exit code)
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        conn.sendall(struct.pack("!i", code))
        os._exit(code)


def serve(path: str) -> None:
    """Accept clients on ``path`` for ever, one forked child per call."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        conn, _ = server.accept()
        try:
            header, fds, _flags, _addr = socket.recv_fds(conn, 8, 3)
            (size,) = struct.unpack("!Q", header)
            request = json.loads(_read(conn, size))
        except (OSError, EOFError, ValueError):
            conn.close()
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            server.close()
            _child(conn, list(fds), request)
        for fd in fds:
            os.close(fd)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
