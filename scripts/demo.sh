#!/usr/bin/env bash
# make demo: a two-node lab on this machine, then both reference walkthroughs
# (shared/seeds) with real output: the overlay, the namespaces, the veth pairs,
# br0 and vxlan0, a cross-node ping, and the routing mesh answering on both
# nodes. It leaves the lab up for exploring and says how to remove it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/packages.sh demo
if [ -z "${NETCTL_BIN:-}" ]; then
  cargo build --quiet --bin netctl
fi
netctl=${NETCTL_BIN:-$PWD/target/debug/netctl}
lab=${DEMO_LAB:-lab}
run() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
on() { local node=$1; shift; "$netctl" lab exec --name "$lab" "$node" -- "$@"; }
say() { printf '\n\033[36m# %s\033[0m\n' "$*"; }

say "A two-node cluster made of network namespaces: node0 runs the manager and an agent, node1 an agent."
run "$netctl" lab up --nodes 2 --name "$lab"

say "Walkthrough 1 (seeds/000): an overlay network and a service with two replicas."
run "$netctl" lab exec --name "$lab" node0 -- netctl network create -d overlay --subnet 192.168.200.0/24 demonet
run "$netctl" lab exec --name "$lab" node0 -- netctl service create --replicas 2 --network demonet --name demoservice sleep 10000
for _ in $(seq 100); do
  [ "$(on node0 netctl service ps --format json demoservice | grep -c '"CurrentState":"running"')" = 2 ] && break
  sleep 0.2
done
run "$netctl" lab exec --name "$lab" node0 -- netctl service ps demoservice
run "$netctl" lab exec --name "$lab" node0 -- netctl network ls

net=$(on node0 netctl network inspect demonet | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Id"][:10])')
for node in node0 node1; do
  # shellcheck disable=SC2016 # expanded on the lab host, not here
  netns="$(on $node sh -c 'echo $NETCTL_RUN_DIR')/netns"
  say "$node: its namespaces: 1-<network> per overlay (ingress and demonet), ingress_sbox, one sandbox per task."
  run ls "$netns"
  say "$node: inside 1-$net, br0 holds the gateway, vxlan0 (VNI 4097) and the task's veth are its ports."
  on $node nsenter --net="$netns/1-$net" ip -d -o link show vxlan0 | sed 's/\\//' | grep -o 'vxlan0.*mtu [0-9]*\|vxlan id [0-9]* .*dstport [0-9]*\|nolearning\|proxy l2miss l3miss' | tr '\n' ' '; echo
  run nsenter --net="$netns/1-$net" ip -br link
  run nsenter --net="$netns/1-$net" ip -br addr show br0
  say "$node: the remote task's MAC is pinned to the other node (FDB) and its IP to its MAC (neighbour)."
  run nsenter --net="$netns/1-$net" bridge fdb show dev vxlan0
  run nsenter --net="$netns/1-$net" ip neigh show dev vxlan0
done

say "Inside demoservice.1: eth0 on the overlay, eth1 on docker_gwbridge, default route via 172.18.0.1."
task_node=$(on node0 netctl service ps --format json demoservice | python3 -c 'import json,sys; t=[json.loads(l) for l in sys.stdin]; print([x["Node"] for x in t if x["Name"]=="demoservice.1"][0])')
other=$(on node0 netctl service ps --format json demoservice | python3 -c 'import json,sys; t=[json.loads(l) for l in sys.stdin]; print([x["Endpoints"][0]["Address"] for x in t if x["Name"]=="demoservice.2"][0])')
run "$netctl" lab exec --name "$lab" "$task_node" -- netctl exec demoservice.1 -- ip -br addr
run "$netctl" lab exec --name "$lab" "$task_node" -- netctl exec demoservice.1 -- ip route
say "A ping from demoservice.1 to demoservice.2 on the other node, across VXLAN."
run "$netctl" lab exec --name "$lab" "$task_node" -- netctl exec demoservice.1 -- ping -c 3 "$other"

say "Walkthrough 2 (seeds/004): the routing mesh. A web service published on 8080, two replicas."
server='import http.server,socket
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(s):
        b=("hello from "+socket.gethostname()+"\n").encode(); s.send_response(200); s.send_header("Content-Length",str(len(b))); s.end_headers(); s.wfile.write(b)
    def log_message(s,*a): pass
http.server.ThreadingHTTPServer(("0.0.0.0",80),H).serve_forever()'
run "$netctl" lab exec --name "$lab" node0 -- netctl network create -d overlay nginxnet
printf '\n\033[1m$ %s\033[0m\n' "$netctl lab exec node0 -- netctl service create --replicas 2 --network nginxnet --name web --publish 8080:80 python3 -c <a hello server on port 80>"
on node0 netctl service create --replicas 2 --network nginxnet --name web --publish 8080:80 python3 -c "$server"
# Wait until both replicas serve (a task is Running once started; its server
# may need a moment more to listen).
for _ in $(seq 150); do
  seen=$(for _ in 1 2 3 4 5 6; do on node0 curl -sf -m 1 http://192.168.10.7:8080/ 2>/dev/null || true; done | sort -u | wc -l)
  [ "$seen" -ge 2 ] && break
  sleep 0.2
done
for address in 192.168.10.6 192.168.10.7; do
  say "curl $address:8080, four times: every node answers, from both replicas."
  for _ in 1 2 3 4; do on node0 curl -s -m 2 "http://$address:8080/" || echo "(no answer)"; done
done
say "node0's DOCKER-INGRESS chain sends 8080 to its own replica straight (its docker_gwbridge address) and to node1's own published port over the underlay (SNAT to node0 in NETCTL-MESH-SNAT), one share per replica."
run "$netctl" lab exec --name "$lab" node0 -- iptables -t nat -S DOCKER-INGRESS
say "node1 sends what another node forwarded (NETCTL-MESH-PEERS: from a node's address) to its own replica only (NETCTL-MESH-HERE), never on to a third node."
run "$netctl" lab exec --name "$lab" node1 -- iptables -t nat -S NETCTL-MESH-PEERS
run "$netctl" lab exec --name "$lab" node1 -- iptables -t nat -S NETCTL-MESH-HERE
say "Clients from outside the cluster, on the data-path interface, go through the tc fast path first: a flow drawn for a replica here is DNATed in tc and handed straight into it; the rest goes on, marked, to DOCKER-INGRESS for the other nodes."
run "$netctl" lab exec --name "$lab" node0 -- tc filter show dev eth0 ingress
printf '\n\033[1m$ %s\033[0m\n' "netctl topology --node node0 | grep 'published 8080'"
on node0 netctl topology --node node0 | grep 'published 8080' || true
say "The walkthrough's path is still built: ingress_sbox balances over the replicas on other nodes, through the ingress overlay, for a replica whose node is not known yet."
# shellcheck disable=SC2016 # expanded on the lab host, not here
netns0="$(on node0 sh -c 'echo $NETCTL_RUN_DIR')/netns"
run nsenter --net="$netns0/ingress_sbox" iptables -t nat -S NETCTL-INGRESS

say "Service discovery: a client on nginxnet asks the resolver at 127.0.0.11 for web by name."
run "$netctl" lab exec --name "$lab" node0 -- netctl service create --network nginxnet --name client sleep 10000
client_node=""
for _ in $(seq 100); do
  client_node=$(on node0 netctl service ps --format json client | python3 -c 'import json,sys; t=[json.loads(l) for l in sys.stdin]; print(next((x["Node"] for x in t if x["CurrentState"].lower().startswith("running")), ""))')
  [ -n "$client_node" ] && break
  sleep 0.2
done
run "$netctl" lab exec --name "$lab" "$client_node" -- netctl exec client.1 -- cat /etc/resolv.conf
run "$netctl" lab exec --name "$lab" "$client_node" -- netctl exec client.1 -- getent hosts web tasks.web
run "$netctl" lab exec --name "$lab" "$client_node" -- netctl exec client.1 -- curl -s -m 2 http://web/

cat <<TXT

The lab is still up. Explore it:
  $netctl lab exec node0 -- netctl service ps web
  $netctl lab exec node0 -- netctl exec demoservice.1 -- sh
  $netctl lab exec node1 -- ip addr
  nsenter --net=$netns0/ingress_sbox iptables -t nat -S
Tear it down (removes every namespace, link, rule and process it made):
  $netctl lab down${DEMO_LAB:+ --name $lab}
TXT
