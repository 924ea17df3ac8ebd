//! The cluster state: one interface, two backends.
//!
//! Records (`networks`, `nodes`, `services`, `tasks`, `removed_nodes`,
//! `managers`) are prost-encoded and keyed by ID; settings (the data-path
//! port, the CA, the tokens) are raw bytes. Every change (a [`Batch`]) bumps
//! the cluster's revision in the same transaction and is durable before the
//! call returns. Writers read, decide and write under a [`Writer`]: its
//! commit succeeds only if nothing was committed since the writer began
//! (by this manager or any other sharing the store), otherwise it fails with
//! [`StoreError::Conflict`] and the caller starts over ([`retrying`]). So
//! no subnet, VNI, address or port is ever handed out twice.
//!
//! Backends: [`sled`] in the data dir (one manager, the default) and
//! [`etcd`] (any number of managers in front of one etcd cluster).

pub mod etcd;
mod sled_backend;
#[cfg(test)]
mod suite;

use netctl_proto::{ManagerRecord, Network, Node, RemovedNode, Service, Task};
use prost::Message;
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{watch, Mutex, MutexGuard};

/// The most changes one commit holds: etcd refuses a transaction of more
/// than 128 operations unless its `--max-txn-ops` is raised, and a commit
/// adds the revision's. Larger sets of independent changes go in parts
/// ([`Writer::commit_in_parts`]).
pub const MAX_CHANGES_PER_COMMIT: usize = 100;

/// How many times an operation is started over after losing a race with
/// another writer before it gives up.
pub const CONFLICT_RETRIES: usize = 50;

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
    /// etcd answered with an error, or could not be reached.
    #[error("store unavailable: {context}: etcd at {endpoints}: {reason}")]
    Unavailable {
        /// What the store was doing.
        context: String,
        /// The endpoints tried.
        endpoints: String,
        /// What the client said.
        reason: String,
    },
    /// Another writer committed since this one read the state.
    #[error("the state changed while {context} (revision {expected}, now {found}); try again")]
    Conflict {
        /// What the store was doing.
        context: String,
        /// The revision the writer read.
        expected: u64,
        /// The revision found at commit.
        found: u64,
    },
    /// A copy into etcd found the prefix in use.
    #[error("etcd prefix {prefix}/ is not empty ({keys} keys): a store is copied only into an empty prefix")]
    NotEmpty {
        /// The prefix.
        prefix: String,
        /// How many keys it holds.
        keys: i64,
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

/// The kinds of entry the store keeps, each in its own tree or key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Managers that ever served this cluster.
    Manager,
    /// Cluster settings (raw bytes): data-path port, CA, tokens.
    Setting,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 7] = [
        Kind::Network,
        Kind::Node,
        Kind::Service,
        Kind::Task,
        Kind::RemovedNode,
        Kind::Manager,
        Kind::Setting,
    ];

    /// The singular name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::RemovedNode => "removed_node",
            Kind::Manager => "manager",
            Kind::Setting => "setting",
        }
    }

    /// The tree (sled) or key segment (etcd) it lives in.
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Setting => "meta",
            Kind::Network => "networks",
            Kind::Node => "nodes",
            Kind::Service => "services",
            Kind::Task => "tasks",
            Kind::RemovedNode => "removed_nodes",
            Kind::Manager => "managers",
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
record!(ManagerRecord, Kind::Manager);

/// One write of a [`Batch`]: `Some(bytes)` to store, `None` to delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Where.
    pub kind: Kind,
    /// The record's key.
    pub key: String,
    /// The new value, or none for a deletion.
    pub value: Option<Vec<u8>>,
}

/// Changes committed together: all or none.
#[derive(Debug, Default)]
pub struct Batch {
    changes: Vec<Change>,
    /// Only tasks reported doing what they are meant to ([`Batch::task_progress`]).
    task_progress: bool,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch for tasks that now do what they are meant to (run,
    /// as desired): a change nothing plans on, which the orchestrator
    /// need not read the cluster again for ([`Store::only_task_progress_since`]).
    pub fn task_progress() -> Self {
        Self { task_progress: true, ..Self::default() }
    }

    /// Writes `record`.
    pub fn put<R: Record>(&mut self, record: &R) -> &mut Self {
        self.push(R::KIND, record.key(), Some(record.encode_to_vec()))
    }

    /// Deletes the record of kind `R` with key `key`.
    pub fn delete<R: Record>(&mut self, key: &str) -> &mut Self {
        self.push(R::KIND, key, None)
    }

    /// Writes the setting `key`.
    pub fn put_setting(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.push(Kind::Setting, key, Some(value.to_vec()))
    }

    /// Deletes the setting `key`.
    pub fn delete_setting(&mut self, key: &str) -> &mut Self {
        self.push(Kind::Setting, key, None)
    }

    fn push(&mut self, kind: Kind, key: &str, value: Option<Vec<u8>>) -> &mut Self {
        self.changes.push(Change { kind, key: key.to_string(), value });
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
            .filter(|change| change.kind == Kind::Task)
            .map(|change| {
                let task =
                    change.value.as_ref().map(|bytes| Task::decode(bytes.as_slice()).expect("encoded here"));
                (change.key.clone(), task)
            })
            .collect()
    }

    fn context(&self) -> String {
        match self.changes.as_slice() {
            [change] => format!("writing {} {}", change.kind.name(), change.key),
            changes => format!("writing {} records", changes.len()),
        }
    }
}

/// A future a backend returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend does; [`Store`] adds types, the write lock and retries.
pub trait Backend: Send + Sync {
    /// The value of `key` in `kind`.
    fn read(&self, kind: Kind, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every key and value of `kind`, ordered by key.
    fn scan(&self, kind: Kind) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies `changes` and sets the revision to `expected + 1`, durably,
    /// if the revision is still `expected`; a [`StoreError::Conflict`]
    /// otherwise. Returns once reads see the change.
    fn commit<'a>(
        &'a self,
        changes: &'a [Change],
        expected: u64,
        context: String,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// Announces every new revision, whoever committed it.
    fn revisions(&self) -> watch::Receiver<u64>;
    /// Where the state lives, for `cluster info`.
    fn location(&self) -> String;
}

/// The cluster state, whichever backend keeps it.
pub struct Store {
    backend: Arc<dyn Backend>,
    revisions: watch::Receiver<u64>,
    write_lock: Mutex<()>,
    /// The records of each kind last read whole ([`Store::shared`]).
    decoded: std::sync::Mutex<HashMap<Kind, Decoded>>,
    /// This manager's latest commits, at most [`COMMITS_KEPT`], by
    /// revision: [`Store::shared`] brings the records it read to a later
    /// revision from them rather than reading every record again, and
    /// [`Store::only_task_progress_since`] tells task progress apart.
    commits: std::sync::Mutex<BTreeMap<u64, Committed>>,
}

/// How many of its latest commits a store keeps for its readers; a reader
/// further behind reads every record again (and the orchestrator plans
/// again).
const COMMITS_KEPT: usize = 64;

/// One of this manager's commits, kept for its readers.
struct Committed {
    /// Made from a [`Batch::task_progress`].
    task_progress: bool,
    /// What it wrote.
    changes: Vec<Change>,
}

/// Records of one kind decoded (a `Vec` of them), with the revision seen
/// before they were read.
type Decoded = (u64, Arc<dyn Any + Send + Sync>);

impl Store {
    /// Opens (or creates) the embedded sled store in `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::over(Arc::new(sled_backend::SledBackend::open(path)?)))
    }

    /// Opens the cluster state in etcd; the backend is returned too, for
    /// the coordination of managers (leases, election).
    pub async fn open_etcd(config: &etcd::EtcdConfig) -> Result<(Self, Arc<etcd::EtcdBackend>), StoreError> {
        let backend = Arc::new(etcd::EtcdBackend::open(config).await?);
        Ok((Self::over(backend.clone()), backend))
    }

    fn over(backend: Arc<dyn Backend>) -> Self {
        let revisions = backend.revisions();
        Self {
            backend,
            revisions,
            write_lock: Mutex::new(()),
            decoded: Default::default(),
            commits: Default::default(),
        }
    }

    /// Where the state lives: `sled PATH` or `etcd ENDPOINTS (prefix P)`.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Starts a read-decide-write: writers of this manager queue here, and
    /// the commit fails if anyone committed since.
    pub async fn write_lock(&self) -> Writer<'_> {
        let guard = self.write_lock.lock().await;
        Writer { store: self, expected: self.revision(), _guard: guard }
    }

    /// The revision of the last committed change this manager has seen.
    pub fn revision(&self) -> u64 {
        *self.revisions.borrow()
    }

    /// A receiver that sees every new revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revisions.clone()
    }

    /// Whether every revision after `revision`, to the latest seen, was
    /// committed here from a [`Batch::task_progress`]: since `revision`,
    /// only tasks started doing what they were meant to. Another manager's
    /// commits are not known to be such.
    pub fn only_task_progress_since(&self, revision: u64) -> bool {
        let commits = self.commits.lock().expect("commits lock");
        (revision + 1..=self.revision()).all(|r| commits.get(&r).is_some_and(|c| c.task_progress))
    }

    /// Every record of kind `R`.
    pub fn all<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        self.backend.scan(R::KIND)?.into_iter().map(|(key, value)| decode(R::KIND, &key, &value)).collect()
    }

    /// Every record of kind `R`, decoded once per revision and shared by
    /// every reader of that revision: the orchestrator and the nodes'
    /// desired state each read the whole cluster at every change. What a
    /// read returns holds the revision this manager has seen, maybe with
    /// parts of later ones (as [`Store::all`]), and this manager's own
    /// commits once they returned (each is seen before it returns). The
    /// records of a revision this manager committed itself are those
    /// before with what the commit wrote, decoded alone (a task reporting
    /// Running decodes one task, not the cluster's 11,000); another
    /// manager's commit makes it read every record again.
    pub fn shared<R: Record + Clone + Send + Sync + 'static>(&self) -> Result<Arc<Vec<R>>, StoreError> {
        let revision = self.revision();
        let cached = self.decoded.lock().expect("decoded records lock").get(&R::KIND).cloned();
        let cached =
            cached.and_then(|(read_at, records)| Some((read_at, records.downcast::<Vec<R>>().ok()?)));
        let records = match cached {
            // Read at this revision, or at a later one another reader saw.
            Some((read_at, records)) if read_at >= revision => return Ok(records),
            Some((read_at, records)) => match self.written_since::<R>(read_at, revision, records.len()) {
                Some(written) if written.is_empty() => records,
                Some(written) => Arc::new(with_written(&records, written)?),
                None => Arc::new(self.all::<R>()?),
            },
            None => Arc::new(self.all::<R>()?),
        };
        let entry = (revision, records.clone() as Arc<dyn Any + Send + Sync>);
        self.decoded.lock().expect("decoded records lock").insert(R::KIND, entry);
        Ok(records)
    }

    /// What this manager's commits after revision `from`, to `to`, wrote
    /// to records of kind `R` (the latest value of each key, by key), if
    /// it committed every one of those revisions itself and they wrote
    /// fewer than a quarter of `held` records (more, and reading them all
    /// again costs about the same).
    fn written_since<R: Record>(
        &self,
        from: u64,
        to: u64,
        held: usize,
    ) -> Option<BTreeMap<String, Option<Vec<u8>>>> {
        let commits = self.commits.lock().expect("commits lock");
        let mut written = BTreeMap::new();
        for revision in from + 1..=to {
            for change in commits.get(&revision)?.changes.iter().filter(|change| change.kind == R::KIND) {
                written.insert(change.key.clone(), change.value.clone());
                if written.len() * 4 > held {
                    return None;
                }
            }
        }
        Some(written)
    }

    fn remember_commit(&self, revision: u64, batch: Batch) {
        let mut commits = self.commits.lock().expect("commits lock");
        commits.insert(revision, Committed { task_progress: batch.task_progress, changes: batch.changes });
        if commits.len() > COMMITS_KEPT {
            commits.pop_first();
        }
    }

    /// The record of kind `R` with key `key`.
    pub fn get<R: Record>(&self, key: &str) -> Result<Option<R>, StoreError> {
        self.backend.read(R::KIND, key)?.map(|v| decode(R::KIND, key, &v)).transpose()
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

    /// A numeric cluster setting.
    pub fn setting(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.setting_bytes(key)?.map(|v| decode_u64(&v)))
    }

    /// A cluster setting as stored.
    pub fn setting_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.backend.read(Kind::Setting, key)
    }

    /// Every entry of every kind (for copying a store).
    pub fn dump(&self) -> Result<Vec<Change>, StoreError> {
        let mut changes = Vec::new();
        for kind in Kind::ALL {
            for (key, value) in self.backend.scan(kind)? {
                changes.push(Change { kind, key, value: Some(value) });
            }
        }
        Ok(changes)
    }
}

/// A read-decide-write in progress (see [`Store::write_lock`]).
pub struct Writer<'a> {
    store: &'a Store,
    expected: u64,
    _guard: MutexGuard<'a, ()>,
}

impl Writer<'_> {
    /// Writes one record.
    pub async fn put<R: Record>(&mut self, record: &R) -> Result<u64, StoreError> {
        let mut batch = Batch::new();
        batch.put(record);
        self.commit(batch).await
    }

    /// Deletes one record.
    pub async fn delete<R: Record>(&mut self, key: &str) -> Result<u64, StoreError> {
        let mut batch = Batch::new();
        batch.delete::<R>(key);
        self.commit(batch).await
    }

    /// Stores a numeric cluster setting.
    pub async fn put_setting(&mut self, key: &str, value: u64) -> Result<u64, StoreError> {
        let mut batch = Batch::new();
        batch.put_setting(key, &value.to_be_bytes());
        self.commit(batch).await
    }

    /// Applies `batch`, whose changes do not depend on each other, in
    /// commits of at most [`MAX_CHANGES_PER_COMMIT`] changes; the last
    /// revision. A conflict stops it with the earlier parts applied. An
    /// empty batch commits nothing (the revision stays).
    pub async fn commit_in_parts(&mut self, batch: Batch) -> Result<u64, StoreError> {
        let mut revision = self.expected;
        let (mut changes, task_progress) = (batch.changes, batch.task_progress);
        while !changes.is_empty() {
            let rest = changes.split_off(changes.len().min(MAX_CHANGES_PER_COMMIT));
            revision = self.commit(Batch { changes, task_progress }).await?;
            changes = rest;
        }
        Ok(revision)
    }

    /// Applies `batch` if nothing was committed since this writer began (or
    /// since its last commit); the new revision.
    pub async fn commit(&mut self, batch: Batch) -> Result<u64, StoreError> {
        let revision = self.store.backend.commit(&batch.changes, self.expected, batch.context()).await?;
        self.expected = revision;
        self.store.remember_commit(revision, batch);
        Ok(revision)
    }
}

/// Runs `operation` (a read-decide-write) until it does not lose a race
/// with another writer, at most [`CONFLICT_RETRIES`] times.
pub async fn retrying<T, E, F, Fut>(mut operation: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: AsConflict,
{
    let mut attempt = 0;
    loop {
        match operation().await {
            Err(err) if err.is_conflict() && attempt < CONFLICT_RETRIES => attempt += 1,
            result => return result,
        }
    }
}

/// An error that may be a lost race ([`StoreError::Conflict`]).
pub trait AsConflict {
    /// Whether starting over may succeed.
    fn is_conflict(&self) -> bool;
}

impl AsConflict for StoreError {
    fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// `records` (ordered by key, as a scan reads them) with `written` (the
/// latest value of each key written since, `None` for a deletion) in
/// place: one ordered walk of both.
fn with_written<R: Record + Clone>(
    records: &[R],
    written: BTreeMap<String, Option<Vec<u8>>>,
) -> Result<Vec<R>, StoreError> {
    let mut merged = Vec::with_capacity(records.len() + written.len());
    let mut before = records.iter().peekable();
    for (key, value) in written {
        while let Some(record) = before.next_if(|r| r.key() < key.as_str()) {
            merged.push(record.clone());
        }
        before.next_if(|r| r.key() == key);
        if let Some(value) = value {
            merged.push(decode(R::KIND, &key, &value)?);
        }
    }
    merged.extend(before.cloned());
    Ok(merged)
}

fn decode<M: Message + Default>(kind: Kind, key: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|source| StoreError::Decode { kind: kind.name(), key: key.to_string(), source })
}

/// A revision or numeric setting as stored (8 bytes, big-endian).
pub fn decode_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}
