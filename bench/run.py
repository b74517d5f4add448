#!/usr/bin/env python3
"""Benchmarks effe-host against bare hyper servers and nginx (`make bench`).

Four servers answer `200 Hello from effe` (content-type text/plain) on 127.0.0.1:

  A  bare-hyper     bench/hyper-bare: hyper 1.x with nothing else on tokio's multi-thread
                    runtime, the baseline as the issue defines it
  B  nginx          bench/nginx.conf, one worker
  C  effe           effe-host --plugin target/release/libhello.so
  D  bare-hyper-ct  bench/hyper-bare --current-thread: the same on one current-thread runtime

effe-host runs one tokio current-thread runtime per network thread (one when pinned to one
CPU), so part of its lead over A is the runtime flavour alone. D has effe-host's runtime
architecture: effe/bare-hyper-ct isolates what the effe layer itself costs (the Context pool,
the ABI call, the response copy) from the choice of runtime.

Each server is pinned to one CPU (taskset -c 0) and the load generator (wrk for HTTP/1.1,
h2load for HTTP/2) to another (taskset -c 1). For every case the servers run in interleaved
rounds, the order rotated each round (A B C D, B C D A, C D A B, ...), each run a warm-up then
a measured run; the tables show medians over the rounds and the per-round ratios
effe/bare-hyper, effe/bare-hyper-ct and effe/nginx. Those load cases saturate the server
(closed loop), where p99 is mostly queueing; the `latency` case instead holds a fixed, moderate
rate (h2load --h1 --rps, 20,000 req/s over 8 connections by default, --latency-rate) and reports
p50/p99/p99.9 and the per-round p99 ratios effe/bare-hyper (the design target: <= 1.2, lower
is better) and effe/bare-hyper-ct. Also measured: the cold start (exec to
first 200), the memory (VmRSS) idle and after load, a blocking effe (10 ms sleep per request,
64 Contexts, 128 connections) against its ideal 6,400 req/s, and, as a figure independent of
the machine's noise, the user-space instructions per request of effe, A and D counted by
valgrind's callgrind. All raw results go to bench/results/latest.json.

Only 127.0.0.1 is targeted, every load run is bounded in time, and every process this script
starts is ended by PID when it finishes, fails or is interrupted.

Python 3.11, standard library only. Run from anywhere: `bench/run.py --quick` checks that
everything works in about five minutes; `bench/run.py --help` lists the options.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RELEASE = ROOT / "target" / "release"
# Where effe-host (and the effes, when there) come from: RELEASE, or --effe-dir (a PGO build).
EFFE_DIR = RELEASE
RESULTS = BENCH / "results" / "latest.json"
BODY = b"Hello from effe"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LISTENING = re.compile(r"listening addr=(\d+\.\d+\.\d+\.\d+:\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CARGO = os.environ.get("CARGO") or "cargo"

SERVERS = ("bare-hyper", "nginx", "effe", "bare-hyper-ct")  # A, B, C, D
LETTER = {"bare-hyper": "A", "nginx": "B", "effe": "C", "bare-hyper-ct": "D"}
# The ratio lines of the load tables: effe/X for each X.
BASELINES = ("bare-hyper", "bare-hyper-ct", "nginx")

# Debian packages of the tools this script drives.
TOOLS = {"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx", "openssl": "openssl"}
# Only for the `instructions` case.
VALGRIND_TOOLS = {"valgrind": "valgrind", "callgrind_control": "valgrind"}


@dataclass(frozen=True)
class Case:
    title: str
    tool: str  # "wrk" or "h2load"
    scheme: str  # "http" (HTTP/1.1), "h2c" or "https"
    conns: int
    streams: int = 1  # h2load -m
    fixed_rate: bool = False  # h2load --h1 --rps: a fixed request rate (`latency`)


LOAD_CASES = {
    "h1-c64": Case("HTTP/1.1 keep-alive, 64 connections", "wrk", "http", 64),
    "h1-c8": Case("HTTP/1.1 keep-alive, 8 connections", "wrk", "http", 8),
    "latency": Case("HTTP/1.1 keep-alive at a fixed, moderate request rate, 8 connections",
                    "h2load", "http", 8, fixed_rate=True),
    "h2c": Case("HTTP/2 cleartext (prior knowledge), 64 connections x 10 streams",
                "h2load", "h2c", 64, 10),
    "https-h1": Case("HTTPS HTTP/1.1 keep-alive, 64 connections", "wrk", "https", 64),
    "https-h2": Case("HTTPS HTTP/2 (ALPN h2), 64 connections x 10 streams",
                     "h2load", "https", 64, 10),
}
OTHER_CASES = ("cold-start", "rss", "blocking", "abi-call", "instructions")
ALL_CASES = (*LOAD_CASES, *OTHER_CASES)

# The `latency` case: the total request rate h2load holds (--latency-rate), a warning when a
# run fell more than LATENCY_SHORTFALL short of it, and the design target for p99 effe/bare-hyper.
LATENCY_RATE = 20000
LATENCY_SHORTFALL = 0.05
LATENCY_P99_TARGET = 1.2

BLOCKING_SLEEP_MS = 10
BLOCKING_CONTEXTS = 64
BLOCKING_CONNS = 128

# The `instructions` case: requests counted per server and protocol, after a warm-up.
INSTR_REQUESTS = 20000
INSTR_WARMUP_REQUESTS = 2000
INSTR_CONNS = 64
INSTR_STREAMS = 10  # h2c: h2load -m
INSTR_SERVERS = ("effe", "bare-hyper", "bare-hyper-ct")
# Each case: h2load's protocol options, connections, the target, and the protocol h2load must
# report. "curl" is one request as a real client sends it, over one keep-alive connection: a
# query string and curl's three headers (Host, User-Agent, Accept), the shape measured at +34%
# over bare-hyper-ct where the 64-connection case showed +18%.
INSTR_PROTOCOLS = {
    "http/1.1": (["--h1"], INSTR_CONNS, "/", "http/1.1"),
    "h2c": (["-m", str(INSTR_STREAMS)], INSTR_CONNS, "/", "h2c"),
    "curl": (["--h1", "-H", "user-agent: curl/7.88.1", "-H", "accept: */*"], 1,
             "/?name=effe&lang=en", "http/1.1"),
}


class BenchError(Exception):
    """A failure that ends the benchmark with a message (and exit code 1)."""


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# Processes: everything started is registered, and ended by PID.


class Procs:
    """Every process this script started, so that it can end them whatever happens."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def spawn(self, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(argv, **kw)
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 10.0) -> None:
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            except ProcessLookupError:
                pass
        if p in self.live:
            self.live.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.live)):
            try:
                self.stop(p, 5.0)
            except Exception as e:  # keep ending the others
                print(f"warning: could not stop pid {p.pid}: {e}", file=sys.stderr)


PROCS = Procs()


@dataclass
class Pinning:
    server: int | None
    client: int | None

    def server_argv(self, argv: list[str]) -> list[str]:
        return ["taskset", "-c", str(self.server), *argv] if self.server is not None else argv

    def client_argv(self, argv: list[str]) -> list[str]:
        return ["taskset", "-c", str(self.client), *argv] if self.client is not None else argv

    def describe(self) -> str:
        if self.server is None:
            return "not pinned"
        return f"servers on CPU {self.server}, load generator on CPU {self.client}"


def descendants(pid: int) -> list[int]:
    """`pid` and all its descendants (nginx: the master and its worker)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid`'s process tree (all threads), in seconds."""
    total = 0
    for p in descendants(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def rss_kib(pid: int) -> int:
    """VmRSS of `pid`'s process tree, in KiB."""
    total = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before accepting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"{what} did not accept on port {port} within {timeout:.0f}s")
            time.sleep(0.005)


def wait_listening(proc: subprocess.Popen, log_path: Path, what: str,
                   timeout: float = 30.0) -> str:
    """Waits for the `listening addr=IP:PORT` line on the server's stderr; returns IP:PORT."""
    deadline = time.monotonic() + timeout
    while True:
        text = ANSI.sub("", log_path.read_text(errors="replace"))
        m = LISTENING.search(text)
        if m:
            return m.group(1)
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before listening:\n{text}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} printed no 'listening addr=' within {timeout:.0f}s:\n{text}")
        time.sleep(0.005)


# ---------------------------------------------------------------------------------------------
# Setup: tools, build, certificate.


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def ensure_tools(cases: list[str]) -> dict[str, str]:
    wanted = {**TOOLS, **(VALGRIND_TOOLS if "instructions" in cases else {})}
    missing = [t for t in wanted if not find_tool(t)]
    if missing:
        pkgs = sorted({wanted[t] for t in missing})
        if os.geteuid() != 0:
            raise BenchError(f"missing {', '.join(missing)}: install the Debian packages "
                             f"{' '.join(pkgs)} (apt-get install {' '.join(pkgs)})")
        log(f"installing {' '.join(pkgs)} (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
                       check=True, env=env)
    if not find_tool("taskset"):
        raise BenchError("taskset is missing (Debian package util-linux)")
    tools = {t: find_tool(t) for t in wanted}
    still = [t for t, path in tools.items() if not path]
    if still:
        raise BenchError(f"still missing after apt-get: {', '.join(still)}")
    return tools  # type: ignore[return-value]


def build(no_build: bool) -> None:
    if no_build:
        log("not building (--no-build): using the binaries in target/release")
    else:
        cmd = [CARGO, "build", "--release", "-p", "effe-host", "-p", "hello",
               "-p", "fixture-lifecycle", "-p", "hyper-bare"]
        log("$ " + " ".join(cmd))
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            raise BenchError("cargo build failed (use --no-build to run the binaries already "
                             "in target/release)")
    # effe-host refuses plugins that group or others may write (a umask of 002 makes them).
    for lib in RELEASE.glob("lib*.so"):
        mode = lib.stat().st_mode
        if mode & 0o022:
            lib.chmod(mode & ~0o022)
    for f in ("effe-host", "hyper-bare", "libhello.so", "libfixture_lifecycle.so"):
        if not (RELEASE / f).exists():
            raise BenchError(f"target/release/{f} is missing")


def make_cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def effe_has_tls() -> bool:
    out = subprocess.run([str(RELEASE / "effe-host"), "--help"], capture_output=True, text=True)
    return "--tls-cert" in out.stdout


# ---------------------------------------------------------------------------------------------
# Servers.


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    urls: dict[str, str]  # scheme ("http", "h2c", "https") -> URL
    argv: list[str]
    rss_idle_kib: int = 0
    extra: dict = field(default_factory=dict)


def server_env() -> dict[str, str]:
    env = dict(os.environ, NO_COLOR="1")
    for k in list(env):
        if k.startswith("EFFE_") or k.startswith("FIXTURE_"):
            del env[k]
    return env


def start_logged(name: str, argv: list[str], tmp: Path,
                 timeout: float = 30.0) -> tuple[subprocess.Popen, str]:
    log_path = tmp / f"{name}.stderr"
    with open(log_path, "wb") as err:
        proc = PROCS.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=err, env=server_env(), cwd=ROOT)
    addr = wait_listening(proc, log_path, name, timeout)
    return proc, addr


def bare_argv(listen: str, current_thread: bool = False) -> list[str]:
    """hyper-bare (A), or with `current_thread` hyper-bare --current-thread (D)."""
    argv = [str(RELEASE / "hyper-bare"), "--listen", listen]
    return argv + ["--current-thread"] if current_thread else argv


def effe_argv(listen: str, plugin: str = "libhello.so") -> list[str]:
    # The admin listener stays on (metrics are part of the measured hot path), on a free port.
    so = EFFE_DIR / plugin if (EFFE_DIR / plugin).exists() else RELEASE / plugin
    return [str(EFFE_DIR / "effe-host"), "--plugin", str(so), "--listen", listen,
            "--syslog", "off", "--admin-listen", "127.0.0.1:0"]


def start_bare(pin: Pinning, tmp: Path, tls: tuple[Path, Path] | None,
               current_thread: bool = False) -> Server:
    name = "bare-hyper-ct" if current_thread else "bare-hyper"
    return start_server(name, name, bare_argv("127.0.0.1:0", current_thread), pin, tmp, tls)


def start_effe(pin: Pinning, tmp: Path, tls: tuple[Path, Path] | None,
               plugin: str = "libhello.so", extra: list[str] | None = None,
               name: str = "effe") -> Server:
    argv = [*effe_argv("127.0.0.1:0", plugin), *(extra or [])]
    return start_server("effe", name, argv, pin, tmp, tls)


def start_server(label: str, log_name: str, argv: list[str], pin: Pinning, tmp: Path,
                 tls: tuple[Path, Path] | None) -> Server:
    """Starts a server that prints `listening addr=…`; HTTPS when `tls` holds a cert and key."""
    if tls:
        argv = argv + ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    argv = pin.server_argv(argv)
    proc, addr = start_logged(f"{log_name}-tls" if tls else log_name, argv, tmp)
    urls = {"https": f"https://{addr}/"} if tls else {"http": f"http://{addr}/",
                                                      "h2c": f"http://{addr}/"}
    return Server(label, proc, urls, argv)


def start_nginx(pin: Pinning, tmp: Path, nginx: str, cert: Path, key: Path) -> Server:
    d = tmp / "nginx"
    d.mkdir()
    ports = {"HTTP_PORT": free_port(), "H2C_PORT": free_port(), "HTTPS_PORT": free_port()}
    while len(set(ports.values())) < 3:
        ports["HTTPS_PORT"] = free_port()
    conf = (BENCH / "nginx.conf").read_text()
    for k, v in {**ports, "DIR": str(d), "CERT": str(cert), "KEY": str(key)}.items():
        conf = conf.replace(f"@{k}@", str(v))
    (d / "nginx.conf").write_text(conf)
    argv = pin.server_argv([nginx, "-p", f"{d}/", "-e", str(d / "error.log"),
                            "-c", str(d / "nginx.conf")])
    with open(tmp / "nginx.stderr", "wb") as err:
        proc = PROCS.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=err, cwd=d)
    try:
        for port in ports.values():
            wait_port(port, proc, "nginx")
    except BenchError as e:
        errlog = d / "error.log"
        detail = (tmp / "nginx.stderr").read_text(errors="replace")
        if errlog.exists():
            detail += errlog.read_text(errors="replace")
        raise BenchError(f"{e}\n{detail}") from None
    urls = {"http": f"http://127.0.0.1:{ports['HTTP_PORT']}/",
            "h2c": f"http://127.0.0.1:{ports['H2C_PORT']}/",
            "https": f"https://127.0.0.1:{ports['HTTPS_PORT']}/"}
    return Server("nginx", proc, urls, argv)


def check_hello(server: Server, scheme: str) -> None:
    """One HTTP/1.1 request: the answer must be what the hello effe sends."""
    if scheme == "h2c":
        return  # h2load reports the status codes; http.client speaks no HTTP/2
    url = server.urls[scheme]
    hostport = url.split("/")[2]
    host, port = hostport.rsplit(":", 1)
    if scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, int(port), timeout=5, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    ctype = resp.getheader("content-type")
    if resp.status != 200 or body != BODY or ctype != "text/plain":
        raise BenchError(f"{server.name} ({url}) answered {resp.status} {ctype!r} {body!r}, "
                         f"not 200 'text/plain' {BODY!r}")


# ---------------------------------------------------------------------------------------------
# Load generators.


def percentile(sorted_values: list[int], p: float) -> int | None:
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def cpu_busy(cpus: list[int]) -> tuple[int, int]:
    """(busy, total) jiffies of these CPUs so far, from /proc/stat."""
    busy = total = 0
    want = {f"cpu{c}" for c in cpus}
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in want:
            ticks = [int(x) for x in parts[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def run_measured(argv: list[str], pin: Pinning, server_pid: int | None, warm_s: float,
                 timeout: float) -> tuple[str, dict]:
    """Runs a load generator; returns its stdout and the CPU use (fractions of one CPU) of the
    load generator, of the server over the measured part (after `warm_s` seconds), and of
    everything else on the two pinned CPUs (the noise: another build, say)."""
    gen_cpu0 = children_cpu_seconds()
    start = time.monotonic()
    pinned = [c for c in (pin.server, pin.client) if c is not None]
    proc = PROCS.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    try:
        if warm_s > 0:
            time.sleep(warm_s)
        srv0, t0 = (cpu_seconds(server_pid) if server_pid else 0.0), time.monotonic()
        busy0 = cpu_busy(pinned)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BenchError(f"{argv[0]} ran past {timeout:.0f}s: killed") from None
        busy1 = cpu_busy(pinned)
        srv1, t1 = (cpu_seconds(server_pid) if server_pid else 0.0), time.monotonic()
    finally:
        PROCS.stop(proc)
    gen_cpu = (children_cpu_seconds() - gen_cpu0) / max(t1 - start, 1e-9)
    srv_cpu = (srv1 - srv0) / max(t1 - t0, 1e-9) if server_pid else None
    others = None
    if pinned and srv_cpu is not None and busy1[1] > busy0[1]:
        busy = (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]) * len(pinned)  # in CPUs
        others = max(0.0, busy - srv_cpu - gen_cpu) / len(pinned)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited with {proc.returncode}:\n{out}")
    return out, {"server_cpu": srv_cpu, "gen_cpu": gen_cpu, "others_cpu": others}


def wrk(pin: Pinning, url: str, conns: int, duration: int, warmup: int,
        server_pid: int | None) -> dict:
    base = ["wrk", "-t1", f"-c{conns}", "--timeout", "10s"]
    if warmup > 0:
        run_quiet(pin.client_argv([*base, f"-d{warmup}s", url]), warmup + 30)
    argv = pin.client_argv([*base, "--latency", f"-d{duration}s",
                            "-s", str(BENCH / "wrk-report.lua"), url])
    out, usage = run_measured(argv, pin, server_pid, 0, duration + 30)
    m = re.search(r"^WRK_JSON (\{.*\})$", out, re.M)
    if not m:
        raise BenchError(f"no WRK_JSON line in wrk's output:\n{out}")
    j = json.loads(m.group(1))
    errors = sum(v for k, v in j["errors"].items() if k != "status")
    lat = j["latency_us"]
    return {
        "rps": j["requests"] / (j["duration_us"] / 1e6),
        "requests": j["requests"],
        "errors": errors,
        "non_2xx": j["errors"]["status"],
        "error_detail": j["errors"],
        "latency_us": {k: lat[k] for k in ("p50", "p90", "p99", "p99.9", "max", "mean")},
        **usage,
        "protocol": "http/1.1",
        "command": argv,
    }


def run_quiet(argv: list[str], timeout: float) -> None:
    """Runs a (warm-up) load generator and discards its output."""
    proc = PROCS.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{argv[0]} ran past {timeout:.0f}s: killed") from None
    finally:
        PROCS.stop(proc)


def h2load(pin: Pinning, url: str, conns: int, streams: int, duration: int, warmup: int,
           server_pid: int | None, tmp: Path, h1: bool = False,
           rps_per_conn: float | None = None) -> dict:
    """h2load for `duration` seconds after a warm-up; `h1`: HTTP/1.1 (--h1) instead of HTTP/2;
    `rps_per_conn`: a fixed rate (--rps, which h2load applies to each connection)."""
    log_file = tmp / "h2load.log"
    log_file.unlink(missing_ok=True)
    argv = ["h2load", *(["--h1"] if h1 else []), "-t1", "-c", str(conns), "-m", str(streams),
            *(["--rps", f"{rps_per_conn:.10g}"] if rps_per_conn else []), "-D", str(duration)]
    if warmup > 0:
        argv += ["--warm-up-time", str(warmup)]
    argv = pin.client_argv([*argv, "--log-file", str(log_file), url])
    out, usage = run_measured(argv, pin, server_pid, warmup, warmup + duration + 30)
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    if not (m and r and s):
        raise BenchError(f"could not read h2load's output:\n{out}")
    # The log has one line per measured request: start (us since epoch), status, latency (us).
    lat: list[int] = []
    with open(log_file) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                lat.append(int(parts[2]))
    log_file.unlink(missing_ok=True)
    lat.sort()
    total, _, _, _, failed, errored, timeouts = (int(x) for x in r.groups())
    non_2xx = int(s.group(2)) + int(s.group(3)) + int(s.group(4))
    return {
        "rps": float(m.group(2)),
        "requests": total,
        "errors": errored + timeouts,
        "non_2xx": non_2xx,
        "error_detail": {"failed": failed, "errored": errored, "timeout": timeouts},
        "latency_us": {
            "p50": percentile(lat, 50), "p90": percentile(lat, 90),
            "p99": percentile(lat, 99), "p99.9": percentile(lat, 99.9),
            "max": lat[-1] if lat else None,
            "mean": round(sum(lat) / len(lat), 1) if lat else None,
        },
        "latency_samples": len(lat),
        **usage,
        "protocol": proto.group(1) if proto else None,
        "command": argv,
    }


# ---------------------------------------------------------------------------------------------
# Reporting.


def med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_rps(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def fmt_ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.3f}"


def fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def server_summary(rs: list[dict]) -> dict:
    """Medians over one server's runs of a case, `rs` in round order."""
    return {
        "rps_median": med([x["rps"] for x in rs]),
        "p50_us_median": med([x["latency_us"]["p50"] for x in rs]),
        "p99_us_median": med([x["latency_us"]["p99"] for x in rs]),
        "server_cpu_median": med([x["server_cpu"] for x in rs]),
        "gen_cpu_median": med([x["gen_cpu"] for x in rs]),
        "others_cpu_median": med([x["others_cpu"] for x in rs]),
        "errors": sum(x["errors"] + x["non_2xx"] for x in rs),
        "rps_by_round": [x["rps"] for x in rs],
    }


def summarize_case(runs: list[dict], rounds: int) -> dict:
    by: dict[str, list[dict]] = {}
    for run in runs:
        by.setdefault(run["server"], []).append(run)
    servers = {}
    for name in SERVERS:
        rs = by.get(name, [])
        if not rs:
            continue
        servers[name] = server_summary(sorted(rs, key=lambda x: x["round"]))
    ratios = {}
    for other in BASELINES:
        per_round = []
        for r in range(rounds):
            e = next((x for x in by.get("effe", []) if x["round"] == r), None)
            o = next((x for x in by.get(other, []) if x["round"] == r), None)
            if e and o:
                per_round.append(ratio(e["rps"], o["rps"]))
        if per_round:
            ratios[f"effe/{other}"] = {"rps_by_round": per_round, "median": med(per_round)}
    return {"servers": servers, "ratios": ratios}


def print_case_table(name: str, case: Case, summary: dict, skipped: dict[str, str]) -> None:
    log()
    log(f"{name}: {case.title}")
    log(f"    {'server':<14} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'srv CPU':>8} "
        f"{'gen CPU':>8} {'others':>7} {'errors':>7}   req/s by round")
    for srv in SERVERS:
        if srv in skipped:
            log(f"  {LETTER[srv]} {srv:<14} skipped: {skipped[srv]}")
            continue
        s = summary["servers"].get(srv)
        if not s:
            continue
        log(f"  {LETTER[srv]} {srv:<14} {fmt_rps(s['rps_median']):>10} "
            f"{fmt_ms(s['p50_us_median']):>8} "
            f"{fmt_ms(s['p99_us_median']):>8} {fmt_pct(s['server_cpu_median']):>8} "
            f"{fmt_pct(s['gen_cpu_median']):>8} {fmt_pct(s['others_cpu_median']):>7} "
            f"{s['errors']:>7}   "
            + " ".join(fmt_rps(v) for v in s["rps_by_round"]))
    for key, r in summary["ratios"].items():
        log(f"  {key + ' req/s':<25} by round: "
            + " ".join(fmt_ratio(v) for v in r["rps_by_round"])
            + f"   median {fmt_ratio(r['median'])}")
    gens = [s["gen_cpu_median"] for s in summary["servers"].values()
            if s["gen_cpu_median"] is not None]
    srvs = [s["server_cpu_median"] for s in summary["servers"].values()
            if s["server_cpu_median"] is not None]
    others = [s["others_cpu_median"] for s in summary["servers"].values()
              if s["others_cpu_median"] is not None]
    if others and max(others) > 0.05:
        log(f"  note: other processes used up to {max(others) * 100:.0f}% of the two pinned "
            "CPUs during these runs: the numbers are noisy")
    if gens and srvs and max(gens) > 0.9 and min(srvs) < 0.9:
        log("  note: the load generator used ~one whole CPU while a server had CPU to spare: "
            "that server's req/s is a floor, not its ceiling")


# ---------------------------------------------------------------------------------------------
# The measurements.


def round_order(r: int) -> list[str]:
    """The servers in round `r`: A B C D, then B C D A, C D A B, ..."""
    k = r % len(SERVERS)
    return list(SERVERS[k:] + SERVERS[:k])


def run_load_case(name: str, case: Case, servers: dict[str, Server], skipped: dict[str, str],
                  args, pin: Pinning, tmp: Path) -> dict:
    cmd = (f"wrk -t1 -c{case.conns} -d{args.duration}s" if case.tool == "wrk"
           else f"h2load -t1 -c{case.conns} -m{case.streams} -D{args.duration}")
    log()
    log(f"== {name}: {case.title} ({cmd}, {args.rounds} rounds, "
        f"warm-up {args.warmup}s) ==")
    runs = []
    for r in range(args.rounds):
        for i, srv_name in enumerate(round_order(r)):
            if srv_name in skipped:
                continue
            srv = servers[srv_name]
            url = srv.urls[case.scheme]
            if case.tool == "wrk":
                res = wrk(pin, url, case.conns, args.duration, args.warmup, srv.proc.pid)
            else:
                res = h2load(pin, url, case.conns, case.streams, args.duration, args.warmup,
                             srv.proc.pid, tmp)
                want = "h2" if case.scheme == "https" else "h2c"
                if res["protocol"] != want:
                    raise BenchError(f"{srv_name}: h2load negotiated {res['protocol']}, "
                                     f"not {want}")
            if srv.proc.poll() is not None:
                raise BenchError(f"{srv_name} exited ({srv.proc.returncode}) during {name}")
            res.update(round=r, position=i, server=srv_name, url=url)
            runs.append(res)
            bad = res["errors"] + res["non_2xx"]
            log(f"  round {r + 1}/{args.rounds}  {LETTER[srv_name]} {srv_name:<13} "
                f"{fmt_rps(res['rps']):>10} req/s  p50 {fmt_ms(res['latency_us']['p50'])} ms  "
                f"p99 {fmt_ms(res['latency_us']['p99'])} ms  srv CPU "
                f"{fmt_pct(res['server_cpu'])}  gen CPU {fmt_pct(res['gen_cpu'])}  others "
                f"{fmt_pct(res['others_cpu'])}"
                + (f"  ERRORS {bad}" if bad else ""))
    summary = summarize_case(runs, args.rounds)
    print_case_table(name, case, summary, skipped)
    return {"title": case.title, "tool": case.tool, "scheme": case.scheme,
            "connections": case.conns, "streams": case.streams, "skipped": skipped,
            "runs": runs, "summary": summary}


def latency_note(target: float, conns: int) -> str:
    """How h2load (1.52) paces --rps, which shapes what the `latency` case measures."""
    per_conn = target / conns
    if per_conn > 100:
        pacing = (f"so each connection sends its {per_conn:,.6g} req/s as a burst of about "
                  f"{per_conn / 100:,.3g} back-to-back requests every 10 ms")
    else:
        pacing = f"so each connection sends one request every {1000 / per_conn:,.3g} ms"
    return (f"How h2load paces --rps: each connection's timer fires every max(10 ms, 1/rate) "
            f"and a connection has one request in flight (HTTP/1.1, no pipelining), {pacing}: "
            f"at most {conns} requests are in flight, and the server idles between bursts. A "
            "latency counts from when h2load writes the request, not from when it was due: a "
            "request waiting behind its connection's previous one does not count as waiting "
            "(no coordinated-omission correction).")


def run_latency_case(name: str, case: Case, servers: dict[str, Server], args, pin: Pinning,
                     tmp: Path) -> dict:
    """p99 latency at a fixed, moderate request rate (h2load --h1 --rps), not at saturation:
    the design target is p99 effe/bare-hyper <= LATENCY_P99_TARGET at moderate load."""
    target = args.latency_rate
    per_conn = target / case.conns
    cmd = (f"h2load --h1 -t1 -c{case.conns} --rps {per_conn:.10g} -D{args.duration}"
           + (f" --warm-up-time {args.warmup}" if args.warmup > 0 else ""))
    log()
    log(f"== {name}: {case.title}: {target:,.0f} req/s in all ({cmd}, {args.rounds} rounds, "
        f"warm-up {args.warmup}s) ==")
    runs = []
    for r in range(args.rounds):
        for i, srv_name in enumerate(round_order(r)):
            srv = servers[srv_name]
            url = srv.urls[case.scheme]
            res = h2load(pin, url, case.conns, case.streams, args.duration, args.warmup,
                         srv.proc.pid, tmp, h1=True, rps_per_conn=per_conn)
            if res["protocol"] != "http/1.1":
                raise BenchError(f"{srv_name}: h2load spoke {res['protocol']}, not http/1.1")
            if srv.proc.poll() is not None:
                raise BenchError(f"{srv_name} exited ({srv.proc.returncode}) during {name}")
            res.update(round=r, position=i, server=srv_name, url=url,
                       target_rps=target, of_target=res["rps"] / target)
            runs.append(res)
            bad = res["errors"] + res["non_2xx"]
            lat = res["latency_us"]
            short = res["of_target"] < 1 - LATENCY_SHORTFALL
            log(f"  round {r + 1}/{args.rounds}  {LETTER[srv_name]} {srv_name:<13} "
                f"{fmt_rps(res['rps']):>7} req/s ({res['of_target'] * 100:.1f}% of target)  "
                f"p50 {fmt_ms(lat['p50'])} ms  p99 {fmt_ms(lat['p99'])} ms  p99.9 "
                f"{fmt_ms(lat['p99.9'])} ms  srv CPU {fmt_pct(res['server_cpu'])}  gen CPU "
                f"{fmt_pct(res['gen_cpu'])}  others {fmt_pct(res['others_cpu'])}"
                + ("  SHORT OF THE RATE" if short else "") + (f"  ERRORS {bad}" if bad else ""))
    summary = summarize_latency(runs, args.rounds, target)
    print_latency_table(name, case, summary, target, per_conn)
    return {"title": case.title, "tool": "h2load", "scheme": case.scheme, "protocol": "http/1.1",
            "connections": case.conns, "target_rps": target, "rps_per_connection": per_conn,
            "p99_target_vs_bare_hyper": LATENCY_P99_TARGET,
            "shortfall_tolerance": LATENCY_SHORTFALL,
            "note": latency_note(target, case.conns),
            "runs": runs, "summary": summary}


def summarize_latency(runs: list[dict], rounds: int, target: float) -> dict:
    by: dict[str, list[dict]] = {}
    for run in runs:
        by.setdefault(run["server"], []).append(run)
    servers = {}
    for name in SERVERS:
        rs = sorted(by.get(name, []), key=lambda x: x["round"])
        if not rs:
            continue
        servers[name] = {
            **server_summary(rs),
            "rps_min": min(x["rps"] for x in rs),
            "of_target_min": min(x["rps"] for x in rs) / target,
            "p99.9_us_median": med([x["latency_us"]["p99.9"] for x in rs]),
            "p99_us_by_round": [x["latency_us"]["p99"] for x in rs],
        }
    ratios = {}
    for other in ("bare-hyper", "bare-hyper-ct"):
        per_round = []
        for r in range(rounds):
            e = next((x for x in by.get("effe", []) if x["round"] == r), None)
            o = next((x for x in by.get(other, []) if x["round"] == r), None)
            if e and o:
                per_round.append(ratio(e["latency_us"]["p99"], o["latency_us"]["p99"]))
        if per_round:
            ratios[f"effe/{other}"] = {"p99_by_round": per_round, "median": med(per_round)}
    short = [{"server": x["server"], "round": x["round"], "rps": x["rps"],
              "of_target": x["of_target"]}
             for x in runs if x["of_target"] < 1 - LATENCY_SHORTFALL]
    return {"servers": servers, "ratios": ratios, "short_of_target": short}


def print_latency_table(name: str, case: Case, summary: dict, target: float,
                        per_conn: float) -> None:
    log()
    log(f"{name}: {case.title}: {target:,.0f} req/s ({case.conns} x {per_conn:,.6g})")
    log(f"    {'server':<14} {'req/s':>8} {'min/target':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>8} {'srv CPU':>8} {'gen CPU':>8} {'others':>7} {'errors':>7}"
        "   p99 ms by round")
    for srv in SERVERS:
        s = summary["servers"].get(srv)
        if not s:
            continue
        log(f"  {LETTER[srv]} {srv:<14} {fmt_rps(s['rps_median']):>8} "
            f"{s['of_target_min'] * 100:>9.1f}% {fmt_ms(s['p50_us_median']):>8} "
            f"{fmt_ms(s['p99_us_median']):>8} {fmt_ms(s['p99.9_us_median']):>8} "
            f"{fmt_pct(s['server_cpu_median']):>8} {fmt_pct(s['gen_cpu_median']):>8} "
            f"{fmt_pct(s['others_cpu_median']):>7} {s['errors']:>7}   "
            + " ".join(fmt_ms(v) for v in s["p99_us_by_round"]))
    labels = {"effe/bare-hyper": f"(lower is better; target <= {LATENCY_P99_TARGET})",
              "effe/bare-hyper-ct": "(lower is better)"}
    for key, r in summary["ratios"].items():
        verdict = ""
        if key == "effe/bare-hyper" and r["median"] is not None:
            verdict = ("   within the target" if r["median"] <= LATENCY_P99_TARGET
                       else "   ABOVE the target")
        log(f"  {'p99 ' + key + ' ' + labels[key]:<55} by round: "
            + " ".join(fmt_ratio(v) for v in r["p99_by_round"])
            + f"   median {fmt_ratio(r['median'])}{verdict}")
    log("  min/target: the lowest round's req/s over the target; the other columns: medians "
        "over the rounds;")
    log("  latencies from h2load's per-request log.")
    for x in summary["short_of_target"]:
        warning = (f"warning: {x['server']} in round {x['round'] + 1} did {fmt_rps(x['rps'])} "
                   f"req/s, {(1 - x['of_target']) * 100:.1f}% short of {target:,.0f}: that run "
                   "was not at the fixed rate (the server or h2load could not keep up), its "
                   "latencies are not comparable")
        for i, line in enumerate(textwrap.wrap(warning, 92)):
            log(f"  {'  ' if i else ''}{line}")
    others = [s["others_cpu_median"] for s in summary["servers"].values()
              if s["others_cpu_median"] is not None]
    if others and max(others) > 0.05:
        log(f"  note: other processes used up to {max(others) * 100:.0f}% of the two pinned "
            "CPUs during these runs: the numbers are noisy")
    for line in textwrap.wrap(latency_note(target, case.conns), 94):
        log(f"  {line}")


def first_200(port: int, proc: subprocess.Popen, deadline: float, spin: bool) -> float:
    """Polls 127.0.0.1:port until a GET / answers 200; returns time.perf_counter() then."""
    req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            s.sendall(req)
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(256)
                if not chunk:
                    break
                buf += chunk
            if buf.startswith(b"HTTP/1.1 200"):
                return time.perf_counter()
        except OSError:
            pass
        finally:
            s.close()
        if proc.poll() is not None:
            raise BenchError(f"exited with {proc.returncode} before answering 200")
        if time.perf_counter() > deadline:
            raise BenchError("no 200 within the deadline")
        if not spin:
            time.sleep(0.0002)


def cold_start(pin: Pinning, runs: int, tmp: Path) -> dict:
    where = (f"server on CPU {pin.server}, poller on CPU {pin.client}; includes taskset's exec"
             if pin.server is not None else "not pinned")
    log()
    log(f"== cold-start: exec to the first 200, median of {runs} runs ({where}) ==")
    out = {}
    targets = {
        "effe": lambda port: effe_argv(f"127.0.0.1:{port}"),
        "bare-hyper": lambda port: bare_argv(f"127.0.0.1:{port}"),
        "bare-hyper-ct": lambda port: bare_argv(f"127.0.0.1:{port}", current_thread=True),
    }
    for name, make_argv in targets.items():
        times = []
        for _ in range(runs):
            port = free_port()
            argv = pin.server_argv(make_argv(port))
            with open(tmp / f"cold-{name}.stderr", "wb") as err:
                t0 = time.perf_counter()
                proc = PROCS.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=err, env=server_env(), cwd=ROOT)
            try:
                t1 = first_200(port, proc, t0 + 30, spin=pin.client is not None)
            except BenchError as e:
                text = (tmp / f"cold-{name}.stderr").read_text(errors="replace")
                raise BenchError(f"cold start of {name}: {e}\n{text}") from None
            finally:
                PROCS.stop(proc)
            times.append((t1 - t0) * 1000)
        out[name] = {"ms_median": med(times), "ms_min": min(times), "ms_max": max(times),
                     "ms_runs": [round(t, 3) for t in times]}
        log(f"  {name:<13} median {med(times):7.2f} ms   min {min(times):7.2f}   "
            f"max {max(times):7.2f}   ({len(times)} runs)")
    return out


def blocking(pin: Pinning, args, tmp: Path) -> dict:
    ideal = BLOCKING_CONTEXTS * 1000 / BLOCKING_SLEEP_MS
    log()
    log(f"== blocking: fixture-lifecycle GET /sleep?{BLOCKING_SLEEP_MS} (blocks "
        f"{BLOCKING_SLEEP_MS} ms), --max-contexts {BLOCKING_CONTEXTS} --min-contexts "
        f"{BLOCKING_CONTEXTS}, wrk -t1 -c{BLOCKING_CONNS} -d{args.duration}s; effe-host "
        f"{'pinned to CPU %d' % pin.server if pin.server is not None else 'not pinned'}; "
        f"ideal {ideal:,.0f} req/s ==")
    srv = start_effe(pin, tmp, None, plugin="libfixture_lifecycle.so", name="effe-blocking",
                     extra=["--max-contexts", str(BLOCKING_CONTEXTS),
                            "--min-contexts", str(BLOCKING_CONTEXTS)])
    try:
        url = srv.urls["http"] + f"sleep?{BLOCKING_SLEEP_MS}"
        runs = []
        for r in range(args.rounds):
            res = wrk(pin, url, BLOCKING_CONNS, args.duration, args.warmup if r == 0 else 0,
                      srv.proc.pid)
            res.update(round=r, url=url)
            runs.append(res)
            bad = res["errors"] + res["non_2xx"]
            log(f"  round {r + 1}/{args.rounds}  {fmt_rps(res['rps']):>7} req/s "
                f"({res['rps'] / ideal * 100:.1f}% of ideal)  p50 "
                f"{fmt_ms(res['latency_us']['p50'])} ms  p99 {fmt_ms(res['latency_us']['p99'])}"
                f" ms  srv CPU {fmt_pct(res['server_cpu'])}  others {fmt_pct(res['others_cpu'])}"
                + (f"  ERRORS {bad}" if bad else ""))
        rss = rss_kib(srv.proc.pid)
    finally:
        PROCS.stop(srv.proc)
    rps = med([x["rps"] for x in runs])
    log(f"  median {fmt_rps(rps)} req/s = {rps / ideal * 100:.1f}% of the ideal "
        f"{ideal:,.0f}; p50 {fmt_ms(med([x['latency_us']['p50'] for x in runs]))} ms, "
        f"p99 {fmt_ms(med([x['latency_us']['p99'] for x in runs]))} ms; "
        f"RSS with {BLOCKING_CONTEXTS} Contexts {rss / 1024:.1f} MiB")
    return {"ideal_rps": ideal, "rps_median": rps, "fraction_of_ideal": rps / ideal,
            "pinned_cpu": pin.server, "rss_kib_after": rss, "command": srv.argv, "runs": runs}


def abi_call_bench() -> dict:
    log()
    has_bench = (ROOT / "host" / "benches" / "call.rs").exists() or re.search(
        r'\[\[bench\]\][^\[]*name\s*=\s*"call"', (ROOT / "host" / "Cargo.toml").read_text())
    if not has_bench:
        log("== abi-call: skipped: effe-host has no `call` bench yet ==")
        return {"skipped": "effe-host has no `call` bench"}
    cmd = [CARGO, "bench", "-p", "effe-host", "--bench", "call"]
    log("== abi-call: $ " + " ".join(cmd) + " ==")
    proc = PROCS.spawn(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    try:
        out, _ = proc.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        raise BenchError("cargo bench ran past 30 minutes: killed") from None
    finally:
        PROCS.stop(proc)
    log(out.rstrip())
    if proc.returncode != 0:
        log(f"  abi-call: cargo bench failed (exit {proc.returncode}); the other cases stand")
    return {"command": cmd, "exit_code": proc.returncode, "output": out}


def h2load_count(pin: Pinning, url: str, proto: str, n: int) -> dict:
    """Exactly `n` requests with h2load (`proto`: a case of INSTR_PROTOCOLS, to `url`'s host);
    all must succeed."""
    options, conns, target, spoken = INSTR_PROTOCOLS[proto]
    url = url.rstrip("/") + target
    argv = pin.client_argv(["h2load", *options, "-n", str(n), "-c", str(conns), "-t1", url])
    proc = PROCS.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv)} ran past 300s: killed") from None
    finally:
        PROCS.stop(proc)
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    r = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out)
    s = re.search(r"status codes: (\d+) 2xx", out)
    got = re.search(r"Application protocol: (\S+)", out)
    if proc.returncode != 0 or not (m and r and s):
        raise BenchError(f"{' '.join(argv)} exited with {proc.returncode}, or its output "
                         f"could not be read:\n{out}")
    if int(r.group(2)) != n or int(s.group(1)) != n:
        raise BenchError(f"{' '.join(argv)}: {r.group(2)} of {n} requests succeeded, "
                         f"{s.group(1)} with 2xx:\n{out}")
    if got is None or got.group(1) != spoken:
        raise BenchError(f"{' '.join(argv)}: h2load spoke "
                         f"{got.group(1) if got else '?'}, not {spoken}")
    seconds = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    return {"requests": n, "seconds": seconds, "rps": float(m.group(3)), "command": argv}


def callgrind_control(tool: str, option: str, pid: int) -> None:
    """`callgrind_control -z|-d PID`. It exits 0 even when it fails: its output tells."""
    argv = [tool, option, str(pid)]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv)} ran past 60s") from None
    text = (p.stdout + p.stderr).strip()
    if p.returncode != 0 or "OK" not in text or "Error" in text:
        raise BenchError(f"{' '.join(argv)} failed (exit {p.returncode}):\n{text}")


def settle(pid: int, limit: float = 10.0) -> None:
    """Waits until `pid` uses no CPU for a moment (the clients' connections closed), so that
    the counted window starts and ends with an idle server."""
    deadline = time.monotonic() + limit
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = cpu_seconds(pid)
        if now - last <= 1.5 / CLK_TCK:
            return
        last = now


# The allocator's entry points, glibc's and mimalloc's (effe-host's global allocator; the effe's
# own allocations go to glibc's): a call to one of these from outside the allocator is one
# allocation (or reallocation) the `instructions` case counts.
ALLOC_FNS = frozenset({
    "malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign",
    "mi_malloc", "mi_zalloc", "mi_calloc", "mi_realloc", "mi_malloc_aligned",
    "mi_zalloc_aligned", "mi_realloc_aligned",
})
CG_NAME = re.compile(r"^(c?fn)=(?:\((\d+)\))?\s*(.*)$")


def callgrind_allocs(text: str) -> int:
    """Calls into ALLOC_FNS from code outside the allocator, in one callgrind dump: the `calls=`
    lines under each `cfn=` (callee), in the `fn=` (caller) block they belong to. Names may be
    compressed: `(N) name` the first time, `(N)` after."""
    names: dict[str, str] = {}
    caller = callee = ""
    allocs = 0
    for line in text.splitlines():
        m = CG_NAME.match(line)
        if m:
            kind, ident, name = m.groups()
            if ident is not None and name:
                names[ident] = name
            resolved = names.get(ident, name) if ident is not None else name
            if kind == "fn":
                caller = resolved
            else:
                callee = resolved
        elif line.startswith("calls=") and callee in ALLOC_FNS:
            if caller not in ALLOC_FNS and not caller.startswith(("mi_", "_mi_", "_int_")):
                allocs += int(line[6:].split()[0])
    return allocs


def callgrind_total(dump_dir: Path, before: set[Path], proc: subprocess.Popen,
                    timeout: float = 60.0) -> tuple[int, int, list[str]]:
    """The instructions (Ir) in the dump(s) `callgrind_control -d` just wrote into `dump_dir`
    (one file, `callgrind.out.N`; one per thread with --separate-threads): the `summary:`
    line of each, which is what callgrind_annotate prints as PROGRAM TOTALS; and the
    allocations in them (callgrind_allocs). A file is complete once its `totals:` line, the
    last one, is written."""
    deadline = time.monotonic() + timeout
    while True:
        new = sorted(f for f in dump_dir.iterdir() if f not in before)
        texts = {f: f.read_text(errors="replace") for f in new}
        if new and all(re.search(r"^totals:", t, re.M) for t in texts.values()):
            break
        if proc.poll() is not None:
            raise BenchError(f"the server under callgrind exited ({proc.returncode}) before "
                             "its dump was written")
        if time.monotonic() > deadline:
            raise BenchError(f"no complete callgrind dump in {dump_dir} within "
                             f"{timeout:.0f}s (found: {[f.name for f in new]})")
        time.sleep(0.1)
    total = allocs = 0
    for f, text in texts.items():
        events = re.search(r"^events:\s*(\S+)", text, re.M)
        summary = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
        if not (events and summary) or events.group(1) != "Ir":
            raise BenchError(f"{f}: no 'events: Ir' and 'summary:' lines")
        total += int(summary.group(1))
        allocs += callgrind_allocs(text)
    return total, allocs, [f.name for f in new]


def log_per_protocol(title: str, values: dict[str, dict[str, float]], spec: str) -> None:
    """A table of the instructions case: one row per server, one column per protocol."""
    log(title)
    log(f"    {'server':<19}" + "".join(f"{p:>12}" for p in INSTR_PROTOCOLS))
    for name in INSTR_SERVERS:
        log(f"  {LETTER[name]} {name:<19}" + "".join(
            f"{values[name][p]:>12{spec}}" for p in INSTR_PROTOCOLS))


def instructions(pin: Pinning, tools: dict[str, str], tmp: Path) -> dict:
    """User-space instructions per request, counted by callgrind: deterministic, unlike req/s
    on a noisy machine."""
    log()
    log(f"== instructions: user-space instructions per request under valgrind's callgrind "
        f"({INSTR_REQUESTS:,} requests after a {INSTR_WARMUP_REQUESTS:,}-request warm-up, "
        f"h2load -t1 -c{INSTR_CONNS}, --h1 or h2c -m{INSTR_STREAMS}, and curl's request over "
        f"one connection; one fresh server per "
        f"protocol, {'on CPU %d' % pin.server if pin.server is not None else 'not pinned'}) ==")
    makers = {
        "effe": effe_argv("127.0.0.1:0"),
        "bare-hyper": bare_argv("127.0.0.1:0"),
        "bare-hyper-ct": bare_argv("127.0.0.1:0", current_thread=True),
    }
    per_request: dict[str, dict[str, float]] = {name: {} for name in INSTR_SERVERS}
    allocs_per_request: dict[str, dict[str, float]] = {name: {} for name in INSTR_SERVERS}
    runs = []
    for proto in INSTR_PROTOCOLS:
        for name in INSTR_SERVERS:
            tag = f"callgrind-{name}-{proto.replace('/', '')}"
            dump_dir = tmp / tag
            dump_dir.mkdir()
            argv = pin.server_argv([tools["valgrind"], "--tool=callgrind",
                                    f"--callgrind-out-file={dump_dir / 'callgrind.out'}",
                                    *makers[name]])
            t0 = time.monotonic()
            proc, addr = start_logged(tag, argv, tmp, timeout=60)
            try:
                start_s = time.monotonic() - t0
                url = f"http://{addr}/"
                h2load_count(pin, url, proto, INSTR_WARMUP_REQUESTS)
                settle(proc.pid)
                callgrind_control(tools["callgrind_control"], "-z", proc.pid)
                load = h2load_count(pin, url, proto, INSTR_REQUESTS)
                settle(proc.pid)
                before = set(dump_dir.iterdir())
                callgrind_control(tools["callgrind_control"], "-d", proc.pid)
                total, allocs, dumps = callgrind_total(dump_dir, before, proc)
            finally:
                PROCS.stop(proc, 30.0)
            per_req = total / INSTR_REQUESTS
            per_request[name][proto] = per_req
            allocs_per_request[name][proto] = allocs / INSTR_REQUESTS
            runs.append({"server": name, "protocol": proto, "instructions": total,
                         "requests": INSTR_REQUESTS, "per_request": per_req,
                         "allocations": allocs, "allocations_per_request": allocs / INSTR_REQUESTS,
                         "rps_under_callgrind": load["rps"], "valgrind_start_s": start_s,
                         "dumps": dumps, "command": argv, "load_command": load["command"]})
            log(f"  {LETTER[name]} {name:<13} {proto:<8} {per_req:>9,.0f} instructions/request"
                f"   ({total:,} in {INSTR_REQUESTS:,} requests; {load['rps']:,.0f} req/s "
                f"under callgrind; valgrind start {start_s:.1f} s)")
    ratios = {f"{base}/effe": {proto: ratio(per_request[base].get(proto),
                                            per_request["effe"].get(proto))
                               for proto in INSTR_PROTOCOLS}
              for base in ("bare-hyper", "bare-hyper-ct")}
    log()
    log_per_protocol("instructions: user-space instructions per request (callgrind)",
                     per_request, ",.0f")
    for key, by_proto in ratios.items():
        log(f"    {key:<19}" + "".join(f"{fmt_ratio(by_proto[p]):>12}"
                                       for p in INSTR_PROTOCOLS))
    note = ("ratio = baseline instructions / effe instructions: above 1, effe executes fewer "
            "(higher is better for effe, as with the req/s ratios). These are user-space "
            "instructions only (no kernel time, no cache misses, no waiting), all threads of "
            "the process, the measured run's connection setups and closes included (64, or one "
            "for curl). They do "
            "not depend on the machine's load and repeat run to run within about 0.5% (timing "
            "still changes a little how many requests one wake-up handles).")
    for line in textwrap.wrap(note, 94):
        log(f"  {line}")
    log()
    log_per_protocol("allocations per request (calls into malloc or mimalloc, in the same runs)",
                     allocs_per_request, ",.2f")
    return {"requests": INSTR_REQUESTS, "warmup_requests": INSTR_WARMUP_REQUESTS,
            "connections": INSTR_CONNS, "h2c_streams": INSTR_STREAMS,
            "pinned_cpu": pin.server, "per_request": per_request, "ratios": ratios,
            "allocations_per_request": allocs_per_request,
            "note": note, "runs": runs}


# ---------------------------------------------------------------------------------------------


def tool_versions(tools: dict[str, str]) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as e:
            return str(e)
        text = (p.stdout + p.stderr).strip()
        return text.splitlines()[0] if text else ""

    return {
        "nginx": first_line([tools["nginx"], "-v"]),
        "wrk": first_line(["wrk", "--version"]),
        "h2load": first_line(["h2load", "--version"]),
        "openssl": first_line(["openssl", "version"]),
        "rustc": first_line(["rustc", "-V"]),
        "git": first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        **({"valgrind": first_line([tools["valgrind"], "--version"])}
           if "valgrind" in tools else {}),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark effe-host (hello effe) against bare hyper servers (tokio "
        "multi-thread and current-thread runtimes) and nginx.")
    ap.add_argument("--rounds", type=int,
                    help="interleaved rounds per case, each running every server once "
                    "(default: 3)")
    ap.add_argument("--duration", type=int,
                    help="seconds per measured run (default: 5; 1 with --quick)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="seconds of warm-up before each run (default: %(default)s)")
    ap.add_argument("--quick", action="store_true",
                    help="1 s runs (3 rounds): to check that the script works")
    ap.add_argument("--cases", default=",".join(ALL_CASES),
                    help="comma-separated cases to run, from: " + ", ".join(ALL_CASES)
                    + " (default: all of them)")
    ap.add_argument("--latency-rate", type=float, default=float(LATENCY_RATE),
                    help="total req/s of the `latency` case, spread evenly over its "
                    f"{LOAD_CASES['latency'].conns} connections (h2load --rps is per "
                    "connection); it should stay well below what every server does saturated "
                    "(default: %(default).0f)")
    ap.add_argument("--cold-runs", type=int, default=10,
                    help="runs of the cold-start case (default: %(default)s)")
    ap.add_argument("--no-build", action="store_true",
                    help="use the binaries already in target/release")
    ap.add_argument("--effe-dir", type=Path,
                    help="take effe-host (and its effes, where present) from this directory "
                    "instead of target/release: `--effe-dir target/pgo/release` measures the "
                    "profile-guided build of `make pgo`")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not pin servers and load generator to CPUs")
    ap.add_argument("--server-cpu", type=int, help="CPU for the servers (if unset: the first "
                    "CPU this script may use)")
    ap.add_argument("--client-cpu", type=int, help="CPU for the load generator (if unset: the "
                    "second)")
    ap.add_argument("--output", type=Path, default=RESULTS,
                    help="where the JSON results go (default: bench/results/latest.json)")
    args = ap.parse_args()
    if args.duration is None:
        args.duration = 1 if args.quick else 5
    if args.rounds is None:
        args.rounds = 3
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(ALL_CASES)}")
    args.cases = cases
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0 or args.cold_runs < 1:
        ap.error("--rounds, --duration and --cold-runs must be at least 1, --warmup at least 0")
    if not args.latency_rate > 0:
        ap.error("--latency-rate must be above 0")
    return args


def choose_pinning(args) -> Pinning:
    if args.no_pin:
        return Pinning(None, None)
    cpus = sorted(os.sched_getaffinity(0))
    server = args.server_cpu if args.server_cpu is not None else cpus[0]
    rest = [c for c in cpus if c != server]
    client = args.client_cpu if args.client_cpu is not None else (rest[0] if rest else None)
    if client is None or client == server:
        log("warning: fewer than two CPUs: servers and load generator are not pinned")
        return Pinning(None, None)
    return Pinning(server, client)


def main() -> int:
    global EFFE_DIR
    args = parse_args()
    if args.effe_dir is not None:
        EFFE_DIR = args.effe_dir.resolve()
    # SIGTERM ends the script like Ctrl-C does: through the `finally` that stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Ctrl-C too, even when started from a shell that made SIGINT ignored (background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    results: dict = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "settings": {"rounds": args.rounds, "duration_s": args.duration,
                     "warmup_s": args.warmup, "cases": args.cases, "quick": args.quick,
                     "latency_rate": args.latency_rate, "effe_dir": str(EFFE_DIR)},
        "cases": {},
    }
    try:
        tools = ensure_tools(args.cases)
        build(args.no_build)
        pin = choose_pinning(args)
        if pin.client is not None:
            # The script itself (the cold-start poller, the result parsing) stays off the
            # servers' CPU; cargo above had every CPU.
            os.sched_setaffinity(0, {pin.client})
        results["machine"] = {"cpu": cpu_model(), "cpus": os.cpu_count(),
                              "loadavg_start": os.getloadavg(), "pinning": pin.describe(),
                              "versions": tool_versions(tools)}
        log(f"effe benchmarks: {args.rounds} rounds x {args.duration}s (+{args.warmup}s "
            f"warm-up) per server and case; {pin.describe()}; "
            f"load average {os.getloadavg()[0]:.2f} (1 min, includes any build just done)")
        log(f"effe-host: {EFFE_DIR / 'effe-host'}")
        with tempfile.TemporaryDirectory(prefix="effe-bench-") as tmp_name:
            tmp = Path(tmp_name)
            run_all(args, pin, tools, tmp, results)
        results["complete"] = True
        return 0
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        results["error"] = str(e)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted: stopping the servers", file=sys.stderr)
        results["error"] = "interrupted"
        return 130
    except SystemExit:
        print("bench: terminated: stopping the servers", file=sys.stderr)
        results["error"] = "terminated"
        raise
    finally:
        PROCS.stop_all()
        results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")
        results["loadavg_end"] = os.getloadavg()
        if results["cases"] or results.get("complete"):
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=1) + "\n")
            log()
            log(f"raw results: {args.output}"
                + ("" if results["complete"] else " (incomplete)"))


def labelled(servers: dict[str, Server], tls_servers: dict[str, Server]) -> list:
    """(label, server) once per process: nginx serves both kinds."""
    out, seen = [], set()
    for label, srv in [*servers.items(), *[(f"{k} (TLS)", v) for k, v in tls_servers.items()]]:
        if srv.proc.pid not in seen:
            seen.add(srv.proc.pid)
            out.append((label, srv))
    return out


def run_all(args, pin: Pinning, tools: dict[str, str], tmp: Path, results: dict) -> None:
    cases = args.cases
    load_cases = [c for c in cases if c in LOAD_CASES]
    want_tls = any(LOAD_CASES[c].scheme == "https" for c in load_cases)
    cert_key = make_cert(tmp) if want_tls else None
    effe_tls = effe_has_tls()
    effe_tls_error = "effe-host has no TLS yet"
    rss: dict = {}

    if "cold-start" in cases:
        results["cases"]["cold-start"] = cold_start(pin, args.cold_runs, tmp)

    servers: dict[str, Server] = {}
    tls_servers: dict[str, Server] = {}
    if load_cases or "rss" in cases:
        log()
        log("starting servers")
        servers["effe"] = start_effe(pin, tmp, None)
        servers["effe"].rss_idle_kib = rss_kib(servers["effe"].proc.pid)
        servers["bare-hyper"] = start_bare(pin, tmp, None)
        servers["bare-hyper-ct"] = start_bare(pin, tmp, None, current_thread=True)
        if load_cases:
            cert, key = cert_key if cert_key else make_cert(tmp)
            servers["nginx"] = start_nginx(pin, tmp, tools["nginx"], cert, key)
            tls_servers["nginx"] = servers["nginx"]
        if want_tls:
            assert cert_key
            tls_servers["bare-hyper"] = start_bare(pin, tmp, cert_key)
            tls_servers["bare-hyper-ct"] = start_bare(pin, tmp, cert_key, current_thread=True)
            if effe_tls:
                try:
                    srv = start_effe(pin, tmp, cert_key)
                    srv.rss_idle_kib = rss_kib(srv.proc.pid)
                    check_hello(srv, "https")
                    tls_servers["effe"] = srv
                except BenchError as e:
                    effe_tls_error = f"effe-host with --tls-cert failed: {e}"
                    log(f"  effe (TLS): skipped: {effe_tls_error}")
        for srv in [*servers.values(), *tls_servers.values()]:
            srv.rss_idle_kib = srv.rss_idle_kib or rss_kib(srv.proc.pid)
        for srv in servers.values():
            check_hello(srv, "http")
        for srv in tls_servers.values():
            check_hello(srv, "https")
        for label, srv in labelled(servers, tls_servers):
            log(f"  {LETTER[srv.name]} {label:<19} pid {srv.proc.pid:<7} "
                + " ".join(sorted(set(srv.urls.values()))))
        results["servers"] = {label: srv.argv for label, srv in labelled(servers, tls_servers)}
        if want_tls and not effe_tls:
            log(f"  effe (TLS): skipped: {effe_tls_error}")

    for name in load_cases:
        case = LOAD_CASES[name]
        if case.scheme == "https":
            pool, skipped = tls_servers, {}
            if "effe" not in pool:
                skipped["effe"] = effe_tls_error
        else:
            pool, skipped = servers, {}
        if case.fixed_rate:
            results["cases"][name] = run_latency_case(name, case, pool, args, pin, tmp)
        else:
            results["cases"][name] = run_load_case(name, case, pool, skipped, args, pin, tmp)

    if "rss" in cases:
        log()
        log("== rss: VmRSS of each server process (tree), idle after start and after the "
            "load cases above ==")
        for label, srv in labelled(servers, tls_servers):
            after = rss_kib(srv.proc.pid)
            rss[label] = {"idle_kib": srv.rss_idle_kib, "after_load_kib": after,
                          "after_cases": load_cases}
            log(f"  {LETTER[srv.name]} {label:<19} idle {srv.rss_idle_kib / 1024:6.1f} MiB   "
                f"after load {after / 1024:6.1f} MiB")
        results["cases"]["rss"] = rss

    for srv in {id(s): s for s in [*servers.values(), *tls_servers.values()]}.values():
        PROCS.stop(srv.proc)

    if "blocking" in cases:
        results["cases"]["blocking"] = blocking(pin, args, tmp)

    if "abi-call" in cases:
        results["cases"]["abi-call"] = abi_call_bench()

    if "instructions" in cases:
        results["cases"]["instructions"] = instructions(pin, tools, tmp)


if __name__ == "__main__":
    sys.exit(main())
