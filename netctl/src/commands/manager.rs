//! `netctl manager`: creates or loads the cluster and serves its API.

use anyhow::Context;
use clap::Args;
use netctl_manager::networks::AddressPool;
use netctl_manager::store::etcd::EtcdConfig;
use netctl_manager::{Manager, ManagerConfig};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// `netctl manager` flags.
#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "0.0.0.0:4243")]
    pub listen: SocketAddr,
    /// The name other managers and `cluster info` show for this one
    /// [default: the host name].
    #[arg(long)]
    pub hostname: Option<String>,
    /// Where the state store and the tokens are kept.
    #[arg(long, default_value = netctl_proto::convention::DEFAULT_MANAGER_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The pool overlay subnets are allocated from.
    #[arg(long, default_value = "10.0.0.0/8")]
    pub default_addr_pool: ipnetwork::Ipv4Network,
    /// The prefix length of each allocated subnet.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(1..=29))]
    pub default_addr_pool_mask_length: u8,
    /// UDP port of VXLAN traffic, fixed when the cluster is created [default: 4789].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub data_path_port: Option<u16>,
    /// How often agents send heartbeats; a node is Down after 3 missed ones.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub dispatcher_heartbeat: Duration,
    /// How long node certificates are valid; agents renew them at half
    /// their lifetime (at least 10s).
    #[arg(long, default_value = "90d", value_parser = parse_cert_expiry)]
    pub cert_expiry: Duration,
    /// Keep the cluster state in etcd (several managers may share it):
    /// its members, comma-separated, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379.
    #[arg(long, value_delimiter = ',', env = "NETCTL_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Vec<String>,
    /// The key prefix of this cluster in etcd.
    #[arg(long, default_value = "/netctl")]
    pub etcd_prefix: String,
    /// The CA of the etcd members' certificates (https endpoints).
    #[arg(long)]
    pub etcd_cacert: Option<PathBuf>,
    /// A client certificate for etcd (with --etcd-key).
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert.
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Copy the sled store of --data-dir into the empty etcd prefix, then
    /// exit; later starts with --etcd-endpoints use it.
    #[arg(long, requires = "etcd_endpoints")]
    pub migrate_to_etcd: bool,
    /// Serve Prometheus metrics on ADDR:PORT (`GET /metrics`) [default: off].
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

impl ManagerArgs {
    /// The etcd settings, when --etcd-endpoints is given.
    fn etcd(&self) -> Option<EtcdConfig> {
        (!self.etcd_endpoints.is_empty()).then(|| EtcdConfig {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            ca_file: self.etcd_cacert.clone(),
            client_identity: self.etcd_cert.clone().zip(self.etcd_key.clone()),
        })
    }
}

/// A certificate lifetime: a duration of at least 10 seconds.
fn parse_cert_expiry(text: &str) -> Result<Duration, String> {
    let lifetime =
        humantime::parse_duration(text).map_err(|err| format!("{text:?} is not a duration: {err}"))?;
    if lifetime < Duration::from_secs(10) {
        return Err(format!("{text} is too short: node certificates must live at least 10s"));
    }
    Ok(lifetime)
}

/// Starts the manager and serves until SIGINT or SIGTERM.
pub async fn run(args: ManagerArgs) -> anyhow::Result<()> {
    if args.default_addr_pool_mask_length < args.default_addr_pool.prefix() {
        anyhow::bail!(
            "--default-addr-pool-mask-length {} is shorter than the pool {} itself",
            args.default_addr_pool_mask_length,
            args.default_addr_pool
        );
    }
    if args.migrate_to_etcd {
        let etcd = args.etcd().expect("clap requires --etcd-endpoints");
        let copied = netctl_manager::migrate_to_etcd(&args.data_dir, &etcd)
            .await
            .with_context(|| format!("copying the state of {} into etcd", args.data_dir.display()))?;
        println!(
            "Copied {copied} entries of {} into etcd {} (prefix {}). Start the manager with --etcd-endpoints from now on.",
            args.data_dir.display(),
            etcd.endpoints.join(","),
            etcd.normalized_prefix()
        );
        return Ok(());
    }
    let config = ManagerConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        pool: AddressPool { pool: args.default_addr_pool, mask_length: args.default_addr_pool_mask_length },
        data_path_port: args.data_path_port,
        heartbeat_interval: args.dispatcher_heartbeat,
        cert_expiry: args.cert_expiry,
        advertise: reachable_address(args.listen),
        hostname: super::hostname_or_default(args.hostname.clone()),
        etcd: args.etcd(),
        metrics_addr: args.metrics_addr,
    };
    let manager = Manager::start(config)
        .await
        .with_context(|| format!("starting the manager in {}", args.data_dir.display()))?;
    let cluster = manager.cluster();
    if cluster.created {
        println!(
            "Cluster created: ingress network 10.255.0.0/16 (VNI 4096), data-path port {}.",
            cluster.data_path_port
        );
        println!("Cluster CA: sha256 {} (every token pins it).", cluster.ca.digest);
        println!(
            "To add a node, copy the join token ({}, or `netctl cluster join-token -q`) into a file only root can read on it, and run:\n",
            args.data_dir.join(netctl_proto::convention::JOIN_TOKEN_FILE).display()
        );
        println!(
            "    netctl agent --manager https://{} --join-token-file <FILE> --advertise-addr <NODE-ADDRESS>\n",
            reachable_address(args.listen),
        );
        println!(
            "Client commands on this host use the admin token in {}.",
            args.data_dir.join(netctl_proto::convention::ADMIN_TOKEN_FILE).display()
        );
    }
    manager.serve(shutdown_signal()).await?;
    Ok(())
}

/// The address other hosts reach the manager on: the listen address, or when
/// that is a wildcard, this host's first non-loopback IPv4 address.
fn reachable_address(listen: SocketAddr) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let first_ipv4 = nix::ifaddrs::getifaddrs().ok().and_then(|mut addrs| {
        addrs.find_map(|ifaddr| {
            let ip = ifaddr.address?.as_sockaddr_in()?.ip();
            (!ip.is_loopback()).then_some(ip)
        })
    });
    SocketAddr::new(IpAddr::V4(first_ipv4.unwrap_or(Ipv4Addr::LOCALHOST)), listen.port())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("manager stopping");
}
