//! The cluster's identity on the manager host: its tokens (files in the data
//! dir, mode 0600), its data-path port, and the ingress network. Made at the
//! first start, reused by every later one.

use crate::error::ManagerError;
use crate::{ids, networks, Store};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use netctl_proto::convention::{ADMIN_TOKEN_FILE, JOIN_TOKEN_FILE};
/// The folder of the sled database inside the data dir.
const STATE_DIR: &str = "state";
/// The setting key of the VXLAN UDP port.
const DATA_PATH_PORT_KEY: &str = "data_path_port";
/// The VXLAN UDP port when none is given at cluster creation.
pub const DEFAULT_DATA_PATH_PORT: u16 = 4789;

/// What a manager start found or made.
#[derive(Debug)]
pub struct Cluster {
    /// Agents present it to join.
    pub join_token: String,
    /// Client commands present it.
    pub admin_token: String,
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

/// Loads the cluster from `data_dir`, creating what is missing. The data-path
/// port is fixed when the cluster is created: asking for another one later is
/// an error.
pub async fn bootstrap(
    store: &Store,
    data_dir: &Path,
    requested_port: Option<u16>,
) -> Result<Cluster, ManagerError> {
    let join_token = token_file(&data_dir.join(JOIN_TOKEN_FILE), "JOIN")?;
    let admin_token = token_file(&data_dir.join(ADMIN_TOKEN_FILE), "ADMIN")?;
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
    Ok(Cluster { join_token, admin_token, data_path_port, created })
}

/// The token in `path`, or a new one written there with mode 0600.
fn token_file(path: &PathBuf, kind: &str) -> Result<String, ManagerError> {
    let io_err = |what: &str| {
        let context = format!("{what} {}", path.display());
        move |source| ManagerError::Io { context, source }
    };
    match std::fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err("reading")(err)),
    }
    let token = ids::new_token(kind);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("creating"))?;
    writeln!(file, "{token}").map_err(io_err("writing"))?;
    file.sync_all().map_err(io_err("syncing"))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn first_start_creates_and_later_starts_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let store = open_store(dir.path()).unwrap();
            bootstrap(&store, dir.path(), None).await.unwrap()
        };
        assert!(first.created);
        assert_eq!(first.data_path_port, 4789);
        let mode = std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let store = open_store(dir.path()).unwrap();
        let second = bootstrap(&store, dir.path(), Some(4789)).await.unwrap();
        assert!(!second.created);
        assert_eq!((second.join_token, second.admin_token), (first.join_token, first.admin_token));
        assert!(bootstrap(&store, dir.path(), Some(4790)).await.is_err());
    }
}
