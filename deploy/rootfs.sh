#!/usr/bin/env bash
# Assembles the root filesystem of an effe container image in DIR, from a release build:
#
#   /effe-host                  the host, stripped
#   /effe/libeffe.so            the effe, stripped of its symbol table (dlopen needs only the
#                               dynamic symbols); EFFE_PLUGIN names it in the Dockerfile
#   the libraries `ldd` lists for both, and the dynamic loader, at the paths ldd gives
#   /etc/ssl/certs/ca-certificates.crt   Debian's CA bundle, for effes that call HTTPS services
#   /etc/passwd, /etc/group     root, and the user the image runs as: effe, uid/gid 65532
#   /etc/nsswitch.conf          `hosts: files dns`: /etc/hosts first (glibc's default without
#                               this file asks DNS first, even for localhost)
#   /tmp                        empty, mode 1777 (read-only containers mount a tmpfs there)
#
# and nothing else: no shell, no package manager. Every file and directory is root's and not
# writable by group or others, as the host's plugin check asks of the effe and the directories
# above it (host/src/trust.rs); Docker's COPY makes them root's whoever ran this script.
#
# Usage:  EFFE=hello deploy/rootfs.sh DIR              (target/release/libhello.so)
#         EFFE_SO=/path/libfoo.so deploy/rootfs.sh DIR  (an effe built elsewhere)
# DIR must be absent or empty. Reads effe-host from EFFE_HOST, by default
# ${CARGO_TARGET_DIR:-target}/release/effe-host: run `cargo build --release -p effe-host` (and
# `-p NAME`) first, or `make image`, which builds the profile-guided host and names it.
# Needs ldd (libc-bin), strip (binutils) and the CA bundle (ca-certificates); tests/deploy/deps.sh
# installs them.
set -euo pipefail

die() { echo "deploy/rootfs.sh: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: EFFE=name | EFFE_SO=/path/libfoo.so deploy/rootfs.sh DIR"
# Paths the caller gave are relative to where it stands, so resolve them before moving.
dir=$(realpath -m -- "$1")
so_arg=${EFFE_SO:+$(realpath -m -- "$EFFE_SO")}
host_arg=${EFFE_HOST:+$(realpath -m -- "$EFFE_HOST")}
cd "$(dirname "$0")/.."
target=$(realpath -m -- "${CARGO_TARGET_DIR:-target}")

if [ -n "${EFFE:-}" ] && [ -n "${EFFE_SO:-}" ]; then
  die "set EFFE or EFFE_SO, not both"
elif [ -n "${EFFE_SO:-}" ]; then
  so=$so_arg
elif [ -n "${EFFE:-}" ]; then
  so="$target/release/lib${EFFE//-/_}.so"   # cargo names a cdylib after its crate, - made _
else
  die "set EFFE (an effe of this workspace, e.g. hello) or EFFE_SO (the path of an effe .so)"
fi
host=${host_arg:-$target/release/effe-host}
ca=/etc/ssl/certs/ca-certificates.crt

[ -x "$host" ] || die "$host: missing; run cargo build --release -p effe-host"
[ -f "$so" ] || die "$so: missing${EFFE:+; run cargo build --release -p $EFFE}"
[ -f "$ca" ] || die "$ca: missing; install Debian's ca-certificates"
command -v strip >/dev/null || die "strip: missing; install binutils"
if [ -e "$dir" ] && [ -n "$(ls -A -- "$dir")" ]; then
  die "$dir: not empty"
fi

umask 022
mkdir -p "$dir"

install -m 0755 "$host" "$dir/effe-host"
strip --strip-all "$dir/effe-host"
install -D -m 0644 "$so" "$dir/effe/libeffe.so"
strip --strip-unneeded "$dir/effe/libeffe.so"

# The libraries ldd resolves, at the same paths. The image has no ld.so.cache, so the loader
# looks only in its built-in directories: a library found elsewhere (through ld.so.conf, an
# rpath or LD_LIBRARY_PATH) would be copied and then not found, so it is refused here.
libraries() {
  local out
  out=$(ldd "$1" 2>&1) || die "ldd $1: $out"
  case $out in *"statically linked"*) return 0 ;; esac
  awk -v file="$1" '
    /=> not found/ { print "deploy/rootfs.sh: " file " needs " $1 ", which ldd does not find" > "/dev/stderr"; bad = 1; next }
    $2 == "=>" && $3 ~ /^\// { print $3; next }
    $1 ~ /^\// { print $1 }
    END { exit bad }
  ' <<<"$out"
}
mapfile -t libs < <( { libraries "$host" && libraries "$so"; } | sort -u; exit "${PIPESTATUS[0]}" ) ||
  die "cannot list the libraries of $host and $so"
[ ${#libs[@]} -gt 0 ] || die "ldd lists no library for $host: expected at least libc and the loader"
interp=$(ldd "$host" | awk '$1 ~ /^\// && /ld-linux/ { print $1 }')
[ -n "$interp" ] || die "ldd $host names no dynamic loader"
for lib in "${libs[@]}"; do
  case $lib in
    "$interp" | /lib/x86_64-linux-gnu/* | /usr/lib/x86_64-linux-gnu/* | /lib/aarch64-linux-gnu/* | \
    /usr/lib/aarch64-linux-gnu/*) ;;
    *) die "$lib is outside the loader's default directories and the image has no ld.so.cache: \
install it under /usr/lib/<triplet>, or link it into the effe" ;;
  esac
  # cp -L: the loader on Debian is a symlink (/lib64 → /lib/x86_64-linux-gnu), and the image
  # needs the file itself at the path the binaries name.
  mkdir -p "$dir$(dirname "$lib")"
  cp -L --preserve=mode "$lib" "$dir$lib"
  chmod go-w "$dir$lib"
done

install -D -m 0644 "$ca" "$dir$ca"

mkdir -p "$dir/etc"
cat >"$dir/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
effe:x:65532:65532:effe:/nonexistent:/sbin/nologin
PASSWD
cat >"$dir/etc/group" <<'GROUP'
root:x:0:
effe:x:65532:
GROUP
echo "hosts: files dns" >"$dir/etc/nsswitch.conf"
chmod 0644 "$dir/etc/passwd" "$dir/etc/group" "$dir/etc/nsswitch.conf"

mkdir -m 1777 "$dir/tmp"
find "$dir" -type d ! -path "$dir/tmp" -exec chmod 0755 {} +

size=$(du -sb --apparent-size "$dir" | cut -f1)
echo "deploy/rootfs.sh: $dir: $(find "$dir" -type f | wc -l) files, $size bytes (${so#"$PWD"/} and effe-host, ${#libs[@]} libraries)"
