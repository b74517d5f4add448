#!/usr/bin/env python3
"""A request in flight across a shutdown, for docker_check: connects to 127.0.0.1:PORT, sends a
POST head and half its body, prints `sent`, waits until the admin listener's /readyz stops
answering 200 (the host got SIGTERM), then checks that the host still serves a new request
(the shutdown delay), sends the rest of the body and expects 200. Exits 0 if both were served,
else 1 with one line saying what happened. Every wait is bounded.

    inflight.py PORT ADMIN_PORT

Python 3.11 stdlib.
"""

import http.client
import socket
import sys
import time

PATIENCE = 20


def ready(admin: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=2)
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def main() -> int:
    port, admin = int(sys.argv[1]), int(sys.argv[2])
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
    sock.sendall(b"POST /inflight HTTP/1.1\r\nhost: localhost\r\ncontent-length: 10\r\n\r\nhello")
    print("sent", flush=True)
    deadline = time.monotonic() + PATIENCE
    while ready(admin):
        if time.monotonic() > deadline:
            print(f"inflight: /readyz still 200 after {PATIENCE}s: no SIGTERM came", flush=True)
            return 1
        time.sleep(0.05)
    # Draining now, inside the shutdown delay: a new connection is still served.
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PATIENCE)
        conn.request("GET", "/during-delay")
        late = conn.getresponse()
        late.read()
    except OSError as e:
        print(f"inflight: a request during the shutdown delay failed: {e!r}", flush=True)
        return 1
    if late.status != 200:
        print(f"inflight: a request during the shutdown delay got {late.status}", flush=True)
        return 1
    sock.sendall(b"world")
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    if not status.startswith("HTTP/1.1 200"):
        print(f"inflight: the request in flight at SIGTERM got {status!r}", flush=True)
        return 1
    print("inflight: the request in flight at SIGTERM got 200, and one made during the delay too", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
