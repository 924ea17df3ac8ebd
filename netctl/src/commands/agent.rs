//! `netctl agent`: joins the manager and serves this node.

use crate::cli::AgentArgs;
use anyhow::Context;
use netctl_agent::AgentConfig;

/// Runs the agent until it is refused or stopped.
pub async fn run(manager: String, args: AgentArgs) -> anyhow::Result<()> {
    let hostname = match args.hostname {
        Some(name) => name,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string()),
    };
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
    })
    .await
}
