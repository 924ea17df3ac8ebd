//! Finding an object by what an operator typed: a full ID, a name, or a unique
//! ID prefix, in Docker's order of precedence (pure).

/// Why a reference found no single object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    /// Nothing matched.
    #[error("{kind} {reference} not found")]
    NotFound {
        /// "network", "node", ...
        kind: &'static str,
        /// What was looked for.
        reference: String,
    },
    /// Several IDs start with the prefix.
    #[error("{kind} {reference} is ambiguous ({count} matches): use more of the ID")]
    Ambiguous {
        /// "network", "node", ...
        kind: &'static str,
        /// What was looked for.
        reference: String,
        /// How many objects matched.
        count: usize,
    },
}

/// The position in `items` (given as `(id, name)`) that `reference` designates.
pub fn resolve<'a>(
    kind: &'static str,
    reference: &str,
    items: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
) -> Result<usize, ResolveError> {
    let find = |pred: &dyn Fn(&str, &str) -> bool| -> Vec<usize> {
        items
            .clone()
            .into_iter()
            .enumerate()
            .filter(|(_, (id, name))| pred(id, name))
            .map(|(i, _)| i)
            .collect()
    };
    let not_found = || ResolveError::NotFound { kind, reference: reference.to_string() };
    if reference.is_empty() {
        return Err(not_found());
    }
    for exact in [find(&|id, _| id == reference), find(&|_, name| name == reference)] {
        if let [only] = exact[..] {
            return Ok(only);
        }
    }
    match find(&|id, _| id.starts_with(reference))[..] {
        [] => Err(not_found()),
        [only] => Ok(only),
        ref many => {
            Err(ResolveError::Ambiguous { kind, reference: reference.to_string(), count: many.len() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEMS: [(&str, &str); 3] = [("abc123", "web"), ("abd456", "db"), ("zzz", "abc")];

    #[test]
    fn full_id_then_name_then_unique_prefix() {
        assert_eq!(resolve("network", "abc123", ITEMS), Ok(0));
        assert_eq!(resolve("network", "db", ITEMS), Ok(1));
        // A name beats an ID prefix, as in Docker.
        assert_eq!(resolve("network", "abc", ITEMS), Ok(2));
        assert_eq!(resolve("network", "abd", ITEMS), Ok(1));
    }

    #[test]
    fn unknown_and_ambiguous_references_are_errors() {
        assert!(matches!(resolve("network", "nope", ITEMS), Err(ResolveError::NotFound { .. })));
        assert!(matches!(resolve("network", "", ITEMS), Err(ResolveError::NotFound { .. })));
        assert_eq!(
            resolve("network", "ab", ITEMS),
            Err(ResolveError::Ambiguous { kind: "network", reference: "ab".into(), count: 2 })
        );
    }
}
