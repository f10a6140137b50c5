"""The ``faber-runlog`` of the docs tests: hands argv, folder, environment and stdio to the fork server."""

import json
import os
import socket
import struct
import sys


def main() -> int:
    """Send the call, wait for the exit code."""
    path, argv = sys.argv[1], sys.argv[2:]
    payload = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    socket.send_fds(conn, [struct.pack("!Q", len(payload))], [0, 1, 2])
    conn.sendall(payload)
    data = b""
    while len(data) < 4:
        chunk = conn.recv(4 - len(data))
        if not chunk:
            return 1
        data += chunk
    code: int = struct.unpack("!i", data)[0]
    return code


if __name__ == "__main__":
    sys.exit(main())
