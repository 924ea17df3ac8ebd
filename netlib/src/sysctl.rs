//! Writing sysctls of a namespace (`/proc/sys/net` shows the namespace of the
//! thread that opens it, so the write happens on a thread inside it).

use crate::error::{Error, Result};
use crate::netns;
use std::path::Path;

/// Writes `value` to `/proc/sys/<key>` inside the namespace at `namespace`,
/// or in the caller's when `None`. The key is dotted (`net.ipv4.ip_forward`)
/// or, when a part holds dots or underscores that matter (an interface
/// name), a path (`net/ipv4/conf/docker_gwbridge/route_localnet`).
pub fn write(namespace: Option<(&str, &Path)>, key: &str, value: &str) -> Result<()> {
    let path = if key.contains('/') {
        format!("/proc/sys/{key}")
    } else {
        format!("/proc/sys/{}", key.replace('.', "/"))
    };
    let label = namespace.map_or("host", |(name, _)| name);
    let write = || std::fs::write(&path, value);
    let written = match namespace {
        Some((_, ns_path)) => netns::run_in(ns_path, write)?,
        None => write(),
    };
    written.map_err(|e| Error::os(format!("setting {key}={value}"), label, e))
}
