//! `netctl service create`.

use crate::client::{rpc_error, Control};
use crate::syntax::{parse_key_value, parse_log_opt, parse_network, parse_publish, LogOpt, NetworkFlag};
use clap::Args;
use netctl_proto::{EndpointMode, NetworkAlias, PortConfig, ServiceCreateRequest, ServiceMode, TaskRuntime};
use std::time::Duration;

/// `netctl service create` arguments.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name [default: generated].
    #[arg(long)]
    name: Option<String>,
    /// Number of tasks [default: 1; none with --mode global].
    #[arg(long)]
    replicas: Option<u32>,
    /// replicated (--replicas tasks, spread over the nodes) or global (one
    /// task on every Active node the constraints allow).
    #[arg(long, default_value = "replicated", value_parser = parse_mode)]
    mode: ServiceMode,
    /// Placement constraint, Docker's expression: node.hostname==NAME,
    /// node.id!=ID, node.role==worker, node.labels.KEY==VALUE (repeat:
    /// all must hold).
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// Overlay networks to attach, in order (eth0, eth1, ...): NET, or
    /// name=NET,alias=NAME to give the service more names on it.
    #[arg(long = "network", value_parser = parse_network)]
    networks: Vec<NetworkFlag>,
    /// How other tasks reach the service by name: vip (one virtual IP,
    /// balanced) or dnsrr (the name answers the tasks' addresses).
    #[arg(long, default_value = "vip", value_parser = parse_endpoint_mode)]
    endpoint_mode: EndpointMode,
    /// Environment variables, KEY=VALUE.
    #[arg(short, long, value_parser = parse_key_value)]
    env: Vec<(String, String)>,
    /// Working directory of the command.
    #[arg(short, long)]
    workdir: Option<String>,
    /// Publish a port on every node: 8080:80, 8080:80/udp,
    /// published=8080,target=80,protocol=tcp, or target=80.
    #[arg(short, long = "publish", value_parser = parse_publish)]
    publish: Vec<PortConfig>,
    /// Run the tasks as UID[:GID] or NAME[:GROUP] [default: root].
    #[arg(short, long)]
    user: Option<String>,
    /// Add a Linux capability to Docker's default set (NET_ADMIN, ALL, ...).
    #[arg(long)]
    cap_add: Vec<String>,
    /// Drop a Linux capability from the default set.
    #[arg(long)]
    cap_drop: Vec<String>,
    /// Time to wait after SIGTERM before a stopping task is killed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stop_grace_period: Duration,
    /// Log options: max-size=10m (per file), max-file=3 (files kept).
    #[arg(long, value_parser = parse_log_opt)]
    log_opt: Vec<LogOpt>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `vip` or `dnsrr`.
fn parse_endpoint_mode(text: &str) -> Result<EndpointMode, String> {
    match text {
        "vip" => Ok(EndpointMode::Vip),
        "dnsrr" => Ok(EndpointMode::Dnsrr),
        other => Err(format!("invalid endpoint mode {other:?}: expected vip or dnsrr")),
    }
}

/// `replicated` or `global`.
fn parse_mode(text: &str) -> Result<ServiceMode, String> {
    match text {
        "replicated" => Ok(ServiceMode::Replicated),
        "global" => Ok(ServiceMode::Global),
        other => Err(format!("invalid mode {other:?}: expected replicated or global")),
    }
}

/// Creates the service and prints its ID.
pub async fn run(control: &mut Control, args: CreateArgs) -> anyhow::Result<()> {
    let mut runtime = TaskRuntime {
        user: args.user.unwrap_or_default(),
        cap_add: args.cap_add,
        cap_drop: args.cap_drop,
        stop_grace_ms: args.stop_grace_period.as_millis().max(1) as u64,
        ..Default::default()
    };
    for option in args.log_opt {
        match option {
            LogOpt::MaxSize(bytes) => runtime.log_max_size = bytes,
            LogOpt::MaxFile(count) => runtime.log_max_file = count,
        }
    }
    let aliases = args
        .networks
        .iter()
        .filter(|n| !n.aliases.is_empty())
        .map(|n| NetworkAlias { network: n.network.clone(), aliases: n.aliases.clone() })
        .collect();
    let replicas = match (args.mode, args.replicas) {
        (ServiceMode::Global, Some(_)) => {
            anyhow::bail!("--replicas can only be used with replicated mode: a global service runs one task on every node")
        }
        (ServiceMode::Global, None) => 0,
        (ServiceMode::Replicated, given) => given.unwrap_or(1),
    };
    let request = ServiceCreateRequest {
        name: args.name.unwrap_or_default(),
        replicas,
        mode: args.mode.into(),
        constraints: args.constraints,
        networks: args.networks.into_iter().map(|n| n.network).collect(),
        endpoint_mode: args.endpoint_mode.into(),
        aliases,
        command: args.command,
        env: args.env.into_iter().collect(),
        workdir: args.workdir.unwrap_or_default(),
        ports: args.publish,
        runtime: Some(runtime),
    };
    let response = control.create_service(request).await.map_err(rpc_error)?.into_inner();
    println!("{}", response.service.unwrap_or_default().id);
    Ok(())
}
