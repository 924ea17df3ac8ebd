//! `netctl manager`: creates or loads the cluster and serves its API.

use anyhow::Context;
use clap::Args;
use netctl_manager::networks::AddressPool;
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
    let config = ManagerConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        pool: AddressPool { pool: args.default_addr_pool, mask_length: args.default_addr_pool_mask_length },
        data_path_port: args.data_path_port,
        heartbeat_interval: args.dispatcher_heartbeat,
        cert_expiry: args.cert_expiry,
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
