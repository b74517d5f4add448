#!/usr/bin/env bash
# Installs what the test suite, the TLS scan and the soak need beyond the Rust toolchain, if
# missing: h2load (nghttp2-client), openssl, PostgreSQL's server and client programs (the todo
# effe's tests start their own server: nothing relies on the package starting one), Python 3 with
# venv, and sslyze in a virtual environment under the target directory (Debian's Python refuses a
# system-wide pip install, PEP 668). Idempotent, and quick when everything is there: one
# `apt-get update` at most.
set -euo pipefail
cd "$(dirname "$0")/.."

SSLYZE_VERSION=6.3.1
venv="${CARGO_TARGET_DIR:-target}/sslyze-venv"

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
# Debian keeps initdb and postgres off PATH, under /usr/lib/postgresql/VERSION/bin.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
if ! command -v python3 >/dev/null; then
  need+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  # Debian splits ensurepip, which `python3 -m venv` needs, into python3-venv.
  need+=(python3-venv)
fi

if [ ${#need[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
      echo "tests/deps.sh: missing ${need[*]}: install them as root (apt-get install ${need[*]})" >&2
      exit 1
    }
    sudo=(sudo)
  fi
  echo "tests/deps.sh: installing ${need[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

has_sslyze() {
  "$venv/bin/python" - "$SSLYZE_VERSION" 2>/dev/null <<'EOF'
import importlib.metadata, sys
sys.exit(importlib.metadata.version("sslyze") != sys.argv[1])
EOF
}

if ! has_sslyze; then
  echo "tests/deps.sh: installing sslyze $SSLYZE_VERSION in $venv"
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "sslyze==$SSLYZE_VERSION"
  has_sslyze || { echo "tests/deps.sh: sslyze $SSLYZE_VERSION did not install in $venv" >&2; exit 1; }
fi
