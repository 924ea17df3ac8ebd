//! The node's identity, kept in the agent's state dir so that a restarted
//! agent rejoins as the same node.

use std::path::{Path, PathBuf};

const NODE_ID_FILE: &str = "node-id";

/// The node ID file inside `state_dir`.
fn node_id_path(state_dir: &Path) -> PathBuf {
    state_dir.join(NODE_ID_FILE)
}

/// The node ID kept from an earlier join, if any.
pub fn load(state_dir: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(node_id_path(state_dir)) {
        Ok(id) if !id.trim().is_empty() => Ok(Some(id.trim().to_string())),
        Ok(_) => Ok(None),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Keeps `node_id` for the next start (written to a temporary file, synced,
/// then renamed, so a crash leaves the old or the new ID, never half of one).
pub fn save(state_dir: &Path, node_id: &str) -> std::io::Result<()> {
    let path = node_id_path(state_dir);
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, format!("{node_id}\n"))?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_identity_is_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        save(dir.path(), "abc123").unwrap();
        assert_eq!(load(dir.path()).unwrap().as_deref(), Some("abc123"));
    }
}
