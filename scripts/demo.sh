#!/usr/bin/env bash
# The demo for now: a manager and an agent on loopback, an overlay network
# created, listed and inspected. Everything lives in a temporary folder and
# is removed at the end. Run it through `make demo`.
set -euo pipefail

cd "$(dirname "$0")/.."
netctl=${NETCTL_BIN:-$PWD/target/debug/netctl}
work=$(mktemp -d /tmp/netctl-demo.XXXXXX)
port=${DEMO_PORT:-14243}
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step "netctl manager --listen 127.0.0.1:$port --data-dir $work/manager"
"$netctl" manager --listen "127.0.0.1:$port" --data-dir "$work/manager" 2>"$work/manager.log" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/manager/join-token" ] && break; sleep 0.1; done
sleep 0.3
export NETCTL_MANAGER=http://127.0.0.1:$port
export NETCTL_TOKEN=$(cat "$work/manager/admin-token")

step "netctl agent --manager $NETCTL_MANAGER --join-token <join-token> --advertise-addr 127.0.0.1 --hostname node0"
"$netctl" agent --join-token "$(cat "$work/manager/join-token")" --advertise-addr 127.0.0.1 \
  --hostname node0 --run-dir "$work/run" --state-dir "$work/agent" 2>"$work/agent.log" &
pids+=($!)
for _ in $(seq 50); do grep -q "desired state received" "$work/agent.log" 2>/dev/null && break; sleep 0.1; done
grep "joined the cluster\|desired state received" "$work/agent.log" | sed 's/^/    agent: /'

step "netctl node ls"
"$netctl" node ls

step "netctl network create -d overlay --subnet 192.168.200.0/24 demonet"
"$netctl" network create -d overlay --subnet 192.168.200.0/24 demonet

step "netctl network ls"
"$netctl" network ls

step "netctl network inspect demonet"
"$netctl" network inspect demonet

printf '\nDone: the manager, the agent and their state are removed now.\n'
