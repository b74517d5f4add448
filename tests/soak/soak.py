#!/usr/bin/env python3
"""Soak test (`make soak`): several effe-host processes under a steady, mixed, rate-limited load
for a while, watched for leaks, deaths and unexpected statuses.

Hosts, each on 127.0.0.1 with a free port and its admin listener on another:

  hello      the hello effe, cleartext: HTTP/1.1 and h2c GETs
  echo-tls   the echo effe, TLS: h2 (ALPN) and HTTP/1.1 POSTs with bodies
  lifecycle  the fixture-lifecycle effe, cleartext: GET / and /sleep?5 (200), /panic and /error
             (500: every panic also replaces its Context), over HTTP/1.1 and h2c

Each kind of request is its own h2load process at a fixed rate (--rps), restarted in rounds so
that connections are also opened and closed, and expects one status class only. A churn client
per host opens a new connection for every request and abandons some of them halfway (inside the
request head, inside the body, after sending, before or after the TLS handshake).

Every --interval seconds each host's VmRSS and open file descriptors (/proc/PID) and its
/metrics (requests, in flight, open connections) are printed as one row. It fails (exit 1, and
a last `soak FAILED: reason` line before the count of checks) when:

  - a host died, or did not exit 0 on SIGTERM at the end;
  - a load stream saw a status outside its class, an error or a timeout, or none answered;
  - a host's /metrics counted a status class it should not have (4xx only up to the number of
    bodies the churn client cut), or less than the clients were answered;
  - once the load stopped, requests stayed in flight or connections open (10 s allowed);
  - RSS grew: the last sample under load is more than max(--rss-bound-mib, --rss-bound-pct of
    it) above the lowest sample after the warm-up (the first --warmup of the run);
  - file descriptors grew: idle after the load, more than --fd-bound above idle before it.

It builds nothing: `make soak` builds the release binaries first (or pass --bin-dir). Needs
h2load (Debian nghttp2-client) and openssl: tests/deps.sh installs them. Python 3.11, standard
library only. The load is about 1,500 requests/s (--rate-scale): the hosts, h2load and this
script together take about a third of one core.

The RSS bound is set to catch a leak of about 100 bytes per request on one path in the
default 10 minutes (/panic runs at 100/s for that). Measured over 10 minutes after the warm-up:
hello and echo-tls +0.1 to +0.3 MiB, lifecycle +2.3 MiB (its Runs are on blocking threads),
and +8.1 MiB with a panic leaking its payload (about 110 bytes each). A 60 s run only catches
larger leaks.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

import load  # noqa: E402
from hosts import PROCS, Failure, Host, log, make_pki, start_host, stop_on_signals  # noqa: E402
from hosts import target_dir  # noqa: E402

# name -> (effe, TLS?, the path of its churn requests)
HOSTS = {
    "hello": ("hello", False, "/"),
    "echo-tls": ("echo", True, "/"),
    "lifecycle": ("fixture-lifecycle", False, "/"),
}
# The status classes each host may count in /metrics (4xx: bodies cut by the churn client).
METRIC_CLASSES = {"hello": {"2xx"}, "echo-tls": {"2xx"}, "lifecycle": {"2xx", "5xx"}}
STREAMS = (
    load.Stream("hello", "h1", "/", "2xx", conns=4, rps=100),
    load.Stream("hello", "h2c", "/", "2xx", conns=2, streams=8, rps=200),
    load.Stream("echo-tls", "h2-tls", "/", "2xx", conns=2, streams=4, rps=100, body=4096),
    load.Stream("echo-tls", "h1-tls", "/", "2xx", conns=2, rps=25, body=16384),
    load.Stream("lifecycle", "h2c", "/", "2xx", conns=2, streams=4, rps=100),
    load.Stream("lifecycle", "h1", "/sleep?5", "2xx", conns=4, rps=20),
    load.Stream("lifecycle", "h1", "/panic", "5xx", conns=2, rps=50),
    load.Stream("lifecycle", "h2c", "/error", "5xx", conns=1, streams=2, rps=20),
)
CHURN_RATE = 10  # connections per second per host
SETTLE_S = 10  # after the load: for in-flight and connections to reach 0
MIB = 1024  # KiB


@dataclass
class Sample:
    t: float
    rss: int  # KiB
    fds: int
    requests: float
    in_flight: float
    conns: float


@dataclass
class Watch:
    host: Host
    idle_fds: int = 0
    idle_rss: int = 0
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Checks:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        (self.passed if ok else self.failed).append(what)
        log(f"  {'ok  ' if ok else 'FAIL'} {what}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=600, help="seconds of load (default 600)")
    p.add_argument("--interval", type=float, default=5.0,
                   help="seconds between samples (default 5)")
    p.add_argument("--warmup", type=float, default=0.2,
                   help="the share of the run before RSS is judged (default 0.2)")
    p.add_argument("--bin-dir", type=Path, default=target_dir() / "release",
                   help="where effe-host and the lib*.so effes are (default target/release)")
    p.add_argument("--rate-scale", type=float, default=1.0,
                   help="multiplies every request rate (default 1)")
    p.add_argument("--rss-bound-mib", type=float, default=5.0,
                   help="RSS growth allowed after the warm-up, MiB (default 5)")
    p.add_argument("--rss-bound-pct", type=float, default=20.0,
                   help="... or this percentage of the post-warm-up minimum, if larger "
                        "(default 20)")
    p.add_argument("--fd-bound", type=int, default=4,
                   help="idle file descriptors allowed after the load over before (default 4)")
    p.add_argument("--keep", action="store_true",
                   help="keep the host logs (kept anyway when the soak fails)")
    args = p.parse_args()
    if args.duration < 10:
        p.error("--duration: at least 10 seconds")
    return args


def died(w: Watch) -> str:
    code = w.host.proc.returncode
    how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
    return f"{w.host.name} {how}: {w.host.log_tail(1)}"


def host_cell(w: Watch, prev: Sample | None) -> str:
    s = w.samples[-1]
    # The counters start at 0 with the load: the hosts served nothing before.
    before, since = (prev.requests, prev.t) if prev else (0.0, 0.0)
    rate = (s.requests - before) / (s.t - since) if s.t > since else 0.0
    return f"{s.rss / MIB:7.1f} {s.fds:4d} {s.conns:4.0f} {rate:6.0f} {s.in_flight:4.0f}"


def table_header(watches: list[Watch]) -> str:
    names = " | ".join(f"{w.host.name:^30}" for w in watches)
    cols = " | ".join(f"{'RSS MiB':>7} {'fds':>4} {'conn':>4} {'req/s':>6} {'infl':>4}"
                      for _ in watches)
    return f"{'':7}{names}\n{'t':>6} {cols}"


def sample(watches: list[Watch], t: float) -> str:
    """One row of the table: each host's RSS, fds, open connections, request rate since the
    last row, and requests in flight."""
    cells = []
    for w in watches:
        if not w.host.alive():
            raise Failure(died(w))
        m = w.host.metrics()
        prev = w.samples[-1] if w.samples else None
        w.samples.append(Sample(t, w.host.rss_kib(), w.host.fds(),
                                m.sum("effe_requests_total"),
                                m.sum("effe_requests_in_flight"),
                                m.sum("effe_connections_open")))
        cells.append(host_cell(w, prev))
    return f"{t:5.0f}s " + " | ".join(cells)


def cpu_seconds(host: Host) -> float:
    """User + system CPU time of the host so far."""
    fields = Path(f"/proc/{host.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(args: argparse.Namespace, tmp: Path) -> tuple[list[Watch], Path]:
    """The hosts, idle, and the CA that signed the TLS host's certificate."""
    for tool in ("h2load", "openssl"):
        if not shutil.which(tool):
            raise Failure(f"{tool} is missing: run tests/deps.sh")
    pki = make_pki(tmp)
    watches = []
    for name, (effe, tls, _) in HOSTS.items():
        host = start_host(name, args.bin_dir, effe, tmp,
                          tls=(pki.ec_cert, pki.ec_key) if tls else None)
        watches.append(Watch(host, idle_fds=host.fds(), idle_rss=host.rss_kib()))
    return watches, pki.ca


def plan(args: argparse.Namespace, watches: list[Watch], tmp: Path) -> list[load.Stream]:
    """The streams at the chosen rate, printed with the bounds the run is judged by."""
    streams = [dataclasses.replace(s, rps=s.rps * args.rate_scale) for s in STREAMS]
    churn = CHURN_RATE * args.rate_scale
    total = sum(s.conns * s.rps for s in streams) + churn * len(watches)
    pids = ", ".join(f"{w.host.name} pid {w.host.proc.pid}" for w in watches)
    log(f"soak: {len(watches)} hosts ({pids}), {args.duration} s, about {total:.0f} "
        f"requests/s; logs in {tmp}")
    for s in streams:
        log(f"  {s.label:36} -c{s.conns} -m{s.streams} --rps {s.rps:g}  expects {s.expect}")
    log(f"  churn: {churn:g} new connections/s per host, in turn: "
        f"{', '.join(load.CHURN_TLS)} (tls-idle on TLS only)")
    log(f"  RSS bound: the last sample under load <= the lowest after the first "
        f"{args.warmup:.0%} + max({args.rss_bound_mib:g} MiB, {args.rss_bound_pct:g}%); "
        f"fd bound: idle after <= idle before + {args.fd_bound}")
    return streams


def drive(args: argparse.Namespace, watches: list[Watch], streams: list[load.Stream],
          ca: Path, tmp: Path) -> tuple[list[load.StreamResult], list[load.ChurnResult]]:
    """Runs the load until --duration is over, printing a row every --interval seconds; ends
    early, with a Failure, as soon as a host dies or a stream fails."""
    by_name = {w.host.name: w.host for w in watches}
    bodies = {}
    for size in {s.body for s in streams if s.body}:
        bodies[size] = tmp / f"body-{size}.txt"
        bodies[size].write_bytes(bytes(b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36]
                                       for i in range(size)))
    # Rounds of different lengths, so that the streams do not all reconnect at once.
    round_s = max(5, min(30, args.duration // 6))
    stop = threading.Event()
    t0 = time.monotonic()
    deadline = t0 + args.duration
    results = [load.StreamResult(s) for s in streams]
    churns = [load.ChurnResult(w.host.name) for w in watches]
    threads = [threading.Thread(target=load.run_stream, daemon=True,
                                args=(r.stream, by_name[r.stream.host], deadline,
                                      round_s + i % 3, bodies.get(r.stream.body), r, stop))
               for i, r in enumerate(results)]
    threads += [threading.Thread(target=load.run_churn, daemon=True,
                                 args=(by_name[c.host], HOSTS[c.host][2],
                                       CHURN_RATE * args.rate_scale, deadline, ca, c, stop))
                for c in churns]
    for th in threads:
        th.start()
    try:
        log(table_header(watches))
        next_t = t0 + args.interval
        while True:
            while time.monotonic() < min(next_t, deadline):
                for w in watches:
                    if not w.host.alive():
                        raise Failure(died(w))
                first = [f"{r.stream.label}: {r.errors[0]}" for r in results if r.errors]
                first += [f"{c.host} churn: {c.errors[0]}" for c in churns if c.errors]
                if first:
                    raise Failure(first[0])
                time.sleep(0.2)  # polling the load threads' results
            if time.monotonic() >= deadline:
                return results, churns
            log(sample(watches, time.monotonic() - t0))
            next_t += args.interval
    finally:
        stop.set()
        for th in threads:
            th.join(60)


def settle(w: Watch) -> tuple[float, float]:
    """Waits (polling /metrics) for no request in flight and no connection open."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        m = w.host.metrics()
        left = (m.sum("effe_requests_in_flight"), m.sum("effe_connections_open"))
        if left == (0, 0) or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def judge_load(results: list[load.StreamResult], churns: list[load.ChurnResult],
               checks: Checks) -> None:
    for r in results:
        counts = ", ".join(f"{n} {c}" for c, n in r.statuses.items() if n)
        checks.check(not r.errors and r.done > 0,
                     f"{r.stream.label}: {r.done} answered in {r.rounds} rounds "
                     f"({counts or 'none'}), expected {r.stream.expect}"
                     + (f"; {r.errors[0]}" if r.errors else ""))
    for c in churns:
        counts = ", ".join(f"{n} {k}" for k, n in c.counts.items())
        checks.check(not c.errors and c.counts.get("full", 0) > 0,
                     f"{c.host} churn: {counts}" + (f"; {c.errors[0]}" if c.errors else ""))


def judge_host(args: argparse.Namespace, w: Watch, results: list[load.StreamResult],
               churn: load.ChurnResult, checks: Checks) -> str:
    """The checks of one host, idle after the load; its line of the summary."""
    name = w.host.name
    left = settle(w)
    checks.check(left == (0, 0), f"{name}: after the load {left[0]:.0f} requests in flight, "
                                 f"{left[1]:.0f} connections open (expected 0, 0)")
    m = w.host.metrics()
    seen = {c: m.sum("effe_requests_total", code=c) for c in ("1xx", *load.CLASSES)}
    allowed = {"4xx": churn.counts.get("body-cut", 0)}
    bad = {c: n for c, n in seen.items()
           if c not in METRIC_CLASSES[name] and n > allowed.get(c, 0)}
    checks.check(not bad, f"{name}: /metrics counted "
                 + ", ".join(f"{n:.0f} {c}" for c, n in seen.items() if n)
                 + (f"; unexpected {bad}" if bad else ""))
    got = {c: sum(r.statuses[c] for r in results if r.stream.host == name)
           + churn.statuses.get(c, 0) for c in load.CLASSES}
    short = {c: (seen[c], n) for c, n in got.items() if seen[c] < n}
    checks.check(not short, f"{name}: /metrics counted at least what the clients got "
                 f"({', '.join(f'{n} {c}' for c, n in got.items() if n)})"
                 + (f"; short: {short}" if short else ""))
    end_fds, end_rss = w.host.fds(), w.host.rss_kib()
    checks.check(end_fds - w.idle_fds <= args.fd_bound,
                 f"{name}: fds idle {w.idle_fds} before the load, {end_fds} after "
                 f"(most under load {max(s.fds for s in w.samples)}; bound +{args.fd_bound})")
    under_load = [s for s in w.samples if s.t >= args.warmup * args.duration]
    if not under_load:
        checks.check(False, f"{name}: no sample after the warm-up (a longer --duration?)")
        return f"  {name}: no sample after the warm-up"
    low, last = min(s.rss for s in under_load), under_load[-1].rss
    bound = max(args.rss_bound_mib * MIB, low * args.rss_bound_pct / 100)
    checks.check(last - low <= bound,
                 f"{name}: RSS {low / MIB:.1f} MiB lowest after the warm-up, {last / MIB:.1f} "
                 f"MiB last: +{(last - low) / MIB:.1f} MiB (bound +{bound / MIB:.1f} MiB)")
    first = w.samples[0]
    return (f"  {name:9} RSS MiB {w.idle_rss / MIB:.1f} idle, {first.rss / MIB:.1f} first "
            f"sample, {low / MIB:.1f} lowest after warm-up, {last / MIB:.1f} last, "
            f"{end_rss / MIB:.1f} idle after; fds {w.idle_fds} idle, {first.fds} first, "
            f"{under_load[-1].fds} last, {end_fds} idle after; "
            f"{sum(seen.values()):.0f} requests")


def soak(args: argparse.Namespace, tmp: Path, checks: Checks) -> None:
    watches, ca = start(args, tmp)
    streams = plan(args, watches, tmp)
    cpu0 = {w.host.name: cpu_seconds(w.host) for w in watches}
    t0 = time.monotonic()
    results, churns = drive(args, watches, streams, ca, tmp)
    elapsed = time.monotonic() - t0
    cpu = [f"{w.host.name} {cpu_seconds(w.host) - cpu0[w.host.name]:.1f} s" for w in watches]
    h2load_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    churn_cpu = resource.getrusage(resource.RUSAGE_SELF)

    log("checks:")
    judge_load(results, churns, checks)
    summary = []
    for w, churn in zip(watches, churns, strict=True):
        if not w.host.alive():
            checks.check(False, died(w))
            continue
        summary.append(judge_host(args, w, results, churn, checks))
    for w in watches:
        if w.host.alive():
            code = w.host.stop()
            checks.check(code == 0, f"{w.host.name}: exit code {code} on SIGTERM (expected 0)")
    log("summary:")
    for line in summary:
        log(line)
    log(f"  CPU over {elapsed:.0f} s: {', '.join(cpu)}; h2load "
        f"{h2load_cpu.ru_utime + h2load_cpu.ru_stime:.1f} s; the churn client and sampling "
        f"(this script) {churn_cpu.ru_utime + churn_cpu.ru_stime:.1f} s")


def main() -> int:
    args = parse_args()
    stop_on_signals()
    tmp = Path(tempfile.mkdtemp(prefix="effe-soak-"))
    checks = Checks()
    try:
        soak(args, tmp, checks)
    except Failure as e:
        checks.check(False, str(e))
    except OSError as e:  # e.g. /proc/PID of a host that just died
        checks.check(False, f"{type(e).__name__}: {e}")
    finally:
        PROCS.stop_all()
    if checks.failed:
        log(f"the host logs are kept in {tmp}")
        log(f"soak FAILED: {checks.failed[0]}")
    elif not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"soak: {len(checks.passed)} passed, {len(checks.failed)} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
