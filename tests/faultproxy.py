"""A scriptable HTTP proxy on 127.0.0.1 that injects S3 faults in front of moto.

Clients (s3fs/botocore in this or another process) use the proxy's endpoint
instead of moto's. For every request the proxy picks an action: first from a
script of ``(matcher, action)`` pairs consumed in order, else at random with
probability ``fail_rate``, else ``"pass"``. Actions:

* ``"pass"``           forward the request and relay the reply
* ``"500"``            reply 500 InternalError without forwarding
* ``"503"``            reply 503 ServiceUnavailable without forwarding
* ``"slowdown"``       reply 503 SlowDown without forwarding
* ``"conflict"``       reply 409 ConditionalRequestConflict without forwarding
* ``"reset_before"``   drop the connection (RST) before the request reaches moto
* ``"reset_after"``    forward, then drop the connection: the reply is lost
                       after success (a PUT landed but the client never knows)
* ``"500_after"``      forward, then reply 500: success reported as a failure
* ``"delay"``          wait ``delay`` seconds, then forward
* ``"403"``            reply 403 AccessDenied without forwarding (credentials that may
                       not write; not among the random faults)

Every action taken is counted per (method, action) so tests can report exactly
which faults were injected (docs/reliability.md is rendered from those counts).
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACTIONS = ("pass", "500", "503", "slowdown", "conflict", "reset_before", "reset_after", "500_after", "delay", "403")
RANDOM_FAULTS = ("500", "503", "slowdown", "conflict", "reset_before", "reset_after", "500_after", "delay")

_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "conflict": (409, "ConditionalRequestConflict", "A conflicting conditional operation is in progress."),
    "403": (403, "AccessDenied", "Access Denied"),
}
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"})

Matcher = Callable[[str, str], bool]


def match(method: str | None = None, path: str | None = None) -> Matcher:
    """A matcher on the HTTP method and a regex searched in the path (with query)."""
    pattern = re.compile(path) if path is not None else None

    def test(m: str, p: str) -> bool:
        return (method is None or m == method) and (pattern is None or pattern.search(p) is not None)

    return test


def error_body(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>faultproxy</RequestId></Error>"
    ).encode()


class FaultProxy:
    """The proxy: start(), point clients at ``endpoint``, script faults, read ``counts``."""

    def __init__(
        self,
        upstream: str,
        *,
        fail_rate: float = 0.0,
        seed: int = 0,
        delay: float = 0.2,
        faults: tuple[str, ...] = RANDOM_FAULTS,
    ) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.fail_rate = fail_rate
        self.delay = delay
        self.faults = faults
        self.only: Matcher | None = None  # random faults only hit matching requests
        self.reject_if_match = False  # answer 501 NotImplemented to any request carrying If-Match
        self.counts: Counter[tuple[str, str]] = Counter()
        self._rng = random.Random(seed)
        self._script: list[tuple[Matcher, str]] = []
        self._always: list[tuple[Matcher, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting ---------------------------------------------------------

    def script(self, *steps: tuple[Matcher, str]) -> None:
        """Queue one-shot actions: each applies to the next request its matcher accepts."""
        with self._lock:
            self._script.extend(steps)

    def always(self, matcher: Matcher, action: str) -> None:
        """Apply ``action`` to every matching request until :meth:`clear`."""
        with self._lock:
            self._always.append((matcher, action))

    def clear(self) -> None:
        with self._lock:
            self._script.clear()
            self._always.clear()
            self.fail_rate = 0.0

    def pending(self) -> int:
        """How many scripted one-shot actions have not fired yet."""
        with self._lock:
            return len(self._script)

    def faults_injected(self) -> Counter[str]:
        """Counts per action, without ``pass``."""
        out: Counter[str] = Counter()
        for (_, action), n in self.counts.items():
            if action != "pass":
                out[action] += n
        return out

    def count(self, method: str, action: str) -> None:
        """Count one action the handler took on its own (outside :meth:`choose`)."""
        with self._lock:
            self.counts[(method, action)] += 1

    def choose(self, method: str, path: str) -> str:
        with self._lock:
            for i, (m, action) in enumerate(self._script):
                if m(method, path):
                    del self._script[i]
                    break
            else:
                action = "pass"
                for m, a in self._always:
                    if m(method, path):
                        action = a
                        break
                else:
                    eligible = self.only is None or self.only(method, path)
                    if eligible and self.fail_rate and self._rng.random() < self.fail_rate:
                        action = self._rng.choice(self.faults)
            self.counts[(method, action)] += 1
            return action

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts: requests seen and faults injected per action."""
        return {
            "requests": sum(self.counts.values()),
            "faults": dict(sorted(self.faults_injected().items())),
        }


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that gave up, or moto stopped under a delayed request: expected here


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send RST: the client sees "connection reset".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            headers["Content-Length"] = str(len(body))
        for attempt in range(2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                resp = self._upstream.getresponse()
                data = resp.read()
                return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP], data
            except (ConnectionError, http.client.HTTPException):
                self._upstream.close()
                self._upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            if k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self) -> None:
        body = self._body()
        if self.owner.reject_if_match and self.headers.get("If-Match") is not None:
            self.owner.count(self.command, "501_if_match")
            message = "A header you provided implies functionality that is not implemented"
            self._reply(501, [("Content-Type", "application/xml")], error_body("NotImplemented", message))
            return
        action = self.owner.choose(self.command, self.path)
        if action == "reset_before":
            self._reset()
            return
        if action in _ERRORS:
            status, code, message = _ERRORS[action]
            self._reply(status, [("Content-Type", "application/xml")], error_body(code, message))
            return
        if action == "delay":
            time.sleep(self.owner.delay)
        status, headers, data = self._forward(body)
        if action == "reset_after":
            self._reset()
            return
        if action == "500_after":
            self._reply(500, [("Content-Type", "application/xml")], error_body(*_ERRORS["500"][1:]))
            return
        self._reply(status, headers, data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()
