//! Writing sysctls of a namespace (`/proc/sys/net` shows the namespace of the
//! thread that opens it, so the write happens on a thread inside it, off the
//! async workers).

use crate::error::{Error, Result};
use crate::netns;
use std::path::Path;

/// br_netfilter's switch, one per namespace: whether frames a bridge
/// switches pass through that namespace's iptables (1 in every new
/// namespace where the kernel has br_netfilter).
pub const BRIDGE_NETFILTER: &str = "net.bridge.bridge-nf-call-iptables";

/// The file of sysctl `key`: dotted (`net.ipv4.ip_forward`) or, when a part
/// holds dots or underscores that matter (an interface name), a path
/// (`net/ipv4/conf/docker_gwbridge/route_localnet`).
fn file(key: &str) -> String {
    if key.contains('/') {
        format!("/proc/sys/{key}")
    } else {
        format!("/proc/sys/{}", key.replace('.', "/"))
    }
}

/// Whether this kernel has sysctl `key` (read in the caller's namespace).
pub fn exists(key: &str) -> bool {
    Path::new(&file(key)).exists()
}

/// Writes `value` to sysctl `key` (see [`file`]) inside the namespace at
/// `namespace`, or in the caller's when `None`.
pub async fn write(namespace: Option<(&str, &Path)>, key: &str, value: &str) -> Result<()> {
    let path = file(key);
    let label = namespace.map_or("host", |(name, _)| name);
    let target = namespace.map(|(_, p)| netns::open(p)).transpose()?;
    let contents = value.to_string();
    let written = netns::on_thread(move || {
        if let Some(target) = target {
            nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)?;
        }
        std::fs::write(&path, &contents)
    })
    .await;
    written.map_err(|e| Error::os(format!("setting {key}={value}"), label, e))
}
