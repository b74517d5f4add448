# Thin wrappers over cargo. `make run` serves the hello effe on :8080; `make test` runs every test.
CARGO ?= cargo
LISTEN ?= 0.0.0.0:8080

.PHONY: build run test lint clean bench fuzz

build:
	$(CARGO) build --workspace --release

# The host refuses a plugin that group or others may write (a umask of 002 makes one): fix that.
run:
	$(CARGO) build --release -p effe-host -p hello
	chmod go-w target/release/libhello.so
	./target/release/effe-host --plugin target/release/libhello.so --listen $(LISTEN) $(RUN_ARGS)

# The effe-abi 0.1.0 compatibility fixtures: a workspace of their own, built into the main target
# directory, where the end-to-end tests find them and the dependencies are already compiled.
COMPAT = --manifest-path tests/compat/Cargo.toml --target-dir $(or $(CARGO_TARGET_DIR),target)
# Never the frozen effe-abi copy: it stays byte for byte as released.
COMPAT_OWN = -p compat-effe-0-1-0 -p compat-host-0-1-0

# End-to-end tests run the built binaries and effes: build everything first.
test:
	$(CARGO) build --workspace --all-targets
	$(CARGO) build $(COMPAT)
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) fmt --manifest-path tests/compat/Cargo.toml $(COMPAT_OWN) -- --check
	$(CARGO) clippy $(COMPAT) $(COMPAT_OWN) --all-targets --no-deps -- -D warnings
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check

# Fuzzes what the host parses itself (fuzz/run.sh; installs cargo-fuzz if missing): FUZZ_SECONDS
# in all, shared by the targets. A crash's input is left in fuzz/artifacts/.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

# effe-host vs a bare hyper server vs nginx (installs wrk, h2load, nginx with apt-get if
# missing); e.g. `make bench BENCH_ARGS=--quick`. See bench/run.py --help.
BENCH_ARGS ?=
bench:
	CARGO=$(CARGO) bench/run.py $(BENCH_ARGS)

clean:
	$(CARGO) clean
