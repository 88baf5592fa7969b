//! The TLS dialer tonic connects through: TCP, the rustls handshake with the
//! admin certificate and the identity's CA as the only root, then one read
//! of the server's first bytes before handing the stream to HTTP/2.
//!
//! That read is the point of dialling ourselves. In TLS 1.3 the server
//! judges the client certificate only after the client's handshake is done,
//! so a refusal arrives as an alert on the first read; if HTTP/2 wrote first
//! it would usually meet a closed socket ("broken pipe") and report the
//! controller as unreachable. The controller speaks first (HTTP/2 SETTINGS),
//! so waiting for its first bytes costs nothing, and they are replayed to
//! HTTP/2 unchanged.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::Service;
use tonic::transport::Uri;

/// How long to wait for the server's first bytes after the handshake. A
/// refusal comes at once; a slow server is not an error, just unprimed.
const FIRST_READ_WAIT: Duration = Duration::from_secs(2);

/// The controller ended the connection right after the handshake (with an
/// alert, or without): in TLS 1.3 that is its verdict on our certificate.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct RefusedAfterHandshake {
    /// The alert as rustls words it, or that the connection was closed.
    pub reason: String,
}

/// A tonic connector: dials `host:port` over TLS whatever URI it is asked for
/// (tonic is given a plain `http://` URI so it does not add TLS of its own).
#[derive(Clone)]
pub struct Dialer {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    host: String,
    port: u16,
}

impl Dialer {
    /// A dialer for `host:port`, verifying the server as `server_name`.
    #[must_use]
    pub fn new(
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
        host: String,
        port: u16,
    ) -> Self {
        Dialer {
            config,
            server_name,
            host,
            port,
        }
    }

    async fn dial(self) -> io::Result<TokioIo<Primed<TlsStream<TcpStream>>>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let mut tls = TlsConnector::from(self.config)
            .connect(self.server_name, tcp)
            .await?;
        let mut head = vec![0u8; 4096];
        let len = match tokio::time::timeout(FIRST_READ_WAIT, tls.read(&mut head)).await {
            Ok(Ok(0)) => {
                let reason = "the controller closed the connection after the tls handshake";
                return Err(refused(io::ErrorKind::ConnectionAborted, reason.to_owned()));
            }
            Ok(Ok(len)) => len,
            Ok(Err(err)) => return Err(refused(err.kind(), err.to_string())),
            Err(_elapsed) => 0,
        };
        head.truncate(len);
        Ok(TokioIo::new(Primed {
            head,
            pos: 0,
            inner: tls,
        }))
    }
}

fn refused(kind: io::ErrorKind, reason: String) -> io::Error {
    io::Error::new(kind, RefusedAfterHandshake { reason })
}

impl Service<Uri> for Dialer {
    type Response = TokioIo<Primed<TlsStream<TcpStream>>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        Box::pin(self.clone().dial())
    }
}

/// A stream whose first bytes were already read: they are served again
/// before the rest.
pub struct Primed<S> {
    head: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Primed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rest = this.head.get(this.pos..).unwrap_or_default();
        if !rest.is_empty() {
            let len = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..len]);
            this.pos += len;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Primed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn primed_bytes_come_first_then_the_stream() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut primed = Primed {
            head: b"head-".to_vec(),
            pos: 0,
            inner: client,
        };
        server.write_all(b"tail").await.unwrap();
        drop(server);
        let mut all = Vec::new();
        primed.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"head-tail");
    }

    #[tokio::test]
    async fn small_reads_drain_the_head_in_pieces() {
        let (client, _server) = tokio::io::duplex(64);
        let mut primed = Primed {
            head: b"abcdef".to_vec(),
            pos: 0,
            inner: client,
        };
        let mut two = [0u8; 2];
        primed.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ab");
        let mut four = [0u8; 4];
        primed.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"cdef");
    }
}
