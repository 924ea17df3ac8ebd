//! One netlink connection per namespace, kept across passes. A connection
//! pins its namespace, so each is tied to the namespace file's inode: when
//! the namespace is deleted or replaced (by hand, or by us), the stale
//! connection is dropped instead of silently configuring an orphan.

use netlib::{NamespaceDir, Netlink};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

/// Cached connections to the namespaces of one run dir.
pub struct Connections {
    namespaces: NamespaceDir,
    open: HashMap<String, (u64, Netlink)>,
}

impl Connections {
    /// No connection yet.
    pub fn new(namespaces: NamespaceDir) -> Self {
        Self { namespaces, open: HashMap::new() }
    }

    /// The namespace folder.
    pub fn namespaces(&self) -> &NamespaceDir {
        &self.namespaces
    }

    /// A connection to namespace `name`, creating the namespace if needed.
    pub fn ensure(&mut self, name: &str) -> netlib::Result<Netlink> {
        let path = self.namespaces.create(name)?;
        let inode = std::fs::metadata(&path)
            .map_err(|e| netlib::Error::os(format!("reading namespace {name}"), "host", e))?
            .ino();
        if let Some((known, netlink)) = self.open.get(name) {
            if *known == inode {
                return Ok(netlink.clone());
            }
        }
        let netlink = Netlink::in_namespace(name, &path)?;
        self.open.insert(name.to_string(), (inode, netlink.clone()));
        Ok(netlink)
    }

    /// The inode of namespace `name` (it changes when the namespace is made
    /// anew), if it exists.
    pub fn inode(&self, name: &str) -> Option<u64> {
        std::fs::metadata(self.namespaces.path(name)).ok().map(|m| m.ino())
    }

    /// Deletes namespace `name` and drops its connection.
    pub fn delete(&mut self, name: &str) -> netlib::Result<()> {
        self.open.remove(name);
        self.namespaces.delete(name)
    }
}
