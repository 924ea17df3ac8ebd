//! A tiny HTTP/1.1 server for benchmarks and tests run as a task: answers
//! every request on `0.0.0.0:<port>` (default 80) with the host name (the
//! task name), keeping connections alive. Fast enough that the network, not
//! the server, is what a load generator measures.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn serve(stream: TcpStream, body: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let mut line = String::new();
    loop {
        // Read one request: lines up to the empty one.
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        writer.write_all(response.as_bytes())?;
    }
}

fn main() -> std::io::Result<()> {
    let port = std::env::args().nth(1).unwrap_or_else(|| "80".into());
    let body = std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_string();
    let listener = TcpListener::bind(format!("0.0.0.0:{port}"))?;
    for stream in listener.incoming().flatten() {
        let body = body.clone();
        std::thread::spawn(move || serve(stream, &body));
    }
    Ok(())
}
