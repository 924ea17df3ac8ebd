//! `netctl lab up | ls | exec | down`: a whole cluster of simulated hosts on
//! this machine, for trying netctl without VMs.

use anyhow::{bail, Context};
use clap::Subcommand;
use netctl::lab::{self, Lab, LabUp};
use std::time::Duration;

/// `netctl lab ...`
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab and start its manager and agents (idempotent).
    Up {
        /// How many hosts (1 to 200).
        #[arg(long, default_value_t = 2, value_parser = parse_node_count)]
        nodes: usize,
        /// How many of the hosts run a manager; more than one keeps the
        /// state in an etcd cluster with a member on each of them.
        #[arg(long, default_value_t = 1)]
        managers: usize,
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

/// Runs one `lab` subcommand.
pub async fn run(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Up { nodes, managers, name } => up(&Lab::new(&name)?, nodes, managers).await,
        LabCommand::Ls => {
            println!("{:<16} {:<6} {:<8} MANAGER", "NAME", "NODES", "STATUS");
            for name in lab::list() {
                let lab = Lab::new(&name)?;
                let status = if lab.healthy() { "up" } else { "broken" };
                println!("{:<16} {:<6} {:<8} {}", name, lab.node_count(), status, lab.manager_url());
            }
            Ok(())
        }
        LabCommand::Exec { name, node, command } => {
            let lab = Lab::new(&name)?;
            let index = node_index(&lab, &node)?;
            let status = lab
                .command_on(index, &command[0])?
                .args(&command[1..])
                .status()
                .with_context(|| format!("running {} on {node}", command[0]))?;
            match status.code() {
                Some(0) => Ok(()),
                Some(code) => Err(crate::commands::exec::CommandExit(code).into()),
                None => bail!("{} was killed ({status})", command[0]),
            }
        }
        LabCommand::Down { name } => {
            let lab = Lab::new(&name)?;
            lab.down()?;
            println!("lab {name} removed");
            Ok(())
        }
    }
}

/// `node0`, `node1`, ... or a bare index.
/// The lab's hosts take 192.168.10.6 onwards on the underlay's /24.
const MAX_LAB_NODES: usize = 200;

fn parse_node_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(nodes) if (1..=MAX_LAB_NODES).contains(&nodes) => Ok(nodes),
        _ => Err(format!("a lab has 1 to {MAX_LAB_NODES} hosts (the underlay is one /24), not {text:?}")),
    }
}

fn node_index(lab: &Lab, node: &str) -> anyhow::Result<usize> {
    let count = lab.node_count();
    if count == 0 {
        bail!("there is no lab {}: run netctl lab up --name {}", lab.name(), lab.name());
    }
    let index = node.strip_prefix("node").unwrap_or(node).parse::<usize>().ok().filter(|i| *i < count);
    index
        .with_context(|| format!("lab {} has no host {node} (it has node0 to node{})", lab.name(), count - 1))
}

async fn up(lab: &Lab, nodes: usize, managers: usize) -> anyhow::Result<()> {
    let done = lab.up(nodes, managers).await?;
    let ready = wait_ready(lab, nodes).await;
    if !ready {
        bail!(
            "lab {} did not come up: see the logs under {}",
            lab.name(),
            lab::root().join(lab.name()).display()
        );
    }
    let verb = match &done {
        LabUp::Built => "is up".to_string(),
        LabUp::AlreadyUp => "was already up".to_string(),
        LabUp::Restarted(daemons) => format!("is up again (restarted: {})", daemons.join(", ")),
    };
    println!(
        "lab {} {verb}: {nodes} hosts on the underlay 192.168.10.0/24 (the underlay itself is {})",
        lab.name(),
        lab::UNDERLAY_ADDRESS
    );
    for node in 0..nodes {
        let role = match (node < managers, managers > 1) {
            (true, true) => "etcd + manager + agent",
            (true, false) => "manager + agent",
            (false, _) => "agent",
        };
        println!("  node{node}  {}  {role}", Lab::address(node));
    }
    println!("\nExplore:");
    println!("  netctl lab exec node0 -- netctl node ls");
    println!("  netctl lab exec node0 -- netctl network create -d overlay --subnet 192.168.200.0/24 demonet");
    println!("  netctl lab exec node0 -- netctl service create --replicas 2 --network demonet --name demoservice sleep 10000");
    println!("  netctl lab exec node0 -- netctl exec demoservice.1 -- ip addr");
    if managers > 1 {
        println!(
            "  netctl lab exec node0 -- netctl cluster info      # the store, the leader, every manager"
        );
        println!(
            "  kill -9 $(cat {})   # the leader's manager: another leads within 5 s",
            lab.manager_pid_file(0).display()
        );
        println!(
            "  netctl lab up --nodes {nodes} --managers {managers}{}   # starts what died again",
            name_flag(lab)
        );
    }
    println!("Tear down: netctl lab down{}", name_flag(lab));
    Ok(())
}

/// ` --name NAME`, or nothing for the default lab.
fn name_flag(lab: &Lab) -> String {
    if lab.name() == "lab" {
        String::new()
    } else {
        format!(" --name {}", lab.name())
    }
}

/// Waits until every host of the lab is Ready (30 s, and 1 s more per host).
async fn wait_ready(lab: &Lab, nodes: usize) -> bool {
    for _ in 0..300 + 10 * nodes {
        let listed = lab
            .command_on(0, std::env::current_exe().unwrap_or_else(|_| "netctl".into()))
            .and_then(|mut c| Ok(c.args(["node", "ls", "--format", "json"]).output()?));
        if let Ok(output) = listed {
            let ready = String::from_utf8_lossy(&output.stdout).matches("\"Status\":\"Ready\"").count();
            if ready == nodes {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
