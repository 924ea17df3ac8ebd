//! Writing sysctls of a namespace (`/proc/sys/net` shows the namespace of the
//! thread that opens it, so the write happens on a thread inside it, off the
//! async workers).

use crate::error::{Error, Result};
use crate::netns;
use std::path::Path;

/// Writes `value` to `/proc/sys/<key>` inside the namespace at `namespace`,
/// or in the caller's when `None`. The key is dotted (`net.ipv4.ip_forward`)
/// or, when a part holds dots or underscores that matter (an interface
/// name), a path (`net/ipv4/conf/docker_gwbridge/route_localnet`).
pub async fn write(namespace: Option<(&str, &Path)>, key: &str, value: &str) -> Result<()> {
    let path = if key.contains('/') {
        format!("/proc/sys/{key}")
    } else {
        format!("/proc/sys/{}", key.replace('.', "/"))
    };
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
