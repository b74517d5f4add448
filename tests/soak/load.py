"""The soak's load: h2load streams at a fixed rate, each restarted in rounds until a deadline,
and a churn client that opens a fresh connection for every request and abandons some halfway.

Each stream sends one kind of request whose expected status class is known (a `/panic` stream
expects only 5xx, a hello stream only 2xx), so any other status is a failure of that stream.
Everything is bounded: h2load by `-D` (and a kill 30 s past it), the churn client by the deadline
and a 10 s socket timeout; only 127.0.0.1 is ever connected to.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hosts import PROCS, Host

REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout")
STATUSES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
PROTOCOL = re.compile(r"Application protocol: (\S+)")
CLASSES = ("2xx", "3xx", "4xx", "5xx")
# What h2load reports for each way of speaking to a host.
H2LOAD_PROTOCOL = {"h1": "http/1.1", "h2c": "h2c", "h1-tls": "http/1.1", "h2-tls": "h2"}
# The last round is skipped when less than this is left before the deadline.
MIN_ROUND_S = 2


@dataclass(frozen=True)
class Stream:
    """One h2load process at a time: `conns` connections x `streams` streams, `rps` requests
    per second per connection, all answered with status class `expect`."""

    host: str
    proto: str  # a key of H2LOAD_PROTOCOL
    path: str
    expect: str  # "2xx" or "5xx"
    conns: int
    rps: float
    streams: int = 1
    body: int = 0  # bytes POSTed with each request (0: GET)

    @property
    def label(self) -> str:
        what = f"POST {self.body // 1024}KiB" if self.body else "GET"
        return f"{self.host} {self.proto} {what} {self.path}"


@dataclass
class StreamResult:
    stream: Stream
    rounds: int = 0
    done: int = 0
    statuses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    errors: list[str] = field(default_factory=list)


def h2load_argv(s: Stream, host: Host, seconds: int, body: Path | None) -> list[str]:
    scheme = "https" if s.proto.endswith("-tls") else "http"
    argv = ["h2load", "-t1", "-c", str(s.conns), "-m", str(s.streams),
            "--rps", f"{s.rps:g}", "-D", str(seconds)]
    if s.proto.startswith("h1"):
        argv.append("--h1")
    if body:
        argv += ["-d", str(body)]
    return [*argv, f"{scheme}://{host.addr}{s.path}"]


def run_round(s: Stream, host: Host, seconds: int, body: Path | None, res: StreamResult) -> None:
    argv = h2load_argv(s, host, seconds, body)
    proc = PROCS.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        res.errors.append(f"h2load ran 30 s past its {seconds} s: killed")
        return
    finally:
        PROCS.forget(proc)
    r, st, proto = REQUESTS.search(out), STATUSES.search(out), PROTOCOL.search(out)
    if proc.returncode != 0 or not (r and st):
        tail = " | ".join(out.strip().splitlines()[-3:])
        res.errors.append(f"h2load exited with {proc.returncode}: {tail}")
        return
    res.rounds += 1
    res.done += int(r.group(3))
    counts = {c: int(n) for c, n in zip(CLASSES, st.groups(), strict=True)}
    for cls, n in counts.items():
        res.statuses[cls] += n
    errored, timeouts = int(r.group(6)), int(r.group(7))
    if errored or timeouts:
        res.errors.append(f"{errored} requests errored and {timeouts} timed out in a round")
    unexpected = {c: n for c, n in counts.items() if c != s.expect and n}
    if unexpected:
        res.errors.append(f"statuses {unexpected}, expected only {s.expect}")
    want = H2LOAD_PROTOCOL[s.proto]
    if proto is None or proto.group(1) != want:
        res.errors.append(f"h2load spoke {proto.group(1) if proto else '?'}, not {want}")


def run_stream(s: Stream, host: Host, deadline: float, round_s: int, body: Path | None,
               res: StreamResult, stop: threading.Event) -> None:
    """Rounds of h2load until the deadline: every round opens new connections."""
    while not stop.is_set() and not res.errors:
        left = int(deadline - time.monotonic())
        if left < MIN_ROUND_S:
            return
        run_round(s, host, min(round_s, left), body, res)


# ---------------------------------------------------------------------------------------------
# Churn: a new connection per request, some abandoned halfway.

# What each churn connection does, in turn. `full` sends a request and reads the whole answer;
# `no-read` sends one and closes without reading; `head-cut` closes inside the request head,
# `body-cut` inside a declared body (the host answers that one 4xx to a closed socket);
# `tcp-close` connects and closes; `tls-idle` completes a handshake and closes.
CHURN_PLAIN = ("full", "head-cut", "full", "body-cut", "no-read", "tcp-close")
CHURN_TLS = ("full", "head-cut", "full", "body-cut", "no-read", "tcp-close", "tls-idle")


@dataclass
class ChurnResult:
    host: str
    counts: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    errors: list[str] = field(default_factory=list)


def tls_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def churn_once(kind: str, host: Host, ctx: ssl.SSLContext | None, path: str) -> int | None:
    """One connection of `kind`; the status for `full`."""
    sock = socket.create_connection(("127.0.0.1", host.port), timeout=10)
    try:
        if kind == "tcp-close":
            return None
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
        if kind == "tls-idle":
            return None
        head = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
        if kind == "head-cut":
            sock.sendall(head[:20])
        elif kind == "body-cut":
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
                         "Content-Length: 4096\r\n\r\n".encode() + b"x" * 1000)
        elif kind == "no-read":
            sock.sendall(head)
        else:
            sock.sendall(head)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            status_line = answer.split(b"\r\n", 1)[0].split()
            if len(status_line) < 2 or not status_line[1].isdigit():
                raise OSError(f"no status line in {answer[:60]!r}")
            return int(status_line[1])
        return None
    finally:
        sock.close()


def run_churn(host: Host, path: str, rate: float, deadline: float, ca: Path | None,
              res: ChurnResult, stop: threading.Event) -> None:
    """`rate` connections per second until the deadline, cycling through the kinds."""
    ctx = tls_context(ca) if host.tls and ca else None
    kinds = CHURN_TLS if ctx else CHURN_PLAIN
    start, i = time.monotonic(), 0
    while not stop.is_set() and len(res.errors) < 5:
        due = start + i / rate
        if due >= deadline:
            return
        # Pacing to a fixed rate: this waits for the next slot, not for a readiness signal.
        stop.wait(max(0.0, due - time.monotonic()))
        kind = kinds[i % len(kinds)]
        i += 1
        try:
            status = churn_once(kind, host, ctx, path)
        except (OSError, ssl.SSLError) as e:
            res.errors.append(f"{kind}: {e}")
            continue
        res.counts[kind] = res.counts.get(kind, 0) + 1
        if status is not None:
            res.statuses[f"{status // 100}xx"] = res.statuses.get(f"{status // 100}xx", 0) + 1
            if status != 200:
                res.errors.append(f"{kind}: status {status}, expected 200")
