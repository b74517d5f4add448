# Helpers for the deployment checks in tests/deploy/ (sourced, not run). Each check names itself
# in $check, cleans up only what it started (the PIDs it recorded, the containers and images it
# named), and bounds every wait.
# shellcheck shell=bash
# shellcheck disable=SC2034  # repo, target and release are for the checks that source this

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
repo=$PWD
target=$(realpath -m -- "${CARGO_TARGET_DIR:-target}")
release="$target/release"

say() { echo "${check:?}: $*" >&2; }
fail() { echo "${check:?}: FAIL: $*" >&2; exit 1; }

# A TCP port nobody listens on now (the kernel's pick; racy only against other pickers).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 50 ms until it succeeds; fails the check
# naming WHAT after SECONDS.
wait_until() {
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not within ${seconds}s"
    sleep 0.05
  done
}

# The release binaries the image is made of; cargo does nothing when they are up to date.
build_release() {
  local pkgs=() p
  for p in "$@"; do pkgs+=(-p "$p"); done
  # The host as deploy/image.sh builds it (without the vendored effe-abi of `effe-host new`).
  "${CARGO:-cargo}" build --release --quiet -p effe-host --no-default-features ||
    fail "cargo build --release -p effe-host --no-default-features failed"
  [ ${#pkgs[@]} -eq 0 ] || "${CARGO:-cargo}" build --release --quiet "${pkgs[@]}" ||
    fail "cargo build --release ${pkgs[*]} failed"
}

# Where PEM files for a throwaway CA and a leaf for localhost/127.0.0.1 (EC P-256) are made, in
# DIR: ca.pem, leaf.pem, key.pem (the leaf's key).
make_pki() {
  local dir=$1
  mkdir -p "$dir"
  (
    cd "$dir" || exit 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=effe deploy check CA" -keyout ca.key -out ca.pem \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/CN=localhost" -keyout key.pem -out leaf.csr
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >leaf.ext
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile leaf.ext -out leaf.pem
  ) >/dev/null 2>&1 || fail "openssl could not make the test certificates in $dir"
}
