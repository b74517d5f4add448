#!/usr/bin/env bash
# The deployment checks (`make test-deploy`, and CI): installs what they need
# (tests/deploy/deps.sh), builds the release binaries the image is made of, starts a Docker daemon
# if none answers (`dockerd --iptables=false --bridge=none`: the containers use --network host,
# which works offline) and stops it at the end by its PID, then runs each check with a time
# bound, goes on past a failure, and ends with `deploy: N passed, N failed`.
#
#   tests/deploy/run.sh                        every check
#   tests/deploy/run.sh rootfs_check k8s_check  some (rootfs, hadolint, k8s and proxy need no Docker)
set -euo pipefail
check=deploy
# shellcheck source=tests/deploy/lib.sh
source "$(dirname "$0")/lib.sh"

# Each check and its time bound, in seconds.
declare -A bound=([hadolint_check]=120 [k8s_check]=300 [rootfs_check]=300 [proxy_check]=120 [docker_check]=900)
order=(hadolint_check k8s_check rootfs_check proxy_check docker_check)
if [ $# -gt 0 ]; then
  for c in "$@"; do [ -n "${bound[$c]:-}" ] || fail "no check $c (checks: ${order[*]})"; done
  order=("$@")
fi

began=$SECONDS
"$repo/tests/deploy/deps.sh" >/dev/null
say "dependencies in $((SECONDS - began))s"
began=$SECONDS
build_release hello echo fetch
# The HTTP/2 load of docker_check's --reuse-port swap.
"${CARGO:-cargo}" build --release --quiet -p effe-tests --bin effe-swap-load
say "release build in $((SECONDS - began))s"

dockerd_pid=
stop_dockerd() {
  [ -n "$dockerd_pid" ] || return 0
  kill -TERM "$dockerd_pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$dockerd_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  kill -KILL "$dockerd_pid" 2>/dev/null || true
  wait "$dockerd_pid" 2>/dev/null || true
  say "stopped the dockerd it started (PID $dockerd_pid)"
  dockerd_pid=
}
trap stop_dockerd EXIT
trap 'exit 143' TERM INT
if [[ " ${order[*]} " == *" docker_check "* ]] && ! docker info >/dev/null 2>&1; then
  log="$target/dockerd.log"
  mkdir -p "$target"
  # A pid file of its own: a stale /var/run/docker.pid (a daemon killed earlier) would stop it.
  dockerd --iptables=false --bridge=none --pidfile "$target/dockerd.pid" >"$log" 2>&1 &
  dockerd_pid=$!
  began=$SECONDS
  until docker info >/dev/null 2>&1; do
    kill -0 "$dockerd_pid" 2>/dev/null || { dockerd_pid=; fail "dockerd exited: $(tail -n 3 "$log")"; }
    [ $((SECONDS - began)) -lt 60 ] || fail "dockerd did not answer within 60s: $(tail -n 3 "$log")"
    sleep 0.1
  done
  say "started dockerd (PID $dockerd_pid, log $log) in $((SECONDS - began))s"
fi

passed=0
failed=0
times=()
for c in "${order[@]}"; do
  began=$SECONDS
  rc=0
  timeout --kill-after=10 "${bound[$c]}" "$repo/tests/deploy/$c" || rc=$?
  took=$((SECONDS - began))
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    times+=("$c ok ${took}s")
  else
    failed=$((failed + 1))
    [ "$rc" -eq 124 ] && say "$c: FAIL: did not finish within ${bound[$c]}s"
    times+=("$c FAILED ${took}s")
  fi
done
stop_dockerd
summary=$(IFS=,; echo "${times[*]}")
say "${summary//,/, }"
echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
