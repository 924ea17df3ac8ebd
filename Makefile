# netctl: the two commands a newcomer runs are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build test e2e-vm bench bench-deps demo fmt lint

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

## What the benchmarks run, from Debian's packages.
bench-deps:
	@command -v iperf3 >/dev/null && command -v wrk >/dev/null && command -v curl >/dev/null && \
		command -v ping >/dev/null && command -v iptables >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			iperf3 wrk curl iputils-ping iptables iproute2 >/dev/null)

## A two-node lab and both walkthroughs with real output; the lab stays up.
demo:
	./scripts/demo.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
