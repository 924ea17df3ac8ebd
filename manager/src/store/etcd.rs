//! The shared backend: the cluster state in etcd, under a key prefix.
//!
//! Layout under `PREFIX/`: `revision` (the cluster revision, 8 bytes),
//! `meta/KEY` (settings), `networks/ID`, `nodes/ID`, `services/ID`,
//! `tasks/ID`, `removed_nodes/ID`, `managers/ID` (records), and, outside the
//! revision, `alive/ID` and `heartbeats/ID` (lease-bound, see
//! `coordination`) and `election/` (the leader election).
//!
//! Reads are served from a cache of the whole prefix that one etcd watch
//! keeps current, so a change committed through any manager reaches this
//! one's subscribers (and so the agents' Watch streams) as soon as etcd
//! delivers it. While the watch is broken and the prefix cannot be read
//! again, reads fail with [`StoreError::Unavailable`] rather than answer
//! from a state that may be old. A commit is one etcd `Txn` guarded by the
//! revision the writer read.

mod members;

pub use members::Members;

use super::{decode_u64, Backend, BoxFuture, Change, Kind, StoreError};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// How long a commit waits to see its own change in the cache.
const SEE_OWN_WRITE: Duration = Duration::from_secs(3);
/// Entries per transaction when copying a store (etcd's default limit is
/// 128 operations per transaction).
const IMPORT_CHUNK: usize = 100;
/// Pause between attempts to read the prefix again after the watch broke.
const RESYNC_PAUSE: Duration = Duration::from_millis(500);

/// Where the etcd cluster is and how to reach it (`netctl manager
/// --etcd-endpoints`, `--etcd-prefix`, `--etcd-cacert/--etcd-cert/--etcd-key`).
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT` of the members.
    pub endpoints: Vec<String>,
    /// The key prefix of this cluster, e.g. `/netctl`.
    pub prefix: String,
    /// The CA that signed the members' certificates (https endpoints).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key, when the members require one.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

impl EtcdConfig {
    /// The prefix without a trailing slash, starting with one.
    pub fn normalized_prefix(&self) -> String {
        format!("/{}", self.prefix.trim_matches('/'))
    }

    fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }

    /// A client of one member (every request bounded by `timeout` when
    /// given); it connects on first use.
    async fn client_of(&self, endpoint: &str, timeout: Option<Duration>) -> Result<Client, String> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(members::REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(timeout) = timeout {
            options = options.with_timeout(timeout);
        }
        if let Some(tls) = self.tls()? {
            options = options.with_tls(tls);
        }
        Client::connect([endpoint], Some(options)).await.map_err(|err| format!("{endpoint}: {err}"))
    }

    fn tls(&self) -> Result<Option<TlsOptions>, String> {
        let read =
            |path: &PathBuf| std::fs::read(path).map_err(|err| format!("reading {}: {err}", path.display()));
        if self.ca_file.is_none() && self.client_identity.is_none() {
            return Ok(None);
        }
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &self.client_identity {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(tls))
    }
}

/// The cache of everything under the prefix.
#[derive(Debug, Default)]
struct Cache {
    /// Key (without `PREFIX/`) to value.
    entries: BTreeMap<String, Vec<u8>>,
    /// Whether the watch is following etcd.
    in_sync: bool,
    /// Why not, when not.
    broken: String,
}

/// The etcd backend.
pub struct EtcdBackend {
    config: EtcdConfig,
    prefix: String,
    members: Arc<Members>,
    cache: Arc<RwLock<Cache>>,
    revision: watch::Sender<u64>,
    /// The etcd revision the cache has applied.
    applied: watch::Receiver<i64>,
}

impl EtcdBackend {
    /// Connects, reads the prefix whole and starts following it. An
    /// unreachable etcd is an error naming the endpoints.
    pub async fn open(config: &EtcdConfig) -> Result<Self, StoreError> {
        let prefix = config.normalized_prefix();
        let unavailable = |context: String, reason: String| StoreError::Unavailable {
            context,
            endpoints: config.endpoints_text(),
            reason,
        };
        let members =
            Arc::new(Members::new(config).await.map_err(|reason| unavailable("connecting".into(), reason))?);
        let (entries, etcd_revision) = load(&members, &prefix)
            .await
            .map_err(|err| unavailable(format!("reading {prefix}/"), err.to_string()))?;
        let ours = entries.get("revision").map_or(0, |v| decode_u64(v));
        let cache = Arc::new(RwLock::new(Cache { entries, in_sync: true, broken: String::new() }));
        let (revision, _) = watch::channel(ours);
        let (applied_tx, applied) = watch::channel(etcd_revision);
        let follower = Follower {
            members: members.clone(),
            prefix: prefix.clone(),
            cache: cache.clone(),
            revision: revision.clone(),
            applied: applied_tx,
        };
        tokio::spawn(follower.run(etcd_revision));
        Ok(Self { config: config.clone(), prefix, members, cache, revision, applied })
    }

    /// The etcd members, for coordination (leases, election).
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// Sees every change the cache takes in (the etcd revision it reached),
    /// coordination keys included.
    pub fn changes(&self) -> watch::Receiver<i64> {
        self.applied.clone()
    }

    /// The full etcd key of a relative key.
    pub fn key(&self, relative: &str) -> String {
        format!("{}/{relative}", self.prefix)
    }

    /// Every cached entry whose key starts with `relative` (prefix
    /// stripped), for coordination keys that are not records.
    pub fn cached(&self, relative: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let cache = self.readable(&format!("reading {relative}"))?;
        Ok(cache
            .entries
            .range(relative.to_string()..)
            .take_while(|(key, _)| key.starts_with(relative))
            .map(|(key, value)| (key[relative.len()..].to_string(), value.clone()))
            .collect())
    }

    /// Copies `entries` (another store's [`super::Store::dump`]) into this
    /// prefix, which must be empty, and sets the revision to `revision`.
    /// The revision key is written last: a copy cut short leaves the prefix
    /// non-empty, so it is refused again rather than used.
    pub async fn import(&self, entries: &[Change], revision: u64) -> Result<(), StoreError> {
        let context = format!("copying {} entries into {}/", entries.len(), self.prefix);
        let options = GetOptions::new().with_prefix().with_count_only();
        let all = format!("{}/", self.prefix);
        let existing = self
            .members
            .call(|mut client| {
                let (all, options) = (all.clone(), options.clone());
                async move { client.get(all, Some(options)).await }
            })
            .await
            .map_err(|err| self.unavailable(&context, err.to_string()))?;
        if existing.count() > 0 {
            return Err(StoreError::NotEmpty { prefix: self.prefix.clone(), keys: existing.count() });
        }
        let revision_key = self.key("revision");
        let empty = || Compare::version(revision_key.clone(), CompareOp::Equal, 0);
        let mut chunks: Vec<Vec<TxnOp>> = entries
            .chunks(IMPORT_CHUNK)
            .map(|chunk| {
                chunk
                    .iter()
                    .filter_map(|change| {
                        let value = change.value.clone()?;
                        Some(TxnOp::put(self.key(&Self::relative(change.kind, &change.key)), value, None))
                    })
                    .collect()
            })
            .collect();
        chunks.push(vec![TxnOp::put(revision_key.clone(), revision.max(1).to_be_bytes().to_vec(), None)]);
        for operations in chunks {
            let txn = Txn::new().when([empty()]).and_then(operations);
            let response =
                self.members.txn(txn).await.map_err(|err| self.unavailable(&context, err.to_string()))?;
            if !response.succeeded() {
                return Err(StoreError::NotEmpty { prefix: self.prefix.clone(), keys: 1 });
            }
        }
        Ok(())
    }

    fn readable(&self, context: &str) -> Result<std::sync::RwLockReadGuard<'_, Cache>, StoreError> {
        let cache = self.cache.read().expect("etcd cache poisoned");
        if !cache.in_sync {
            return Err(self.unavailable(context, cache.broken.clone()));
        }
        Ok(cache)
    }

    fn unavailable(&self, context: &str, reason: String) -> StoreError {
        StoreError::Unavailable {
            context: context.to_string(),
            endpoints: self.config.endpoints_text(),
            reason,
        }
    }

    fn relative(kind: Kind, key: &str) -> String {
        format!("{}/{key}", kind.collection())
    }

    fn transaction(&self, changes: &[Change], expected: u64) -> Txn {
        let revision_key = self.key("revision");
        let guard = if expected == 0 {
            Compare::version(revision_key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::value(revision_key.clone(), CompareOp::Equal, expected.to_be_bytes().to_vec())
        };
        let mut operations: Vec<TxnOp> = changes
            .iter()
            .map(|change| {
                let key = self.key(&Self::relative(change.kind, &change.key));
                match &change.value {
                    Some(value) => TxnOp::put(key, value.clone(), None),
                    None => TxnOp::delete(key, None),
                }
            })
            .collect();
        operations.push(TxnOp::put(revision_key.clone(), (expected + 1).to_be_bytes().to_vec(), None));
        Txn::new().when([guard]).and_then(operations).or_else([TxnOp::get(revision_key, None)])
    }

    async fn commit_now(
        &self,
        changes: &[Change],
        expected: u64,
        context: String,
    ) -> Result<u64, StoreError> {
        // The revision key's put makes an event at this etcd revision: the
        // watch brings it in.
        let response = self
            .members
            .txn(self.transaction(changes, expected))
            .await
            .map_err(|failure| {
                let mut reason = failure.to_string();
                if failure.maybe_received {
                    reason.push_str(" (a member that did not answer may have received the change: it may still take effect when etcd runs again)");
                }
                self.unavailable(&context, reason)
            })?;
        let etcd_revision = response.header().map_or(0, |h| h.revision());
        if response.succeeded() {
            // Read-your-writes: wait for the watch to bring the change in.
            if !self.wait_applied(etcd_revision).await {
                tracing::warn!(
                    "{context}: committed at etcd revision {etcd_revision}, not yet seen by the watch"
                );
            }
            return Ok(expected + 1);
        }
        let found = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| decode_u64(kv.value())),
                _ => None,
            })
            .unwrap_or(0);
        // Let the cache catch up so that the retry reads the newer state.
        let mut ours = self.revision.subscribe();
        let _ = tokio::time::timeout(SEE_OWN_WRITE, ours.wait_for(|r| *r >= found)).await;
        Err(StoreError::Conflict { context, expected, found })
    }

    async fn wait_applied(&self, etcd_revision: i64) -> bool {
        let mut applied = self.applied.clone();
        let seen = tokio::time::timeout(SEE_OWN_WRITE, applied.wait_for(|r| *r >= etcd_revision)).await;
        matches!(seen, Ok(Ok(_)))
    }
}

impl Backend for EtcdBackend {
    fn read(&self, kind: Kind, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let relative = Self::relative(kind, key);
        let cache = self.readable(&format!("reading {} {key}", kind.name()))?;
        Ok(cache.entries.get(&relative).cloned())
    }

    fn scan(&self, kind: Kind) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.cached(&format!("{}/", kind.collection()))
    }

    fn commit<'a>(
        &'a self,
        changes: &'a [Change],
        expected: u64,
        context: String,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.commit_now(changes, expected, context))
    }

    fn revisions(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    fn location(&self) -> String {
        format!("etcd {} (prefix {})", self.config.endpoints_text(), self.prefix)
    }
}

/// Everything under `prefix/` and the etcd revision it was read at.
async fn load(members: &Members, prefix: &str) -> Result<(BTreeMap<String, Vec<u8>>, i64), members::Failure> {
    let all = format!("{prefix}/");
    let response = members
        .call(|mut client| {
            let all = all.clone();
            async move { client.get(all, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let entries = response.kvs().iter().map(|kv| (relative_key(prefix, kv.key()), kv.value().to_vec()));
    Ok((entries.collect(), revision))
}

/// An etcd key under `prefix/` without it.
fn relative_key(prefix: &str, key: &[u8]) -> String {
    String::from_utf8_lossy(key.get(prefix.len() + 1..).unwrap_or_default()).into_owned()
}

/// Keeps the cache current with one watch on the prefix; reads it whole
/// again whenever the watch breaks.
struct Follower {
    members: Arc<Members>,
    prefix: String,
    cache: Arc<RwLock<Cache>>,
    revision: watch::Sender<u64>,
    applied: watch::Sender<i64>,
}

impl Follower {
    async fn run(mut self, mut from: i64) {
        loop {
            let reason = self.follow(from).await;
            tracing::warn!(prefix = %self.prefix, "etcd watch ended: {reason}; reading the state again");
            from = self.resync(reason).await;
        }
    }

    /// Applies watch events after etcd revision `from` until the watch ends;
    /// why it ended.
    async fn follow(&mut self, from: i64) -> String {
        let options = WatchOptions::new().with_prefix().with_start_revision(from + 1);
        let mut client = self.members.stream_client();
        let mut stream = match client.watch(format!("{}/", self.prefix), Some(options)).await {
            Ok(watch) => watch,
            Err(err) => return err.to_string(),
        };
        loop {
            match stream.message().await {
                Ok(Some(response)) if response.canceled() => {
                    return format!("watch canceled (compacted at {})", response.compact_revision())
                }
                Ok(Some(response)) => {
                    let mut cache = self.cache.write().expect("etcd cache poisoned");
                    // Only events say how far the cache got: the header of
                    // a response without events (watch created, progress)
                    // may be ahead of events still to come.
                    let mut applied = *self.applied.borrow();
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        applied = applied.max(kv.mod_revision());
                        let key = relative_key(&self.prefix, kv.key());
                        match event.event_type() {
                            etcd_client::EventType::Put => cache.entries.insert(key, kv.value().to_vec()),
                            etcd_client::EventType::Delete => cache.entries.remove(&key),
                        };
                    }
                    self.publish(&cache, applied);
                }
                Ok(None) => return "the stream ended".into(),
                Err(err) => return err.to_string(),
            }
        }
    }

    /// Reads the prefix until it succeeds; the etcd revision read at.
    /// Reads fail as unavailable while this does.
    async fn resync(&mut self, reason: String) -> i64 {
        let mut first = true;
        loop {
            match load(&self.members, &self.prefix).await {
                Ok((entries, revision)) => {
                    let mut cache = self.cache.write().expect("etcd cache poisoned");
                    cache.entries = entries;
                    cache.in_sync = true;
                    self.publish(&cache, revision);
                    return revision;
                }
                Err(err) => {
                    let mut cache = self.cache.write().expect("etcd cache poisoned");
                    if first {
                        tracing::error!(prefix = %self.prefix, "etcd unreachable: {err} (after: {reason})");
                        first = false;
                    }
                    cache.in_sync = false;
                    cache.broken = err.to_string();
                }
            }
            tokio::time::sleep(RESYNC_PAUSE).await;
        }
    }

    fn publish(&self, cache: &Cache, etcd_revision: i64) {
        let ours = cache.entries.get("revision").map_or(0, |v| decode_u64(v));
        self.revision.send_if_modified(|current| std::mem::replace(current, ours) != ours);
        self.applied.send_replace(etcd_revision);
    }
}
