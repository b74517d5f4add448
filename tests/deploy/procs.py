"""Processes for the deployment checks: started with free ports on 127.0.0.1, found ready by a
log line or an answering port (never a fixed sleep), and ended by their PID whatever happens.

Python 3.11, standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELEASE = (ROOT / os.environ.get("CARGO_TARGET_DIR", "target")).resolve() / "release"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Failure(Exception):
    """Ends the check with this one-line reason (and exit code 1)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 10) -> None:
    """Until 127.0.0.1:port accepts; fails if proc ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise Failure(f"{what} exited {proc.returncode} before it listened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise Failure(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g}s")
        time.sleep(0.05)


class Procs:
    """Every process started here, each with its stderr in a file of a private directory."""

    def __init__(self, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"effe-{name}."))
        self.live: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **kw)
        proc.log_path = self.dir / f"{name}.log"  # type: ignore[attr-defined]
        self.live.append(proc)
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        return ANSI.sub("", proc.log_path.read_text(errors="replace"))  # type: ignore[attr-defined]

    def wait_log(self, proc: subprocess.Popen, pattern: str, what: str, timeout: float = 15) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log(proc))
            if found:
                return found
            if proc.poll() is not None:
                last = self.log(proc).strip().splitlines()[-1:] or ["(no output)"]
                raise Failure(f"{what} exited {proc.returncode}: {last[0]}")
            if time.monotonic() > deadline:
                raise Failure(f"{what}: no '{pattern}' in its log within {timeout:g}s")
            time.sleep(0.05)

    def host(self, effe: str, port: int, *args: str) -> subprocess.Popen:
        """effe-host (release build) serving target/release/lib{effe}.so on 127.0.0.1:port, ready.

        The effe is copied into this check's own directory first: the host refuses a plugin that
        others could replace, and a umask of 002 makes target/ group-writable."""
        plugin = self.dir / f"lib{effe}.so"
        if not plugin.exists():
            shutil.copyfile(RELEASE / f"lib{effe}.so", plugin)
            plugin.chmod(0o644)
        proc = self.start(f"{effe}-{port}", [str(RELEASE / "effe-host"), "--plugin", str(plugin),
                                             "--listen", f"127.0.0.1:{port}", "--syslog", "off", *args])
        self.wait_log(proc, r"listening addr=", f"effe-host with {effe}")
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 15) -> int:
        """SIGTERM, then the exit code (SIGKILL past the timeout, which fails the check)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise Failure(f"PID {proc.pid} did not exit within {timeout:g}s of SIGTERM")
        return proc.returncode

    def close(self) -> None:
        for proc in self.live:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_check(name: str, body) -> None:
    """Runs body(procs), prints `name: FAIL: why` and exits 1 on a Failure, cleans up always."""
    # A time bound (timeout's SIGTERM) ends the check through the cleanup below, not around it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs = Procs(name)
    try:
        body(procs)
    except Failure as e:
        print(f"{name}: FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        procs.close()
