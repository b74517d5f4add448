#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a while: FUZZ_SECONDS in all (default 60), shared
# equally. Exits non-zero if a target crashed (a panic, a broken assertion, an overflow, a hang);
# the input that did it is left in fuzz/artifacts/<target>/, and
# `cargo fuzz run -s none <target> <that file>` replays it.
#
# Stable Rust, so no sanitizer (`-s none`): cargo fuzz's default, AddressSanitizer, needs the
# nightly-only `-Zsanitizer`. The code under test is safe Rust (`unsafe` is denied in the host):
# what the fuzzer looks for is a panic or a broken invariant, which needs none.
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
total=${FUZZ_SECONDS:-60}

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

cargo fuzz build -s none
targets=$(cargo fuzz list)
count=$(wc -w <<<"$targets")
each=$(( total / count > 0 ? total / count : 1 ))

failed=()
for target in $targets; do
  # corpus/ keeps what a run learnt (not in git); seeds/ holds examples of valid input.
  mkdir -p "corpus/$target"
  if ! cargo fuzz run -s none "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$each" -timeout=10 -print_final_stats=1; then
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: $count targets, ${each}s each, no crash"
