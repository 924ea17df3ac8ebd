#!/usr/bin/env bash
# The routing mesh of the walkthrough built by hand with ip and iptables, as
# a reference for bench-mesh: what the design costs, apart from how netctl
# builds it. Two hosts on an underlay bridge, each with docker_gwbridge,
# ingress_sbox and the ingress overlay namespace (br0 + vxlan0); one task
# sandbox on host 1 with legs on ingress and docker_gwbridge. The rules are
# DESIGN.md's "Routing mesh rules that were shown to work here".
#
#   reference-mesh.sh up PREFIX     build it (namespaces PREFIX-*)
#   reference-mesh.sh down PREFIX   remove every namespace PREFIX-*
#
# Namespaces: PREFIX-u (underlay, 192.168.77.1, the client's side),
# PREFIX-h0 and PREFIX-h1 (hosts 192.168.77.6 and .7), PREFIX-sN (their
# ingress_sbox), PREFIX-oN (their ingress overlay namespace), PREFIX-t (the
# task on host 1, 10.255.0.10, listening where the caller starts a server).
# The published port 8080 is DNATed to the task's port 80.
set -euo pipefail

action=${1:?usage: reference-mesh.sh up|down PREFIX}
p=${2:?usage: reference-mesh.sh up|down PREFIX}

down() {
    for ns in $(ip netns list | awk '{print $1}' | grep "^$p-" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns"
    done
}

# A veth pair: $1 in namespace $2 named $3, peer in namespace $4 named $5.
veth() {
    ip link add "$1" type veth peer name "$1p"
    ip link set "$1" netns "$2"
    ip link set "$1p" netns "$4"
    ip -n "$2" link set "$1" name "$3" up
    ip -n "$4" link set "$1p" name "$5" up
}

# Host $1 at underlay address $2 whose ingress_sbox has ingress address $3.
host() {
    local i=$1 address=$2 sbox_address=$3
    local h=$p-h$i s=$p-s$i o=$p-o$i
    ip netns add "$h"; ip netns add "$s"; ip netns add "$o"
    for ns in "$h" "$s" "$o"; do ip -n "$ns" link set lo up; done
    veth "$p-e$i" "$h" eth0 "$p-u" "h$i"
    ip -n "$p-u" link set "h$i" master ubr
    ip -n "$h" addr add "$address/24" dev eth0
    # docker_gwbridge, forwarding, MASQUERADE as in the walkthrough.
    ip -n "$h" link add docker_gwbridge type bridge
    ip -n "$h" addr add 172.18.0.1/16 dev docker_gwbridge
    ip -n "$h" link set docker_gwbridge up
    ip netns exec "$h" sysctl -qw net.ipv4.ip_forward=1
    # The ingress overlay: br0 with vxlan0 made in the host, moved in.
    ip -n "$o" link add br0 type bridge
    ip -n "$o" addr add 10.255.0.1/16 dev br0
    ip -n "$o" link set br0 mtu 1450 up
    ip -n "$h" link add vxlan0 mtu 1450 type vxlan id 4096 dstport 4789 local "$address" \
        nolearning proxy l2miss l3miss
    ip -n "$h" link set vxlan0 netns "$o"
    ip -n "$o" link set vxlan0 master br0 up
    # ingress_sbox: eth0 on ingress, eth1 on docker_gwbridge (172.18.0.2).
    veth "$p-i$i" "$s" eth0 "$o" "veth$i"
    ip -n "$o" link set "veth$i" mtu 1450 master br0
    ip -n "$s" link set eth0 mtu 1450 address "$(mac "$sbox_address")"
    ip -n "$s" addr add "$sbox_address/16" dev eth0
    veth "$p-g$i" "$s" eth1 "$h" "vethg$i"
    ip -n "$h" link set "vethg$i" master docker_gwbridge
    ip -n "$s" addr add 172.18.0.2/16 dev eth1
    ip -n "$s" route add default via 172.18.0.1
    ip netns exec "$s" sysctl -qw net.ipv4.ip_forward=1
    ip netns exec "$h" iptables-restore -w --noflush <<EOF
*nat
:DOCKER-INGRESS - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER-INGRESS
-A OUTPUT -m addrtype --dst-type LOCAL -j DOCKER-INGRESS
-A POSTROUTING -s 172.18.0.0/16 ! -o docker_gwbridge -j MASQUERADE
-A POSTROUTING -o docker_gwbridge -m addrtype --src-type LOCAL -j MASQUERADE
-A DOCKER-INGRESS -p tcp --dport 8080 -j DNAT --to-destination 172.18.0.2:8080
-A DOCKER-INGRESS -j RETURN
COMMIT
*filter
:DOCKER-INGRESS - [0:0]
-A FORWARD -j DOCKER-INGRESS
-A DOCKER-INGRESS -p tcp --dport 8080 -j ACCEPT
-A DOCKER-INGRESS -p tcp --sport 8080 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A DOCKER-INGRESS -j RETURN
COMMIT
EOF
    ip netns exec "$s" iptables-restore -w --noflush <<EOF
*nat
:INGRESS-8080 - [0:0]
-A PREROUTING -p tcp --dport 8080 -j INGRESS-8080
-A INGRESS-8080 -p tcp -j DNAT --to-destination 10.255.0.10:80
-A POSTROUTING -d 10.255.0.0/16 -j SNAT --to-source $sbox_address
COMMIT
EOF
}

# The endpoint MAC of an ingress address: 02:42 and its four bytes.
mac() {
    local IFS=.
    # shellcheck disable=SC2086
    printf '02:42:%02x:%02x:%02x:%02x' $1
}

# In host $1's overlay namespace: endpoint $2 lives on the host at $3.
remote_endpoint() {
    ip -n "$p-o$1" neigh replace "$2" lladdr "$(mac "$2")" dev vxlan0 nud permanent
    bridge -n "$p-o$1" fdb replace "$(mac "$2")" dev vxlan0 dst "$3" self permanent
}

up() {
    ip netns add "$p-u"
    ip -n "$p-u" link set lo up
    ip -n "$p-u" link add name ubr type bridge
    ip -n "$p-u" addr add 192.168.77.1/24 dev ubr
    ip -n "$p-u" link set ubr up
    # A switch: frames skip iptables (as netctl lab's underlay).
    if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
        ip netns exec "$p-u" sysctl -qw net.bridge.bridge-nf-call-iptables=0
    fi
    host 0 192.168.77.6 10.255.0.2
    host 1 192.168.77.7 10.255.0.3
    # The task on host 1: eth0 on ingress, eth1 on docker_gwbridge.
    local t=$p-t
    ip netns add "$t"
    ip -n "$t" link set lo up
    veth "$p-ti" "$t" eth0 "$p-o1" vetht
    ip -n "$p-o1" link set vetht mtu 1450 master br0
    ip -n "$t" link set eth0 mtu 1450 address "$(mac 10.255.0.10)"
    ip -n "$t" addr add 10.255.0.10/16 dev eth0
    veth "$p-tg" "$t" eth1 "$p-h1" vethtg
    ip -n "$p-h1" link set vethtg master docker_gwbridge
    ip -n "$t" addr add 172.18.0.3/16 dev eth1
    ip -n "$t" route add default via 172.18.0.1
    remote_endpoint 0 10.255.0.10 192.168.77.7
    remote_endpoint 1 10.255.0.2 192.168.77.6
}

case $action in
    up) down; up ;;
    down) down ;;
    *) echo "reference-mesh.sh: unknown action $action (up or down)" >&2; exit 2 ;;
esac
