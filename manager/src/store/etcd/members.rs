//! The members of the etcd cluster and the one this manager talks to.
//!
//! etcd-client balances requests over all the endpoints it is given and
//! keeps sending some to a member that is down or stopped, so a request
//! fails although a quorum answers. Here requests go to one member at a
//! time, the one that answered last, and move on to the next member when
//! it does not answer (as etcd's own Go client does). Streams (the watch,
//! lease keep-alives, the election) use the same member, on a connection
//! without a request timeout.

use super::EtcdConfig;
use etcd_client::{Client, PutOptions, Txn, TxnResponse};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::Code;

/// How long one request to one member may take before the next is asked.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// One client per member; the member in use.
pub struct Members {
    members: Vec<Member>,
    in_use: AtomicUsize,
}

/// The clients of one member.
struct Member {
    /// Requests, each bounded by [`REQUEST_TIMEOUT`].
    requests: Client,
    /// Streams and long calls, without a request timeout.
    streams: Client,
}

impl Members {
    /// Clients for every endpoint of `config` (connections are made on
    /// first use).
    pub async fn new(config: &EtcdConfig) -> Result<Self, String> {
        let mut members = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            members.push(Member {
                requests: config.client_of(endpoint, Some(REQUEST_TIMEOUT)).await?,
                streams: config.client_of(endpoint, None).await?,
            });
        }
        if members.is_empty() {
            return Err("no etcd endpoint given".into());
        }
        Ok(Self { members, in_use: AtomicUsize::new(0) })
    }

    /// Sends `request` to the member in use and, while members do not
    /// answer, to each next one; the first answer, or the last failure.
    pub async fn call<T, F, Fut>(&self, mut request: F) -> Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let first = self.in_use.load(Ordering::Relaxed);
        let mut maybe_received = false;
        let mut last = None;
        for step in 0..self.members.len() {
            let index = (first + step) % self.members.len();
            match request(self.members[index].requests.clone()).await {
                Err(err) if unanswered(&err) => {
                    maybe_received |= !never_sent(&err);
                    last = Some(err);
                }
                Err(error) => return Err(Failure { error, maybe_received }),
                Ok(answer) => {
                    self.in_use.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
            }
        }
        Err(Failure { error: last.expect("at least one member"), maybe_received })
    }

    /// Runs `txn` as [`Members::call`] runs any request.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, Failure> {
        self.call(|mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await
    }

    /// Puts `value` at `key`, bound to lease `lease`, as [`Members::call`]
    /// runs any request.
    pub async fn put_on_lease(&self, key: String, value: Vec<u8>, lease: i64) -> Result<(), Failure> {
        self.call(|mut client| {
            let (key, value) = (key.clone(), value.clone());
            async move { client.put(key, value, Some(PutOptions::new().with_lease(lease))).await }
        })
        .await
        .map(drop)
    }

    /// The member in use, for a stream or a long call.
    pub fn stream_client(&self) -> Client {
        self.members[self.in_use.load(Ordering::Relaxed)].streams.clone()
    }

    /// Moves on to the next member (a stream on the one in use broke).
    pub fn move_on(&self) {
        let next = (self.in_use.load(Ordering::Relaxed) + 1) % self.members.len();
        self.in_use.store(next, Ordering::Relaxed);
    }
}

/// A request no member answered, or one refused.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Failure {
    /// The last member's error.
    pub error: etcd_client::Error,
    /// Whether a member that did not answer may have received the request
    /// (it timed out or the connection broke after it was sent): a write
    /// may then still take effect when that member runs again.
    pub maybe_received: bool,
}

/// Whether `err` says the request never left (no connection was made).
fn never_sent(err: &etcd_client::Error) -> bool {
    let text = err.to_string();
    text.contains("tcp connect error") || text.contains("Connection refused")
}

/// Whether `err` says the member did not answer (down, stopped, cut off
/// or without a leader) rather than refused the request.
fn unanswered(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}
