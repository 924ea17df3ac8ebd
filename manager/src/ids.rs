//! Random identifiers.

use rand::distr::{Alphanumeric, Distribution};

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
}
