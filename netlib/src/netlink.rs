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

    /// [`Netlink::in_namespace`] for async callers: the socket is opened on
    /// a thread of its own, awaited without holding an async worker.
    pub async fn in_namespace_async(name: &str, path: &Path) -> Result<Self> {
        let namespace = netns::open(path)?;
        let runtime = tokio::runtime::Handle::current();
        let opened = netns::on_thread(move || {
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        });
        let (connection, handle, _) =
            opened.await.map_err(|e| Error::os("opening a netlink socket", name, e))?;
        tokio::spawn(connection);
        Ok(Self { handle, namespace: name.to_string() })
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

    /// The id this namespace gives to the namespace `other` (the id veths
    /// here report as their peer's `link-netnsid`), if it has given one.
    pub async fn namespace_id_of(&self, other: &std::fs::File) -> Result<Option<i32>> {
        use futures::StreamExt;
        use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
        use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
        use netlink_packet_route::RouteNetlinkMessage;
        use std::os::fd::AsRawFd;
        let mut message = NsidMessage::default();
        message.attributes.push(NsidAttribute::Fd(other.as_raw_fd() as u32));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(message));
        request.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut responses = handle.request(request).map_err(|e| self.error("asking a namespace id", e))?;
        while let Some(response) = responses.next().await {
            match response.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(answer)) => {
                    let id = answer.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(id) => Some(*id),
                        _ => None,
                    });
                    return Ok(id.filter(|id| *id >= 0));
                }
                NetlinkPayload::Error(err) => {
                    return Err(self.error("asking a namespace id", rtnetlink::Error::NetlinkError(err)))
                }
                _ => {}
            }
        }
        Ok(None)
    }

    pub(crate) fn error(&self, action: impl Into<String>, err: rtnetlink::Error) -> Error {
        Error::netlink(action, &self.namespace, err)
    }
}
