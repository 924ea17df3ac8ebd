//! `netctl cluster info` and `netctl cluster join-token`: the CA the
//! cluster trusts, the certificate lifetime, and the tokens.

use crate::cli::ClientArgs;
use crate::client::{self, rpc_error};
use crate::commands::node::rfc3339;
use clap::{Subcommand, ValueEnum};
use netctl_proto::{ClusterInfoRequest, JoinTokenRequest, TokenRole};

/// `netctl cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the cluster CA's digest, the node certificate lifetime, the
    /// store and every manager with its status.
    Info,
    /// Print a token, or rotate it (the old one is refused from then on;
    /// joined nodes keep working).
    JoinToken {
        /// Which token: the join token of nodes, or the admin token of clients.
        #[arg(value_enum, default_value = "worker")]
        role: Role,
        /// Replace the token with a new one.
        #[arg(long)]
        rotate: bool,
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
    },
}

/// A token's role, in Docker's words.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Role {
    /// The join token, for agents.
    Worker,
    /// The admin token, for client commands.
    Admin,
}

/// Runs one `cluster` subcommand.
pub async fn run(args: &ClientArgs, command: ClusterCommand) -> anyhow::Result<()> {
    let mut control = client::connect(args).await?;
    match command {
        ClusterCommand::Info => {
            let info = control.cluster_info(ClusterInfoRequest {}).await.map_err(rpc_error)?.into_inner();
            println!("CA digest:            sha256:{}", info.ca_digest);
            println!("CA expires:           {}", rfc3339(info.ca_not_after_unix));
            println!("Node cert expiry:     {}", lifetime_text(info.cert_expiry_seconds));
            println!("Data-path port:       {}", info.data_path_port);
            println!("Store:                {}", info.store);
            println!("Managers:");
            let rows: Vec<Vec<String>> = info
                .managers
                .iter()
                .map(|m| {
                    let record = m.manager.clone().unwrap_or_default();
                    vec![record.id, record.hostname, record.address, m.status.clone()]
                })
                .collect();
            print!("{}", crate::table::render(&["ID", "HOSTNAME", "ADDRESS", "STATUS"], &rows));
        }
        ClusterCommand::JoinToken { role, rotate, quiet } => {
            let role = match role {
                Role::Worker => TokenRole::Worker,
                Role::Admin => TokenRole::Admin,
            };
            let request = JoinTokenRequest { role: role.into(), rotate };
            let token = control.join_token(request).await.map_err(rpc_error)?.into_inner().token;
            if quiet {
                println!("{token}");
            } else {
                print_token(role, rotate, &args.manager, &token);
            }
        }
    }
    Ok(())
}

/// A lifetime in whole days when it is one (`90 days`), else in
/// humantime's words (`10s`, `1h 30m`).
fn lifetime_text(seconds: u64) -> String {
    const DAY: u64 = 24 * 3600;
    if seconds >= DAY && seconds.is_multiple_of(DAY) {
        format!("{} days", seconds / DAY)
    } else {
        humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
    }
}

/// The token with what to do with it.
fn print_token(role: TokenRole, rotated: bool, manager: &str, token: &str) {
    if rotated {
        println!(
            "Successfully rotated the {} token.\n",
            if role == TokenRole::Admin { "admin" } else { "join" }
        );
    }
    match role {
        TokenRole::Worker => {
            println!("To add a node to this cluster, write this token to a file only root can read on it:\n");
            println!("    {token}\n");
            println!("and run:\n");
            println!(
                "    netctl agent --manager {} --join-token-file <FILE> --advertise-addr <NODE-ADDRESS>",
                netctl_proto::manager_addresses(manager)
                    .iter()
                    .map(|m| netctl_proto::https_uri(m))
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        TokenRole::Admin => {
            println!("Client commands present this token (NETCTL_TOKEN); it pins the cluster CA:\n");
            println!("    {token}");
        }
    }
}
