//! `netctl agent`: joins the manager and serves this node.

use anyhow::Context;
use clap::Args;
use netctl_agent::AgentConfig;
use std::net::IpAddr;
use std::path::PathBuf;

/// `netctl agent` flags.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The token printed by `netctl manager` at cluster creation (visible
    /// to every user in `ps`: prefer --join-token-file).
    #[arg(
        long,
        env = "NETCTL_JOIN_TOKEN",
        hide_env_values = true,
        required_unless_present = "join_token_file"
    )]
    pub join_token: Option<String>,
    /// A file holding the join token (mode 0600).
    #[arg(long, conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,
    /// This node's address on the underlay (VXLAN traffic uses it).
    #[arg(long)]
    pub advertise_addr: IpAddr,
    /// The name this node shows in `node ls` [default: the host name].
    #[arg(long)]
    pub hostname: Option<String>,
    /// Where namespaces are bind-mounted.
    #[arg(long, default_value = netctl_proto::convention::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Where the node identity is kept.
    #[arg(long, default_value = "/var/lib/netctl/agent")]
    pub state_dir: PathBuf,
    /// DNS servers (ADDR[:PORT],...) for names that are not the cluster's
    /// [default: the nameservers of /etc/resolv.conf, read again when it
    /// changes].
    #[arg(long, value_delimiter = ',', value_parser = netctl_agent::dns::upstream::parse_server)]
    pub dns_forward: Vec<std::net::SocketAddr>,
    /// Serve Prometheus metrics on ADDR:PORT (`GET /metrics`) [default: off].
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Runs the agent until it is refused or stopped.
pub async fn run(manager: String, args: AgentArgs) -> anyhow::Result<()> {
    let hostname = super::hostname_or_default(args.hostname);
    let join_token = match (args.join_token, args.join_token_file) {
        (Some(token), _) => token,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(|token| token.trim().to_string())
            .with_context(|| format!("reading the join token from {}", path.display()))?,
        (None, None) => anyhow::bail!("give the join token with --join-token-file (or --join-token)"),
    };
    netctl_agent::run(AgentConfig {
        manager,
        join_token,
        advertise_addr: args.advertise_addr,
        hostname,
        run_dir: args.run_dir,
        state_dir: args.state_dir,
        dns_forward: args.dns_forward,
        metrics_addr: args.metrics_addr,
    })
    .await
}
