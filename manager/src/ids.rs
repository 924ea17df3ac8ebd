//! Random identifiers and secrets.

use rand::distr::{Alphanumeric, Distribution};
use rand::Rng;

/// The length of an object ID, as in Swarm.
pub const ID_LEN: usize = 25;

/// `len` random lowercase letters and digits.
fn lowercase_alphanumerics(len: usize) -> String {
    let mut rng = rand::rng();
    Alphanumeric.sample_iter(&mut rng).filter(|b| !b.is_ascii_uppercase()).take(len).map(char::from).collect()
}

/// A new object ID: 25 lowercase alphanumerics.
pub fn new_id() -> String {
    lowercase_alphanumerics(ID_LEN)
}

/// A new secret token with a readable kind prefix, e.g. `NETCTL-JOIN-1-...`.
/// The second field is reserved for the digest of the cluster CA once TLS comes.
pub fn new_token(kind: &str) -> String {
    let secret: String = rand::rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect();
    format!("NETCTL-{kind}-1-{}-{secret}", lowercase_alphanumerics(25))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_25_lowercase_alphanumerics_and_distinct() {
        let a = new_id();
        assert_eq!(a.len(), ID_LEN);
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{a}");
        assert_ne!(a, new_id());
    }

    #[test]
    fn tokens_carry_their_kind() {
        let token = new_token("JOIN");
        assert!(token.starts_with("NETCTL-JOIN-1-"), "{token}");
        assert_ne!(token, new_token("JOIN"));
    }
}
