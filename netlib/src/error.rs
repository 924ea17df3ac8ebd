//! netlib's error: what failed, on which object, in which namespace, and what
//! the kernel said.

/// A failed kernel operation.
#[derive(Debug, thiserror::Error)]
#[error("{action} in {namespace}: {reason}")]
pub struct Error {
    /// What was being done, naming the object (`creating vxlan0`).
    pub action: String,
    /// The namespace it was done in (`host` for the caller's own).
    pub namespace: String,
    /// What the kernel or the tool answered.
    pub reason: String,
    /// The errno, when the kernel gave one.
    pub errno: Option<i32>,
}

impl Error {
    /// An error from an OS call.
    pub fn os(action: impl Into<String>, namespace: &str, err: std::io::Error) -> Self {
        Self {
            action: action.into(),
            namespace: namespace.into(),
            errno: err.raw_os_error(),
            reason: err.to_string(),
        }
    }

    /// An error from a netlink request.
    pub fn netlink(action: impl Into<String>, namespace: &str, err: rtnetlink::Error) -> Self {
        let errno = match &err {
            rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
            _ => None,
        };
        let reason = match errno {
            Some(errno) => std::io::Error::from_raw_os_error(errno).to_string(),
            None => err.to_string(),
        };
        Self { action: action.into(), namespace: namespace.into(), reason, errno }
    }

    /// An error that is not an errno (a tool's output, a missing object).
    pub fn other(action: impl Into<String>, namespace: &str, reason: impl Into<String>) -> Self {
        Self { action: action.into(), namespace: namespace.into(), reason: reason.into(), errno: None }
    }

    /// Whether the object did not exist (ENOENT, ENODEV, ESRCH).
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno, Some(libc_errno::ENOENT | libc_errno::ENODEV | libc_errno::ESRCH))
    }
}

/// The errno values netlib tells apart.
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const ENODEV: i32 = 19;
}

/// netlib's result.
pub type Result<T> = std::result::Result<T, Error>;
