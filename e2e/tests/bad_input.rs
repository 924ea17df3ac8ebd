//! Every bad input gets exit code 1, a message naming the problem, and
//! changes nothing.

use e2e::ControlPlane;

/// Runs `netctl ARGS`, expects exit code 1 and `needle` in stderr.
fn refused(cluster: &ControlPlane, args: &[&str], needle: &str) {
    e2e::assert_refused(&cluster.netctl(args), args, needle);
}

#[test]
fn bad_network_requests_change_nothing() {
    let cluster = ControlPlane::start(&[]);
    cluster.ok(&["network", "create", "--subnet", "192.168.200.0/24", "demonet"]);
    let before = cluster.networks();

    refused(
        &cluster,
        &["network", "create", "--subnet", "192.168.300.0/24", "x"],
        "invalid subnet \"192.168.300.0/24\"",
    );
    refused(&cluster, &["network", "create", "--subnet", "banana", "x"], "invalid subnet");
    refused(&cluster, &["network", "create", "--subnet", "192.168.200.5/24", "x"], "host bits are set");
    refused(&cluster, &["network", "create", "--subnet", "10.1.0.0/30", "x"], "too small");
    refused(
        &cluster,
        &["network", "create", "--subnet", "10.1.0.0/24", "--gateway", "10.2.0.1", "x"],
        "gateway 10.2.0.1",
    );
    refused(&cluster, &["network", "create", "--subnet", "192.168.200.128/25", "x"], "overlaps demonet");
    refused(&cluster, &["network", "create", "--subnet", "10.255.3.0/24", "x"], "overlaps ingress");
    refused(&cluster, &["network", "create", "--subnet", "172.18.0.0/16", "x"], "overlaps docker_gwbridge");
    refused(&cluster, &["network", "create", "demonet"], "demonet already exists");
    refused(&cluster, &["network", "create", "--", "-bad"], "invalid name \"-bad\"");
    refused(&cluster, &["network", "create", "--subnet"], "a value is required");
    refused(&cluster, &["network", "create", "bad/name"], "invalid name \"bad/name\"");
    refused(&cluster, &["network", "create", "-d", "bridge", "x"], "unknown network driver \"bridge\"");
    refused(&cluster, &["network", "create", "--opt", "mtu=abc", "x"], "invalid mtu");
    refused(&cluster, &["network", "rm", "ingress"], "ingress network and cannot be removed");
    refused(&cluster, &["network", "rm", "nosuchnet"], "network nosuchnet not found");
    refused(&cluster, &["network", "inspect", "nosuchnet"], "network nosuchnet not found");

    assert_eq!(cluster.networks(), before);
}

#[test]
fn an_exhausted_pool_is_reported() {
    let cluster = ControlPlane::start(&[
        "--default-addr-pool",
        "10.20.0.0/23",
        "--default-addr-pool-mask-length",
        "24",
    ]);
    cluster.ok(&["network", "create", "a"]);
    cluster.ok(&["network", "create", "b"]);
    refused(&cluster, &["network", "create", "c"], "address pool 10.20.0.0/23 is exhausted");
    assert_eq!(cluster.networks().len(), 3);
}

#[test]
fn wrong_or_missing_tokens_and_unreachable_managers_are_named() {
    let cluster = ControlPlane::start(&[]);
    let malformed = cluster.netctl_with_token(Some("not-the-token"), &["network", "create", "x"]);
    assert_eq!(malformed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&malformed.stderr);
    assert!(stderr.contains("admin token: the token is not NETCTL-"), "{stderr}");
    let wrong_secret = e2e::with_wrong_secret(&cluster.admin_token());
    let wrong = cluster.netctl_with_token(Some(&wrong_secret), &["network", "create", "x"]);
    assert_eq!(wrong.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("admin token presented is not valid"), "{stderr}");
    assert!(!stderr.contains(&wrong_secret), "the token stays out of errors");
    let join = cluster.netctl_with_token(Some(&cluster.join_token()), &["network", "ls"]);
    assert!(String::from_utf8_lossy(&join.stderr).contains("is a join token"));

    // Without a token the client falls back to the default token file, which
    // is absent or belongs to another cluster: refused either way.
    let missing = cluster.netctl_with_token(None, &["network", "ls"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("admin token"));

    let unreachable = cluster
        .command(e2e::netctl_bin())
        .args(["--manager", "http://127.0.0.1:1", "network", "ls"])
        .env("NETCTL_TOKEN", cluster.admin_token())
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(stderr.contains("cannot reach manager at http://127.0.0.1:1"), "{stderr}");
    assert_eq!(cluster.networks().len(), 1);
}

#[test]
fn names_counts_and_reserved_ports_are_bounded() {
    let cluster = ControlPlane::start(&[]);
    cluster.ok(&["network", "create", "--subnet", "192.168.200.0/24", "demonet"]);
    cluster.ok(&["service", "create", "--name", "taken", "--network", "demonet", "sleep", "100"]);
    let networks = cluster.networks();
    let long = "a".repeat(64);
    refused(&cluster, &["network", "create", &long], "64 characters, at most 63");
    let service = |extra: &[&str]| {
        let mut args = vec!["service", "create", "--network", "demonet"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["sleep", "100"]);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let cases: [(Vec<String>, &str); 14] = [
        (service(&["--name", &long]), "64 characters, at most 63"),
        (service(&["--name", "web_1"]), "a service name is a DNS label"),
        (service(&["--replicas", "1000000"]), "at most 100000"),
        (service(&["--publish", "4243:80"]), "port 4243 cannot be published: it is the manager's API port"),
        (service(&["--publish", "4789:80/udp"]), "the VXLAN data-path port"),
        (service(&["--publish", "22:22"]), "SSH"),
        (service(&["--cap-add", "FLY"]), "unknown capability \"FLY\""),
        (service(&["--user", "a b"]), "invalid user"),
        (service(&["--log-opt", "max-size=1"]), "invalid log option max-size=1"),
        (service(&["--endpoint-mode", "rr"]), "invalid endpoint mode \"rr\": expected vip or dnsrr"),
        (
            service(&["--endpoint-mode", "dnsrr", "--publish", "8080:80"]),
            "can't be used with endpoint mode dnsrr",
        ),
        (service(&["--network", "name=demonet,alias=no_label"]), "invalid alias \"no_label\""),
        (service(&["--network", "name=demonet,colour=red"]), "invalid network field \"colour=red\""),
        (
            service(&["--name", "api", "--network", "name=demonet,alias=taken"]),
            "name taken is taken on network demonet",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&cluster, &args, needle);
    }
    assert_eq!(cluster.networks(), networks);
    let services = cluster.ok(&["service", "ls", "--format", "json"]);
    assert_eq!(services.lines().count(), 1, "a refused service was made: {services}");
    cluster.ok(&["service", "create", "--name", "small", "--network", "demonet", "sleep", "100"]);
    refused(&cluster, &["service", "scale", "small=1000000"], "at most 100000");
    let agent =
        ["agent", "--advertise-addr", "10.0.0.1", "--join-token", "x", "--dns-forward", "10.0.0.1,bogus"];
    refused(&cluster, &agent, "invalid DNS server \"bogus\"");
}
