#!/usr/bin/env bash
# make e2e-vm: two QEMU guests, each with its own kernel, NIC, conntrack and
# iptables, joined only by an emulated Ethernet link (a QEMU socket netdev
# over loopback UDP), run the walkthrough: node0 (192.168.10.6) manager +
# agent, node1 (192.168.10.7) agent. Prints a pass or fail per step and exits
# non-zero if any failed. Guests are always stopped, also on failure.
# KVM is used when it boots a guest; otherwise software emulation (TCG).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${NETCTL_VM_CACHE:-target/vm-cache}
scripts/vm/build-image.sh "$cache"
work=$(mktemp -d /tmp/netctl-vm.XXXXXX)
pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_VM_LOGS:-}" ]; then echo "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The cluster CA is made here (openssl, P-256) so that the tokens, which pin
# its digest, are known before the guests boot: the worker joins by itself.
# The manager guest finds the CA in a second cpio archive appended to the
# initramfs (the kernel unpacks both); the tokens travel on the command line.
mkdir -p "$work/seed/seed"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/seed/seed/ca.key" 2>/dev/null
openssl req -x509 -new -key "$work/seed/seed/ca.key" -subj "/CN=netctl root CA/O=netctl" -days 2 \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature \
  -out "$work/seed/seed/ca.crt"
digest=$(openssl x509 -in "$work/seed/seed/ca.crt" -outform der | sha256sum | cut -d' ' -f1)
join_secret=$(openssl rand -hex 20)
join="NETCTL-JOIN-1-$digest-$join_secret"
admin="NETCTL-ADMIN-1-$digest-$(openssl rand -hex 20)"
(cd "$work/seed" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/seed.cpio.gz"
cat "$cache/initramfs.gz" "$work/seed.cpio.gz" > "$work/initrd.gz"
port0=$((20000 + RANDOM % 20000)); port1=$((port0 + 1))

# guest NAME ACCEL SERIAL_LOG EXTRA_CMDLINE NETDEV...: starts a guest in the background.
guest() {
  local name=$1 accel=$2 log=$3 cmdline=$4; shift 4
  qemu-system-x86_64 -accel "$accel" -m 512 -smp 1 -nodefaults -display none -no-reboot \
    -kernel "$cache/vmlinuz" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 netctl.name=$name $cmdline" \
    -serial "file:$log" "$@" &
  pids+=($!)
}

# Which accelerator boots a guest here?
accel=tcg
if [ -w /dev/kvm ] && [ "${NETCTL_VM_ACCEL:-}" != tcg ]; then
  guest probe kvm "$work/probe.log" "netctl.role=probe"
  for _ in $(seq 40); do grep -q "NETCTL-VM booted" "$work/probe.log" 2>/dev/null && accel=kvm && break; sleep 0.5; done
  kill -9 "${pids[-1]}" 2>/dev/null || true
fi
echo "accelerator: $accel$([ "$accel" = tcg ] && echo ' (software emulation: KVM is absent or does not boot a guest here)')"

common="netctl.manager=192.168.10.6 netctl.join=$join netctl.admin=$admin"
started=$(date +%s)
guest node0 "$accel" "$work/node0.log" "netctl.role=manager netctl.ip=192.168.10.6 $common" \
  -netdev "socket,id=n0,udp=127.0.0.1:$port1,localaddr=127.0.0.1:$port0" \
  -device e1000,netdev=n0,mac=52:54:00:00:10:06 -object "filter-dump,id=d0,netdev=n0,file=$work/link.pcap"
node0=${pids[-1]}
guest node1 "$accel" "$work/node1.log" "netctl.role=worker netctl.ip=192.168.10.7 $common" \
  -netdev "socket,id=n0,udp=127.0.0.1:$port0,localaddr=127.0.0.1:$port1" \
  -device e1000,netdev=n0,mac=52:54:00:00:10:07

deadline=$((started + ${NETCTL_VM_TIMEOUT:-480}))
while kill -0 "$node0" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
  grep -q "RESULT done" "$work/node0.log" 2>/dev/null && break
  sleep 1
done
echo "guests ran for $(( $(date +%s) - started ))s"

failed=0
passes=0
fails=0
verdict_line() { printf '%-5s %-14s %s\n' "$1" "$2" "$3"; if [ "$1" = PASS ]; then passes=$((passes + 1)); else fails=$((fails + 1)); failed=1; fi; }
if ! grep -q "^RESULT" "$work/node0.log"; then
  verdict_line FAIL boot "no result from node0"; tail -20 "$work/node0.log"
fi
while read -r _ step verdict detail; do
  verdict_line "$verdict" "$step" "$detail"
done < <(grep -a "^RESULT" "$work/node0.log" | tr -d '\r')
grep -q "^RESULT done PASS" "$work/node0.log" || verdict_line FAIL "done" "the walkthrough did not finish"

# The cross-node ping crossed the link as VXLAN (UDP 4789) between the guests.
if command -v tcpdump >/dev/null; then
  vxlan=$(tcpdump -nn -r "$work/link.pcap" 'udp port 4789 and host 192.168.10.6 and host 192.168.10.7' 2>/dev/null | wc -l)
  if [ "$vxlan" -gt 0 ]; then verdict_line PASS wire "$vxlan VXLAN (udp/4789) packets between 192.168.10.6 and 192.168.10.7 on the link"
  else verdict_line FAIL wire "no VXLAN packet on the link"; fi
fi
# The control plane is TLS: the join token never crosses the link in clear.
if grep -aq "$join_secret" "$work/link.pcap"; then verdict_line FAIL tls "the join token crossed the link in clear"
else verdict_line PASS tls "no token in clear on the link ($(stat -c %s "$work/link.pcap") bytes captured)"; fi
if [ "$failed" != 0 ]; then
  echo "--- node0 console"; grep -av "^RESULT" "$work/node0.log" | tail -30
  echo "--- node1 console"; tail -30 "$work/node1.log"
fi
echo "vm: $passes passed, $fails failed"
exit "$failed"
