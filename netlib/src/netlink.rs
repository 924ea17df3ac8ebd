//! A netlink (rtnetlink) connection bound to one namespace. The socket is
//! opened on a dedicated thread that entered the namespace, and stays bound to
//! it afterwards; requests then run on the async runtime like any other.

use crate::error::{Error, Result};
use crate::netns;
use std::path::Path;

/// A route-netlink connection to one namespace.
#[derive(Clone)]
pub struct Netlink {
    pub(crate) handle: rtnetlink::Handle,
    pub(crate) namespace: String,
}

impl Netlink {
    /// A connection to the caller's own namespace (`host` in errors).
    pub fn host() -> Result<Self> {
        Self::open("host", None)
    }

    /// A connection to the namespace mounted at `path`, called `name` in errors.
    pub fn in_namespace(name: &str, path: &Path) -> Result<Self> {
        Self::open(name, Some(path))
    }

    fn open(name: &str, path: Option<&Path>) -> Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let connect = || {
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        };
        let connection = match path {
            Some(path) => netns::run_in(path, connect)?,
            None => connect(),
        };
        let (connection, handle, _) =
            connection.map_err(|e| Error::os("opening a netlink socket", name, e))?;
        runtime.spawn(connection);
        Ok(Self { handle, namespace: name.to_string() })
    }

    /// The namespace's name, as errors show it.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn error(&self, action: impl Into<String>, err: rtnetlink::Error) -> Error {
        Error::netlink(action, &self.namespace, err)
    }
}
