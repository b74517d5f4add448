#!/usr/bin/env bash
# Builds an effe container image (`make image`): the profile-guided build of effe-host
# (bench/pgo.sh, about 4 minutes; it executes 21–24% fewer instructions per request; needs
# h2load), the root filesystem (deploy/rootfs.sh, under target/image/NAME/rootfs, inside the
# build context), then `docker build --network none` of the Dockerfile, which pulls nothing
# (FROM scratch). Prints the image's size.
#
#   EFFE=hello deploy/image.sh                   an effe of this workspace (default: hello)
#   EFFE_SO=/path/libfoo.so deploy/image.sh      an effe built elsewhere: image effe-foo
#   IMAGE=registry.example/greet:1.2 ...         the image's name (default effe-NAME)
#   EFFE_HOST=target/pgo/release/effe-host ...   this effe-host, already built (no build)
#   EFFE_PGO=0 ...                               a plain release build of effe-host instead
set -euo pipefail

die() { echo "deploy/image.sh: $*" >&2; exit 1; }

if [ -n "${EFFE_SO:-}" ]; then
  [ -z "${EFFE:-}" ] || die "set EFFE or EFFE_SO, not both"
  EFFE_SO=$(realpath -m -- "$EFFE_SO")   # relative to where the caller stands
  name=$(basename -- "$EFFE_SO" .so)
  name=${name#lib}
else
  EFFE=${EFFE:-hello}
  name=$EFFE
fi
export EFFE EFFE_SO
case ${EFFE_PGO:-1} in
  0 | 1) ;;
  *) die "EFFE_PGO=$EFFE_PGO: expected 1 (the profile-guided build, the default) or 0" ;;
esac
if [ -n "${EFFE_HOST:-}" ]; then
  EFFE_HOST=$(realpath -m -- "$EFFE_HOST")
  [ -x "$EFFE_HOST" ] || die "EFFE_HOST=$EFFE_HOST: not an executable"
fi
image=${IMAGE:-effe-$name}
cd "$(dirname "$0")/.."

# Without the copy of effe-abi's sources that `effe-host new` vendors: the image serves, and
# has an 8 MB budget.
if [ -z "${EFFE_HOST:-}" ]; then
  if [ "${EFFE_PGO:-1}" = 1 ]; then
    CARGO=${CARGO:-cargo} bench/pgo.sh --no-default-features
    EFFE_HOST=$(realpath -m -- "${CARGO_TARGET_DIR:-target}")/pgo/release/effe-host
  else
    "${CARGO:-cargo}" build --release -p effe-host --no-default-features
  fi
fi
export EFFE_HOST
[ -n "${EFFE:-}" ] && "${CARGO:-cargo}" build --release -p "$EFFE"

# In the repository's target/ whatever CARGO_TARGET_DIR says: the build context is the
# repository (see .dockerignore), and the daemon reads nothing outside it.
rootfs=target/image/$name/rootfs
rm -rf "target/image/$name"
deploy/rootfs.sh "$rootfs"

docker build --network none --quiet --build-arg "ROOTFS=$rootfs" --tag "$image" --file Dockerfile . >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$image")
echo "deploy/image.sh: $image: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.2f MB", s / 1e6 }'))"
