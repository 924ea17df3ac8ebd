//! The capabilities a task runs with: Docker's default set, changed by the
//! service's `--cap-add` / `--cap-drop` the way Docker changes it.

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities Docker gives a container by default: no CAP_SYS_ADMIN,
/// CAP_NET_ADMIN, CAP_SYS_MODULE, CAP_SYS_PTRACE ...
pub const DOCKER_DEFAULT: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// A capability name `netctl` does not know.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown capability {0:?}")]
pub struct UnknownCapability(pub String);

/// The set a task gets: with `--cap-drop ALL`, only the added ones; with
/// `--cap-add ALL`, every capability but the dropped ones; otherwise the
/// default set plus the added minus the dropped ones (as Docker does).
pub fn task_set(add: &[String], drop: &[String]) -> Result<CapsHashSet, UnknownCapability> {
    let parse = |names: &[String]| -> Result<(bool, CapsHashSet), UnknownCapability> {
        let all = names.iter().any(|n| n.eq_ignore_ascii_case("ALL"));
        let set = names
            .iter()
            .filter(|n| !n.eq_ignore_ascii_case("ALL"))
            .map(|name| {
                let upper = name.to_ascii_uppercase();
                let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
                full.parse().map_err(|_| UnknownCapability(name.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok((all, set))
    };
    let (add_all, added) = parse(add)?;
    let (drop_all, dropped) = parse(drop)?;
    let every = caps::all();
    Ok(match (add_all, drop_all) {
        (true, true) => every,
        (false, true) => added,
        (true, false) => every.difference(&dropped).copied().collect(),
        (false, false) => {
            DOCKER_DEFAULT.iter().copied().chain(added).filter(|c| !dropped.contains(c)).collect()
        }
    })
}

/// Drops every capability outside `keep` from this thread's bounding set
/// (so no later exec can get it back). Needs CAP_SETPCAP.
pub fn limit_bounding_set(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    for capability in caps::runtime::thread_all_supported() {
        if !keep.contains(&capability) {
            caps::drop(None, CapSet::Bounding, capability)?;
        }
    }
    Ok(())
}

/// Sets this thread's inheritable, effective and permitted sets to `keep`
/// (for a task that runs as root; a non-root user loses them at setuid).
pub fn limit_own_sets(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    let supported = caps::runtime::thread_all_supported();
    let keep: CapsHashSet = keep.intersection(&supported).copied().collect();
    caps::set(None, CapSet::Inheritable, &keep)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_default_set_is_dockers_and_add_drop_change_it() {
        let default = task_set(&[], &[]).unwrap();
        assert_eq!(default.len(), 14);
        assert!(!default.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!default.contains(&Capability::CAP_NET_ADMIN));
        let changed = task_set(&names(&["NET_ADMIN"]), &names(&["cap_net_raw"])).unwrap();
        assert!(changed.contains(&Capability::CAP_NET_ADMIN));
        assert!(!changed.contains(&Capability::CAP_NET_RAW));
        assert_eq!(changed.len(), 14);
    }

    #[test]
    fn all_works_on_either_side() {
        let only = task_set(&names(&["CAP_KILL"]), &names(&["ALL"])).unwrap();
        assert_eq!(only, CapsHashSet::from([Capability::CAP_KILL]));
        let every_but = task_set(&names(&["all"]), &names(&["SYS_ADMIN"])).unwrap();
        assert!(every_but.contains(&Capability::CAP_SYS_MODULE));
        assert!(!every_but.contains(&Capability::CAP_SYS_ADMIN));
        assert_eq!(task_set(&names(&["FLY"]), &[]), Err(UnknownCapability("FLY".into())));
    }
}
