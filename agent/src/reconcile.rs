//! One reconcile pass: converge the node's kernel objects and task processes
//! to the latest desired state, idempotently. Read what is there, build what
//! is missing, remove what the desired state no longer has. Objects already
//! right are left untouched, so a pass on a healthy node changes nothing and
//! a restarted agent adopts what it made before.

use crate::connections::Connections;
use crate::mesh::{self, Written};
use crate::names::{self, INGRESS_SANDBOX};
use crate::overlay::{self, Overlay, Tunnel};
use crate::sandbox::{self, GatewayLeg};
use crate::tasks::Supervisor;
use crate::{gwbridge, peers};
use netctl_proto::convention::{GATEWAY_BRIDGE_GATEWAY, INGRESS_SANDBOX_GATEWAY_ADDRESS};
use netctl_proto::{NodeState, TaskState, TaskStatusReport};
use netlib::{NamespaceDir, Netlink};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The overhead of VXLAN encapsulation on the underlay MTU.
const VXLAN_OVERHEAD: u32 = 50;

/// Converges one node.
pub struct Reconciler {
    advertise_addr: IpAddr,
    host: Netlink,
    connections: Connections,
    supervisor: Supervisor,
    gwbridge_rules_written: bool,
    sandbox_setup_times: Vec<std::time::Duration>,
    rules: Written,
}

impl Reconciler {
    /// A reconciler for the node whose namespaces live under `run_dir`,
    /// starting tasks through `shim_program` (the netctl binary).
    pub fn new(run_dir: &Path, advertise_addr: IpAddr, shim_program: PathBuf) -> anyhow::Result<Self> {
        NamespaceDir::new(run_dir).prepare()?;
        Ok(Self {
            advertise_addr,
            host: Netlink::host()?,
            connections: Connections::new(run_dir),
            supervisor: Supervisor::new(run_dir, shim_program)?,
            gwbridge_rules_written: false,
            sandbox_setup_times: Vec::new(),
            rules: Written::default(),
        })
    }

    /// The MTU of the interface that carries the advertise address.
    async fn underlay_mtu(&self) -> netlib::Result<u32> {
        let IpAddr::V4(advertise) = self.advertise_addr else { return Ok(1500) };
        let addresses = self.host.addresses().await?;
        let Some(address) = addresses.iter().find(|a| a.address == advertise) else {
            tracing::warn!(%advertise, "no interface holds the advertise address: assuming MTU 1500");
            return Ok(1500);
        };
        let links = self.host.links().await?;
        Ok(links.iter().find(|l| l.index == address.index).map_or(1500, |l| l.mtu))
    }

    /// Runs one pass and returns the status of every task of the node.
    pub async fn pass(&mut self, state: &NodeState) -> Vec<TaskStatusReport> {
        let underlay_mtu = self.underlay_mtu().await.unwrap_or_else(|err| {
            tracing::warn!("reading the underlay MTU: {err}");
            1500
        });
        let gateway = gwbridge::ensure(&self.host, underlay_mtu, !self.gwbridge_rules_written).await;
        match &gateway {
            Ok(_) => self.gwbridge_rules_written = true,
            Err(err) => tracing::error!("{err}"),
        }

        let overlays = self.build_overlays(state, underlay_mtu).await;
        if let Err(err) = self.build_routing_mesh(state, &overlays, &gateway, underlay_mtu).await {
            tracing::error!("routing mesh: {err}");
        }
        let gateway_addresses = assign_gateway_addresses(state, self.gateway_addresses().await);
        let mut reports = Vec::new();
        self.sandbox_setup_times.clear();
        for task in &state.tasks {
            let sandbox_name = names::sandbox_namespace(&task.id);
            if self.supervisor.started(&sandbox_name) && !self.connections.namespaces().exists(&sandbox_name)
            {
                // The sandbox was deleted under a running task: the task lost
                // its network for good, so it ends and the manager replaces it.
                self.supervisor.stop(std::slice::from_ref(&sandbox_name), self.connections.namespaces());
                self.supervisor.mark_lost(task, &sandbox_name, "the task's sandbox namespace was removed");
            }
            let new_sandbox = !self.connections.namespaces().exists(&sandbox_name);
            let started = std::time::Instant::now();
            let built = self.build_sandbox(task, &overlays, &gateway, &gateway_addresses, underlay_mtu).await;
            if new_sandbox {
                self.sandbox_setup_times.push(started.elapsed());
            }
            // Without working iptables the task still runs, without its
            // VIPs; the reason goes into its ERROR column.
            let vip_problem = match &built {
                Ok(()) => self.write_vip_rules(state, task, &sandbox_name).await.err(),
                Err(_) => None,
            };
            let mut status = match built {
                Ok(()) => {
                    let path = self.connections.namespaces().path(&sandbox_name);
                    self.supervisor.ensure_running(task, &sandbox_name, &path)
                }
                Err(error) => {
                    tracing::error!(task = %task.id, "{error}");
                    TaskStatusReport { task_id: task.id.clone(), state: TaskState::Failed.into(), error }
                }
            };
            if status.state() == TaskState::Running {
                let problems: Vec<&str> = [gateway.as_ref().err(), vip_problem.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .collect();
                if !problems.is_empty() {
                    tracing::error!(task = %task.id, "{}", problems.join("; "));
                }
                status.error = problems.join("; ");
            }
            reports.push(status);
        }
        self.remove_unwanted(state).await;
        reports
    }

    /// ingress_sbox (eth0 on ingress, eth1 = 172.18.0.2 on docker_gwbridge,
    /// forwarding on) and the published-port rules of the host and of
    /// ingress_sbox.
    async fn build_routing_mesh(
        &mut self,
        state: &NodeState,
        overlays: &HashMap<String, Result<Overlay, String>>,
        gateway: &Result<netlib::Link, String>,
        underlay_mtu: u32,
    ) -> Result<(), String> {
        let Some(ingress) = state.networks.iter().filter_map(|a| a.network.as_ref()).find(|n| n.ingress)
        else {
            return Ok(());
        };
        let overlay = match overlays.get(&ingress.id) {
            Some(Ok(overlay)) => overlay,
            Some(Err(err)) => return Err(err.clone()),
            None => return Err("the ingress overlay was not built".into()),
        };
        let bridge =
            gateway.as_ref().map_err(|err| format!("no ingress_sbox without the gateway bridge: {err}"))?;
        let address: Ipv4Addr = state
            .ingress_address
            .parse()
            .map_err(|_| format!("invalid ingress address {:?}", state.ingress_address))?;
        let leg = GatewayLeg { bridge, address: INGRESS_SANDBOX_GATEWAY_ADDRESS, mtu: underlay_mtu };
        sandbox::ensure(&mut self.connections, &self.host, INGRESS_SANDBOX, &[(overlay, address)], Some(leg))
            .await
            .map_err(|e| e.to_string())?;
        let path = self.connections.namespaces().path(INGRESS_SANDBOX);
        let namespace = Some((INGRESS_SANDBOX, path.as_path()));
        let inode = self.connections.inode(INGRESS_SANDBOX).unwrap_or_default();
        let key = format!("{INGRESS_SANDBOX}@{inode}");
        if !self.rules.has(&key) {
            // Once per namespace: a new one (first pass, or made anew) gets it.
            netlib::sysctl::write(namespace, "net.ipv4.ip_forward", "1").await.map_err(|e| e.to_string())?;
        }
        let sandbox_rules =
            mesh::ingress_sandbox_rules(&state.published_ports, &state.ingress_address, &ingress.subnet);
        let target = mesh::Target { namespace, jumps: mesh::INGRESS_SANDBOX_JUMPS };
        self.rules.write(&key, &target, &sandbox_rules).await.map_err(|e| e.to_string())?;
        let target = mesh::Target { namespace: None, jumps: mesh::HOST_JUMPS };
        self.rules
            .write("host", &target, &mesh::host_rules(&state.published_ports))
            .await
            .map_err(|e| e.to_string())
    }

    /// The VIP rules of a task's sandbox: each service VIP of its networks
    /// balanced over that service's tasks.
    async fn write_vip_rules(
        &mut self,
        state: &NodeState,
        task: &netctl_proto::TaskSpec,
        sandbox: &str,
    ) -> Result<(), String> {
        let vips: Vec<_> = state
            .service_vips
            .iter()
            .filter(|vip| task.endpoints.iter().any(|e| e.network_id == vip.network_id))
            .collect();
        let path = self.connections.namespaces().path(sandbox);
        let target = mesh::Target { namespace: Some((sandbox, path.as_path())), jumps: mesh::SANDBOX_JUMPS };
        let key = format!("{sandbox}@{}", self.connections.inode(sandbox).unwrap_or_default());
        self.rules
            .write(&key, &target, &mesh::vip_rules(&vips))
            .await
            .map_err(|e| format!("service VIP rules: {e}"))
    }

    /// Notified when a task finished stopping, so that its sandbox can be
    /// removed without waiting for the next interval.
    pub fn task_stopped(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.supervisor.stopped()
    }

    /// The node's kernel objects, read back (see [`crate::readback`]).
    pub async fn topology(&mut self, state: &NodeState) -> netctl_proto::NodeTopology {
        crate::readback::read(&self.host, &mut self.connections, state).await
    }

    /// How long each sandbox made by the last pass took to set up (the
    /// namespace, its veth pairs, addresses and routes).
    pub fn sandbox_setup_times(&self) -> &[std::time::Duration] {
        &self.sandbox_setup_times
    }

    /// Builds every overlay of the desired state and writes its remote
    /// endpoints; the error of each that failed, by network ID.
    async fn build_overlays(
        &mut self,
        state: &NodeState,
        underlay_mtu: u32,
    ) -> HashMap<String, Result<Overlay, String>> {
        let IpAddr::V4(local) = self.advertise_addr else {
            let error = format!("advertise address {} is not IPv4", self.advertise_addr);
            return state
                .networks
                .iter()
                .filter_map(|a| a.network.as_ref())
                .map(|n| (n.id.clone(), Err(error.clone())))
                .collect();
        };
        let tunnel = Tunnel {
            local,
            port: state.data_path_port as u16,
            default_mtu: underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
        };
        let mut overlays = HashMap::new();
        for network in state.networks.iter().filter_map(|a| a.network.as_ref()) {
            let built = match overlay::ensure(&mut self.connections, &self.host, network, &tunnel).await {
                Ok(built) => {
                    let endpoints: Vec<_> =
                        state.remote_endpoints.iter().filter(|e| e.network_id == network.id).collect();
                    match peers::sync(&built.netlink, &endpoints).await {
                        Ok(()) => Ok(built),
                        Err(err) => Err(format!("writing remote endpoints of {}: {err}", network.name)),
                    }
                }
                Err(err) => Err(format!("building overlay {}: {err}", network.name)),
            };
            if let Err(err) = &built {
                tracing::error!("{err}");
            }
            overlays.insert(network.id.clone(), built);
        }
        overlays
    }

    /// The gateway-bridge address held by every existing sandbox (wanted or
    /// not: one about to be removed still holds its address this pass), by
    /// sandbox name.
    async fn gateway_addresses(&mut self) -> HashMap<String, Ipv4Addr> {
        let mut addresses = HashMap::new();
        let existing = self.connections.owned().unwrap_or_default();
        for name in existing.iter().filter(|n| !names::is_overlay_namespace(n) && *n != INGRESS_SANDBOX) {
            let Some(sandbox) = self.connections.existing(name).await else { continue };
            if let Ok(Some(address)) = sandbox::gateway_address(&sandbox).await {
                addresses.insert(name.clone(), address);
            }
        }
        addresses
    }

    async fn build_sandbox(
        &mut self,
        task: &netctl_proto::TaskSpec,
        overlays: &HashMap<String, Result<Overlay, String>>,
        gateway: &Result<netlib::Link, String>,
        gateway_addresses: &HashMap<String, Ipv4Addr>,
        underlay_mtu: u32,
    ) -> Result<(), String> {
        let mut legs = Vec::new();
        for endpoint in &task.endpoints {
            let overlay = match overlays.get(&endpoint.network_id) {
                Some(Ok(overlay)) => overlay,
                Some(Err(err)) => return Err(err.clone()),
                None => return Err(format!("network {} is not in the desired state", endpoint.network_id)),
            };
            let address: Ipv4Addr = endpoint
                .address
                .parse()
                .map_err(|_| format!("invalid endpoint address {}", endpoint.address))?;
            legs.push((overlay, address));
        }
        let gateway_leg = match gateway {
            Ok(bridge) => {
                let address = *gateway_addresses
                    .get(&names::sandbox_namespace(&task.id))
                    .ok_or("docker_gwbridge has no free address")?;
                Some(GatewayLeg { bridge, address, mtu: underlay_mtu })
            }
            Err(_) => None,
        };
        sandbox::ensure(&mut self.connections, &self.host, &task.id, &legs, gateway_leg)
            .await
            .map_err(|err| format!("setting up the sandbox: {err}"))
    }

    /// Removes sandboxes, processes and overlays the desired state no longer
    /// has. Every removal is tried, whatever failed before it.
    async fn remove_unwanted(&mut self, state: &NodeState) {
        let mut wanted_sandboxes: HashSet<String> =
            state.tasks.iter().map(|t| names::sandbox_namespace(&t.id)).collect();
        if !state.ingress_address.is_empty() {
            wanted_sandboxes.insert(INGRESS_SANDBOX.to_string());
        }
        let wanted_overlays: HashSet<String> = state
            .networks
            .iter()
            .filter_map(|a| a.network.as_ref())
            .map(|n| names::overlay_namespace(&n.id))
            .collect();
        let unwanted: Vec<String> =
            self.supervisor.known().into_iter().filter(|s| !wanted_sandboxes.contains(s)).collect();
        self.supervisor.stop(&unwanted, self.connections.namespaces());
        let existing = self.connections.owned().unwrap_or_else(|err| {
            tracing::error!("{err}");
            Vec::new()
        });
        for namespace in existing {
            let wanted = if names::is_overlay_namespace(&namespace) {
                wanted_overlays.contains(&namespace)
            } else {
                wanted_sandboxes.contains(&namespace)
            };
            // A sandbox stays until nothing of its task is left.
            if !wanted && !self.supervisor.holds(&namespace) {
                if let Some(inode) = self.connections.inode(&namespace) {
                    self.rules.forget(&format!("{namespace}@{inode}"));
                }
                match self.connections.delete(&namespace) {
                    Ok(()) => tracing::info!(namespace, "namespace removed"),
                    Err(err) => tracing::error!("{err}"),
                }
            }
        }
    }
}

/// The gateway-bridge address of every task's sandbox, by sandbox name:
/// the one it holds already (`held`, which also lists sandboxes on their way
/// out), or else the lowest address after 172.18.0.2 (ingress_sbox's) that
/// no sandbox holds and no other task of this pass was given (pure).
fn assign_gateway_addresses(
    state: &NodeState,
    mut held: HashMap<String, Ipv4Addr>,
) -> HashMap<String, Ipv4Addr> {
    let mut taken: HashSet<Ipv4Addr> = held.values().copied().collect();
    let mut candidates = (u32::from(GATEWAY_BRIDGE_GATEWAY) + 2
        ..=u32::from(Ipv4Addr::new(172, 18, 255, 254)))
        .map(Ipv4Addr::from);
    for task in &state.tasks {
        let sandbox = names::sandbox_namespace(&task.id);
        if held.contains_key(&sandbox) {
            continue;
        }
        if let Some(address) = candidates.by_ref().find(|a| !taken.contains(a)) {
            taken.insert(address);
            held.insert(sandbox, address);
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_tasks(ids: &[&str]) -> NodeState {
        let tasks = ids.iter().map(|id| netctl_proto::TaskSpec { id: id.to_string(), ..Default::default() });
        NodeState { tasks: tasks.collect(), ..Default::default() }
    }

    #[test]
    fn gateway_addresses_start_at_3_and_skip_taken_ones() {
        let state = state_with_tasks(&["aaaaaaaaaaaa", "bbbbbbbbbbbb"]);
        let assigned = assign_gateway_addresses(&state, HashMap::new());
        assert_eq!(assigned["aaaaaaaaaaaa"], Ipv4Addr::new(172, 18, 0, 3));
        assert_eq!(assigned["bbbbbbbbbbbb"], Ipv4Addr::new(172, 18, 0, 4));
    }

    #[test]
    fn gateway_addresses_are_distinct_within_a_pass_and_kept_across_passes() {
        let ids: Vec<String> = (0..10).map(|i| format!("task{i:08}")).collect();
        let state = state_with_tasks(&ids.iter().map(String::as_str).collect::<Vec<_>>());
        // task00000003 holds .3 already; a sandbox on its way out holds .5.
        let held = HashMap::from([
            ("task00000003".to_string(), Ipv4Addr::new(172, 18, 0, 3)),
            ("leaving00000".to_string(), Ipv4Addr::new(172, 18, 0, 5)),
        ]);
        let assigned = assign_gateway_addresses(&state, held);
        assert_eq!(assigned["task00000003"], Ipv4Addr::new(172, 18, 0, 3));
        let addresses: HashSet<Ipv4Addr> = assigned.values().copied().collect();
        assert_eq!(addresses.len(), assigned.len(), "an address was given twice: {assigned:?}");
        assert!(ids.iter().all(|id| assigned.contains_key(id)));
    }
}
