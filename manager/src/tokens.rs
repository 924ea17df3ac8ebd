//! The join and admin tokens: files in the data dir (mode 0600), each
//! pinning the cluster CA, rotated on request. A token file whose digest is
//! not this CA's (or that is missing) gets a new token.

use crate::error::ManagerError;
use crate::pki::write_secret;
use crate::store::{Batch, Store};
use netctl_proto::pki::{Token, TokenKind};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

pub use netctl_proto::convention::{ADMIN_TOKEN_FILE, JOIN_TOKEN_FILE};

/// The cluster's current tokens.
pub struct ClusterTokens {
    data_dir: PathBuf,
    ca_digest: String,
    join: RwLock<Token>,
    admin: RwLock<Token>,
}

impl ClusterTokens {
    /// Loads both tokens from `data_dir`, making the ones that are missing or
    /// pin another CA.
    pub fn load_or_create(data_dir: &Path, ca_digest: &str) -> Result<Self, ManagerError> {
        let load = |kind| -> Result<Token, ManagerError> {
            let path = data_dir.join(file_name(kind));
            let kept = match std::fs::read_to_string(&path) {
                Ok(text) => Token::parse(&text).ok(),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(ManagerError::Io { context: format!("reading {}", path.display()), source })
                }
            };
            match kept {
                Some(token) if token.kind == kind && token.ca_digest == ca_digest => Ok(token),
                _ => {
                    let token = Token::generate(kind, ca_digest);
                    write_secret(&path, &format!("{}\n", token.reveal()))?;
                    Ok(token)
                }
            }
        };
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            ca_digest: ca_digest.to_string(),
            join: RwLock::new(load(TokenKind::Join)?),
            admin: RwLock::new(load(TokenKind::Admin)?),
        })
    }

    fn slot(&self, kind: TokenKind) -> &RwLock<Token> {
        match kind {
            TokenKind::Join => &self.join,
            TokenKind::Admin => &self.admin,
        }
    }

    /// The current token of `kind`.
    pub fn current(&self, kind: TokenKind) -> Token {
        self.slot(kind).read().expect("token lock").clone()
    }

    /// Whether `presented` is the current token of `kind` (compared in time
    /// independent of where they differ).
    pub fn accepts(&self, kind: TokenKind, presented: &[u8]) -> bool {
        constant_time_eq(presented, self.current(kind).reveal().as_bytes())
    }

    /// Replaces the token of `kind` (store first, then file and memory): the
    /// old one is refused from now on, by every manager.
    pub async fn rotate(&self, kind: TokenKind, store: &Store) -> Result<Token, ManagerError> {
        let token = Token::generate(kind, &self.ca_digest);
        let text = format!("{}\n", token.reveal());
        crate::store::retrying(|| async {
            let mut batch = Batch::new();
            batch.put_setting(crate::secrets::token_key(kind), text.as_bytes());
            store.write_lock().await.commit(batch).await.map_err(ManagerError::from)
        })
        .await?;
        self.adopt(kind, &text)?;
        Ok(token)
    }

    /// Makes `text` (a token as stored) the current token of `kind`, in
    /// memory and in its file.
    pub fn adopt(&self, kind: TokenKind, text: &str) -> Result<(), ManagerError> {
        let token = Token::parse(text.trim()).map_err(|err| {
            ManagerError::Refused(format!("the stored {} token is unusable: {err}", kind.name()))
        })?;
        let mut slot = self.slot(kind).write().expect("token lock");
        if *slot != token {
            write_secret(&self.data_dir.join(file_name(kind)), &format!("{}\n", token.reveal()))?;
            *slot = token;
        }
        Ok(())
    }
}

/// The file of the token of `kind` in the data dir.
pub fn file_name(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Join => JOIN_TOKEN_FILE,
        TokenKind::Admin => ADMIN_TOKEN_FILE,
    }
}

/// Compares two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[tokio::test]
    async fn tokens_are_kept_pinned_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = ClusterTokens::load_or_create(dir.path(), DIGEST).unwrap();
        let join = tokens.current(TokenKind::Join);
        assert_eq!(join.ca_digest, DIGEST);
        let mode = std::fs::metadata(dir.path().join(JOIN_TOKEN_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(tokens.accepts(TokenKind::Join, join.reveal().as_bytes()));
        assert!(!tokens.accepts(TokenKind::Admin, join.reveal().as_bytes()));

        let again = ClusterTokens::load_or_create(dir.path(), DIGEST).unwrap();
        assert_eq!(again.current(TokenKind::Join), join);
        let store = Store::open(&dir.path().join("state")).unwrap();
        let rotated = again.rotate(TokenKind::Join, &store).await.unwrap();
        assert!(!again.accepts(TokenKind::Join, join.reveal().as_bytes()));
        assert!(again.accepts(TokenKind::Join, rotated.reveal().as_bytes()));
        assert_eq!(
            ClusterTokens::load_or_create(dir.path(), DIGEST).unwrap().current(TokenKind::Join),
            rotated
        );

        let other_ca = DIGEST.replace('0', "f");
        let renewed = ClusterTokens::load_or_create(dir.path(), &other_ca).unwrap();
        assert_eq!(renewed.current(TokenKind::Admin).ca_digest, other_ca);
    }
}
