//! netlib against the real kernel, in throwaway namespaces under a temporary
//! run dir. Each namespace is removed on drop, also when an assertion fails.

use netlib::{netns, Link, NamespaceDir, Netlink, VxlanSpec};
use std::net::Ipv4Addr;

/// Namespaces made by one test, deleted (and their folder unmounted) on drop.
struct Scratch {
    namespaces: NamespaceDir,
    _run_dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let run_dir = tempfile::Builder::new().prefix("netlib-test-").tempdir().unwrap();
        let namespaces = NamespaceDir::new(run_dir.path());
        namespaces.prepare().unwrap();
        Self { namespaces, _run_dir: run_dir }
    }

    fn connect(&self, name: &str) -> Netlink {
        let path = self.namespaces.create(name).unwrap();
        Netlink::in_namespace(name, &path).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for name in self.namespaces.list().unwrap_or_default() {
            let _ = self.namespaces.delete(&name);
        }
        let _ = nix::mount::umount2(self.namespaces.dir(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn find<'a>(links: &'a [Link], name: &str) -> &'a Link {
    links.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("{name} missing in {links:?}"))
}

#[tokio::test]
async fn overlay_layout_is_built_and_read_back() {
    let scratch = Scratch::new();
    let host = scratch.connect("nlt-host");
    let overlay = scratch.connect("nlt-ovl");
    let sandbox = scratch.connect("nlt-sbx");
    let overlay_file = netns::open(&scratch.namespaces.path("nlt-ovl")).unwrap();
    let sandbox_file = netns::open(&scratch.namespaces.path("nlt-sbx")).unwrap();

    // vxlan made in the "host", moved into the overlay namespace and renamed.
    let spec = VxlanSpec {
        name: "vx-test".into(),
        vni: 4097,
        port: 4789,
        local: Ipv4Addr::new(192, 0, 2, 6),
        mtu: 1450,
    };
    host.create_vxlan(&spec).await.unwrap();
    let made = host.require_link("vx-test").await.unwrap();
    host.move_to(&made, &overlay_file, "nlt-ovl").await.unwrap();
    assert!(host.link("vx-test").await.unwrap().is_none());
    let moved = overlay.require_link("vx-test").await.unwrap();
    overlay.rename(&moved, "vxlan0").await.unwrap();

    overlay.create_bridge("br0", 1450, "netctl").await.unwrap();
    let bridge = overlay.require_link("br0").await.unwrap();
    overlay.add_address(&bridge, Ipv4Addr::new(192, 168, 200, 1), 24).await.unwrap();
    overlay.add_address(&bridge, Ipv4Addr::new(192, 168, 200, 1), 24).await.unwrap();
    overlay.set_up(&bridge).await.unwrap();
    let vxlan = overlay.require_link("vxlan0").await.unwrap();
    overlay.set_master(&vxlan, &bridge).await.unwrap();
    overlay.set_up(&vxlan).await.unwrap();

    // veth pair made in one request, the peer born in the sandbox.
    let mac = [0x02, 0x42, 192, 168, 200, 3];
    overlay.create_veth("veth0", "eth0", &sandbox_file, 1450, Some(mac)).await.unwrap();
    let veth = overlay.require_link("veth0").await.unwrap();
    overlay.set_master(&veth, &bridge).await.unwrap();
    overlay.set_bridge_port_isolated(&veth, true).await.unwrap();
    overlay.set_up(&veth).await.unwrap();
    let eth0 = sandbox.require_link("eth0").await.unwrap();
    sandbox.add_address(&eth0, Ipv4Addr::new(192, 168, 200, 3), 24).await.unwrap();
    sandbox.set_up(&eth0).await.unwrap();
    sandbox.set_default_route(Ipv4Addr::new(192, 168, 200, 1)).await.unwrap();

    let links = overlay.links().await.unwrap();
    let vxlan = find(&links, "vxlan0");
    let info = vxlan.vxlan.clone().unwrap();
    assert_eq!((info.vni, info.port, info.local), (4097, 4789, Some(Ipv4Addr::new(192, 0, 2, 6))));
    assert!(!info.learning && info.proxy && info.l2miss && info.l3miss, "{info:?}");
    assert_eq!((vxlan.mtu, vxlan.master), (1450, Some(bridge.index)));
    assert_eq!(find(&links, "br0").alias, "netctl");
    let veth = find(&links, "veth0");
    assert_eq!((veth.kind.as_str(), veth.mtu, veth.master), ("veth", 1450, Some(bridge.index)));
    assert!(veth.peer_netns_id.is_some(), "the peer lives in another namespace");
    assert_eq!(veth.isolated, Some(true));
    overlay.set_bridge_port_isolated(veth, false).await.unwrap();
    let links = overlay.links().await.unwrap();
    assert_ne!(find(&links, "veth0").isolated, Some(true), "no longer isolated");

    let sandbox_links = sandbox.links().await.unwrap();
    let eth0 = find(&sandbox_links, "eth0");
    assert_eq!(eth0.mac, "02:42:c0:a8:c8:03");
    assert_eq!(Some(eth0.index), veth.peer_index);
    let addresses = sandbox.addresses().await.unwrap();
    assert!(addresses.iter().any(|a| a.address == Ipv4Addr::new(192, 168, 200, 3) && a.prefix == 24));
    let routes = sandbox.routes().await.unwrap();
    assert!(
        routes.iter().any(|r| r.prefix == 0 && r.gateway == Some(Ipv4Addr::new(192, 168, 200, 1))),
        "{routes:?}"
    );

    // Remote endpoint entries: replace twice, read back, delete.
    let remote_mac = [0x02, 0x42, 192, 168, 200, 4];
    let remote_node = Ipv4Addr::new(192, 0, 2, 7);
    for _ in 0..2 {
        overlay.replace_neighbour(&vxlan.clone(), Ipv4Addr::new(192, 168, 200, 4), remote_mac).await.unwrap();
        overlay.replace_fdb(&vxlan.clone(), remote_mac, remote_node).await.unwrap();
    }
    let neighbours = overlay.neighbours(vxlan).await.unwrap();
    assert_eq!(neighbours.len(), 1, "{neighbours:?}");
    assert_eq!(
        (neighbours[0].address, neighbours[0].mac.as_str()),
        (Some(Ipv4Addr::new(192, 168, 200, 4)), "02:42:c0:a8:c8:04")
    );
    let fdb = overlay.fdb(vxlan).await.unwrap();
    assert_eq!(fdb.len(), 1, "{fdb:?}");
    assert_eq!((fdb[0].address, fdb[0].mac.as_str()), (Some(remote_node), "02:42:c0:a8:c8:04"));
    overlay.delete_neighbour(&neighbours[0]).await.unwrap();
    overlay.delete_fdb(&fdb[0]).await.unwrap();
    assert!(overlay.neighbours(vxlan).await.unwrap().is_empty());
    assert!(overlay.fdb(vxlan).await.unwrap().is_empty());

    // Deleting the veth takes its peer with it.
    overlay.delete_link(veth).await.unwrap();
    assert!(sandbox.link("eth0").await.unwrap().is_none());
    // A link found and gone before its delete: not found, and done for
    // the delete by name.
    assert!(overlay.delete_link(veth).await.unwrap_err().is_not_found());
    overlay.delete_link_named(&veth.name).await.unwrap();
}

#[tokio::test]
async fn sysctls_and_iptables_apply_inside_the_namespace() {
    let scratch = Scratch::new();
    let _ = scratch.connect("nlt-fw");
    let path = scratch.namespaces.path("nlt-fw");
    let namespace = Some(("nlt-fw", path.as_path()));
    netlib::sysctl::write(namespace, "net.ipv4.ip_forward", "1").await.unwrap();
    let forwarding =
        netns::run_in(&path, || std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()).unwrap();
    assert_eq!(forwarding.trim(), "1");

    assert!(netlib::iptables::available().await, "iptables is a test dependency (scripts/packages.sh test)");
    let rules = "*nat\n:NLTEST - [0:0]\n-A NLTEST -s 172.18.0.0/16 -j MASQUERADE\nCOMMIT\n";
    netlib::iptables::restore(namespace, rules).await.unwrap();
    netlib::iptables::restore(namespace, rules).await.unwrap();
    netlib::iptables::ensure_jump(namespace, "nat", "POSTROUTING", &["-j", "NLTEST"]).await.unwrap();
    netlib::iptables::ensure_jump(namespace, "nat", "POSTROUTING", &["-j", "NLTEST"]).await.unwrap();
    let saved = netlib::iptables::save(namespace, "nat").await.unwrap();
    assert_eq!(saved.matches("-A NLTEST -s 172.18.0.0/16 -j MASQUERADE").count(), 1, "{saved}");
    assert_eq!(saved.matches("-A POSTROUTING -j NLTEST").count(), 1, "{saved}");
    let error =
        netlib::iptables::restore(namespace, "*nat\n-A NOSUCH -j ACCEPT\nCOMMIT\n").await.unwrap_err();
    assert!(error.to_string().contains("nlt-fw"), "{error}");
}

#[tokio::test]
async fn namespaces_are_created_listed_entered_and_deleted() {
    let scratch = Scratch::new();
    let namespaces = &scratch.namespaces;
    let path = namespaces.create("nlt-a").unwrap();
    assert!(namespaces.exists("nlt-a"));
    assert_eq!(namespaces.create("nlt-a").unwrap(), path, "create is idempotent");
    assert_eq!(namespaces.list().unwrap(), ["nlt-a"]);
    let inside = netns::run_in(&path, || std::fs::read_link("/proc/thread-self/ns/net").unwrap()).unwrap();
    assert_ne!(inside, std::fs::read_link("/proc/thread-self/ns/net").unwrap());
    namespaces.delete("nlt-a").unwrap();
    namespaces.delete("nlt-a").unwrap();
    assert!(!namespaces.exists("nlt-a"));
    assert!(namespaces.list().unwrap().is_empty());
}

#[tokio::test]
async fn conntrack_flows_are_listed_and_the_picked_ones_deleted() {
    let scratch = Scratch::new();
    let netlink = scratch.connect("nlt-ct");
    netlink.set_up(&netlink.require_link("lo").await.unwrap()).await.unwrap();
    let path = scratch.namespaces.path("nlt-ct");
    // A rule that matches on conntrack makes the namespace track flows.
    let rules =
        "*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p udp -m conntrack --ctstate NEW -j ACCEPT\nCOMMIT\n";
    netlib::iptables::restore(Some(("nlt-ct", path.as_path())), rules).await.unwrap();
    let send = |port: u16| {
        netns::run_in(&path, move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.send_to(b"x", ("127.0.0.1", port)).unwrap();
        })
        .unwrap()
    };
    send(9999);
    send(9998);
    let to = |port: u16| {
        move |flow: &netlib::conntrack::Flow| flow.protocol == 17 && flow.original.destination_port == port
    };
    assert_eq!(netlib::conntrack::delete_flows("nlt-ct", &path, to(9999)).await.unwrap(), 1);
    assert_eq!(netlib::conntrack::delete_flows("nlt-ct", &path, to(9999)).await.unwrap(), 0, "gone");
    assert_eq!(
        netlib::conntrack::delete_flows("nlt-ct", &path, to(9998)).await.unwrap(),
        1,
        "the other stayed"
    );
}
