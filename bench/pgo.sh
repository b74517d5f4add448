#!/usr/bin/env bash
# A profile-guided build of effe-host (`make pgo`): an instrumented build serves the bench's
# workload (HTTP/1.1 over 64 connections, h2c, and curl's request over one connection, against
# the hello effe, on 127.0.0.1, each bounded by its request count), its profile is merged with
# llvm-profdata, and effe-host is built again with it, into target/pgo/release/effe-host.
#
# Arguments are passed to both cargo builds: `bench/pgo.sh --no-default-features` makes the
# host the container image ships (deploy/image.sh).
#
# Needs h2load (nghttp2-client) and the toolchain's llvm-tools (installed here with rustup if
# missing). Only the process this script starts is ended, by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
target=$(realpath -m -- "${CARGO_TARGET_DIR:-target}")
gen=$target/pgo-gen
data=$target/pgo-data
out=$target/pgo
REQUESTS=${PGO_REQUESTS:-200000}

sysroot=$(rustc --print sysroot)
host_triple=$(rustc -vV | sed -n 's/^host: //p')
profdata=$sysroot/lib/rustlib/$host_triple/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
  rustup component add llvm-tools-preview
fi
command -v h2load >/dev/null || { echo "bench/pgo.sh: h2load missing (apt-get install nghttp2-client)" >&2; exit 1; }

rm -rf "$data"
mkdir -p "$data"
echo "bench/pgo.sh: instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$data" "$CARGO" build --release --quiet -p effe-host -p hello \
  --target-dir "$gen" "$@"
chmod go-w "$gen/release/libhello.so"

log=$(mktemp)
host_pid=
cleanup() {
  [ -n "$host_pid" ] && kill -TERM "$host_pid" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT
"$gen/release/effe-host" --plugin "$gen/release/libhello.so" --listen 127.0.0.1:0 \
  --admin-listen 127.0.0.1:0 --syslog off 2>"$log" &
host_pid=$!
addr=
for _ in $(seq 200); do
  addr=$(sed -n 's/.*listening addr=\([0-9.:]*\).*/\1/p' "$log" | head -n 1)
  [ -n "$addr" ] && break
  sleep 0.05
done
[ -n "$addr" ] || { cat "$log" >&2; echo "bench/pgo.sh: the instrumented host did not start" >&2; exit 1; }

echo "bench/pgo.sh: training on http://$addr ($REQUESTS requests per shape)" >&2
h2load --h1 -n "$REQUESTS" -c 64 -t 1 "http://$addr/" >/dev/null
h2load -n "$REQUESTS" -c 64 -m 10 -t 1 "http://$addr/" >/dev/null
h2load --h1 -n "$((REQUESTS / 4))" -c 1 -t 1 -H 'user-agent: curl/7.88.1' -H 'accept: */*' \
  "http://$addr/?name=effe&lang=en" >/dev/null

# The profile is written at a clean exit.
kill -TERM "$host_pid"
wait "$host_pid" || { echo "bench/pgo.sh: the instrumented host did not exit cleanly" >&2; exit 1; }
host_pid=

"$profdata" merge -o "$data/merged.profdata" "$data"/*.profraw
echo "bench/pgo.sh: optimized build" >&2
RUSTFLAGS="-Cprofile-use=$data/merged.profdata" "$CARGO" build --release --quiet \
  -p effe-host -p hello --target-dir "$out" "$@"
chmod go-w "$out"/release/*.so
echo "bench/pgo.sh: $out/release/effe-host" >&2
