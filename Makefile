# netctl: the two commands a newcomer runs are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build test e2e-vm bench bench-deps demo fmt lint check-deploy

all: build

build:
	$(CARGO) build --workspace --all-targets

## Unit tests (IPAM, VNI, validation, store) and end-to-end tests that run the
## real netctl binaries.
test: build
	$(CARGO) test --workspace

## The VM tier: two QEMU guests (own kernels, joined by an emulated link)
## run the walkthrough; KVM when it works, software emulation otherwise.
e2e-vm:
	./scripts/vm/run-e2e.sh

## Benchmarks; results land in bench/results/ as JSON.
bench: bench-deps
	$(CARGO) build --release --workspace --bins
	NETCTL_BIN=$(CURDIR)/target/release/netctl ./target/release/bench-control bench/results/control_plane.json
	NETCTL_BIN=$(CURDIR)/target/release/netctl ./target/release/bench-dataplane bench/results/data_plane.json
	NETCTL_BIN=$(CURDIR)/target/release/netctl ./target/release/bench-mesh bench/results/routing_mesh.json
	NETCTL_BIN=$(CURDIR)/target/release/netctl ./target/release/bench-dns bench/results/dns.json
	NETCTL_BIN=$(CURDIR)/target/release/netctl ./target/release/bench-fleet bench/results/fleet.json

## What the benchmarks run, from Debian's packages.
bench-deps:
	./scripts/packages.sh bench

## A two-node lab and both walkthroughs with real output; the lab stays up.
demo:
	./scripts/demo.sh

fmt:
	$(CARGO) fmt --all

## Clippy with every warning an error.
lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## The deployment files pass their own checkers: ruby -c (Vagrantfile),
## shellcheck (every script), systemd-analyze verify (the units, pointed at
## the netctl just built).
check-deploy: build
	./scripts/check-deploy.sh $(CURDIR)/target/debug/netctl
