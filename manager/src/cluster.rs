//! The cluster's identity on the manager host: its CA and the manager's
//! certificate, its tokens (files in the data dir, mode 0600), its
//! data-path port, and the ingress network. Made at the first start, reused
//! by every later one.

use crate::error::ManagerError;
use crate::pki::{ClusterCa, ManagerIdentity};
use crate::store::etcd::{EtcdBackend, EtcdConfig};
use crate::tokens::ClusterTokens;
use crate::{networks, Store};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
/// The folder of the sled database inside the data dir.
const STATE_DIR: &str = "state";
/// The setting key of the VXLAN UDP port.
const DATA_PATH_PORT_KEY: &str = "data_path_port";
/// The VXLAN UDP port when none is given at cluster creation.
pub const DEFAULT_DATA_PATH_PORT: u16 = 4789;

/// What a manager start found or made.
pub struct Cluster {
    /// The root CA, signing node certificates.
    pub ca: Arc<ClusterCa>,
    /// The manager's TLS certificate and key.
    pub identity: ManagerIdentity,
    /// The join and admin tokens.
    pub tokens: Arc<ClusterTokens>,
    /// The VXLAN UDP port of every node.
    pub data_path_port: u16,
    /// Whether this start created the cluster.
    pub created: bool,
}

/// The file in the data dir that says which backend this manager's state
/// lives in, so that a start on the other one is refused rather than begin
/// an empty cluster beside the old one.
const BACKEND_MARKER: &str = "store-backend";

/// Opens the state store: sled in `data_dir`, or etcd when `etcd` is given
/// (with its backend, for coordinating managers). Creates the data dir
/// (mode 0700).
pub async fn open_store(
    data_dir: &Path,
    etcd: Option<&EtcdConfig>,
) -> Result<(Store, Option<Arc<EtcdBackend>>), ManagerError> {
    create_data_dir(data_dir)?;
    let marker_path = data_dir.join(BACKEND_MARKER);
    let marker = std::fs::read_to_string(&marker_path).unwrap_or_default();
    let sled_exists = data_dir.join(STATE_DIR).exists();
    let opened = match etcd {
        None if marker.starts_with("etcd") => {
            return Err(ManagerError::Refused(format!(
                "{} keeps its state in {}: start the manager with --etcd-endpoints",
                data_dir.display(),
                marker.trim()
            )))
        }
        None => (Store::open(&data_dir.join(STATE_DIR))?, None),
        Some(config) if sled_exists && !marker.starts_with("etcd") => {
            return Err(ManagerError::Refused(format!(
                "{} holds a sled store: copy it into etcd with `netctl manager --migrate-to-etcd \
                 --etcd-endpoints {}`, or start without --etcd-endpoints",
                data_dir.display(),
                config.endpoints.join(",")
            )))
        }
        Some(config) => {
            let (store, backend) = Store::open_etcd(config).await?;
            (store, Some(backend))
        }
    };
    let location = opened.0.location();
    crate::pki::write_file(&marker_path, &format!("{location}\n"), 0o644)?;
    Ok(opened)
}

/// The file in the data dir holding this manager's ID.
const MANAGER_ID_FILE: &str = "manager-id";

/// This manager's ID: kept in the data dir, made at the first start.
pub fn manager_id(data_dir: &Path) -> Result<String, ManagerError> {
    let path = data_dir.join(MANAGER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = crate::ids::new_id();
            crate::pki::write_file(&path, &format!("{id}\n"), 0o644)?;
            Ok(id)
        }
    }
}

/// Creates the data dir (mode 0700) when missing.
pub fn create_data_dir(data_dir: &Path) -> Result<(), ManagerError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir).map_err(|source| {
        ManagerError::Io { context: format!("creating data dir {}", data_dir.display()), source }
    })
}

/// Copies the sled store of `data_dir` into an empty etcd prefix, then
/// marks the data dir as kept in etcd. Refused when the prefix holds
/// anything. Returns how many entries were copied.
pub async fn migrate_to_etcd(data_dir: &Path, etcd: &EtcdConfig) -> Result<usize, ManagerError> {
    let state = data_dir.join(STATE_DIR);
    if !state.exists() {
        return Err(ManagerError::Refused(format!("{} holds no sled store to migrate", data_dir.display())));
    }
    let sled = Store::open(&state)?;
    crate::secrets::share(&sled, data_dir).await?;
    let entries = sled.dump()?;
    let revision = sled.revision();
    let (store, backend) = Store::open_etcd(etcd).await?;
    backend.import(&entries, revision).await?;
    crate::pki::write_file(&data_dir.join(BACKEND_MARKER), &format!("{}\n", store.location()), 0o644)?;
    Ok(entries.len())
}

/// Loads the cluster from `data_dir`, creating what is missing; node
/// certificates are signed for `cert_expiry`. The data-path port is fixed
/// when the cluster is created: asking for another one later is an error.
pub async fn bootstrap(
    store: &Store,
    data_dir: &Path,
    requested_port: Option<u16>,
    cert_expiry: Duration,
) -> Result<Cluster, ManagerError> {
    crate::secrets::share(store, data_dir).await?;
    let ca = ClusterCa::load_or_create(data_dir, cert_expiry)?;
    let identity = ca.manager_identity(data_dir)?;
    let tokens = ClusterTokens::load_or_create(data_dir, &ca.digest)?;
    let data_path_port = match (store.setting(DATA_PATH_PORT_KEY)?, requested_port) {
        (Some(stored), Some(asked)) if stored != u64::from(asked) => {
            return Err(ManagerError::Refused(format!(
                "--data-path-port {asked}: this cluster was created with data-path port {stored}, which cannot change"
            )))
        }
        (Some(stored), _) => stored as u16,
        (None, asked) => fix_data_path_port(store, asked.unwrap_or(DEFAULT_DATA_PATH_PORT)).await?,
    };
    let created = networks::ensure_ingress(store).await?;
    Ok(Cluster { ca: Arc::new(ca), identity, tokens: Arc::new(tokens), data_path_port, created })
}

/// Stores the data-path port unless another manager stored one first;
/// the port in effect.
async fn fix_data_path_port(store: &Store, port: u16) -> Result<u16, ManagerError> {
    crate::store::retrying(|| async {
        let mut writer = store.write_lock().await;
        if let Some(stored) = store.setting(DATA_PATH_PORT_KEY)? {
            return Ok(stored as u16);
        }
        writer.put_setting(DATA_PATH_PORT_KEY, u64::from(port)).await?;
        Ok(port)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::DEFAULT_CERT_EXPIRY;
    use netctl_proto::pki::TokenKind;

    #[tokio::test]
    async fn first_start_creates_and_later_starts_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let (store, _) = open_store(dir.path(), None).await.unwrap();
            bootstrap(&store, dir.path(), None, DEFAULT_CERT_EXPIRY).await.unwrap()
        };
        assert!(first.created);
        assert_eq!(first.data_path_port, 4789);
        assert_eq!(first.tokens.current(TokenKind::Join).ca_digest, first.ca.digest);

        let (store, _) = open_store(dir.path(), None).await.unwrap();
        let second = bootstrap(&store, dir.path(), Some(4789), DEFAULT_CERT_EXPIRY).await.unwrap();
        assert!(!second.created);
        assert_eq!(second.ca.digest, first.ca.digest);
        for kind in [TokenKind::Join, TokenKind::Admin] {
            assert_eq!(second.tokens.current(kind), first.tokens.current(kind));
        }
        assert!(bootstrap(&store, dir.path(), Some(4790), DEFAULT_CERT_EXPIRY).await.is_err());
    }
}
