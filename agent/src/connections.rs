//! One netlink connection per namespace, kept across passes. A connection
//! pins its namespace, so each is tied to the namespace file's inode: when
//! the namespace is deleted or replaced (by hand, or by us), the stale
//! connection is dropped instead of silently configuring an orphan.
//!
//! Every namespace the agent makes is recorded (an empty file in
//! `<run-dir>/netns-owned/`) before it is made, so the agent only ever
//! removes its own: an operator's `ip netns add` under the same folder (a
//! run dir of `/run` shares `/run/netns` with iproute2) is left alone.

use netlib::{NamespaceDir, Netlink};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Cached connections to the namespaces of one run dir.
pub struct Connections {
    namespaces: NamespaceDir,
    owned: PathBuf,
    open: HashMap<String, (u64, Netlink)>,
}

impl Connections {
    /// No connection yet; namespaces of `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        Self {
            namespaces: NamespaceDir::new(run_dir),
            owned: run_dir.join("netns-owned"),
            open: HashMap::new(),
        }
    }

    /// The namespace folder.
    pub fn namespaces(&self) -> &NamespaceDir {
        &self.namespaces
    }

    /// A connection to namespace `name`, creating the namespace if needed
    /// (and recording it as netctl's first).
    pub async fn ensure(&mut self, name: &str) -> netlib::Result<Netlink> {
        let record = self.owned.join(name);
        if !record.exists() {
            std::fs::create_dir_all(&self.owned).and_then(|()| std::fs::write(&record, b"")).map_err(
                |e| netlib::Error::os(format!("recording namespace {name} as netctl's"), "host", e),
            )?;
        }
        let path = self.namespaces.create_async(name).await?;
        self.open_existing(name, &path).await
    }

    /// A connection to namespace `name` if it exists; never creates or
    /// records anything (for reading back).
    pub async fn existing(&mut self, name: &str) -> Option<Netlink> {
        let path = self.namespaces.path(name);
        self.namespaces.exists(name).then_some(())?;
        self.open_existing(name, &path).await.ok()
    }

    async fn open_existing(&mut self, name: &str, path: &Path) -> netlib::Result<Netlink> {
        let inode = std::fs::metadata(path)
            .map_err(|e| netlib::Error::os(format!("reading namespace {name}"), "host", e))?
            .ino();
        if let Some((known, netlink)) = self.open.get(name) {
            if *known == inode {
                return Ok(netlink.clone());
            }
        }
        let netlink = Netlink::in_namespace_async(name, path).await?;
        self.open.insert(name.to_string(), (inode, netlink.clone()));
        Ok(netlink)
    }

    /// The inode of namespace `name` (it changes when the namespace is made
    /// anew), if it exists.
    pub fn inode(&self, name: &str) -> Option<u64> {
        std::fs::metadata(self.namespaces.path(name)).ok().map(|m| m.ino())
    }

    /// The namespaces netctl made that exist now.
    pub fn owned(&self) -> netlib::Result<Vec<String>> {
        let all = self.namespaces.list()?;
        Ok(all.into_iter().filter(|name| self.owned.join(name).exists()).collect())
    }

    /// Deletes namespace `name` (one netctl made) and drops its connection.
    pub fn delete(&mut self, name: &str) -> netlib::Result<()> {
        self.open.remove(name);
        self.namespaces.delete(name)?;
        match std::fs::remove_file(self.owned.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(netlib::Error::os(format!("removing the record of namespace {name}"), "host", e))
            }
            _ => Ok(()),
        }
    }
}
