//! The cluster state on disk: the only module that touches sled.
//!
//! One tree per kind (`networks`, `nodes`, `services`, `tasks`,
//! `removed_nodes`) holding
//! prost-encoded records keyed by ID, and a `meta` tree with the revision counter and cluster settings.
//! Every change (one record or a [`Batch`]) bumps the revision in the same
//! transaction and is flushed to disk before the call returns, so an acknowledged change
//! survives a crash. Writers that read, decide and write (allocation) hold
//! [`Store::write_lock`] so that no value is handed out twice.

use netctl_proto::{Network, Node, RemovedNode, Service, Task};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Overlay networks.
    Network,
    /// Nodes that joined.
    Node,
    /// Services.
    Service,
    /// Tasks (replicas), current and recent history.
    Task,
    /// Nodes removed from the cluster (their certificates are refused).
    RemovedNode,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Network, Kind::Node, Kind::Service, Kind::Task, Kind::RemovedNode];

    fn name(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::RemovedNode => "removed_node",
        }
    }

    fn position(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).expect("every kind is listed")
    }
}

/// A record kept in the store, keyed by its ID.
pub trait Record: Message + Default {
    /// The tree it lives in.
    const KIND: Kind;
    /// Its key.
    fn key(&self) -> &str;
}

macro_rules! record {
    ($type:ty, $kind:expr) => {
        impl Record for $type {
            const KIND: Kind = $kind;
            fn key(&self) -> &str {
                &self.id
            }
        }
    };
}
record!(Network, Kind::Network);
record!(Node, Kind::Node);
record!(Service, Kind::Service);
record!(Task, Kind::Task);
record!(RemovedNode, Kind::RemovedNode);

/// Changes committed together: all or none.
#[derive(Debug, Default)]
pub struct Batch {
    changes: Vec<(Kind, String, Option<Vec<u8>>)>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `record`.
    pub fn put<R: Record>(&mut self, record: &R) -> &mut Self {
        self.changes.push((R::KIND, record.key().to_string(), Some(record.encode_to_vec())));
        self
    }

    /// Deletes the record of kind `R` with key `key`.
    pub fn delete<R: Record>(&mut self, key: &str) -> &mut Self {
        self.changes.push((R::KIND, key.to_string(), None));
        self
    }

    /// Whether nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The task changes, decoded: `(id, Some(task))` for a write, `(id, None)`
    /// for a deletion (for tests and logs).
    pub fn tasks(&self) -> Vec<(String, Option<netctl_proto::Task>)> {
        self.changes
            .iter()
            .filter(|(kind, _, _)| *kind == Kind::Task)
            .map(|(_, key, value)| {
                (
                    key.clone(),
                    value.as_ref().map(|bytes| Task::decode(bytes.as_slice()).expect("encoded here")),
                )
            })
            .collect()
    }
}

/// The persistent cluster state.
pub struct Store {
    db: sled::Db,
    trees: Vec<sled::Tree>,
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
        let trees =
            Kind::ALL.iter().map(|kind| tree(&format!("{}s", kind.name()))).collect::<Result<_, _>>()?;
        let meta = tree("meta")?;
        let current =
            meta.get(REVISION_KEY).map_err(sled_err("reading the revision"))?.map_or(0, |v| decode_u64(&v));
        let (revision, _) = watch::channel(current);
        Ok(Self { db, trees, meta, revision, write_lock: Mutex::new(()) })
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

    /// Every record of kind `R`.
    pub fn all<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        self.trees[R::KIND.position()]
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(sled_err(format!("listing {}s", R::KIND.name())))?;
                decode(R::KIND, &String::from_utf8_lossy(&key), &value)
            })
            .collect()
    }

    /// The record of kind `R` with key `key`.
    pub fn get<R: Record>(&self, key: &str) -> Result<Option<R>, StoreError> {
        let value = self.trees[R::KIND.position()]
            .get(key)
            .map_err(sled_err(format!("reading {} {key}", R::KIND.name())))?;
        value.map(|v| decode(R::KIND, key, &v)).transpose()
    }

    /// Every network.
    pub fn networks(&self) -> Result<Vec<Network>, StoreError> {
        self.all()
    }

    /// Every node.
    pub fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        self.all()
    }

    /// One node by full ID.
    pub fn node(&self, id: &str) -> Result<Option<Node>, StoreError> {
        self.get(id)
    }

    /// Writes one record and flushes it.
    pub async fn put<R: Record>(&self, record: &R) -> Result<u64, StoreError> {
        let mut batch = Batch::new();
        batch.put(record);
        self.commit(batch).await
    }

    /// Deletes one record and flushes the deletion.
    pub async fn delete<R: Record>(&self, key: &str) -> Result<u64, StoreError> {
        let mut batch = Batch::new();
        batch.delete::<R>(key);
        self.commit(batch).await
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

    /// Applies `batch` and bumps the revision in one transaction, flushes,
    /// then announces the new revision.
    pub async fn commit(&self, batch: Batch) -> Result<u64, StoreError> {
        let context = match batch.changes.as_slice() {
            [(kind, key, _)] => format!("writing {} {key}", kind.name()),
            changes => format!("writing {} records", changes.len()),
        };
        let mut trees: Vec<&sled::Tree> = self.trees.iter().collect();
        trees.push(&self.meta);
        let revision = trees
            .as_slice()
            .transaction(|views| {
                for (kind, key, value) in &batch.changes {
                    let view = &views[kind.position()];
                    match value {
                        Some(bytes) => view.insert(key.as_bytes(), bytes.as_slice())?,
                        None => view.remove(key.as_bytes())?,
                    };
                }
                let meta = views.last().expect("meta tree");
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
            store.put(&network("a", 4097)).await.unwrap();
            store.put(&network("b", 4098)).await.unwrap();
            assert_eq!(store.delete::<Network>("a").await.unwrap(), 3);
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
        store.put(&node).await.unwrap();
        revisions.changed().await.unwrap();
        assert_eq!(*revisions.borrow(), 1);
        assert_eq!(store.node("n1").unwrap(), Some(node));
        assert_eq!(store.node("n2").unwrap(), None);
    }
}
