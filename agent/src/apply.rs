//! Applying a plan: each [`Action`] carried out through netlib, in order,
//! with namespace work on threads of its own and iptables as awaited
//! processes, so the async workers are never held. Every action is tried,
//! whatever failed before it, and each failure is kept with the object it
//! concerns (netavark's error-list style).

use crate::connections::Connections;
use crate::model::{RuleScope, RuleSet, HOST};
use crate::names::{self, OWNER_ALIAS};
use crate::observe::Written;
use crate::plan::Action;
use netlib::neigh::Neighbour;
use netlib::{iptables, netns, sysctl, Netlink, VxlanSpec};
use std::collections::{BTreeMap, HashMap};

/// An action that failed, and what the kernel (or iptables) said; shown as
/// what was being done, on which object, in which namespace.
#[derive(Debug, thiserror::Error)]
#[error("{} in {}: {source}", describe(action), action.namespace())]
pub struct ActionError {
    /// The action.
    pub action: Action,
    /// Why it failed.
    #[source]
    pub source: netlib::Error,
}

impl ActionError {
    /// The error of `action` (logged with the pass's failures).
    fn new(action: &Action, source: netlib::Error) -> Self {
        ActionError { action: action.clone(), source }
    }
}

/// How many namespaces get their rule sets written at the same time.
const RULE_WRITERS: usize = 16;

/// Carries out actions on this node.
pub struct Applier<'a> {
    /// The host namespace.
    pub host: &'a Netlink,
    /// Connections to the namespaces under the run dir.
    pub connections: &'a mut Connections,
    /// Sysctls and rule sets written, for the next observation.
    pub written: &'a mut Written,
    /// Links looked up during this apply, by (namespace, name): each is
    /// asked of the kernel once, not once per action on it.
    links: HashMap<(String, String), netlib::Link>,
}

impl<'a> Applier<'a> {
    /// An applier for one pass.
    pub fn new(host: &'a Netlink, connections: &'a mut Connections, written: &'a mut Written) -> Self {
        Self { host, connections, written, links: HashMap::new() }
    }
}

impl Applier<'_> {
    /// Applies every action; the failures, and how long rule sets and
    /// sysctls took (processes and threads) beside links, addresses and
    /// entries (netlink). Rule sets come last, those of different
    /// namespaces side by side: each is an `iptables-restore` that spends
    /// most of its life waiting for the kernel (an RCU grace period as its
    /// nftables socket closes), not computing.
    pub async fn apply(&mut self, actions: &[Action]) -> (Vec<ActionError>, std::time::Duration) {
        let mut errors = Vec::new();
        let mut writing = std::time::Duration::ZERO;
        let (rule_sets, others): (Vec<&Action>, Vec<&Action>) =
            actions.iter().partition(|a| matches!(a, Action::WriteRules { .. }));
        for action in others {
            let started = std::time::Instant::now();
            let result = self.apply_one(action).await;
            if matches!(action, Action::SetSysctl { .. }) {
                writing += started.elapsed();
            }
            if let Err(source) = result {
                errors.push(ActionError::new(action, source));
            }
        }
        let started = std::time::Instant::now();
        errors.extend(self.write_all_rules(&rule_sets).await);
        (errors, writing + started.elapsed())
    }

    /// Writes rule sets, at most [`RULE_WRITERS`] namespaces at a time and
    /// one rule set at a time in each.
    async fn write_all_rules(&mut self, rule_sets: &[&Action]) -> Vec<ActionError> {
        let mut by_namespace: BTreeMap<&str, Vec<&Action>> = BTreeMap::new();
        for action in rule_sets {
            by_namespace.entry(action.namespace()).or_default().push(action);
        }
        let groups: Vec<Vec<&Action>> = by_namespace.into_values().collect();
        let mut results = Vec::with_capacity(rule_sets.len());
        for chunk in groups.chunks(RULE_WRITERS) {
            let writing = chunk.iter().map(|group| self.write_group(group));
            results.extend(futures::future::join_all(writing).await.into_iter().flatten());
        }
        let mut errors = Vec::new();
        for (action, result) in results {
            match (action, result) {
                (Action::WriteRules { namespace, purpose, rules }, Ok(())) => {
                    self.written.rules(self.connections, namespace, purpose, rules);
                }
                (_, Err(source)) => errors.push(ActionError::new(action, source)),
                _ => {}
            }
        }
        errors
    }

    /// A connection to an existing namespace (or the host's).
    async fn netlink(&mut self, namespace: &str) -> netlib::Result<Netlink> {
        if namespace == HOST {
            return Ok(self.host.clone());
        }
        self.connections.existing(namespace).await.ok_or_else(|| {
            netlib::Error::other("connecting", namespace, "the namespace does not exist".to_string())
        })
    }

    /// A link by name, from this apply's lookups or the kernel.
    async fn link(&mut self, namespace: &str, name: &str) -> netlib::Result<netlib::Link> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(link) = self.links.get(&key) {
            return Ok(link.clone());
        }
        let link = self.netlink(namespace).await?.require_link(name).await?;
        self.links.insert(key, link.clone());
        Ok(link)
    }

    /// Forgets lookups an action makes stale: the links it makes or
    /// deletes, and every link of a namespace made or removed.
    fn forget_links(&mut self, action: &Action) {
        match action {
            Action::CreateNamespace(namespace) | Action::DeleteNamespace(namespace) => {
                self.links.retain(|(ns, _), _| ns != namespace);
            }
            Action::CreateVeth { namespace, name, inner_namespace, inner, .. } => {
                self.links.remove(&(namespace.clone(), name.clone()));
                self.links.remove(&(inner_namespace.clone(), inner.clone()));
            }
            Action::CreateBridge { namespace, name, .. }
            | Action::CreateVxlan { namespace, name, .. }
            | Action::DeleteLink { namespace, name } => {
                self.links.remove(&(namespace.clone(), name.clone()));
            }
            _ => {}
        }
    }

    async fn apply_one(&mut self, action: &Action) -> netlib::Result<()> {
        self.forget_links(action);
        match action {
            Action::CreateNamespace(name) => self.connections.ensure(name).await.map(|_| ()),
            Action::DeleteNamespace(name) => {
                let result = self.connections.delete(name);
                if result.is_ok() {
                    tracing::info!(namespace = %name, "namespace removed");
                }
                result
            }
            Action::CreateBridge { namespace, name, mtu } => {
                self.netlink(namespace).await?.create_bridge(name, *mtu, OWNER_ALIAS).await.map(|_| ())
            }
            Action::CreateVxlan { namespace, name, vni, port, local, mtu } => {
                let spec = VxlanSpec {
                    name: names::vxlan_staging(*vni),
                    vni: *vni,
                    port: *port,
                    local: *local,
                    mtu: *mtu,
                };
                self.create_vxlan(namespace, name, &spec).await
            }
            Action::CreateVeth { namespace, name, inner_namespace, inner, mtu, inner_mac } => {
                let outer = self.netlink(namespace).await?;
                let target = netns::open(&self.connections.namespaces().path(inner_namespace))?;
                outer.create_veth(name, inner, &target, *mtu, *inner_mac).await
            }
            Action::DeleteLink { namespace, name } => {
                // Gone already (with the other end of its pair) is fine.
                self.netlink(namespace).await?.delete_link_named(name).await
            }
            Action::SetMtu { namespace, name, mtu } => {
                let link = self.link(namespace, name).await?;
                self.netlink(namespace).await?.set_mtu(&link, *mtu).await
            }
            Action::SetMaster { namespace, name, bridge } => {
                let (link, bridge) = (self.link(namespace, name).await?, self.link(namespace, bridge).await?);
                self.netlink(namespace).await?.set_master(&link, &bridge).await
            }
            Action::SetIsolated { namespace, name, isolated } => {
                let link = self.link(namespace, name).await?;
                self.netlink(namespace).await?.set_bridge_port_isolated(&link, *isolated).await
            }
            Action::AddAddress { namespace, name, address, prefix } => {
                let link = self.link(namespace, name).await?;
                self.netlink(namespace).await?.add_address(&link, *address, *prefix).await
            }
            Action::SetUp { namespace, name } => {
                let link = self.link(namespace, name).await?;
                self.netlink(namespace).await?.set_up(&link).await
            }
            Action::SetDefaultRoute { namespace, gateway } => {
                self.netlink(namespace).await?.set_default_route(*gateway).await
            }
            Action::ReplaceNeighbour { namespace, address, mac } => {
                let vxlan = self.link(namespace, names::VXLAN).await?;
                self.netlink(namespace).await?.replace_neighbour(&vxlan, *address, *mac).await
            }
            Action::ReplaceFdb { namespace, mac, node } => {
                let vxlan = self.link(namespace, names::VXLAN).await?;
                self.netlink(namespace).await?.replace_fdb(&vxlan, *mac, *node).await
            }
            Action::DeleteNeighbour { namespace, address, mac } => {
                let netlink = self.netlink(namespace).await?;
                let entry = self.entry(&netlink, *address, *mac).await?;
                netlink.delete_neighbour(&entry).await
            }
            Action::DeleteFdb { namespace, mac, node } => {
                let netlink = self.netlink(namespace).await?;
                let entry = self.entry(&netlink, *node, *mac).await?;
                netlink.delete_fdb(&entry).await
            }
            Action::SetSysctl { namespace, key, value } => {
                let path = self.connections.namespaces().path(namespace);
                let target = (namespace != HOST).then_some((namespace.as_str(), path.as_path()));
                sysctl::write(target, key, value).await?;
                self.written.sysctl(self.connections, namespace, key, value);
                Ok(())
            }
            Action::WriteRules { .. } => unreachable!("rule sets are written by write_all_rules"),
        }
    }

    /// A neighbour or FDB entry on vxlan0.
    async fn entry(
        &self,
        netlink: &Netlink,
        address: std::net::Ipv4Addr,
        mac: [u8; 6],
    ) -> netlib::Result<Neighbour> {
        let vxlan = netlink.require_link(names::VXLAN).await?;
        Ok(Neighbour { index: vxlan.index, address: Some(address), mac: netlib::link::format_mac(&mac) })
    }

    /// Creates the VXLAN device in the host namespace (its UDP socket lives
    /// there), moves it into `namespace` and renames it `name`.
    async fn create_vxlan(&mut self, namespace: &str, name: &str, spec: &VxlanSpec) -> netlib::Result<()> {
        let overlay = self.netlink(namespace).await?;
        // A leftover of an attempt that failed half way.
        self.host.delete_link_named(&spec.name).await?;
        self.host.create_vxlan(spec).await?;
        let staged = self.host.require_link(&spec.name).await?;
        let target = netns::open(&self.connections.namespaces().path(namespace))?;
        self.host.move_to(&staged, &target, namespace).await?;
        let moved = overlay.require_link(&spec.name).await?;
        overlay.rename(&moved, name).await
    }

    /// Writes the rule sets of one namespace, one after the other.
    async fn write_group<'a>(&self, group: &[&'a Action]) -> Vec<(&'a Action, netlib::Result<()>)> {
        let mut results = Vec::with_capacity(group.len());
        for action in group {
            if let Action::WriteRules { namespace, rules, .. } = action {
                results.push((*action, self.write_rules(namespace, rules).await));
            }
        }
        results
    }

    /// Writes a rule set: tables of netctl's own whole, in one process;
    /// chains in the host's tables, then the jumps into them.
    async fn write_rules(&self, namespace: &str, rules: &RuleSet) -> netlib::Result<()> {
        let path = self.connections.namespaces().path(namespace);
        let target = (namespace != HOST).then_some((namespace, path.as_path()));
        match rules.scope {
            RuleScope::Tables => iptables::replace_tables(target, &rules.text).await,
            RuleScope::Chains(jumps) => {
                iptables::restore(target, &rules.text).await?;
                for (table, chain, rule) in jumps {
                    iptables::ensure_jump(target, table, chain, rule).await?;
                }
                Ok(())
            }
        }
    }
}

/// What an action does, to which object, for its error.
fn describe(action: &Action) -> String {
    match action {
        Action::CreateNamespace(name) => format!("creating namespace {name}"),
        Action::DeleteNamespace(name) => format!("removing namespace {name}"),
        Action::CreateBridge { name, .. } => format!("creating bridge {name}"),
        Action::CreateVxlan { name, vni, .. } => format!("creating {name} (VNI {vni})"),
        Action::CreateVeth { name, inner, inner_namespace, .. } => {
            format!("creating veth pair {name} (other end {inner} in {inner_namespace})")
        }
        Action::DeleteLink { name, .. } => format!("deleting {name}"),
        Action::SetMtu { name, mtu, .. } => format!("setting MTU {mtu} on {name}"),
        Action::SetMaster { name, bridge, .. } => format!("enslaving {name} to {bridge}"),
        Action::SetIsolated { name, isolated: true, .. } => format!("isolating bridge port {name}"),
        Action::SetIsolated { name, isolated: false, .. } => {
            format!("no longer isolating bridge port {name}")
        }
        Action::AddAddress { name, address, prefix, .. } => {
            format!("adding address {address}/{prefix} to {name}")
        }
        Action::SetUp { name, .. } => format!("bringing up {name}"),
        Action::SetDefaultRoute { gateway, .. } => format!("setting the default route via {gateway}"),
        Action::ReplaceNeighbour { address, .. } | Action::DeleteNeighbour { address, .. } => {
            format!("writing neighbour entry {address}")
        }
        Action::ReplaceFdb { node, .. } | Action::DeleteFdb { node, .. } => {
            format!("writing FDB entry to {node}")
        }
        Action::SetSysctl { key, value, .. } => format!("setting {key}={value}"),
        Action::WriteRules { purpose, .. } => format!("writing rules {purpose}"),
    }
}
