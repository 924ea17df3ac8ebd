// SPDX-License-Identifier: GPL-2.0
// The routing mesh's fast path: a published port's new flows that arrive
// on the node's data-path interface and go to a replica on this node are
// DNATed here, in tc, and handed straight into the replica's namespace
// (bpf_redirect_peer), skipping the host's routing, conntrack, NAT,
// docker_gwbridge and the veth backlog; the replies are un-DNATed at the
// replica's docker_gwbridge veth and sent straight out. Every other flow
// (to a replica on another node, to ingress_sbox) goes through the host's
// iptables as before, marked so that DOCKER-INGRESS balances it over the
// other nodes only: each replica keeps an equal share of new flows.
//
// The agent fills mesh_ports and mesh_peers, sets node_address at load,
// and deletes flows whose replica left; every map is pinned, so flows
// outlive an agent restart.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// The most replicas of one published port on one node the fast path takes;
// a port with more is left to iptables (mesh_ports.rs keeps them in step).
#define MAX_HERE 32
// Set on flows the fast path leaves to iptables for another node.
#define AWAY_MARK 0x100000
#define FLOWS 65536
#define PORTS 4096
#define PEERS 4096
#define IP_OFF ETH_HLEN
#define L4_OFF (ETH_HLEN + sizeof(struct iphdr))

// The node's data-path address (network order), set when loaded.
volatile const __u32 node_address = 0;

// One direction of a flow, as its packets carry it (network order).
struct flow_key {
    __u32 saddr;
    __u32 daddr;
    __u16 sport;
    __u16 dport;
    __u8 protocol;
    __u8 pad[3];
};

// Where a flow's packets go (from the client: the replica's address and
// port, the docker_gwbridge veth leading to it; ifindex 0: to iptables), or
// what its replies say they come from (the node's address and published
// port, ifindex the veth they must come from).
struct nat {
    __u32 addr;
    __u32 ifindex;
    __u16 port;
    __u16 pad;
};

struct port_key {
    __u16 port;
    __u8 protocol;
    __u8 pad;
};

struct replica {
    __u32 addr;
    __u32 ifindex;
};

// A published port with replicas here: `replicas` of them out of `total`.
struct port {
    __u32 total;
    __u32 replicas;
    __u16 target_port;
    __u16 pad;
    struct replica replica[MAX_HERE];
};

// A map pinned by name in the agent's pin folder, so that it outlives the
// agent.
#define PINNED_MAP(name, kind, entries, key_type, value_type) \
    struct {                                                  \
        __uint(type, kind);                                   \
        __uint(max_entries, entries);                         \
        __type(key, key_type);                                \
        __type(value, value_type);                            \
        __uint(pinning, LIBBPF_PIN_BY_NAME);                  \
    } name SEC(".maps")

PINNED_MAP(mesh_flows, BPF_MAP_TYPE_LRU_HASH, FLOWS, struct flow_key, struct nat);
PINNED_MAP(mesh_replies, BPF_MAP_TYPE_LRU_HASH, FLOWS, struct flow_key, struct nat);
PINNED_MAP(mesh_ports, BPF_MAP_TYPE_HASH, PORTS, struct port_key, struct port);
PINNED_MAP(mesh_peers, BPF_MAP_TYPE_HASH, PEERS, __u32, __u8);

// The IPv4 TCP or UDP packet at the start of skb (no IP options, not a
// fragment): its flow; 0 if it is something else.
static __always_inline int parse(struct __sk_buff *skb, struct flow_key *flow, __u8 *flags) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + IP_OFF;
    if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
        return 0;
    if (ip->frag_off & bpf_htons(0x3fff))
        return 0;
    __builtin_memset(flow, 0, sizeof(*flow));
    flow->saddr = ip->saddr;
    flow->daddr = ip->daddr;
    flow->protocol = ip->protocol;
    if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
        return 0;
    // TCP and UDP headers both begin with the source and destination ports.
    __be16 *ports = data + L4_OFF;
    if ((void *)(ports + 2) > end)
        return 0;
    flow->sport = ports[0];
    flow->dport = ports[1];
    *flags = 0;
    if (ip->protocol == IPPROTO_TCP) {
        struct tcphdr *tcp = data + L4_OFF;
        if ((void *)(tcp + 1) > end)
            return 0;
        *flags = ((__u8 *)tcp)[13];
    }
    return 1;
}

// Rewrites the destination (to_dest) or the source address and port of the
// packet, and fixes the IP and TCP/UDP checksums.
static __always_inline void rewrite(struct __sk_buff *skb, const struct flow_key *flow, const struct nat *to, int to_dest) {
    __u32 old_addr = to_dest ? flow->daddr : flow->saddr;
    __u16 old_port = to_dest ? flow->dport : flow->sport;
    __u32 new_addr = to->addr;
    __u16 new_port = to->port;
    __u32 addr_off = IP_OFF + (to_dest ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
    // The ports sit at the same offsets in UDP's header as in TCP's.
    __u32 port_off = L4_OFF + (to_dest ? offsetof(struct tcphdr, dest) : offsetof(struct tcphdr, source));
    __u32 check_off;
    __u64 l4_flags = 0;
    if (flow->protocol == IPPROTO_TCP) {
        check_off = L4_OFF + offsetof(struct tcphdr, check);
    } else {
        check_off = L4_OFF + offsetof(struct udphdr, check);
        l4_flags = BPF_F_MARK_MANGLED_0;
    }
    bpf_l4_csum_replace(skb, check_off, old_addr, new_addr, l4_flags | BPF_F_PSEUDO_HDR | sizeof(new_addr));
    bpf_l4_csum_replace(skb, check_off, old_port, new_port, l4_flags | sizeof(new_port));
    bpf_l3_csum_replace(skb, IP_OFF + offsetof(struct iphdr, check), old_addr, new_addr, sizeof(new_addr));
    bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0);
    bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0);
}

// Where a new flow of `port` goes: a replica here (from another node of the
// cluster always, as iptables' NETCTL-MESH-PEERS does), or iptables.
static __always_inline void choose(const struct port *port, __u32 from, struct nat *to) {
    __u32 share = bpf_map_lookup_elem(&mesh_peers, &from) ? port->replicas : port->total;
    __u32 pick = share ? bpf_get_prandom_u32() % share : 0;
    __builtin_memset(to, 0, sizeof(*to));
    if (pick >= port->replicas)
        return;
    pick &= MAX_HERE - 1; // replicas <= MAX_HERE, a power of two: for the verifier
    to->addr = port->replica[pick].addr;
    to->ifindex = port->replica[pick].ifindex;
    to->port = port->target_port;
}

// On the data-path interface's ingress: a published port's flows to a
// replica here go straight into its namespace.
SEC("classifier")
int mesh_ingress(struct __sk_buff *skb) {
    struct flow_key flow;
    __u8 flags;
    if (!parse(skb, &flow, &flags) || flow.daddr != node_address)
        return TC_ACT_OK;
    // Not a published port with replicas here (VXLAN, say): one lookup.
    struct port_key key = {.port = flow.dport, .protocol = flow.protocol};
    struct port *port = bpf_map_lookup_elem(&mesh_ports, &key);
    if (!port)
        return TC_ACT_OK;
    struct nat target;
    struct nat *known = bpf_map_lookup_elem(&mesh_flows, &flow);
    if (known) {
        target = *known;
    } else {
        // TCP: only a SYN starts a flow; what else comes belongs to a flow
        // iptables already holds.
        if (flow.protocol == IPPROTO_TCP && (flags & 0x12) != 0x02)
            return TC_ACT_OK;
        choose(port, flow.saddr, &target);
        if (bpf_map_update_elem(&mesh_flows, &flow, &target, BPF_ANY))
            return TC_ACT_OK;
        if (target.ifindex) {
            struct flow_key reply = {.saddr = target.addr, .daddr = flow.saddr, .sport = target.port,
                                     .dport = flow.sport, .protocol = flow.protocol};
            struct nat back = {.addr = flow.daddr, .ifindex = target.ifindex, .port = flow.dport};
            if (bpf_map_update_elem(&mesh_replies, &reply, &back, BPF_ANY)) {
                bpf_map_delete_elem(&mesh_flows, &flow);
                return TC_ACT_OK;
            }
        }
    }
    if (!target.ifindex) {
        skb->mark |= AWAY_MARK;
        return TC_ACT_OK;
    }
    rewrite(skb, &flow, &target, 1);
    // The replica's MAC is 02:42 followed by its address.
    __u8 mac[6] = {0x02, 0x42};
    __builtin_memcpy(&mac[2], &target.addr, 4);
    bpf_skb_store_bytes(skb, 0, mac, sizeof(mac), 0);
    return bpf_redirect_peer(target.ifindex, 0);
}

// On a replica's docker_gwbridge veth (host end) ingress: the replies of
// the fast path's flows leave with the node's address, straight out.
SEC("classifier")
int mesh_reply(struct __sk_buff *skb) {
    struct flow_key flow;
    __u8 flags;
    if (!parse(skb, &flow, &flags))
        return TC_ACT_OK;
    struct nat *back = bpf_map_lookup_elem(&mesh_replies, &flow);
    if (!back || back->ifindex != skb->ingress_ifindex)
        return TC_ACT_OK;
    struct nat from = *back;
    rewrite(skb, &flow, &from, 0);
    struct bpf_fib_lookup fib = {
        .family = 2, // AF_INET
        .l4_protocol = flow.protocol,
        .ipv4_src = from.addr,
        .ipv4_dst = flow.daddr,
        .ifindex = skb->ingress_ifindex,
    };
    long found = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
    if (found == BPF_FIB_LKUP_RET_SUCCESS) {
        bpf_skb_store_bytes(skb, 0, fib.dmac, ETH_ALEN, 0);
        bpf_skb_store_bytes(skb, ETH_ALEN, fib.smac, ETH_ALEN, 0);
        return bpf_redirect(fib.ifindex, 0);
    }
    if (found == BPF_FIB_LKUP_RET_NO_NEIGH)
        return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
    return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "GPL";
