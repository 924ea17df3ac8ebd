//! The cluster state on disk: the only module that touches sled.
//!
//! One tree per kind (`networks`, `nodes`) holding prost-encoded records keyed
//! by ID, and a `meta` tree with the revision counter and cluster settings.
//! Every change bumps the revision in the same transaction as the record and
//! is flushed to disk before the call returns, so an acknowledged change
//! survives a crash. Writers that read, decide and write (allocation) hold
//! [`Store::write_lock`] so that no value is handed out twice.

use netctl_proto::{Network, Node};
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::path::Path;
use tokio::sync::{watch, Mutex, MutexGuard};

const REVISION_KEY: &[u8] = b"revision";

/// A failure of the state store, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("{context}: {source}")]
    Sled {
        /// What the store was doing.
        context: String,
        /// sled's error.
        source: sled::Error,
    },
    /// A stored record could not be decoded.
    #[error("decoding {kind} record {key}: {source}")]
    Decode {
        /// "network", "node", ...
        kind: &'static str,
        /// The record's key.
        key: String,
        /// prost's error.
        source: prost::DecodeError,
    },
}

/// The kinds of record the store keeps, each in its own tree.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Overlay networks.
    Network,
    /// Nodes that joined.
    Node,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Node => "node",
        }
    }
}

/// The persistent cluster state.
pub struct Store {
    db: sled::Db,
    networks: sled::Tree,
    nodes: sled::Tree,
    meta: sled::Tree,
    revision: watch::Sender<u64>,
    write_lock: Mutex<()>,
}

fn sled_err(context: impl Into<String>) -> impl FnOnce(sled::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Sled { context, source }
}

impl Store {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::open(path).map_err(sled_err(format!("opening state store {}", path.display())))?;
        let tree = |name: &str| db.open_tree(name).map_err(sled_err(format!("opening tree {name}")));
        let (networks, nodes, meta) = (tree("networks")?, tree("nodes")?, tree("meta")?);
        let current =
            meta.get(REVISION_KEY).map_err(sled_err("reading the revision"))?.map_or(0, |v| decode_u64(&v));
        let (revision, _) = watch::channel(current);
        Ok(Self { db, networks, nodes, meta, revision, write_lock: Mutex::new(()) })
    }

    /// Serializes writers that read the state, decide, then write.
    pub async fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().await
    }

    /// The revision of the last committed change.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// A receiver that sees every new revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Every network.
    pub fn networks(&self) -> Result<Vec<Network>, StoreError> {
        self.all(Kind::Network)
    }

    /// Every node.
    pub fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        self.all(Kind::Node)
    }

    /// One node by full ID.
    pub fn node(&self, id: &str) -> Result<Option<Node>, StoreError> {
        let value = self.nodes.get(id).map_err(sled_err(format!("reading node {id}")))?;
        value.map(|v| decode(Kind::Node, id, &v)).transpose()
    }

    /// Stores a network and flushes it.
    pub async fn put_network(&self, network: &Network) -> Result<u64, StoreError> {
        self.commit(Kind::Network, &network.id, Some(network.encode_to_vec())).await
    }

    /// Removes a network and flushes the removal.
    pub async fn remove_network(&self, id: &str) -> Result<u64, StoreError> {
        self.commit(Kind::Network, id, None).await
    }

    /// Stores a node and flushes it.
    pub async fn put_node(&self, node: &Node) -> Result<u64, StoreError> {
        self.commit(Kind::Node, &node.id, Some(node.encode_to_vec())).await
    }

    /// A cluster setting kept in the meta tree.
    pub fn setting(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let value = self.meta.get(key).map_err(sled_err(format!("reading setting {key}")))?;
        Ok(value.map(|v| decode_u64(&v)))
    }

    /// Stores a cluster setting and flushes it.
    pub async fn put_setting(&self, key: &str, value: u64) -> Result<(), StoreError> {
        self.meta.insert(key, &value.to_be_bytes()).map_err(sled_err(format!("writing setting {key}")))?;
        self.flush().await
    }

    fn tree(&self, kind: Kind) -> &sled::Tree {
        match kind {
            Kind::Network => &self.networks,
            Kind::Node => &self.nodes,
        }
    }

    fn all<M: Message + Default>(&self, kind: Kind) -> Result<Vec<M>, StoreError> {
        self.tree(kind)
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(sled_err(format!("listing {}s", kind.name())))?;
                decode(kind, &String::from_utf8_lossy(&key), &value)
            })
            .collect()
    }

    /// Writes (or with `None` deletes) one record and bumps the revision in
    /// one transaction, flushes, then announces the new revision.
    async fn commit(&self, kind: Kind, key: &str, value: Option<Vec<u8>>) -> Result<u64, StoreError> {
        let context = format!("writing {} {key}", kind.name());
        let revision = (self.tree(kind), &self.meta)
            .transaction(|(records, meta)| {
                match &value {
                    Some(bytes) => records.insert(key.as_bytes(), bytes.as_slice())?,
                    None => records.remove(key.as_bytes())?,
                };
                let next = meta.get(REVISION_KEY)?.map_or(0, |v| decode_u64(&v)) + 1;
                meta.insert(REVISION_KEY, &next.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(next)
            })
            .map_err(|err| match err {
                TransactionError::Storage(source) => StoreError::Sled { context: context.clone(), source },
                TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
            })?;
        self.flush().await?;
        self.revision.send_replace(revision);
        Ok(revision)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map_err(sled_err("flushing the state store"))?;
        Ok(())
    }
}

fn decode<M: Message + Default>(kind: Kind, key: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|source| StoreError::Decode { kind: kind.name(), key: key.to_string(), source })
}

fn decode_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(id: &str, vni: u32) -> Network {
        Network { id: id.into(), name: format!("net-{id}"), vni, ..Default::default() }
    }

    #[tokio::test]
    async fn records_and_revision_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.revision(), 0);
            store.put_network(&network("a", 4097)).await.unwrap();
            store.put_network(&network("b", 4098)).await.unwrap();
            assert_eq!(store.remove_network("a").await.unwrap(), 3);
            store.put_setting("data_path_port", 4789).await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.revision(), 3);
        assert_eq!(store.networks().unwrap(), vec![network("b", 4098)]);
        assert_eq!(store.setting("data_path_port").unwrap(), Some(4789));
        assert_eq!(store.setting("missing").unwrap(), None);
    }

    #[tokio::test]
    async fn subscribers_see_each_new_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut revisions = store.subscribe();
        let node = Node { id: "n1".into(), hostname: "node0".into(), ..Default::default() };
        store.put_node(&node).await.unwrap();
        revisions.changed().await.unwrap();
        assert_eq!(*revisions.borrow(), 1);
        assert_eq!(store.node("n1").unwrap(), Some(node));
        assert_eq!(store.node("n2").unwrap(), None);
    }
}
