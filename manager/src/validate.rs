//! Checks of operator input that need no cluster state (pure).

use netctl_proto::{printable, TaskRuntime};
use std::collections::HashMap;

/// The only network driver netctl implements.
pub const OVERLAY_DRIVER: &str = "overlay";

/// The smallest MTU an overlay may be given (IPv4's minimum).
const MIN_MTU: u32 = 68;
/// The largest MTU an overlay may be given.
const MAX_MTU: u32 = 65535;

/// The longest name of a network or service: one DNS label.
pub const MAX_NAME_LEN: usize = 63;
/// The most replicas a service may ask for.
pub const MAX_REPLICAS: u32 = 100_000;

/// Why a request was refused before touching the store.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidationError {
    /// Name not matching `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
    #[error("invalid name {0:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    InvalidName(String),
    /// A name longer than one DNS label.
    #[error("invalid name {name:?}: {len} characters, at most 63 are allowed (one DNS label)")]
    NameTooLong {
        /// The name (cut, so the error itself stays short).
        name: String,
        /// Its length.
        len: usize,
    },
    /// A service name that is not a DNS label (tasks are found by it).
    #[error("invalid service name {0:?}: a service name is a DNS label: letters, digits and '-', not starting or ending with '-'")]
    NotDnsLabel(String),
    /// A network alias that is not a DNS label.
    #[error("invalid alias {0:?}: an alias is a DNS label: letters, digits and '-', not starting or ending with '-', at most 63")]
    InvalidAlias(String),
    /// More replicas than a cluster can hold.
    #[error("invalid replicas {0}: at most 100000 are allowed")]
    TooManyReplicas(u32),
    /// A capability name Linux does not have.
    #[error(
        "unknown capability {0:?}: expected a Linux capability such as NET_ADMIN or CAP_NET_ADMIN, or ALL"
    )]
    UnknownCapability(String),
    /// A `--user` that is not UID[:GID] or NAME[:GROUP].
    #[error("invalid user {0:?}: expected UID[:GID] or NAME[:GROUP]")]
    InvalidUser(String),
    /// A `--log-opt` netctl does not know or cannot keep.
    #[error("invalid log option {0}")]
    InvalidLogOption(String),
    /// A driver other than overlay.
    #[error("unknown network driver {0:?}: netctl supports only \"overlay\"")]
    UnknownDriver(String),
    /// A `--opt` key netctl does not know.
    #[error("unsupported network option {0:?}: supported are mtu (com.docker.network.driver.mtu)")]
    UnknownOption(String),
    /// A label key that is empty, too long or holds other characters.
    #[error(
        "invalid label key {0:?}: expected 1 to 128 of [a-zA-Z0-9._/-], starting with a letter or digit"
    )]
    InvalidLabelKey(String),
    /// `--opt mtu=` that is not a number in range.
    #[error("invalid mtu {0:?}: expected an integer from 68 to 65535")]
    InvalidMtu(String),
}

/// Checks a resource name the way Docker does, at most one DNS label long.
pub fn name(name: &str) -> Result<(), ValidationError> {
    if name.chars().count() > MAX_NAME_LEN {
        return Err(ValidationError::NameTooLong {
            name: name.chars().take(MAX_NAME_LEN).chain("...".chars()).collect(),
            len: name.chars().count(),
        });
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(ValidationError::InvalidName(name.to_string()))
    }
}

/// Checks a service name: a valid name that is also a DNS label, since its
/// tasks' host names and (later) DNS names are made from it.
pub fn service_name(service: &str) -> Result<(), ValidationError> {
    name(service)?;
    if is_dns_label(service) {
        Ok(())
    } else {
        Err(ValidationError::NotDnsLabel(service.to_string()))
    }
}

/// Checks a network alias: a DNS label, like a service name.
pub fn alias(alias: &str) -> Result<(), ValidationError> {
    if alias.chars().count() <= MAX_NAME_LEN && is_dns_label(alias) {
        Ok(())
    } else {
        Err(ValidationError::InvalidAlias(printable(alias, MAX_NAME_LEN)))
    }
}

/// Letters, digits and '-', at least one character, neither starting nor
/// ending with '-'.
fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// The longest label key.
const MAX_LABEL_KEY_CHARS: usize = 128;

/// Checks a node label's key (constraints name it as `node.labels.KEY`).
pub fn label_key(key: &str) -> Result<(), ValidationError> {
    let first_ok = key.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if first_ok && rest_ok && key.len() <= MAX_LABEL_KEY_CHARS {
        Ok(())
    } else {
        Err(ValidationError::InvalidLabelKey(printable(key, MAX_LABEL_KEY_CHARS)))
    }
}

/// Checks a replica count.
pub fn replicas(replicas: u32) -> Result<(), ValidationError> {
    if replicas > MAX_REPLICAS {
        return Err(ValidationError::TooManyReplicas(replicas));
    }
    Ok(())
}

/// The smallest log file a task may be given (`--log-opt max-size`).
const MIN_LOG_FILE_BYTES: u64 = 4096;
/// The most log files a task may keep (`--log-opt max-file`).
const MAX_LOG_FILES: u32 = 100;

/// Checks how a service's tasks run and writes capability names the one
/// way agents read them (`CAP_NET_ADMIN`, or `ALL`).
pub fn runtime(runtime: &TaskRuntime) -> Result<TaskRuntime, ValidationError> {
    if !runtime.user.is_empty() {
        let mut parts = runtime.user.splitn(2, ':');
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 32
                && part.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        };
        if !parts.all(valid) {
            return Err(ValidationError::InvalidUser(runtime.user.clone()));
        }
    }
    if runtime.log_max_size != 0 && runtime.log_max_size < MIN_LOG_FILE_BYTES {
        return Err(ValidationError::InvalidLogOption(format!(
            "max-size={}: at least {MIN_LOG_FILE_BYTES} bytes",
            runtime.log_max_size
        )));
    }
    if runtime.log_max_file > MAX_LOG_FILES {
        return Err(ValidationError::InvalidLogOption(format!(
            "max-file={}: at most {MAX_LOG_FILES}",
            runtime.log_max_file
        )));
    }
    Ok(TaskRuntime {
        cap_add: capabilities(&runtime.cap_add)?,
        cap_drop: capabilities(&runtime.cap_drop)?,
        ..runtime.clone()
    })
}

/// Capability names in the form `CAP_NET_ADMIN` (or `ALL`), whatever case
/// and prefix they were given in.
fn capabilities(names: &[String]) -> Result<Vec<String>, ValidationError> {
    names
        .iter()
        .map(|name| {
            let upper = name.to_ascii_uppercase();
            if upper == "ALL" {
                return Ok(upper);
            }
            let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
            full.parse::<caps::Capability>()
                .map(|cap| cap.to_string())
                .map_err(|_| ValidationError::UnknownCapability(name.clone()))
        })
        .collect()
}

/// The driver to use: `overlay` when none is given.
pub fn driver(driver: &str) -> Result<&'static str, ValidationError> {
    match driver {
        "" | OVERLAY_DRIVER => Ok(OVERLAY_DRIVER),
        other => Err(ValidationError::UnknownDriver(other.to_string())),
    }
}

/// The MTU set by `--opt mtu=N` (or Docker's long key), 0 when none.
pub fn mtu_option(options: &HashMap<String, String>) -> Result<u32, ValidationError> {
    let mut mtu = 0;
    for (key, value) in options {
        match key.as_str() {
            "mtu" | "com.docker.network.driver.mtu" => {
                mtu = value
                    .parse()
                    .ok()
                    .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
                    .ok_or_else(|| ValidationError::InvalidMtu(value.clone()))?;
            }
            _ => return Err(ValidationError::UnknownOption(key.clone())),
        }
    }
    Ok(mtu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dockers_rule() {
        for good in ["demonet", "a", "Net_1.x-y", "0abc"] {
            assert_eq!(name(good), Ok(()), "{good}");
        }
        for bad in ["", "-net", ".net", "_net", "my net", "net/1", "nét"] {
            assert!(name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_at_most_one_dns_label_long() {
        assert_eq!(name(&"a".repeat(63)), Ok(()));
        let long = name(&"a".repeat(64)).unwrap_err().to_string();
        assert!(long.contains("64 characters, at most 63"), "{long}");
        assert!(long.len() < 200, "the error repeats a long name: {long}");
    }

    #[test]
    fn service_names_are_dns_labels() {
        for good in ["web", "demo-service", "a1"] {
            assert_eq!(service_name(good), Ok(()), "{good}");
        }
        for bad in ["web_1", "web.1", "web-", "-web", ""] {
            assert!(service_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replicas_are_bounded() {
        assert_eq!(replicas(100_000), Ok(()));
        assert_eq!(replicas(100_001), Err(ValidationError::TooManyReplicas(100_001)));
    }

    #[test]
    fn runtimes_are_checked_and_capabilities_normalized() {
        let given = TaskRuntime {
            user: "1000:1000".into(),
            cap_add: vec!["net_admin".into(), "CAP_SYS_TIME".into(), "all".into()],
            cap_drop: vec!["NET_RAW".into()],
            ..Default::default()
        };
        let checked = runtime(&given).unwrap();
        assert_eq!(checked.cap_add, ["CAP_NET_ADMIN", "CAP_SYS_TIME", "ALL"]);
        assert_eq!(checked.cap_drop, ["CAP_NET_RAW"]);
        let bad_cap = TaskRuntime { cap_add: vec!["FLY".into()], ..Default::default() };
        assert_eq!(runtime(&bad_cap), Err(ValidationError::UnknownCapability("FLY".into())));
        for user in ["", "nobody", "1000", "www-data:adm"] {
            assert!(runtime(&TaskRuntime { user: user.into(), ..Default::default() }).is_ok(), "{user}");
        }
        for user in [":", "1000:", "a b", "x;rm"] {
            assert!(runtime(&TaskRuntime { user: user.into(), ..Default::default() }).is_err(), "{user}");
        }
        assert!(runtime(&TaskRuntime { log_max_size: 10, ..Default::default() }).is_err());
        assert!(runtime(&TaskRuntime { log_max_file: 1000, ..Default::default() }).is_err());
    }

    #[test]
    fn only_overlay_is_a_driver() {
        assert_eq!(driver(""), Ok("overlay"));
        assert_eq!(driver("overlay"), Ok("overlay"));
        assert!(driver("bridge").is_err());
    }

    #[test]
    fn mtu_option_is_parsed_and_bounded() {
        let opts = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(mtu_option(&HashMap::new()), Ok(0));
        assert_eq!(mtu_option(&opts("mtu", "1400")), Ok(1400));
        assert_eq!(mtu_option(&opts("com.docker.network.driver.mtu", "9000")), Ok(9000));
        assert!(mtu_option(&opts("mtu", "abc")).is_err());
        assert!(mtu_option(&opts("mtu", "20")).is_err());
        assert!(mtu_option(&opts("encrypted", "")).is_err());
    }
}
