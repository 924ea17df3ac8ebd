//! The manager speaks only TLS. A client that connects in clear (an old
//! netctl, `grpcurl -plaintext`, `curl http://`) gets an answer saying so in
//! its own protocol instead of a reset: HTTP/2 clients a GOAWAY whose debug
//! data says it, HTTP/1 clients a 400 with the same words.

use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// What a plaintext client is told.
pub const REQUIRES_TLS: &str = "this netctl manager requires TLS: connect with https:// and the cluster's CA";

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a new connection may stay silent before it is dropped.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections accepted on `listener` that start a TLS handshake; every
/// other one is answered with [`REQUIRES_TLS`] and closed. The listener is
/// closed when `stopping` turns true (a new connection is refused at once
/// rather than held unserved while the server drains) or when the stream is
/// dropped.
pub fn tls_connections(
    listener: TcpListener,
    mut stopping: watch::Receiver<bool>,
) -> ReceiverStream<std::io::Result<TcpStream>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = sender.closed() => return,
                _ = stopping.wait_for(|stop| *stop) => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    let sender = sender.clone();
                    tokio::spawn(async move {
                        if let Some(stream) = sort(stream).await {
                            let _ = sender.send(Ok(stream)).await;
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!("accepting a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// The stream back when it starts a TLS handshake; otherwise answers it.
async fn sort(mut stream: TcpStream) -> Option<TcpStream> {
    let mut first = [0u8; 24];
    let peeked = tokio::time::timeout(FIRST_BYTES_TIMEOUT, stream.peek(&mut first)).await;
    let Ok(Ok(count)) = peeked else { return None };
    if count == 0 {
        return None;
    }
    if first[0] == TLS_HANDSHAKE {
        return Some(stream);
    }
    let answer = if first[..count].starts_with(b"PRI ") { http2_goaway() } else { http1_refusal() };
    let _ = stream.write_all(&answer).await;
    let _ = stream.shutdown().await;
    None
}

/// An HTTP/2 server preface (empty SETTINGS) then GOAWAY (PROTOCOL_ERROR)
/// with [`REQUIRES_TLS`] as its debug data.
fn http2_goaway() -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let payload_len = 8 + REQUIRES_TLS.len();
    bytes.extend_from_slice(&(payload_len as u32).to_be_bytes()[1..]);
    bytes.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&0u32.to_be_bytes());
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(REQUIRES_TLS.as_bytes());
    bytes
}

/// An HTTP/1.1 400 whose body is [`REQUIRES_TLS`].
fn http1_refusal() -> Vec<u8> {
    let body = format!("{REQUIRES_TLS}\n");
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_goaway_frame_is_well_formed() {
        let bytes = http2_goaway();
        assert_eq!(&bytes[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0], "empty SETTINGS");
        let frame = &bytes[9..];
        let length = u32::from_be_bytes([0, frame[0], frame[1], frame[2]]) as usize;
        assert_eq!(frame[3], 0x7, "GOAWAY");
        assert_eq!(frame.len(), 9 + length);
        assert!(String::from_utf8_lossy(&frame[17..]).contains("requires TLS"));
    }
}
