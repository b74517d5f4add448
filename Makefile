# Thin wrappers over cargo. `make run` serves the hello effe on :8080; `make test` runs every test.
CARGO ?= cargo
LISTEN ?= 0.0.0.0:8080

.PHONY: build run test test-cargo lint clean bench fuzz deps tls-scan soak image test-deploy pgo

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
# The panic = "abort" fixtures (their own workspace: that profile changes every dependency's
# build, so they get a target directory of their own).
ABORT = --manifest-path tests/abort/Cargo.toml --target-dir $(or $(CARGO_TARGET_DIR),target)/abort

# Every test: the cargo tests, then the TLS scan, a short fuzz, a 60 s soak and the deployment
# checks (which need root, for Docker and chroot). Installs what they need when missing.
test: deps test-cargo tls-scan
	$(MAKE) fuzz FUZZ_SECONDS=$(TEST_FUZZ_SECONDS)
	$(MAKE) soak SOAK_DURATION=$(TEST_SOAK_DURATION)
	$(MAKE) test-deploy
TEST_FUZZ_SECONDS ?= 30
TEST_SOAK_DURATION ?= 60

# What the tests need beyond Rust, installed if missing (h2load, openssl, python3-venv, and
# sslyze in a venv under target/); quick when everything is there.
deps:
	tests/deps.sh

# Unit, property and end-to-end tests. The end-to-end tests run the built binaries and effes:
# build everything first.
test-cargo:
	$(CARGO) build --workspace --all-targets
	$(CARGO) build $(COMPAT)
	$(CARGO) build $(ABORT)
	$(CARGO) test --workspace

# The HTTPS listener against Mozilla's "intermediate" profile (sslyze, tests/soak/tls_scan.py).
tls-scan: deps
	$(CARGO) build -p effe-host -p hello
	tests/soak/tls_scan.py

# Several hosts under a steady mixed load for SOAK_DURATION seconds, failing on RSS or fd growth,
# a dead host or an unexpected status; e.g. `make soak SOAK_DURATION=60`. tests/soak/soak.py --help.
SOAK_DURATION ?= 600
SOAK_ARGS ?=
soak: deps
	$(CARGO) build --release --workspace
	chmod go-w $(or $(CARGO_TARGET_DIR),target)/release/*.so
	tests/soak/soak.py --duration $(SOAK_DURATION) $(SOAK_ARGS)

# A container image of effe-host and one effe (deploy/image.sh: the profile-guided build of
# effe-host, deploy/rootfs.sh, docker build --network none; needs a Docker daemon and h2load):
# `make image EFFE=hello`, or an effe built elsewhere, `make image EFFE_SO=/path/libfoo.so`.
# IMAGE names it (default effe-NAME); EFFE_PGO=0 takes a plain release build of the host.
EFFE ?= hello
EFFE_PGO ?= 1
image:
	EFFE=$(if $(EFFE_SO),,$(EFFE)) EFFE_SO=$(EFFE_SO) IMAGE=$(IMAGE) EFFE_PGO=$(EFFE_PGO) CARGO=$(CARGO) deploy/image.sh

# The deployment checks (tests/deploy/run.sh, as root; installs what it needs with
# tests/deploy/deps.sh, starts dockerd if none answers and stops it after): hadolint, the
# Kubernetes manifests, the root filesystem under chroot, nginx routing, and the image in Docker.
# Some only: `make test-deploy DEPLOY_CHECKS="rootfs_check k8s_check"`.
test-deploy:
	CARGO=$(CARGO) tests/deploy/run.sh $(DEPLOY_CHECKS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) fmt --manifest-path tests/compat/Cargo.toml $(COMPAT_OWN) -- --check
	$(CARGO) clippy $(COMPAT) $(COMPAT_OWN) --all-targets --no-deps -- -D warnings
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	rustfmt --edition 2021 --check tests/abort/*/src/lib.rs

# Fuzzes what the host parses itself (fuzz/run.sh; installs cargo-fuzz if missing): FUZZ_SECONDS
# in all, shared by the targets. A crash's input is left in fuzz/artifacts/.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

# effe-host as the image ships it (the profile-guided build, `make pgo`) vs a bare hyper server
# vs nginx (installs wrk, h2load, nginx with apt-get if missing); e.g. `make bench
# BENCH_ARGS=--quick`, or the plain release build: BENCH_ARGS="--effe-dir target/release". See
# bench/run.py --help.
BENCH_ARGS ?=
bench: pgo
	CARGO=$(CARGO) bench/run.py --effe-dir $(or $(CARGO_TARGET_DIR),target)/pgo/release $(BENCH_ARGS)

# The profile-guided build of effe-host the image ships (bench/pgo.sh --no-default-features:
# without the effe-abi sources `effe-host new` vendors), trained on the bench's workload, written
# to target/pgo/release.
pgo:
	CARGO=$(CARGO) bench/pgo.sh --no-default-features

clean:
	$(CARGO) clean
