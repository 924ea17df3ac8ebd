//! Forwarding names that are not the cluster's: to the nameservers of the
//! host's `/etc/resolv.conf` (read again whenever it changes) or to the
//! servers given with `netctl agent --dns-forward`. Queries are relayed
//! as they came, from the agent's own namespace, over the transport the
//! task used (a truncated UDP answer makes the task ask again over TCP,
//! which is relayed over TCP). Each server gets a short time to answer;
//! when none does, the task gets SERVFAIL rather than waiting.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream server gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);
/// The largest answer relayed over UDP.
const MAX_UDP_ANSWER: usize = 65535;

/// Where names outside the cluster are asked.
#[derive(Debug)]
pub enum Upstreams {
    /// Fixed servers (`--dns-forward`).
    Fixed(Vec<SocketAddr>),
    /// The nameservers of a resolv.conf, read again when it changes.
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// Its servers, as of its modification time.
        cached: Mutex<(Option<SystemTime>, Vec<SocketAddr>)>,
    },
}

impl Upstreams {
    /// The host's resolv.conf.
    pub fn host() -> Self {
        Self::ResolvConf { path: "/etc/resolv.conf".into(), cached: Mutex::new((None, Vec::new())) }
    }

    /// The servers to ask now.
    fn servers(&self) -> Vec<SocketAddr> {
        match self {
            Upstreams::Fixed(servers) => servers.clone(),
            Upstreams::ResolvConf { path, cached } => {
                let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                let mut cached = cached.lock().expect("upstream cache poisoned");
                if cached.0 != modified || modified.is_none() {
                    let text = std::fs::read_to_string(path).unwrap_or_default();
                    *cached = (modified, nameservers(&text));
                }
                cached.1.clone()
            }
        }
    }

    /// Relays a UDP query; the answer, or `None` when no server gave one.
    pub async fn udp(&self, query: &[u8]) -> Option<Vec<u8>> {
        self.ask("UDP", |server| udp_exchange(server, query)).await
    }

    /// Relays a TCP query (without its length prefix); the answer.
    pub async fn tcp(&self, query: &[u8]) -> Option<Vec<u8>> {
        self.ask("TCP", |server| tcp_exchange(server, query)).await
    }

    /// Asks each server in turn, each for at most [`UPSTREAM_TIMEOUT`].
    async fn ask<F, Exchange>(&self, transport: &str, exchange: F) -> Option<Vec<u8>>
    where
        F: Fn(SocketAddr) -> Exchange,
        Exchange: std::future::Future<Output = std::io::Result<Vec<u8>>>,
    {
        for server in self.servers() {
            match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange(server)).await {
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(err)) => tracing::debug!(%server, "forwarding over {transport}: {err}"),
                Err(_) => tracing::debug!(%server, "forwarding over {transport}: no answer in time"),
            }
        }
        None
    }
}

async fn udp_exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match server.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("valid address"),
        IpAddr::V6(_) => "[::]:0".parse().expect("valid address"),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buffer = vec![0; MAX_UDP_ANSWER];
    loop {
        let len = socket.recv(&mut buffer).await?;
        // Only the answer to this query (same ID) counts.
        if len >= 2 && query.len() >= 2 && buffer[..2] == query[..2] {
            buffer.truncate(len);
            return Ok(buffer);
        }
    }
}

async fn tcp_exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut answer = vec![0; usize::from(len)];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

/// The `nameserver` lines of a resolv.conf (port 53). The agent asks from
/// the host's namespace, so a loopback server (systemd-resolved's
/// 127.0.0.53) works as well.
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<IpAddr>().ok())
        .map(|address| SocketAddr::new(address, 53))
        .collect()
}

/// Parses one `--dns-forward` server: `ADDR` (port 53) or `ADDR:PORT`.
pub fn parse_server(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|address| SocketAddr::new(address, 53)))
        .map_err(|_| format!("invalid DNS server {text:?}: expected ADDR or ADDR:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_come_from_resolv_conf() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.53\nnameserver  2001:db8::1\nnameserver bogus\noptions ndots:2\n";
        let servers = nameservers(text);
        assert_eq!(servers, ["10.0.0.53:53".parse().unwrap(), "[2001:db8::1]:53".parse().unwrap()]);
    }

    #[test]
    fn forward_servers_are_addresses_with_an_optional_port() {
        assert_eq!(parse_server("10.0.0.1"), Ok("10.0.0.1:53".parse().unwrap()));
        assert_eq!(parse_server("10.0.0.2:5353"), Ok("10.0.0.2:5353".parse().unwrap()));
        for bad in ["", "dns.example.com", "10.0.0.1:99999", "10.0.0.1,10.0.0.2"] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }
}
