#!/usr/bin/env python3
"""TLS scan: checks effe-host's HTTPS listener against Mozilla's "intermediate" server profile
with sslyze (`sslyze --mozilla_config=intermediate`).

For each certificate type Mozilla's profile allows, ECDSA P-256 and RSA 2048 (each signed with
SHA-256 by a throwaway CA, valid 30 days: the profile allows at most 366), it starts effe-host
with the hello effe on 127.0.0.1 with a free port, waits for its `listening` line, scans it
(sslyze trusts the throwaway CA through --certinfo_ca_file and connects to 127.0.0.1 with SNI
localhost), and stops the host with SIGTERM. The profile covers the TLS versions, the TLS 1.2
and 1.3 cipher suites, the key exchange groups and their sizes, the certificate (type, key
size, signature, lifespan, chain), and TLS_FALLBACK_SCSV, secure renegotiation, the extended
master secret, compression, Heartbleed, CCS injection and ROBOT.

Exits 0 when every scan is compliant, 1 with sslyze's findings otherwise. tests/deps.sh installs
sslyze in a virtual environment under target/ (--sslyze-python to use another). Python 3.11,
standard library only (and openssl for the certificates).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from hosts import PROCS, Failure, log, make_pki, start_host, stop_on_signals  # noqa: E402
from hosts import target_dir  # noqa: E402

SCAN_TIMEOUT_S = 180


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin-dir", type=Path, default=target_dir() / "debug",
                   help="where effe-host and libhello.so are (default target/debug)")
    p.add_argument("--sslyze-python", type=Path,
                   default=target_dir() / "sslyze-venv" / "bin" / "python",
                   help="a Python with sslyze installed (default target/sslyze-venv, made by "
                        "tests/deps.sh)")
    p.add_argument("--profile", default="intermediate", choices=("modern", "intermediate"),
                   help="Mozilla's profile to check against (default intermediate)")
    return p.parse_args()


def compliance(out: str) -> list[str]:
    """The lines of sslyze's COMPLIANCE section that name the target and its findings."""
    lines = out.split("COMPLIANCE AGAINST", 1)[-1].splitlines()
    return [line.strip() for line in lines
            if line.strip().startswith(("localhost:", "*"))]


def scan(args: argparse.Namespace, kind: str, cert: Path, key: Path, ca: Path,
         tmp: Path) -> tuple[bool, str]:
    host = start_host(f"tls-{kind}", args.bin_dir, "hello", tmp, tls=(cert, key), admin=False)
    try:
        argv = [str(args.sslyze_python), "-m", "sslyze",
                f"--mozilla_config={args.profile}", f"--certinfo_ca_file={ca}",
                f"localhost:{host.port}{{127.0.0.1}}"]
        try:
            run = subprocess.run(argv, capture_output=True, text=True, timeout=SCAN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return False, f"sslyze ran past {SCAN_TIMEOUT_S} s"
        (tmp / f"sslyze-{kind}.txt").write_text(run.stdout + run.stderr)
        found = compliance(run.stdout)
        if run.returncode == 0 and any("OK - Compliant" in line for line in found):
            return True, found[0]
        if not found:
            tail = " | ".join((run.stdout + run.stderr).strip().splitlines()[-5:])
            return False, f"sslyze exited with {run.returncode}: {tail}"
        return False, " ".join(found)
    finally:
        code = host.stop()
        if code != 0:
            raise Failure(f"tls-{kind}: effe-host exited with {code} on SIGTERM")


def main() -> int:
    args = parse_args()
    stop_on_signals()
    if not args.sslyze_python.exists():
        log(f"tls-scan FAILED: {args.sslyze_python} is missing: run tests/deps.sh")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="effe-tls-scan-"))
    passed, failed = [], []
    try:
        pki = make_pki(tmp)
        for kind, cert, key in (("ecdsa-p256", pki.ec_cert, pki.ec_key),
                                ("rsa-2048", pki.rsa_cert, pki.rsa_key)):
            ok, what = scan(args, kind, cert, key, pki.ca, tmp)
            line = f"effe-host with an {kind} certificate, Mozilla {args.profile}: {what}"
            log(f"  {'ok  ' if ok else 'FAIL'} {line}")
            (passed if ok else failed).append(line)
    except Failure as e:
        failed.append(str(e))
        log(f"  FAIL {e}")
    finally:
        PROCS.stop_all()
    if failed:
        log(f"sslyze's full output is kept in {tmp}")
        log(f"tls-scan FAILED: {failed[0]}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"tls-scan: {len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
