"""effe-host processes for the soak and the TLS scan: started on 127.0.0.1 with free ports, found
ready by their `listening` log line, watched through /proc and the admin /metrics, stopped by PID.

Python 3.11, standard library only (and `openssl` for the throwaway certificates).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# The host prints `listening addr=IP:PORT ... admin=IP:PORT` once every listener accepts.
LISTENING = re.compile(r"listening addr=(\d+\.\d+\.\d+\.\d+:\d+)")
ADMIN = re.compile(r" admin=\"?(\d+\.\d+\.\d+\.\d+:\d+|off)")
METRIC = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Failure(Exception):
    """Ends the run with this one-line reason (and a non-zero exit code)."""


def target_dir() -> Path:
    """Cargo's target directory, as the Makefile finds it."""
    return ROOT / os.environ.get("CARGO_TARGET_DIR", "target")


class Procs:
    """Every process started here, so that each is ended by its PID whatever happens."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def spawn(self, argv: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **kw)
        self.live.append(proc)
        return proc

    def forget(self, proc: subprocess.Popen) -> None:
        try:
            self.live.remove(proc)
        except ValueError:  # already forgotten (by stop_all, from another thread)
            pass

    def stop_all(self) -> None:
        for proc in reversed(list(self.live)):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.forget(proc)


PROCS = Procs()


def stop_on_signals() -> None:
    """SIGTERM and SIGINT unwind like an exception, so that `finally` ends what was started."""

    def leave(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)


@dataclass
class Metrics:
    """One scrape of /metrics: (name, labels) -> value."""

    samples: list[tuple[str, dict[str, str], float]]

    def sum(self, name: str, **labels: str) -> float:
        return sum(v for n, ls, v in self.samples
                   if n == name and all(ls.get(k) == want for k, want in labels.items()))

    @staticmethod
    def parse(text: str) -> Metrics:
        samples = []
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            m = METRIC.match(line)
            if m:
                labels = dict(LABEL.findall(m.group(2) or ""))
                samples.append((m.group(1), labels, float(m.group(3))))
        return Metrics(samples)


@dataclass
class Host:
    name: str
    proc: subprocess.Popen
    addr: str  # IP:PORT of the listener
    admin: str | None  # IP:PORT of the admin listener
    log: Path  # its stderr
    tls: bool

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise Failure(f"{self.name}: no VmRSS in /proc/{self.proc.pid}/status")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def metrics(self) -> Metrics:
        if self.admin is None:
            raise Failure(f"{self.name}: started with the admin listener off")
        host, port = self.admin.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read().decode()
        finally:
            conn.close()
        if resp.status != 200:
            raise Failure(f"{self.name}: /metrics answered {resp.status}")
        return Metrics.parse(body)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM by PID; the exit code, or None if it had to be killed after `timeout`."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        PROCS.forget(self.proc)
        return code

    def log_tail(self, lines: int = 5) -> str:
        text = ANSI.sub("", self.log.read_text(errors="replace"))
        return "\n".join(text.splitlines()[-lines:])


def plugin_path(bin_dir: Path, effe: str) -> Path:
    """lib<effe>.so in `bin_dir`, made unwritable by group and others: the host refuses a
    plugin they could replace, and a umask of 002 makes one."""
    lib = bin_dir / f"lib{effe.replace('-', '_')}.so"
    if not lib.exists():
        raise Failure(f"{lib} is missing: build it first (cargo build --release --workspace)")
    mode = lib.stat().st_mode
    if mode & 0o022:
        lib.chmod(mode & ~0o022)
    return lib


def host_env() -> dict[str, str]:
    """This environment without the host's and the fixture's own variables."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("EFFE_") or k.startswith("FIXTURE_"))}
    env["NO_COLOR"] = "1"
    return env


def start_host(name: str, bin_dir: Path, effe: str, tmp: Path,
               tls: tuple[Path, Path] | None = None, admin: bool = True,
               extra: list[str] | None = None, timeout: float = 30.0) -> Host:
    """Starts `effe-host` with lib<effe>.so on 127.0.0.1:0 and waits for its `listening` line."""
    host_bin = bin_dir / "effe-host"
    if not host_bin.exists():
        raise Failure(f"{host_bin} is missing: build it first")
    argv = [str(host_bin), "--plugin", str(plugin_path(bin_dir, effe)),
            "--listen", "127.0.0.1:0", "--syslog", "off",
            "--admin-listen", "127.0.0.1:0" if admin else "off", *(extra or [])]
    if tls:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    log = tmp / f"{name}.stderr"
    with open(log, "wb") as err:
        proc = PROCS.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=err, env=host_env(), cwd=tmp)
    deadline = time.monotonic() + timeout
    while True:
        text = ANSI.sub("", log.read_text(errors="replace"))
        m = LISTENING.search(text)
        if m:
            a = ADMIN.search(text[m.start():])
            admin_addr = a.group(1) if a and a.group(1) != "off" else None
            if admin and admin_addr is None:
                raise Failure(f"{name}: no admin address in its listening line:\n{text}")
            return Host(name, proc, m.group(1), admin_addr, log, tls is not None)
        if proc.poll() is not None:
            raise Failure(f"{name}: effe-host exited with {proc.returncode} before listening: "
                          f"{text.strip()}")
        if time.monotonic() > deadline:
            raise Failure(f"{name}: no 'listening addr=' line within {timeout:.0f}s:\n{text}")
        time.sleep(0.01)


@dataclass
class Pki:
    ca: Path
    ec_cert: Path
    ec_key: Path
    rsa_cert: Path
    rsa_key: Path


def make_pki(tmp: Path, days: int = 30) -> Pki:
    """A throwaway CA (ECDSA P-256) and two leaves it signs with SHA-256 for localhost and
    127.0.0.1: ECDSA P-256 and RSA 2048. `days` stays under Mozilla's 366-day limit."""
    d = tmp / "pki"
    d.mkdir(exist_ok=True)

    def openssl(*args: str) -> None:
        out = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=d)
        if out.returncode != 0:
            raise Failure(f"openssl {args[0]} failed: {out.stderr.strip()}")

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days), "-sha256",
            "-subj", "/CN=effe throwaway test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (d / "leaf.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                "basicConstraints=critical,CA:FALSE\n"
                                "keyUsage=critical,digitalSignature\n"
                                "extendedKeyUsage=serverAuth\n")
    for kind, newkey in (("ec", ["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
                         ("rsa", ["rsa:2048"])):
        openssl("req", "-newkey", *newkey, "-nodes", "-keyout", f"{kind}.key",
                "-out", f"{kind}.csr", "-subj", "/CN=localhost")
        openssl("x509", "-req", "-in", f"{kind}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", str(days), "-sha256", "-extfile", "leaf.ext",
                "-out", f"{kind}.pem")
    return Pki(d / "ca.pem", d / "ec.pem", d / "ec.key", d / "rsa.pem", d / "rsa.key")


def log(msg: str = "") -> None:
    print(msg, flush=True)
