//! `netctl network create | ls | inspect | rm` against a real manager.

use e2e::ControlPlane;
use serde_json::Value;

fn by_name<'a>(networks: &'a [Value], name: &str) -> &'a Value {
    networks.iter().find(|n| n["Name"] == name).unwrap_or_else(|| panic!("{name} not listed: {networks:?}"))
}

#[test]
fn first_start_makes_ingress_and_prints_the_join_command() {
    let cluster = ControlPlane::start(&[]);
    let stdout = cluster.manager_stdout();
    assert!(stdout.contains("--join-token-file <FILE>"), "{stdout}");
    assert!(stdout.contains("netctl agent --manager https://127.0.0.1:"), "{stdout}");
    assert!(!stdout.contains(&cluster.join_token()), "no token on stdout: {stdout}");
    let digest = cluster.join_token().split('-').nth(3).unwrap().to_string();
    assert!(stdout.contains(&format!("Cluster CA: sha256 {digest}")), "{stdout}");
    let networks = cluster.networks();
    let ingress = by_name(&networks, "ingress");
    assert_eq!((ingress["Subnet"].as_str(), ingress["VNI"].as_u64()), (Some("10.255.0.0/16"), Some(4096)));
    let table = cluster.ok(&["network", "ls"]);
    let header: Vec<&str> =
        table.lines().next().unwrap().split("   ").map(str::trim).filter(|s| !s.is_empty()).collect();
    assert_eq!(header, ["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET", "VNI"]);
    assert!(
        table.lines().any(|l| l.contains("ingress") && l.contains("overlay") && l.contains("swarm")),
        "{table}"
    );
}

#[test]
fn create_list_inspect_remove() {
    let cluster = ControlPlane::start(&[]);
    let id = cluster.ok(&["network", "create", "-d", "overlay", "--subnet", "192.168.200.0/24", "demonet"]);
    let id = id.trim();
    assert_eq!(id.len(), 25, "{id:?}");
    assert!(id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{id}");

    let auto = cluster.ok(&["network", "create", "--opt", "mtu=1400", "autonet"]);
    let networks = cluster.networks();
    let demonet = by_name(&networks, "demonet");
    assert_eq!(
        (demonet["Subnet"].as_str(), demonet["Gateway"].as_str()),
        (Some("192.168.200.0/24"), Some("192.168.200.1"))
    );
    assert_eq!(demonet["VNI"], 4097);
    let autonet = by_name(&networks, "autonet");
    assert_eq!((autonet["Subnet"].as_str(), autonet["VNI"].as_u64()), (Some("10.0.0.0/24"), Some(4098)));

    let table = cluster.ok(&["network", "ls"]);
    let row = table.lines().find(|l| l.contains("demonet")).unwrap();
    assert!(row.starts_with(&id[..12]) && !row.contains(id), "12-char ID expected: {row}");
    assert!(row.contains("192.168.200.0/24") && row.contains("4097"), "{row}");

    // Inspect by name and by unique ID prefix, several at once, in Docker's shape.
    let inspected: Value =
        serde_json::from_str(&cluster.ok(&["network", "inspect", "demonet", &auto.trim()[..8]])).unwrap();
    let first = &inspected[0];
    assert_eq!(first["Id"], id);
    assert_eq!(first["Name"], "demonet");
    assert_eq!(first["Driver"], "overlay");
    assert_eq!(first["Scope"], "swarm");
    assert_eq!(first["IPAM"]["Config"][0]["Subnet"], "192.168.200.0/24");
    assert_eq!(first["IPAM"]["Config"][0]["Gateway"], "192.168.200.1");
    assert_eq!(first["Options"]["com.docker.network.driver.overlay.vxlanid_list"], "4097");
    assert_eq!(inspected[1]["Name"], "autonet");
    assert_eq!(inspected[1]["Options"]["com.docker.network.driver.mtu"], "1400");

    // Remove by ID prefix and by name; the subnet and VNI are free again.
    assert_eq!(cluster.ok(&["network", "rm", &id[..6]]).trim(), &id[..6]);
    cluster.ok(&["network", "rm", "autonet"]);
    let names: Vec<Value> = cluster.networks().iter().map(|n| n["Name"].clone()).collect();
    assert_eq!(names, ["ingress"]);
    cluster.ok(&["network", "create", "again"]);
    let again = cluster.networks();
    let again = by_name(&again, "again");
    assert_eq!((again["Subnet"].as_str(), again["VNI"].as_u64()), (Some("10.0.0.0/24"), Some(4097)));
}

#[test]
fn fifty_concurrent_creates_get_distinct_subnets_and_vnis() {
    let cluster = ControlPlane::start(&[]);
    std::thread::scope(|scope| {
        let creates: Vec<_> = (0..50)
            .map(|i| {
                let cluster = &cluster;
                scope.spawn(move || cluster.netctl(&["network", "create", &format!("net{i}")]))
            })
            .collect();
        for create in creates {
            let output = create.join().unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        }
    });
    let networks = cluster.networks();
    assert_eq!(networks.len(), 51);
    let subnets: std::collections::BTreeSet<_> = networks.iter().map(|n| n["Subnet"].to_string()).collect();
    let vnis: std::collections::BTreeSet<_> = networks.iter().map(|n| n["VNI"].as_u64().unwrap()).collect();
    assert_eq!((subnets.len(), vnis.len()), (51, 51));
    assert_eq!(vnis.iter().max(), Some(&(4097 + 49)));
}
