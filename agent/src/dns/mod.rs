//! The node's resolver, Swarm's 127.0.0.11: one async server in the agent
//! answers every sandbox of the node. Its sockets are opened inside each
//! sandbox's namespace (on a namespace thread, then handed to tokio) on
//! `127.0.0.11:`[`RESOLVER_PORT`]; the sandbox's nat table sends
//! 127.0.0.11:53 there, so a task may still bind port 53 itself. Answers
//! come from an in-memory table rebuilt from each desired state
//! ([`records`]); other names are forwarded ([`upstream`]). Each sandbox
//! has its own bounded share of work: a flood from one task is dropped at
//! its own sockets and never starves the others.

pub mod answer;
pub mod records;
pub mod upstream;

use answer::{answer, server_failure, Reply, Transport};
use records::Records;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use upstream::Upstreams;

/// The resolver's address in every sandbox (Docker's).
pub const RESOLVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// The port the resolver really listens on in each sandbox; outside the
/// kernel's range for automatic ports, so no client socket takes it.
pub const RESOLVER_PORT: u16 = 63053;
/// Forwarded queries in flight per sandbox; more are dropped (the client
/// asks again).
const FORWARDS_PER_SANDBOX: usize = 64;
/// TCP connections open per sandbox.
const CONNECTIONS_PER_SANDBOX: usize = 16;
/// How long a TCP connection may sit idle.
const TCP_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a sandbox could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// Entering the sandbox failed.
    #[error("{0}")]
    Namespace(#[from] netlib::Error),
    /// Its sockets could not be opened.
    #[error("opening {RESOLVER_ADDRESS}:{RESOLVER_PORT} in sandbox {sandbox}: {source}")]
    Socket {
        /// The sandbox.
        sandbox: String,
        /// What the kernel said.
        source: std::io::Error,
    },
}

/// The resolver of every sandbox of the node.
pub struct Resolver {
    records: watch::Sender<Arc<Records>>,
    /// The names and networks the records were built from.
    built_from: Option<(Vec<netctl_proto::ServiceNames>, Vec<netctl_proto::NetworkAttachment>)>,
    upstreams: Arc<Upstreams>,
    serving: HashMap<String, Serving>,
    /// Queries answered, over every sandbox.
    queries: Arc<AtomicU64>,
}

/// One sandbox's servers; they stop when this is dropped.
struct Serving {
    networks: Vec<String>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// What every server of one sandbox shares.
struct Context {
    sandbox: String,
    networks: Vec<String>,
    records: watch::Receiver<Arc<Records>>,
    upstreams: Arc<Upstreams>,
    queries: Arc<AtomicU64>,
}

impl Context {
    fn answer(&self, query: &[u8], transport: Transport) -> Reply {
        self.queries.fetch_add(1, Ordering::Relaxed);
        answer(query, &self.records.borrow(), &self.networks, transport)
    }

    /// After a socket error: says so and waits a moment, so that an error
    /// that lasts neither stops the server nor spins it.
    async fn pause_after(&self, error: &std::io::Error, doing: &str) {
        tracing::warn!(sandbox = %self.sandbox, "resolver {doing}: {error}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

impl Resolver {
    /// A resolver forwarding to `upstreams`, with no names yet.
    pub fn new(upstreams: Upstreams) -> Self {
        let (records, _) = watch::channel(Arc::new(Records::default()));
        let queries = Arc::new(AtomicU64::new(0));
        Self { records, built_from: None, upstreams: Arc::new(upstreams), serving: HashMap::new(), queries }
    }

    /// How many queries were answered, over every sandbox, kept up to date.
    pub fn queries(&self) -> Arc<AtomicU64> {
        self.queries.clone()
    }

    /// Answers from the names in `state` from now on, in every sandbox
    /// (the table is rebuilt only when they changed: a pass on an unchanged
    /// state costs a comparison).
    pub fn update(&mut self, state: &netctl_proto::NodeState) {
        if let Some((names, networks)) = &self.built_from {
            if *names == state.names && *networks == state.networks {
                return;
            }
        }
        self.records.send_replace(Arc::new(Records::build(state)));
        self.built_from = Some((state.names.clone(), state.networks.clone()));
    }

    /// The names `sandbox` resolves, if it is served.
    pub fn names(&self, sandbox: &str) -> Option<Vec<String>> {
        let serving = self.serving.get(sandbox)?;
        Some(self.records.borrow().names(&serving.networks))
    }

    /// Serves `sandbox` (its namespace at `path`, its task on `networks`)
    /// unless it is served already.
    pub async fn serve(
        &mut self,
        sandbox: &str,
        path: &Path,
        networks: &[String],
    ) -> Result<(), ResolverError> {
        if self.serving.contains_key(sandbox) {
            return Ok(());
        }
        let name = sandbox.to_string();
        let opened = netlib::netns::run_in_async(path, move || -> std::io::Result<_> {
            let address = SocketAddr::from((RESOLVER_ADDRESS, RESOLVER_PORT));
            let udp = std::net::UdpSocket::bind(address)?;
            udp.set_nonblocking(true)?;
            let tcp = std::net::TcpListener::bind(address)?;
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        })
        .await?;
        let socket_error = |source| ResolverError::Socket { sandbox: name.clone(), source };
        let (udp, tcp) = opened.map_err(socket_error)?;
        let udp = UdpSocket::from_std(udp).map_err(socket_error)?;
        let tcp = TcpListener::from_std(tcp).map_err(socket_error)?;
        let context = Arc::new(Context {
            sandbox: sandbox.to_string(),
            networks: networks.to_vec(),
            records: self.records.subscribe(),
            upstreams: self.upstreams.clone(),
            queries: self.queries.clone(),
        });
        let tasks = [tokio::spawn(serve_udp(udp, context.clone())), tokio::spawn(serve_tcp(tcp, context))];
        self.serving.insert(sandbox.to_string(), Serving { networks: networks.to_vec(), tasks });
        Ok(())
    }

    /// Stops serving every sandbox `keep` says no to.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.serving.retain(|sandbox, _| keep(sandbox));
    }
}

/// Answers datagrams for as long as the sandbox is served; forwarded ones
/// on tasks of their own, at most [`FORWARDS_PER_SANDBOX`] at a time.
async fn serve_udp(socket: UdpSocket, context: Arc<Context>) {
    let socket = Arc::new(socket);
    let forwards = Arc::new(Semaphore::new(FORWARDS_PER_SANDBOX));
    let mut buffer = vec![0; 65535];
    loop {
        let (len, peer) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(err) => {
                context.pause_after(&err, "reading UDP").await;
                continue;
            }
        };
        let query = &buffer[..len];
        match context.answer(query, Transport::Udp) {
            Reply::Answer(bytes) => {
                let _ = socket.send_to(&bytes, peer).await;
            }
            Reply::Drop => {}
            Reply::Forward => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else { continue };
                let (socket, context, query) = (socket.clone(), context.clone(), query.to_vec());
                tokio::spawn(async move {
                    let reply = match context.upstreams.udp(&query).await {
                        Some(bytes) => bytes,
                        None => match server_failure(&query) {
                            Reply::Answer(bytes) => bytes,
                            _ => return,
                        },
                    };
                    let _ = socket.send_to(&reply, peer).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Accepts TCP clients, at most [`CONNECTIONS_PER_SANDBOX`] at a time.
async fn serve_tcp(listener: TcpListener, context: Arc<Context>) {
    let connections = Arc::new(Semaphore::new(CONNECTIONS_PER_SANDBOX));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors, say: the server waits and goes on.
                context.pause_after(&err, "accepting TCP").await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else { continue };
        let context = context.clone();
        tokio::spawn(async move {
            let _ = serve_connection(stream, &context).await;
            drop(permit);
        });
    }
}

/// Answers length-prefixed queries on one connection until it closes or
/// idles.
async fn serve_connection(mut stream: TcpStream, context: &Context) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(len) => len?,
            Err(_) => return Ok(()),
        };
        let mut query = vec![0; usize::from(len)];
        stream.read_exact(&mut query).await?;
        let reply = match context.answer(&query, Transport::Tcp) {
            Reply::Answer(bytes) => bytes,
            Reply::Drop => return Ok(()),
            Reply::Forward => match context.upstreams.tcp(&query).await {
                Some(bytes) => bytes,
                None => match server_failure(&query) {
                    Reply::Answer(bytes) => bytes,
                    _ => return Ok(()),
                },
            },
        };
        let len = u16::try_from(reply.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}
