//! `netctl service update` and `netctl service rollback`.

use crate::client::{rpc_error, Control};
use crate::syntax::{parse_key_value, parse_publish};
use clap::Args;
use netctl_proto::{PortConfig, ServiceUpdateRequest};
use std::time::Duration;

/// `netctl service update` arguments.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Number of tasks (replaces none).
    #[arg(long)]
    replicas: Option<u32>,
    /// Add or change an environment variable, KEY=VALUE (replaces the
    /// tasks, a batch at a time).
    #[arg(long, value_parser = parse_key_value)]
    env_add: Vec<(String, String)>,
    /// Remove an environment variable (replaces the tasks).
    #[arg(long)]
    env_rm: Vec<String>,
    /// Tasks replaced at a time (0: all at once) [default: 1].
    #[arg(long)]
    update_parallelism: Option<u32>,
    /// Time between two batches [default: 0s].
    #[arg(long, value_parser = humantime::parse_duration)]
    update_delay: Option<Duration>,
    /// How long a new task must run before its batch counts as done (a
    /// failure within it is the update's failure) [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    update_monitor: Option<Duration>,
    /// When a new task fails: pause, continue or rollback [default: pause].
    #[arg(long)]
    update_failure_action: Option<String>,
    /// Publish a port (the --publish syntax): opened on every node as the
    /// tasks are replaced.
    #[arg(long, value_parser = parse_publish)]
    publish_add: Vec<PortConfig>,
    /// Stop publishing a port: PUBLISHED[/PROTOCOL].
    #[arg(long, value_parser = parse_published)]
    publish_rm: Vec<PortConfig>,
    /// Attach the tasks to a network too (it gets a VIP there).
    #[arg(long)]
    network_add: Vec<String>,
    /// Detach the tasks from a network.
    #[arg(long)]
    network_rm: Vec<String>,
    /// Service name or ID.
    service: String,
}

/// `--publish-rm 8080` or `8080/udp`.
fn parse_published(text: &str) -> Result<PortConfig, String> {
    let (port, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let published_port = port
        .parse()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| format!("invalid published port {text:?}: expected PORT or PORT/PROTOCOL"))?;
    match protocol {
        "tcp" | "udp" => Ok(PortConfig { protocol: protocol.into(), published_port, ..Default::default() }),
        other => Err(format!("invalid protocol {other:?}: expected tcp or udp")),
    }
}

/// `netctl service rollback` arguments.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Service name or ID.
    service: String,
}

/// Updates the service and prints its name.
pub async fn run(control: &mut Control, args: UpdateArgs) -> anyhow::Result<()> {
    let request = ServiceUpdateRequest {
        reference: args.service.clone(),
        replicas: args.replicas,
        env_add: args.env_add.into_iter().collect(),
        env_rm: args.env_rm,
        update_parallelism: args.update_parallelism,
        update_delay_ms: args.update_delay.map(|d| d.as_millis() as u64),
        update_failure_action: args.update_failure_action.unwrap_or_default(),
        update_monitor_ms: args.update_monitor.map(|d| d.as_millis() as u64),
        publish_add: args.publish_add,
        publish_rm: args.publish_rm,
        network_add: args.network_add,
        network_rm: args.network_rm,
        rollback: false,
    };
    send(control, request).await
}

/// Returns the service to its spec before the last update.
pub async fn rollback(control: &mut Control, args: RollbackArgs) -> anyhow::Result<()> {
    let request =
        ServiceUpdateRequest { reference: args.service.clone(), rollback: true, ..Default::default() };
    send(control, request).await
}

async fn send(control: &mut Control, request: ServiceUpdateRequest) -> anyhow::Result<()> {
    let reference = request.reference.clone();
    control.update_service(request).await.map_err(rpc_error)?;
    println!("{reference}");
    Ok(())
}
