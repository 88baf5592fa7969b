//! The plain-HTTP health port (`run --health-listen`), for probes that cannot speak mutual
//! TLS (a kubelet, a load balancer):
//!
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 when the store answers a query on its schema (the migrations ran
//!   when it opened), 503 otherwise.
//!
//! Nothing else is served and nothing is logged per request. A client gets 2 s and 1 KiB
//! for its request head, and at most [`MAX_CLIENTS`] are served at once; the rest wait in
//! the listen backlog. It reveals nothing but "ok".

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::store::Store;

/// Health clients served at once.
pub const MAX_CLIENTS: usize = 32;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head read.
const MAX_HEAD: usize = 1024;

/// Serves the health port on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, store: Store) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "health port: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let store = store.clone();
        tokio::spawn(async move {
            let _permit = permit;
            answer(stream, &store).await;
        });
    }
}

async fn answer(mut stream: TcpStream, store: &Store) {
    let Ok(Some(path)) = tokio::time::timeout(READ_TIMEOUT, request_path(&mut stream)).await else {
        return;
    };
    let (status, body) = match path.as_str() {
        "/healthz" => ("200 OK", "ok\n"),
        "/readyz" => match store.current_version().await {
            Ok(_) => ("200 OK", "ok\n"),
            Err(_) => ("503 Service Unavailable", "store unavailable\n"),
        },
        _ => ("404 Not Found", "not found\n"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(READ_TIMEOUT, stream.write_all(response.as_bytes())).await;
}

/// The path of a `GET` request, once its head is complete; `None` for anything else.
async fn request_path(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return None;
        }
    }
    parse_request_line(&head)
}

/// `GET /readyz HTTP/1.1` → `/readyz` (the query string dropped).
fn parse_request_line(head: &[u8]) -> Option<String> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    if method != "GET" || !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    Some(target.split('?').next().unwrap_or(target).to_owned())
}

#[cfg(test)]
mod tests;
