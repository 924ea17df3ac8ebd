//! The cluster's secrets shared through the store: the CA certificate and
//! key and the join and admin tokens. Every manager keeps a copy in its
//! own data dir (keys and tokens mode 0600), so that the CA loads as on a
//! single manager and client commands on any manager host find the admin
//! token; the store is the source of truth.
//!
//! At start a manager adopts what the store holds; when the store holds
//! nothing yet (a new cluster, or a data dir from before the store kept
//! secrets) it publishes what its data dir holds or makes. A token rotated
//! through any manager reaches the others' memory and files through
//! [`follow_tokens`].

use crate::error::ManagerError;
use crate::pki::{write_file, write_secret, CA_CERT_FILE, CA_KEY_FILE};
use crate::store::{Batch, Store, Writer};
use crate::tokens::{file_name, ClusterTokens};
use netctl_proto::pki::TokenKind;
use std::path::Path;
use std::sync::Arc;

/// Store setting keys of the secrets.
const CA_CERT_KEY: &str = "ca.crt";
const CA_KEY_KEY: &str = "ca.key";

/// The setting key of the token of `kind`.
pub fn token_key(kind: TokenKind) -> &'static str {
    file_name(kind)
}

/// Makes the data dir hold the store's secrets, or the store hold the data
/// dir's (made first when missing) when it has none.
pub async fn share(store: &Store, data_dir: &Path) -> Result<(), ManagerError> {
    crate::store::retrying(|| share_once(store, data_dir)).await
}

/// Where secrets made by this manager wait until the store took them: of
/// several managers starting on an empty store only one publishes, and the
/// others must never show their own (a join token read from their data dir
/// would pin a CA the cluster does not use).
const STAGING_DIR: &str = "secrets.unshared";

async fn share_once(store: &Store, data_dir: &Path) -> Result<(), ManagerError> {
    let mut writer = store.write_lock().await;
    if store.setting_bytes(CA_CERT_KEY)?.is_none() {
        let staging = data_dir.join(STAGING_DIR);
        // A data dir from before the store kept secrets publishes its own.
        let source = if data_dir.join(CA_CERT_FILE).exists() { data_dir } else { staging.as_path() };
        let published = publish(&mut writer, source).await;
        let _ = std::fs::remove_dir_all(&staging);
        published?;
    }
    adopt(store, data_dir)
}

/// Loads or makes the CA and tokens in `source` and commits them.
async fn publish(writer: &mut Writer<'_>, source: &Path) -> Result<(), ManagerError> {
    create_private_dir(source)?;
    let ca = crate::pki::ClusterCa::load_or_create(source, crate::pki::DEFAULT_CERT_EXPIRY)?;
    let tokens = ClusterTokens::load_or_create(source, &ca.digest)?;
    let key = std::fs::read(source.join(CA_KEY_FILE)).map_err(|source_err| ManagerError::Io {
        context: format!("reading {}", source.join(CA_KEY_FILE).display()),
        source: source_err,
    })?;
    let mut batch = Batch::new();
    batch.put_setting(CA_CERT_KEY, ca.ca_pem.as_bytes()).put_setting(CA_KEY_KEY, &key);
    for kind in [TokenKind::Join, TokenKind::Admin] {
        batch.put_setting(token_key(kind), format!("{}\n", tokens.current(kind).reveal()).as_bytes());
    }
    writer.commit(batch).await?;
    Ok(())
}

/// Writes the store's CA and tokens into the data dir.
fn adopt(store: &Store, data_dir: &Path) -> Result<(), ManagerError> {
    let (Some(cert), Some(key)) = (store.setting_bytes(CA_CERT_KEY)?, store.setting_bytes(CA_KEY_KEY)?)
    else {
        return Err(ManagerError::Refused("the store holds a CA certificate without its key".into()));
    };
    write_file(&data_dir.join(CA_CERT_FILE), &text(&cert), 0o644)?;
    write_secret(&data_dir.join(CA_KEY_FILE), &text(&key))?;
    for kind in [TokenKind::Join, TokenKind::Admin] {
        if let Some(token) = store.setting_bytes(token_key(kind))? {
            write_secret(&data_dir.join(file_name(kind)), &text(&token))?;
        }
    }
    Ok(())
}

/// `dir`, made mode 0700 when missing.
fn create_private_dir(dir: &Path) -> Result<(), ManagerError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).recursive(true).create(dir) {
        Ok(()) => Ok(()),
        Err(source) => Err(ManagerError::Io { context: format!("creating {}", dir.display()), source }),
    }
}

/// Keeps this manager's tokens (memory and files) equal to the store's, so
/// that a rotation through another manager takes effect here too.
pub async fn follow_tokens(
    store: Arc<Store>,
    tokens: Arc<ClusterTokens>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut revisions = store.subscribe();
    loop {
        for kind in [TokenKind::Join, TokenKind::Admin] {
            let stored = match store.setting_bytes(token_key(kind)) {
                Ok(Some(stored)) => stored,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!("reading the shared {} token: {err}", kind.name());
                    continue;
                }
            };
            if let Err(err) = tokens.adopt(kind, &text(&stored)) {
                tracing::warn!("adopting the shared {} token: {err}", kind.name());
            }
        }
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return },
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_manager_sharing_a_store_ends_with_its_one_ca_and_tokens_and_no_staging() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let data_dirs: Vec<_> = (0..3).map(|i| dir.path().join(format!("manager{i}"))).collect();
        for data_dir in &data_dirs {
            std::fs::create_dir_all(data_dir).unwrap();
        }
        let together = tokio::join!(
            share(&store, &data_dirs[0]),
            share(&store, &data_dirs[1]),
            share(&store, &data_dirs[2])
        );
        for result in [together.0, together.1, together.2] {
            result.unwrap();
        }
        let read = |data_dir: &Path, file: &str| std::fs::read_to_string(data_dir.join(file)).unwrap();
        for file in [CA_CERT_FILE, CA_KEY_FILE, file_name(TokenKind::Join), file_name(TokenKind::Admin)] {
            let first = read(&data_dirs[0], file);
            assert!(data_dirs.iter().all(|d| read(d, file) == first), "{file} differs between managers");
        }
        assert_eq!(
            store.setting_bytes(CA_CERT_KEY).unwrap().unwrap(),
            read(&data_dirs[0], CA_CERT_FILE).as_bytes()
        );
        assert!(data_dirs.iter().all(|d| !d.join(STAGING_DIR).exists()), "a staging dir was left");
    }
}
