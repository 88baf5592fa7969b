//! The NETLINK_NETFILTER socket: sends one nf_tables transaction (BatchBegin … BatchEnd) and
//! reads back its acknowledgements, or runs one dump. Knows nothing about knockgate's table.

use std::io;
use std::ops::RangeInclusive;

use netlink_packet_core::{
    ErrorBuffer, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NetlinkBuffer, NetlinkMessage,
};
use netlink_packet_netfilter::nftables::NfTablesMessage;
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// nf_tables' nfnetlink subsystem: the high byte of its message types, and what
/// BatchBegin/End carry in `res_id` to say whose batch it is.
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// The kernel never builds a datagram larger than 32 KiB for a dump; leave room.
const RX_BUF: usize = 64 * 1024;

/// One message of a transaction, with a label for error messages.
pub(super) struct Request {
    /// What the message does, e.g. `"add element grants4"`; names the failure in errors.
    pub(super) what: &'static str,
    pub(super) msg: NfTablesMessage,
    /// `NLM_F_CREATE`, `NLM_F_EXCL`, …; `NLM_F_REQUEST | NLM_F_ACK` are added.
    pub(super) flags: u16,
}

/// Why a netlink exchange failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum NlError {
    #[error("failed to open the netlink socket")]
    Open(#[source] io::Error),
    #[error("failed to send to the kernel")]
    Send(#[source] io::Error),
    #[error("failed to receive from the kernel")]
    Recv(#[source] io::Error),
    #[error("failed to decode a kernel reply: {0}")]
    Decode(String),
    #[error("the kernel refused {what}")]
    Refused {
        what: &'static str,
        #[source]
        errno: io::Error,
    },
    #[error("the kernel acknowledged {got} of {want} messages")]
    MissingAck { got: usize, want: usize },
    #[error("the ruleset changed during the dump")]
    DumpInterrupted,
}

impl NlError {
    /// The errno the kernel answered with, if it refused the request.
    pub(super) fn errno(&self) -> Option<i32> {
        match self {
            NlError::Refused { errno, .. } => errno.raw_os_error(),
            _ => None,
        }
    }
}

/// A NETLINK_NETFILTER socket bound in the network namespace of the thread that opened it.
pub(super) struct NfSocket {
    sock: Socket,
    port_id: u32,
    seq: u32,
    tx: Vec<u8>,
    rx: Vec<u8>,
    labels: Vec<&'static str>,
}

impl NfSocket {
    pub(super) fn open() -> Result<Self, NlError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NlError::Open)?;
        sock.bind_auto().map_err(NlError::Open)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NlError::Open)?;
        let mut local = SocketAddr::new(0, 0);
        sock.get_address(&mut local).map_err(NlError::Open)?;
        Ok(NfSocket {
            sock,
            port_id: local.port_number(),
            seq: 0,
            tx: Vec::with_capacity(4096),
            rx: Vec::with_capacity(RX_BUF),
            labels: Vec::with_capacity(16),
        })
    }

    /// The port id the kernel gave this socket.
    pub(super) fn port_id(&self) -> u32 {
        self.port_id
    }

    /// Apply `reqs` as one atomic transaction: all of them or none.
    pub(super) fn transact(
        &mut self,
        reqs: impl IntoIterator<Item = Request>,
    ) -> Result<(), NlError> {
        self.tx.clear();
        self.labels.clear();
        let begin = self.push(
            ControlMessage::BatchBegin,
            NetfilterProtoFamily::Unspec,
            NFNL_SUBSYS_NFTABLES,
            NLM_F_REQUEST,
        );
        for req in reqs {
            self.labels.push(req.what);
            self.push(
                req.msg,
                NetfilterProtoFamily::Inet,
                0,
                NLM_F_REQUEST | NLM_F_ACK | req.flags,
            );
        }
        let end = self.push(
            ControlMessage::BatchEnd,
            NetfilterProtoFamily::Unspec,
            NFNL_SUBSYS_NFTABLES,
            NLM_F_REQUEST,
        );
        self.send()?;
        self.collect_acks(begin..=end)
    }

    /// Send a lookup outside any transaction; `Ok` if the kernel answers it.
    pub(super) fn get(&mut self, what: &'static str, req: NfTablesMessage) -> Result<(), NlError> {
        self.query(what, req, false, |_, _| Ok(()))
    }

    /// Run a dump and hand every nf_tables message of the answer to `each` as (message
    /// type, payload starting at its `nfgenmsg`).
    pub(super) fn dump(
        &mut self,
        what: &'static str,
        req: NfTablesMessage,
        each: impl FnMut(u8, &[u8]) -> Result<(), NlError>,
    ) -> Result<(), NlError> {
        self.query(what, req, true, each)
    }

    fn query(
        &mut self,
        what: &'static str,
        req: NfTablesMessage,
        dump: bool,
        mut each: impl FnMut(u8, &[u8]) -> Result<(), NlError>,
    ) -> Result<(), NlError> {
        self.tx.clear();
        // A dump ends with NLMSG_DONE; a lookup with the ACK this asks for.
        let flags = if dump { NLM_F_DUMP } else { NLM_F_ACK };
        let seq = self.push(req, NetfilterProtoFamily::Inet, 0, NLM_F_REQUEST | flags);
        self.send()?;
        let mut interrupted = false;
        loop {
            let n = self.recv(0)?;
            let mut rest = &self.rx[..n];
            while !rest.is_empty() {
                let (bytes, next) = split_first(rest)?;
                rest = next;
                let msg = NetlinkBuffer::new(bytes);
                if msg.sequence_number() != seq {
                    continue; // a late answer to an earlier request
                }
                interrupted |= msg.flags() & NLM_F_DUMP_INTR != 0;
                let [subsys, kind] = msg.message_type().to_be_bytes();
                match msg.message_type() {
                    NLMSG_DONE if interrupted => return Err(NlError::DumpInterrupted),
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        return match error_code(msg.payload())? {
                            Some(code) => Err(NlError::Refused {
                                what,
                                errno: io::Error::from_raw_os_error(-code),
                            }),
                            None => Ok(()),
                        };
                    }
                    _ if u16::from(subsys) == NFNL_SUBSYS_NFTABLES => each(kind, msg.payload())?,
                    _ => {}
                }
            }
        }
    }

    /// Append one message to `tx`; returns its sequence number.
    fn push(
        &mut self,
        inner: impl Into<NetfilterMessageInner>,
        family: NetfilterProtoFamily,
        res_id: u16,
        flags: u16,
    ) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = NetlinkMessage::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, res_id),
            inner,
        ));
        msg.header.flags = flags;
        msg.header.sequence_number = self.seq;
        msg.finalize();
        let start = self.tx.len();
        self.tx.resize(start + msg.buffer_len(), 0);
        msg.serialize(&mut self.tx[start..]);
        self.seq
    }

    fn send(&mut self) -> Result<(), NlError> {
        let sent = self.sock.send(&self.tx, 0).map_err(NlError::Send)?;
        if sent != self.tx.len() {
            return Err(NlError::Send(io::Error::other("short write")));
        }
        Ok(())
    }

    /// Receive one datagram into `rx`; returns its length.
    fn recv(&mut self, flags: libc::c_int) -> Result<usize, NlError> {
        loop {
            self.rx.clear();
            match self.sock.recv(&mut self.rx, flags | libc::MSG_TRUNC) {
                Ok(n) if n > self.rx.len() => {
                    return Err(NlError::Decode(format!("reply of {n} bytes truncated")));
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NlError::Recv(e)),
            }
        }
    }

    /// Read the answers to the transaction whose messages are numbered `seqs`.
    ///
    /// nfnetlink processes a batch inside `send()`, so by now every answer is queued:
    /// reading until the queue is empty never waits and never misses one (this is how
    /// nft itself reads them).
    fn collect_acks(&mut self, seqs: RangeInclusive<u32>) -> Result<(), NlError> {
        let first_req = seqs.start().wrapping_add(1);
        let want = self.labels.len();
        let mut got = 0;
        let mut refused: Option<NlError> = None;
        loop {
            let n = match self.recv(libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(NlError::Recv(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            let mut rest = &self.rx[..n];
            while !rest.is_empty() {
                let (bytes, next) = split_first(rest)?;
                rest = next;
                let msg = NetlinkBuffer::new(bytes);
                let seq = msg.sequence_number();
                if !in_range(&seqs, seq) || msg.message_type() != NLMSG_ERROR {
                    continue;
                }
                got += 1;
                let Some(code) = error_code(msg.payload())? else {
                    continue;
                };
                if refused.is_none() {
                    let index = seq.wrapping_sub(first_req) as usize;
                    let what = self.labels.get(index).copied().unwrap_or("the batch");
                    refused = Some(NlError::Refused {
                        what,
                        errno: io::Error::from_raw_os_error(-code),
                    });
                }
            }
        }
        match refused {
            Some(e) => Err(e),
            None if got < want => Err(NlError::MissingAck { got, want }),
            None => Ok(()),
        }
    }
}

/// Split the first netlink message (checked: its length fits) off a datagram.
pub(super) fn split_first(buf: &[u8]) -> Result<(&[u8], &[u8]), NlError> {
    let msg = NetlinkBuffer::new_checked(buf).map_err(|e| NlError::Decode(e.to_string()))?;
    let len = msg.length() as usize;
    let aligned = len.next_multiple_of(4).min(buf.len());
    Ok((&buf[..len], &buf[aligned..]))
}

/// `None` for an ACK, `Some(-errno)` for a refusal.
fn error_code(payload: &[u8]) -> Result<Option<i32>, NlError> {
    let err = ErrorBuffer::new_checked(payload).map_err(|e| NlError::Decode(e.to_string()))?;
    Ok(err.code().map(|c| c.get()))
}

fn in_range(seqs: &RangeInclusive<u32>, seq: u32) -> bool {
    // Sequence numbers may wrap inside one batch.
    seq.wrapping_sub(*seqs.start()) <= seqs.end().wrapping_sub(*seqs.start())
}
