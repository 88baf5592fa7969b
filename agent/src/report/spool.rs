//! The report spool on disk: `events.jsonl`, one JSON event per line in sequence order,
//! and `acked`, the highest sequence number the controller has stored.
//!
//! Sequence numbers never repeat, across restarts too: the next one is one past the
//! highest in either file, and `acked` is written (atomically) before acknowledged lines
//! are removed. Appends are synced before anyone can read them, so an event the controller
//! has seen cannot vanish in a crash and have its number given to another. Acknowledged
//! lines are removed by rewriting the file once they make up most of it (and whenever
//! everything is acknowledged), so a long backlog costs linear work, not quadratic.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::Record;
use crate::state;

/// Rewrite the file once acknowledged lines take more than half of it and at least this.
const COMPACT_MIN: u64 = 1 << 20;

/// The open spool. Not thread-safe by itself: share it behind a mutex.
pub struct Spool {
    dir: PathBuf,
    file: File,
    /// Bytes of complete lines in `events.jsonl`.
    len: u64,
    /// Where the first line not yet acknowledged starts.
    read_offset: u64,
    acked: u64,
    next_seq: u64,
    pending: usize,
    /// What the last `peek` returned: each line's seq (None: unreadable) and end offset.
    peeked: Vec<(Option<u64>, u64)>,
}

impl Spool {
    /// Open (creating) the spool in `dir`: drop acknowledged and torn lines, and find the
    /// next sequence number.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let acked = match fs::read_to_string(dir.join("acked")) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a number", dir.join("acked").display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let path = dir.join("events.jsonl");
        let mut kept = Vec::new();
        let mut highest = acked;
        let mut pending = 0;
        if let Ok(f) = File::open(&path) {
            let mut reader = BufReader::new(f);
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                // A line without its newline was torn by a crash mid-append.
                if line.last() != Some(&b'\n') {
                    break;
                }
                let Ok(event) = serde_json::from_slice::<Record>(&line) else {
                    continue;
                };
                if event.seq > highest {
                    highest = event.seq;
                    kept.extend_from_slice(&line);
                    pending += 1;
                }
            }
        }
        write_atomically(&path, &kept)?;
        let file = state::open_append(&path)?;
        crate::metrics::SPOOL_DEPTH.store(pending as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(Spool {
            dir: dir.to_path_buf(),
            file,
            len: kept.len() as u64,
            read_offset: 0,
            acked,
            next_seq: highest + 1,
            pending,
            peeked: Vec::new(),
        })
    }

    /// Events waiting for the controller.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Tells the spool depth gauge.
    fn publish(&self) {
        crate::metrics::SPOOL_DEPTH
            .store(self.pending as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The number the next appended event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Number `events` and append them, synced. On an error nothing of the batch stays
    /// (its numbers are skipped, never reused).
    pub fn append(&mut self, events: &mut [Record]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(events.len() * 256);
        for e in events.iter_mut() {
            e.seq = self.next_seq;
            self.next_seq += 1;
            serde_json::to_writer(&mut buf, e).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Cut a partial line off, or the next append would be glued to it.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.pending += events.len();
        self.publish();
        Ok(())
    }

    /// Up to `max` of the oldest events not acknowledged yet.
    pub fn peek(&mut self, max: usize) -> io::Result<Vec<Record>> {
        self.peeked.clear();
        let mut f = File::open(self.dir.join("events.jsonl"))?;
        f.seek(SeekFrom::Start(self.read_offset))?;
        let mut reader = BufReader::new(f.take(self.len - self.read_offset));
        let mut out = Vec::new();
        let mut offset = self.read_offset;
        let mut line = Vec::new();
        while out.len() < max {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            match serde_json::from_slice::<Record>(&line) {
                Ok(e) if e.seq > self.acked => {
                    self.peeked.push((Some(e.seq), offset));
                    out.push(e);
                }
                // Acknowledged already, or unreadable: step over it.
                _ => self.peeked.push((None, offset)),
            }
        }
        Ok(out)
    }

    /// The controller has stored every event through `through`: remember that, then
    /// forget those events (from what the last `peek` read).
    pub fn ack(&mut self, through: u64) -> io::Result<()> {
        if through <= self.acked {
            return Ok(());
        }
        self.record_acked(through)?;
        for &(seq, end) in &self.peeked {
            if seq.is_some_and(|s| s > through) {
                break;
            }
            self.read_offset = end;
            if seq.is_some() {
                self.pending = self.pending.saturating_sub(1);
            }
        }
        self.peeked.clear();
        self.publish();
        self.compact_if_worth_it().map(|_| ())
    }

    /// Remember (durably, before anything is forgotten) that events through `through`
    /// need not be sent.
    fn record_acked(&mut self, through: u64) -> io::Result<()> {
        write_atomically(&self.dir.join("acked"), format!("{through}\n").as_bytes())?;
        self.acked = through;
        Ok(())
    }

    /// Drop the oldest waiting events beyond `max` (the controller will never see them),
    /// so a controller away for long cannot fill the disk; returns how many went.
    pub fn shed(&mut self, max: usize) -> io::Result<u64> {
        if self.pending <= max {
            return Ok(0);
        }
        let excess = (self.pending - max) as u64;
        let mut f = File::open(self.dir.join("events.jsonl"))?;
        f.seek(SeekFrom::Start(self.read_offset))?;
        let mut reader = BufReader::new(f.take(self.len - self.read_offset));
        let (mut offset, mut dropped, mut last) = (self.read_offset, 0u64, self.acked);
        let mut line = Vec::new();
        while dropped < excess {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            if let Ok(e) = serde_json::from_slice::<Record>(&line)
                && e.seq > self.acked
            {
                dropped += 1;
                last = e.seq;
            }
        }
        if last > self.acked {
            // Recorded as if acknowledged: a restart forgets them too, numbers stay unique.
            self.record_acked(last)?;
        }
        self.read_offset = offset;
        self.pending = self.pending.saturating_sub(dropped as usize);
        self.publish();
        // What a peek in flight read past the dropped lines still counts.
        self.peeked.retain(|&(_, end)| end > offset);
        if self.compact_if_worth_it()? {
            self.peeked.clear();
        }
        Ok(dropped)
    }

    /// Compact once everything is acknowledged, or once acknowledged lines make up most
    /// of a large file; returns whether it did.
    fn compact_if_worth_it(&mut self) -> io::Result<bool> {
        let worth = self.read_offset == self.len
            || (self.read_offset >= COMPACT_MIN && self.read_offset * 2 > self.len);
        if worth {
            self.compact()?;
        }
        Ok(worth)
    }

    /// Rewrite the file with only the lines not acknowledged.
    fn compact(&mut self) -> io::Result<()> {
        let path = self.dir.join("events.jsonl");
        let mut rest = Vec::new();
        let mut f = File::open(&path)?;
        f.seek(SeekFrom::Start(self.read_offset))?;
        f.take(self.len - self.read_offset).read_to_end(&mut rest)?;
        write_atomically(&path, &rest)?;
        self.file = state::open_append(&path)?;
        self.len = rest.len() as u64;
        self.read_offset = 0;
        Ok(())
    }
}

/// Replace `path` with `data`, durably and atomically.
fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    state::write_atomic(path, |f| f.write_all(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use knockgate_proto::event::Kind;

    #[test]
    fn shedding_drops_the_oldest_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = Spool::open(dir.path()).expect("open");
        s.append(&mut events(10)).expect("append");
        assert_eq!(s.shed(20).expect("shed"), 0);
        assert_eq!(s.shed(4).expect("shed"), 6);
        assert_eq!(s.pending(), 4);
        let left: Vec<u64> = s.peek(100).expect("peek").iter().map(|e| e.seq).collect();
        assert_eq!(left, [7, 8, 9, 10], "the newest are kept");
        s.ack(8).expect("ack");
        assert_eq!(s.pending(), 2);
        drop(s);
        let mut s = Spool::open(dir.path()).expect("reopen");
        assert_eq!(s.pending(), 2);
        assert_eq!(s.next_seq(), 11, "numbers are never reused");
        let left: Vec<u64> = s.peek(100).expect("peek").iter().map(|e| e.seq).collect();
        assert_eq!(left, [9, 10]);
    }

    fn events(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record::new(Kind::GrantOpened, 0).with_detail("i", i))
            .collect()
    }

    fn seqs(v: &[Record]) -> Vec<u64> {
        v.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn seq_survives_reopen_and_acked_events_are_gone() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spool::open(dir.path()).expect("open");
        s.append(&mut events(3)).expect("append");
        assert_eq!(seqs(&s.peek(2).expect("peek")), [1, 2]);
        s.ack(2).expect("ack");
        assert_eq!(s.pending(), 1);
        assert_eq!(seqs(&s.peek(10).expect("peek")), [3]);
        drop(s);

        let mut s = Spool::open(dir.path()).expect("reopen");
        assert_eq!(s.next_seq(), 4);
        assert_eq!(s.pending(), 1);
        assert_eq!(seqs(&s.peek(10).expect("peek")), [3]);
        s.ack(3).expect("ack all");
        assert_eq!(
            fs::metadata(dir.path().join("events.jsonl"))
                .expect("meta")
                .len(),
            0,
            "everything acknowledged: the file is emptied"
        );
        drop(s);

        // Nothing left on disk but `acked`: numbering still goes on from there.
        let mut s = Spool::open(dir.path()).expect("reopen");
        assert_eq!(s.next_seq(), 4);
        s.append(&mut events(1)).expect("append");
        assert_eq!(seqs(&s.peek(10).expect("peek")), [4]);
    }

    #[test]
    fn a_torn_tail_and_a_stale_tmp_file_are_survived() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spool::open(dir.path()).expect("open");
        s.append(&mut events(2)).expect("append");
        drop(s);
        // A crash mid-append leaves half a line; one mid-compaction a stray temp file.
        let path = dir.path().join("events.jsonl");
        let mut f = state::open_append(&path).expect("file");
        f.write_all(br#"{"seq":3,"at_ms":1,"ki"#).expect("tear");
        fs::write(dir.path().join("events.tmp"), b"garbage").expect("tmp");

        let mut s = Spool::open(dir.path()).expect("reopen");
        assert_eq!(s.next_seq(), 3, "the torn line never counted");
        s.append(&mut events(1)).expect("append");
        assert_eq!(seqs(&s.peek(10).expect("peek")), [1, 2, 3]);
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn a_crash_between_ack_and_removal_does_not_resend_or_reuse() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spool::open(dir.path()).expect("open");
        s.append(&mut events(4)).expect("append");
        drop(s);
        // `acked` was written but the lines were not removed yet.
        fs::write(dir.path().join("acked"), "3\n").expect("acked");
        let mut s = Spool::open(dir.path()).expect("reopen");
        assert_eq!(seqs(&s.peek(10).expect("peek")), [4]);
        assert_eq!(s.next_seq(), 5);
        // An ack beyond what was read still never resends what it covers.
        s.append(&mut events(2)).expect("append");
        s.peek(1).expect("peek");
        s.ack(5).expect("ack");
        assert_eq!(seqs(&s.peek(10).expect("peek")), [6]);
    }

    #[test]
    fn large_backlogs_are_compacted_in_place() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spool::open(dir.path()).expect("open");
        let mut all = Vec::new();
        for _ in 0..30 {
            let mut batch: Vec<Record> = (0..500)
                .map(|_| Record::new(Kind::SpaRejected, 0).with_detail("pad", "x".repeat(200)))
                .collect();
            s.append(&mut batch).expect("append");
            all.extend(seqs(&batch));
        }
        let full = s.len;
        let mut seen = Vec::new();
        let mut compacted = false;
        loop {
            let b = s.peek(500).expect("peek");
            let Some(last) = b.last().map(|e| e.seq) else {
                break;
            };
            seen.extend(seqs(&b));
            s.ack(last).expect("ack");
            compacted |= s.len > 0 && s.len < full;
        }
        assert_eq!(seen, all);
        assert!(compacted, "rewritten before the backlog was drained");
        assert_eq!(s.pending(), 0);
    }
}
