//! The command line, in Docker's style.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Swarm-style overlay networking and routing mesh, inspectable.
#[derive(Debug, Parser)]
#[command(name = "netctl", version, about)]
pub struct Cli {
    /// Where client commands find the manager and their token.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How client commands reach the manager.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The manager's gRPC address.
    #[arg(long, global = true, env = "NETCTL_MANAGER", default_value = "http://127.0.0.1:4243")]
    pub manager: String,
    /// The admin token (default: read from the manager's default data dir).
    #[arg(long, global = true, env = "NETCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the manager: cluster state, allocation, gRPC API.
    Manager(ManagerArgs),
    /// Run the agent of this node: join the manager and build what it asks.
    Agent(AgentArgs),
    /// Manage overlay networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// List the nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage replicated services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Run a command inside a task's sandbox (on the host the task runs on).
    Exec(ExecArgs),
    /// A cluster of simulated hosts on this machine (namespaces).
    #[command(subcommand)]
    Lab(LabCommand),
    /// Run a task (started by the agent; not for operators).
    #[command(hide = true)]
    TaskShim(TaskShimArgs),
    /// Show every node's namespaces, interfaces, veth pairs, bridges, VXLAN
    /// devices, FDB entries, routes and rules, read back from the kernel.
    Topology {
        /// Only this node (hostname or ID).
        #[arg(long)]
        node: Option<String>,
        /// Output format (dot renders with `dot -Tsvg`).
        #[arg(long, value_enum, default_value = "text")]
        format: TopologyFormat,
    },
}

/// Output formats of `netctl topology`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TopologyFormat {
    /// Indented text.
    Text,
    /// A JSON array, one object per node.
    Json,
    /// A Graphviz graph.
    Dot,
}

/// `netctl lab ...`
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab and start its manager and agents (idempotent).
    Up {
        /// How many hosts.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// The lab's name.
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// List labs.
    Ls,
    /// Run a command on a lab host (netctl commands there reach the lab's manager).
    Exec {
        /// The lab's name.
        #[arg(long, default_value = "lab")]
        name: String,
        /// node0, node1, ...
        node: String,
        /// The command and its arguments (after --).
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Remove the lab: processes, namespaces, files (also after a crash).
    Down {
        /// The lab's name.
        #[arg(long, default_value = "lab")]
        name: String,
    },
}

/// `netctl exec` arguments.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The agent's run dir on this host.
    #[arg(long, env = "NETCTL_RUN_DIR", default_value = "/var/run/netctl")]
    pub run_dir: PathBuf,
    /// The task: its name (web.1) or a task ID prefix.
    pub task: String,
    /// The command and its arguments (after --).
    #[arg(required = true, last = true)]
    pub command: Vec<String>,
}

/// `netctl task-shim` flags: how the agent (or `netctl exec`) asks for a
/// task to run.
#[derive(Debug, Args)]
pub struct TaskShimArgs {
    /// The task's folder (logs, exit record); without it, run a command in
    /// the task whose namespaces the caller joined (`netctl exec`).
    #[arg(long)]
    pub task_dir: Option<PathBuf>,
    /// Bytes per log file.
    #[arg(long, default_value_t = 0)]
    pub log_max_size: u64,
    /// Log files kept.
    #[arg(long, default_value_t = 0)]
    pub log_max_file: u32,
    /// UID[:GID] or NAME[:GROUP].
    #[arg(long, default_value = "")]
    pub user: String,
    /// Capabilities added to Docker's default set.
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// Capabilities removed from it.
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// The command and its arguments (after --).
    #[arg(required = true, last = true)]
    pub command: Vec<String>,
}

/// `netctl manager` flags.
#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "0.0.0.0:4243")]
    pub listen: SocketAddr,
    /// Where the state store and the tokens are kept.
    #[arg(long, default_value = "/var/lib/netctl/manager")]
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
}

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
    #[arg(long, default_value = "/var/run/netctl")]
    pub run_dir: PathBuf,
    /// Where the node identity is kept.
    #[arg(long, default_value = "/var/lib/netctl/agent")]
    pub state_dir: PathBuf,
}

/// Output formats of the list commands.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns.
    Table,
    /// One JSON object per line.
    Json,
}

/// `netctl network ...`
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create an overlay network; prints its ID.
    Create {
        /// Network driver (only overlay).
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// Subnet in CIDR form [default: the next free block of the pool].
        #[arg(long)]
        subnet: Option<String>,
        /// Gateway address [default: the subnet's first host].
        #[arg(long)]
        gateway: Option<String>,
        /// Driver options, e.g. mtu=1400.
        #[arg(short, long = "opt", value_parser = parse_key_value)]
        opt: Vec<(String, String)>,
        /// The network's name.
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Show networks as JSON, in `docker network inspect`'s shape.
    Inspect {
        /// Names or IDs (or unique ID prefixes).
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks.
    #[command(alias = "remove")]
    Rm {
        /// Names or IDs (or unique ID prefixes).
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// `netctl node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
}

/// `netctl service ...`
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service; prints its ID.
    Create {
        /// Service name [default: generated].
        #[arg(long)]
        name: Option<String>,
        /// Number of tasks.
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// Overlay networks to attach, in order (eth0, eth1, ...).
        #[arg(long = "network")]
        networks: Vec<String>,
        /// Environment variables, KEY=VALUE.
        #[arg(short, long, value_parser = parse_key_value)]
        env: Vec<(String, String)>,
        /// Working directory of the command.
        #[arg(short, long)]
        workdir: Option<String>,
        /// Publish a port on every node: 8080:80, 8080:80/udp,
        /// published=8080,target=80,protocol=tcp, or target=80.
        #[arg(short, long = "publish", value_parser = parse_publish)]
        publish: Vec<netctl_proto::PortConfig>,
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
    },
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Show services as JSON, in `docker service inspect`'s shape.
    Inspect {
        /// Names or IDs.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// List the tasks of a service, with their history.
    Ps {
        /// Show full task IDs.
        #[arg(long)]
        no_trunc: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
        /// Name or ID.
        service: String,
    },
    /// Show what the tasks of a service wrote.
    Logs {
        /// Only the last N lines of each task [default: all the manager keeps].
        #[arg(short = 'n', long)]
        tail: Option<u64>,
        /// Keep printing new output until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Name or ID.
        service: String,
    },
    /// Set the number of tasks: SERVICE=REPLICAS...
    Scale {
        /// SERVICE=REPLICAS pairs.
        #[arg(required = true, value_parser = parse_scale)]
        scales: Vec<(String, u32)>,
    },
    /// Remove services and their tasks.
    #[command(alias = "remove")]
    Rm {
        /// Names or IDs.
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// Parses a `--publish` value in any of Docker's forms (published port 0 =
/// assigned by the manager).
pub fn parse_publish(text: &str) -> Result<netctl_proto::PortConfig, String> {
    let number = |what: &str, value: &str| -> Result<u32, String> {
        let port: u32 = value.parse().map_err(|_| format!("invalid {what} port {value:?} in {text:?}"))?;
        if (1..=65535).contains(&port) {
            Ok(port)
        } else {
            Err(format!("invalid {what} port {port} in {text:?}: expected 1-65535"))
        }
    };
    let mut port = netctl_proto::PortConfig { protocol: "tcp".into(), ..Default::default() };
    if text.contains('=') {
        for field in text.split(',') {
            match field.split_once('=') {
                Some(("published", value)) => port.published_port = number("published", value)?,
                Some(("target", value)) => port.target_port = number("target", value)?,
                Some(("protocol", value)) => port.protocol = value.to_string(),
                Some(("mode", "ingress")) => {}
                _ => {
                    return Err(format!(
                        "invalid field {field:?} in {text:?}: expected published=, target=, protocol="
                    ))
                }
            }
        }
    } else {
        let (ports, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
        port.protocol = protocol.to_string();
        match ports.split_once(':') {
            Some((published, target)) => {
                port.published_port = number("published", published)?;
                port.target_port = number("target", target)?;
            }
            None => port.target_port = number("target", ports)?,
        }
    }
    if port.target_port == 0 {
        return Err(format!("invalid port {text:?}: the target port is missing"));
    }
    if port.protocol != "tcp" && port.protocol != "udp" {
        return Err(format!("invalid protocol {:?} in {text:?}: expected tcp or udp", port.protocol));
    }
    Ok(port)
}

/// One `--log-opt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOpt {
    /// `max-size=SIZE`: bytes per log file.
    MaxSize(u64),
    /// `max-file=N`: log files kept.
    MaxFile(u32),
}

/// Parses `max-size=10m` (k, m, g suffixes as Docker takes them) or
/// `max-file=3`.
pub fn parse_log_opt(text: &str) -> Result<LogOpt, String> {
    match text.split_once('=') {
        Some(("max-size", size)) => {
            let lower = size.to_ascii_lowercase();
            let (digits, unit) = match lower.trim_end_matches('b').char_indices().last() {
                Some((i, c @ ('k' | 'm' | 'g'))) => (&lower[..i], c),
                _ => (lower.trim_end_matches('b'), ' '),
            };
            let factor = match unit {
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                _ => 1,
            };
            let number: u64 =
                digits.parse().map_err(|_| format!("invalid log size {size:?}: expected e.g. 10m"))?;
            Ok(LogOpt::MaxSize(number.saturating_mul(factor)))
        }
        Some(("max-file", count)) => match count.parse() {
            Ok(n) if n >= 1 => Ok(LogOpt::MaxFile(n)),
            _ => Err(format!("invalid max-file {count:?}: expected a positive integer")),
        },
        _ => Err(format!("unsupported log option {text:?}: expected max-size=SIZE or max-file=N")),
    }
}

/// Parses `SERVICE=REPLICAS`.
fn parse_scale(text: &str) -> Result<(String, u32), String> {
    let (service, replicas) =
        text.split_once('=').ok_or_else(|| format!("invalid scale {text:?}: expected SERVICE=REPLICAS"))?;
    let replicas = replicas
        .parse()
        .map_err(|_| format!("invalid replicas {replicas:?}: expected a non-negative integer"))?;
    Ok((service.to_string(), replicas))
}

/// Parses `key=value`.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("invalid option {text:?}: expected key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_key_value_pairs() {
        assert_eq!(parse_key_value("mtu=1400"), Ok(("mtu".into(), "1400".into())));
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("mtu").is_err());
        assert!(parse_key_value("=1").is_err());
    }

    #[test]
    fn publish_takes_dockers_forms() {
        let port = |protocol: &str, published, target| netctl_proto::PortConfig {
            protocol: protocol.into(),
            published_port: published,
            target_port: target,
        };
        assert_eq!(parse_publish("8080:80"), Ok(port("tcp", 8080, 80)));
        assert_eq!(parse_publish("8080:80/udp"), Ok(port("udp", 8080, 80)));
        assert_eq!(parse_publish("published=8080,target=80,protocol=tcp"), Ok(port("tcp", 8080, 80)));
        assert_eq!(parse_publish("target=80"), Ok(port("tcp", 0, 80)));
        assert_eq!(parse_publish("80"), Ok(port("tcp", 0, 80)));
        for bad in ["0:80", "70000:80", "8080:0", "published=8080", "8080:80/sctp", "x:80", "bogus=1"] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
        assert!(parse_publish("published=8080").unwrap_err().contains("target port is missing"));
    }

    #[test]
    fn log_options_take_dockers_sizes() {
        assert_eq!(parse_log_opt("max-size=10m"), Ok(LogOpt::MaxSize(10 << 20)));
        assert_eq!(parse_log_opt("max-size=64k"), Ok(LogOpt::MaxSize(64 << 10)));
        assert_eq!(parse_log_opt("max-size=1G"), Ok(LogOpt::MaxSize(1 << 30)));
        assert_eq!(parse_log_opt("max-size=5000"), Ok(LogOpt::MaxSize(5000)));
        assert_eq!(parse_log_opt("max-file=5"), Ok(LogOpt::MaxFile(5)));
        for bad in ["max-size=ten", "max-file=0", "compress=true", "max-size"] {
            assert!(parse_log_opt(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scales_are_service_equals_count() {
        assert_eq!(parse_scale("web=3"), Ok(("web".into(), 3)));
        assert!(parse_scale("web").is_err());
        assert!(parse_scale("web=-1").unwrap_err().contains("non-negative integer"));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
