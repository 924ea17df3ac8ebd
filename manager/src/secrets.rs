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
use crate::store::{Batch, Store};
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

async fn share_once(store: &Store, data_dir: &Path) -> Result<(), ManagerError> {
    let mut writer = store.write_lock().await;
    if let (Some(cert), Some(key)) = (store.setting_bytes(CA_CERT_KEY)?, store.setting_bytes(CA_KEY_KEY)?) {
        write_file(&data_dir.join(CA_CERT_FILE), &text(&cert), 0o644)?;
        write_secret(&data_dir.join(CA_KEY_FILE), &text(&key))?;
        for kind in [TokenKind::Join, TokenKind::Admin] {
            if let Some(token) = store.setting_bytes(token_key(kind))? {
                write_secret(&data_dir.join(file_name(kind)), &text(&token))?;
            }
        }
        return Ok(());
    }
    // Nothing shared yet: load or make the CA and tokens here, then publish.
    let ca = crate::pki::ClusterCa::load_or_create(data_dir, crate::pki::DEFAULT_CERT_EXPIRY)?;
    let tokens = ClusterTokens::load_or_create(data_dir, &ca.digest)?;
    let key = std::fs::read(data_dir.join(CA_KEY_FILE)).map_err(|source| ManagerError::Io {
        context: format!("reading {}", data_dir.join(CA_KEY_FILE).display()),
        source,
    })?;
    let mut batch = Batch::new();
    batch.put_setting(CA_CERT_KEY, ca.ca_pem.as_bytes()).put_setting(CA_KEY_KEY, &key);
    for kind in [TokenKind::Join, TokenKind::Admin] {
        batch.put_setting(token_key(kind), format!("{}\n", tokens.current(kind).reveal()).as_bytes());
    }
    writer.commit(batch).await?;
    Ok(())
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
