//! The embedded backend: sled in the data dir, one tree per kind and a
//! `meta` tree with the revision and the settings. Every commit is one sled
//! transaction over all trees, flushed before it returns.

use super::{Backend, BoxFuture, Change, Kind, StoreError};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::path::{Path, PathBuf};
use tokio::sync::watch;

const REVISION_KEY: &[u8] = b"revision";

/// The sled database and its trees.
pub struct SledBackend {
    path: PathBuf,
    db: sled::Db,
    /// One tree per record kind, in [`Kind::ALL`] order (settings, last
    /// there, live in `meta`).
    trees: Vec<sled::Tree>,
    meta: sled::Tree,
    revision: watch::Sender<u64>,
}

fn sled_err(context: impl Into<String>) -> impl FnOnce(sled::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Sled { context, source }
}

impl SledBackend {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::open(path).map_err(sled_err(format!("opening state store {}", path.display())))?;
        let tree = |name: &str| db.open_tree(name).map_err(sled_err(format!("opening tree {name}")));
        let records = Kind::ALL.iter().filter(|kind| **kind != Kind::Setting);
        let trees = records.map(|kind| tree(kind.collection())).collect::<Result<Vec<_>, _>>()?;
        let meta = tree(Kind::Setting.collection())?;
        let current = meta
            .get(REVISION_KEY)
            .map_err(sled_err("reading the revision"))?
            .map_or(0, |v| super::decode_u64(&v));
        let (revision, _) = watch::channel(current);
        Ok(Self { path: path.to_path_buf(), db, trees, meta, revision })
    }

    fn tree(&self, kind: Kind) -> &sled::Tree {
        match kind {
            Kind::Setting => &self.meta,
            _ => &self.trees[kind.position()],
        }
    }

    fn apply(&self, changes: &[Change], expected: u64, context: &str) -> Result<u64, StoreError> {
        // The meta tree is last, at the position of Kind::Setting.
        let mut trees: Vec<&sled::Tree> = self.trees.iter().collect();
        trees.push(&self.meta);
        let result = trees.as_slice().transaction(|views| {
            let meta = views.last().expect("meta tree");
            let found = meta.get(REVISION_KEY)?.map_or(0, |v| super::decode_u64(&v));
            if found != expected {
                return Err(ConflictableTransactionError::Abort(found));
            }
            for change in changes {
                let view = &views[change.kind.position()];
                match &change.value {
                    Some(bytes) => view.insert(change.key.as_bytes(), bytes.as_slice())?,
                    None => view.remove(change.key.as_bytes())?,
                };
            }
            meta.insert(REVISION_KEY, &(expected + 1).to_be_bytes())?;
            Ok(expected + 1)
        });
        result.map_err(|err| match err {
            TransactionError::Storage(source) => StoreError::Sled { context: context.to_string(), source },
            TransactionError::Abort(found) => {
                StoreError::Conflict { context: context.to_string(), expected, found }
            }
        })
    }
}

impl Backend for SledBackend {
    fn read(&self, kind: Kind, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.tree(kind).get(key).map_err(sled_err(format!("reading {} {key}", kind.name())))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn scan(&self, kind: Kind) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.tree(kind)
            .iter()
            .filter(|entry| {
                kind != Kind::Setting || !matches!(entry, Ok((key, _)) if key.as_ref() == REVISION_KEY)
            })
            .map(|entry| {
                let (key, value) = entry.map_err(sled_err(format!("listing {}s", kind.name())))?;
                Ok((String::from_utf8_lossy(&key).into_owned(), value.to_vec()))
            })
            .collect()
    }

    fn commit<'a>(
        &'a self,
        changes: &'a [Change],
        expected: u64,
        context: String,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let revision = self.apply(changes, expected, &context)?;
            self.db.flush_async().await.map_err(sled_err(format!("{context}: flushing the state store")))?;
            self.revision.send_replace(revision);
            Ok(revision)
        })
    }

    fn revisions(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    fn location(&self) -> String {
        format!("sled {}", self.path.display())
    }
}
