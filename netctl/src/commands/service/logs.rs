//! `netctl service logs`.

use crate::client::{rpc_error, Control};
use crate::table;
use clap::Args;
use netctl_proto::ServiceLogsRequest;
use std::collections::HashMap;
use std::io::Write;

/// `netctl service logs` arguments.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Only the last N lines of each task [default: all the manager keeps].
    #[arg(short = 'n', long)]
    tail: Option<u64>,
    /// Keep printing new output until interrupted.
    #[arg(short, long)]
    follow: bool,
    /// Name or ID.
    service: String,
}

/// Prints every line each task wrote, prefixed as Docker does:
/// `demoservice.1.zazcrztrp8no@node0    | line`.
pub async fn run(control: &mut Control, args: LogsArgs) -> anyhow::Result<()> {
    let request = ServiceLogsRequest {
        reference: args.service,
        tail: args.tail.map_or(-1, |n| n as i64),
        follow: args.follow,
    };
    let mut stream = control.service_logs(request).await.map_err(rpc_error)?.into_inner();
    // Output comes in pieces; a line is printed once it is whole.
    let mut partial: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = std::io::stdout().lock();
    while let Some(piece) = stream.message().await.map_err(rpc_error)? {
        let id: String = piece.task_id.chars().take(12).collect();
        let prefix = table::printable(&format!("{}.{id}@{}", piece.task_name, piece.node_hostname));
        let pending = partial.entry(prefix.clone()).or_default();
        pending.extend_from_slice(&piece.data);
        let complete = pending.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in String::from_utf8_lossy(&pending[..complete]).lines() {
            writeln!(out, "{prefix}    | {line}")?;
        }
        pending.drain(..complete);
        out.flush()?;
    }
    for (prefix, rest) in partial.into_iter().filter(|(_, rest)| !rest.is_empty()) {
        writeln!(out, "{prefix}    | {}", String::from_utf8_lossy(&rest))?;
    }
    Ok(())
}
