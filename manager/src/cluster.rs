//! The cluster's identity on the manager host: its CA and the manager's
//! certificate, its tokens (files in the data dir, mode 0600), its
//! data-path port, and the ingress network. Made at the first start, reused
//! by every later one.

use crate::error::ManagerError;
use crate::pki::{ClusterCa, ManagerIdentity};
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

/// Opens the state store in `data_dir`, creating the folder (mode 0700).
pub fn open_store(data_dir: &Path) -> Result<Store, ManagerError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir).map_err(|source| {
        ManagerError::Io { context: format!("creating data dir {}", data_dir.display()), source }
    })?;
    Ok(Store::open(&data_dir.join(STATE_DIR))?)
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
        (None, asked) => {
            let port = asked.unwrap_or(DEFAULT_DATA_PATH_PORT);
            store.put_setting(DATA_PATH_PORT_KEY, u64::from(port)).await?;
            port
        }
    };
    let created = networks::ensure_ingress(store).await?;
    Ok(Cluster { ca: Arc::new(ca), identity, tokens: Arc::new(tokens), data_path_port, created })
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
            let store = open_store(dir.path()).unwrap();
            bootstrap(&store, dir.path(), None, DEFAULT_CERT_EXPIRY).await.unwrap()
        };
        assert!(first.created);
        assert_eq!(first.data_path_port, 4789);
        assert_eq!(first.tokens.current(TokenKind::Join).ca_digest, first.ca.digest);

        let store = open_store(dir.path()).unwrap();
        let second = bootstrap(&store, dir.path(), Some(4789), DEFAULT_CERT_EXPIRY).await.unwrap();
        assert!(!second.created);
        assert_eq!(second.ca.digest, first.ca.digest);
        for kind in [TokenKind::Join, TokenKind::Admin] {
            assert_eq!(second.tokens.current(kind), first.tokens.current(kind));
        }
        assert!(bootstrap(&store, dir.path(), Some(4790), DEFAULT_CERT_EXPIRY).await.is_err());
    }
}
