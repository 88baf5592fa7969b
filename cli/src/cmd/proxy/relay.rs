//! The two copies of `knocker proxy`: input to the connection on a thread of its
//! own, the connection to output on the caller's. Blocking IO: the command does
//! nothing else meanwhile.
//!
//! Half-close: when input ends, the connection's write side is shut down (the
//! peer reads end of file) and the copy to output goes on. When the peer closes,
//! [`relay`] returns without waiting for input, which may never end (a terminal,
//! or ssh, which closes it only when it exits itself).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};

/// Bytes moved per read.
const CHUNK: usize = 16 * 1024;

/// Copies `input` to `stream` and `stream` to `output` until the peer closes the
/// connection; shuts the connection's write side down when `input` ends or fails.
///
/// # Errors
/// Reading the connection or writing `output` failed. A failure on the input side
/// only ends that direction: the peer sees end of file and decides.
pub(super) fn relay(
    stream: TcpStream,
    mut input: impl Read + Send + 'static,
    output: &mut dyn Write,
) -> io::Result<()> {
    let mut to_peer = stream.try_clone()?;
    // Not joined: see the module comment.
    std::thread::Builder::new()
        .name("proxy-input".to_owned())
        .spawn(move || {
            let _ = pump(&mut input, &mut to_peer);
            let _ = to_peer.shutdown(Shutdown::Write);
        })?;
    let mut from_peer = stream;
    pump(&mut from_peer, output)
}

/// Copies until `from` ends, flushing after every chunk (standard output is
/// line-buffered; ssh must see every byte as it comes).
fn pump(from: &mut dyn Read, to: &mut dyn Write) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        to.write_all(buf.get(..n).unwrap_or_default())?;
        to.flush()?;
    }
}
