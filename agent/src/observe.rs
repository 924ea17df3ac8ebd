//! Observing the node: its kernel objects read once per pass into a
//! [`KernelModel`]. Reading never creates anything: only namespaces netctl
//! made are read, and in the host namespace only netctl's objects
//! (`docker_gwbridge`, its ports, VXLAN devices waiting to move). What
//! cannot be read back cheaply every pass, sysctls and iptables rule sets,
//! is taken from what the agent wrote into this very namespace (a namespace
//! made anew starts with nothing written).

use crate::connections::Connections;
use crate::model::{KernelModel, LinkKind, LinkModel, NamespaceModel, RuleSet, HOST};
use crate::names::{GWBRIDGE, OWNER_ALIAS};
use netlib::neigh::parse_mac;
use netlib::Netlink;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// What the agent wrote that the kernel is not asked for again: sysctls and
/// rule sets (by fingerprint), per namespace instance (`name@inode`), kept
/// in `<run-dir>/written` so that a restarted agent knows them too.
#[derive(Debug)]
pub struct Written {
    file: PathBuf,
    instances: BTreeMap<String, InstanceWrites>,
}

/// What was written into one namespace instance: sysctls (key → value) and
/// rule sets (purpose → fingerprint).
type InstanceWrites = (BTreeMap<String, String>, BTreeMap<String, u64>);

impl Written {
    /// What was written before, as kept in `<run-dir>/written`.
    pub fn load(run_dir: &Path) -> Self {
        let file = run_dir.join("written");
        let mut written = Self { file, instances: BTreeMap::new() };
        let text = std::fs::read_to_string(&written.file).unwrap_or_default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            let [instance, kind, key, value] = fields[..] else { continue };
            let entry = written.instances.entry(instance.to_string()).or_default();
            match (kind, value.parse::<u64>()) {
                ("sysctl", _) => {
                    entry.0.insert(key.to_string(), value.to_string());
                }
                ("rules", Ok(fingerprint)) => {
                    entry.1.insert(key.to_string(), fingerprint);
                }
                _ => {}
            }
        }
        written
    }

    /// Keeps what was written in `<run-dir>/written` (atomically).
    pub fn save(&self) -> std::io::Result<()> {
        let mut text = String::new();
        for (instance, (sysctls, rules)) in &self.instances {
            for (key, value) in sysctls {
                text.push_str(&format!("{instance}\tsysctl\t{key}\t{value}\n"));
            }
            for (purpose, fingerprint) in rules {
                text.push_str(&format!("{instance}\trules\t{purpose}\t{fingerprint}\n"));
            }
        }
        let temporary = self.file.with_extension("new");
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, &self.file)
    }

    fn instance(connections: &Connections, namespace: &str) -> String {
        match namespace {
            HOST => HOST.to_string(),
            name => format!("{name}@{}", connections.inode(name).unwrap_or_default()),
        }
    }

    /// Records a sysctl written into `namespace`.
    pub fn sysctl(&mut self, connections: &Connections, namespace: &str, key: &str, value: &str) {
        let entry = self.instances.entry(Self::instance(connections, namespace)).or_default();
        entry.0.insert(key.to_string(), value.to_string());
    }

    /// Records a rule set written into `namespace`.
    pub fn rules(&mut self, connections: &Connections, namespace: &str, purpose: &str, rules: &RuleSet) {
        let entry = self.instances.entry(Self::instance(connections, namespace)).or_default();
        entry.1.insert(purpose.to_string(), rules.fingerprint());
    }

    /// Forgets the instances of namespaces that are gone.
    fn retain(&mut self, alive: &[String]) {
        self.instances.retain(|instance, _| alive.contains(instance));
    }
}

/// The node as it is.
#[derive(Debug, Default)]
pub struct Observed {
    /// netctl's kernel objects.
    pub model: KernelModel,
    /// A docker_gwbridge exists that netctl did not make.
    pub foreign_gwbridge: bool,
    /// The MTU of the host interface holding the advertise address, if one
    /// does.
    pub underlay_mtu: Option<u32>,
    /// That interface's name.
    pub underlay_link: Option<String>,
    /// What could not be read (the pass goes on with the rest).
    pub errors: Vec<netlib::Error>,
}

/// Reads the node: the host's netctl objects (and the MTU of the interface
/// holding `advertise`) and every namespace netctl made.
pub async fn observe(
    host: &Netlink,
    advertise: Ipv4Addr,
    connections: &mut Connections,
    written: &mut Written,
) -> Observed {
    let mut observed = Observed::default();
    let mut instances = vec![HOST.to_string()];
    match read_host(host, advertise).await {
        Ok(read) => {
            observed.model.namespaces.insert(HOST.to_string(), read.namespace);
            observed.foreign_gwbridge = read.foreign_gwbridge;
            observed.underlay_mtu = read.underlay.as_ref().map(|(_, mtu)| *mtu);
            observed.underlay_link = read.underlay.map(|(name, _)| name);
        }
        Err(err) => observed.errors.push(err),
    }
    let owned = connections.owned().unwrap_or_else(|err| {
        observed.errors.push(err);
        Vec::new()
    });
    for name in owned {
        let Some(netlink) = connections.existing(&name).await else { continue };
        match read_namespace(&netlink).await {
            Ok(namespace) => {
                observed.model.namespaces.insert(name.clone(), namespace);
                instances.push(Written::instance(connections, &name));
            }
            Err(err) => observed.errors.push(err),
        }
    }
    written.retain(&instances);
    for (name, namespace) in observed.model.namespaces.iter_mut() {
        if let Some((sysctls, rules)) = written.instances.get(&Written::instance(connections, name)) {
            namespace.sysctls = sysctls.clone();
            namespace.rules = rules.iter().map(|(p, f)| (p.clone(), RuleSet::written(*f))).collect();
        }
    }
    observed
}

/// What one dump of the host's links and addresses tells.
struct HostRead {
    namespace: NamespaceModel,
    foreign_gwbridge: bool,
    /// The interface holding the advertise address: name and MTU.
    underlay: Option<(String, u32)>,
}

/// The host's netctl objects: docker_gwbridge (when netctl made it), its
/// ports, and VXLAN devices not yet moved; whether a foreign docker_gwbridge
/// is in the way; the name and MTU of the interface holding `advertise`.
async fn read_host(host: &Netlink, advertise: Ipv4Addr) -> netlib::Result<HostRead> {
    let links = host.links().await?;
    let bridge = links.iter().find(|l| l.name == GWBRIDGE);
    let foreign = bridge.is_some_and(|b| b.alias != OWNER_ALIAS);
    let ours = bridge.filter(|_| !foreign).map(|b| b.index);
    let netctl_links = links.iter().filter(|l| {
        Some(l.index) == ours || (ours.is_some() && l.master == ours) || l.name.starts_with("vx-")
    });
    let addresses = host.addresses().await?;
    let names: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    let mut namespace = NamespaceModel::default();
    for link in netctl_links {
        namespace.links.insert(link.name.clone(), link_model(link, &names, &addresses));
    }
    let underlay = addresses.iter().find(|a| a.address == advertise);
    let underlay =
        underlay.and_then(|a| links.iter().find(|l| l.index == a.index)).map(|l| (l.name.clone(), l.mtu));
    Ok(HostRead { namespace, foreign_gwbridge: foreign, underlay })
}

/// Every object of a namespace netctl made.
async fn read_namespace(netlink: &Netlink) -> netlib::Result<NamespaceModel> {
    let links = netlink.links().await?;
    let addresses = netlink.addresses().await?;
    let names: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    let mut namespace = NamespaceModel::default();
    for link in &links {
        namespace.links.insert(link.name.clone(), link_model(link, &names, &addresses));
        if link.vxlan.is_some() {
            for entry in netlink.neighbours(link).await? {
                if let (Some(address), Some(mac)) = (entry.address, parse_mac(&entry.mac)) {
                    namespace.neighbours.insert((address, mac));
                }
            }
            for entry in netlink.fdb(link).await? {
                if let (Some(node), Some(mac)) = (entry.address, parse_mac(&entry.mac)) {
                    namespace.fdb.insert((mac, node));
                }
            }
        }
    }
    namespace.default_gateway = netlink
        .routes()
        .await?
        .iter()
        .find(|r| r.prefix == 0 && r.destination.is_unspecified())
        .and_then(|r| r.gateway);
    Ok(namespace)
}

fn link_model(
    link: &netlib::Link,
    names: &HashMap<u32, &str>,
    addresses: &[netlib::addr::Address],
) -> LinkModel {
    let kind = match (link.kind.as_str(), &link.vxlan) {
        (_, Some(vxlan)) => LinkKind::Vxlan {
            vni: vxlan.vni,
            port: vxlan.port,
            local: vxlan.local.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            learning: vxlan.learning,
        },
        ("bridge", _) => LinkKind::Bridge,
        ("veth", _) => LinkKind::Veth { peer_namespace: String::new(), peer: String::new() },
        _ if link.name == "lo" => LinkKind::Loopback,
        _ => LinkKind::Other,
    };
    LinkModel {
        kind,
        mtu: Some(link.mtu),
        up: link.up,
        master: link.master.and_then(|m| names.get(&m)).map(|n| n.to_string()),
        addresses: addresses
            .iter()
            .filter(|a| a.index == link.index)
            .map(|a| (a.address, a.prefix))
            .collect(),
        isolated: link.isolated == Some(true),
        mac: parse_mac(&link.mac),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_written_is_kept_across_a_restart() {
        let run_dir = tempfile::tempdir().unwrap();
        let connections = Connections::new(run_dir.path());
        let mut written = Written::load(run_dir.path());
        let rules = RuleSet::chains("*nat\nCOMMIT\n".into(), &[]);
        written.rules(&connections, HOST, "gwbridge", &rules);
        written.sysctl(&connections, HOST, "net.ipv4.ip_forward", "1");
        written.save().unwrap();
        let again = Written::load(run_dir.path());
        assert_eq!(again.instances, written.instances);
        assert_eq!(RuleSet::written(again.instances[HOST].1["gwbridge"]), rules);
    }
}
