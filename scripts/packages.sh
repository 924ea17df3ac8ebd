#!/usr/bin/env bash
# The Debian packages netctl needs, in one place. `scripts/packages.sh SET...`
# installs what this machine lacks for each SET:
#   test    what `make test` and `make check-deploy` run
#   demo    what `make demo` runs
#   bench   what `make bench` runs
#   vm      what `make e2e-vm` builds its guest image from and runs it with
set -euo pipefail

# What building takes: the agent's BPF program (agent/build.rs), and
# etcd-client's protos (its build script runs protoc).
build_needs="clang:clang /usr/include/bpf/bpf_helpers.h:libbpf-dev protoc:protobuf-compiler"
# command:package pairs per set (a path instead of a command: a file that
# must exist).
test_needs="ip:iproute2 iptables:iptables ping:iputils-ping make:make tcpdump:tcpdump nsenter:util-linux
  unshare:util-linux python3:python3 curl:curl openssl:openssl dot:graphviz ruby:ruby shellcheck:shellcheck
  systemd-analyze:systemd dig:dnsutils dnsperf:dnsperf etcd:etcd-server
  tc:iproute2 $build_needs"
demo_needs="ip:iproute2 iptables:iptables ping:iputils-ping curl:curl python3:python3 nsenter:util-linux
  $build_needs"
bench_needs="$build_needs ip:iproute2 iptables:iptables ping:iputils-ping curl:curl iperf3:iperf3 wrk:wrk etcd:etcd-server
  dig:dnsutils dnsperf:dnsperf /usr/lib/podman/aardvark-dns:aardvark-dns"
vm_needs="qemu-system-x86_64:qemu-system-x86 cpio:cpio openssl:openssl depmod:kmod xtables-nft-multi:iptables
  $build_needs"

[ $# -gt 0 ] || { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
missing=()
for set in "$@"; do
  case "$set" in
    test) pairs=$test_needs ;;
    demo) pairs=$demo_needs ;;
    bench) pairs=$bench_needs ;;
    vm)
      pairs=$vm_needs
      # The guest's init is busybox, with modprobe built in.
      if ! { [ -x /bin/busybox ] && /bin/busybox --list | grep -qx modprobe; }; then
        missing+=(busybox-static)
      fi
      ;;
    *) echo "packages.sh: unknown set $set (test, demo, bench, vm)" >&2; exit 2 ;;
  esac
  for pair in $pairs; do
    need=${pair%%:*}
    case "$need" in
      /usr/include/*) [ -e "$need" ] || missing+=("${pair#*:}") ;;
      *) command -v "$need" >/dev/null || missing+=("${pair#*:}") ;;
    esac
  done
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "Installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
