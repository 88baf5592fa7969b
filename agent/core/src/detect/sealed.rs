//! Sealed knock sequences (`proto/sealed.md`): knocks on the sealed port range, put back in
//! order per source by the index each port carries, until a whole sequence is there. What
//! the bytes say is judged by the SPA detector ([`crate::detect::spa`]), which holds the
//! keys.
//!
//! Bounded: one entry of [`MAX_LEN`] bytes per source in an LRU of `max_sources`, and at
//! most three complete candidates per attempt (one per length), so a flood of random knocks
//! on the range costs a table update per packet and, rarely, a hint lookup.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use knockgate_proto::knock::FlagFilter;
use knockgate_proto::sealed::{self, LENGTHS, MAX_LEN};

use crate::lru::BoundedLru;
use crate::packet::KnockStep;

/// A sequence must be whole within this from its first knock.
pub const ASSEMBLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One source's knocks so far.
struct Partial {
    started: Instant,
    /// Bit `i`: byte `i` arrived.
    have: u64,
    bytes: [u8; MAX_LEN],
}

impl Partial {
    fn new(at: Instant) -> Self {
        Partial {
            started: at,
            have: 0,
            bytes: [0; MAX_LEN],
        }
    }
}

/// What one knock on the range did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not a knock on the range (another port, or a TCP segment that is not a bare SYN).
    Outside,
    /// Collected; nothing to judge yet.
    Collecting,
    /// `bytes[..len]` hold a whole sequence of one of the sealed lengths: judge it.
    Complete { len: usize, bytes: [u8; MAX_LEN] },
}

/// The per-source collections.
pub struct Assembler {
    base: u16,
    sources: BoundedLru<IpAddr, Partial>,
}

impl Assembler {
    /// Collect knocks on the range starting at `base`, for at most `max_sources` sources.
    pub fn new(base: u16, max_sources: usize) -> Self {
        Assembler {
            base,
            sources: BoundedLru::new(max_sources),
        }
    }

    /// The first port of the range collected.
    pub fn base(&self) -> u16 {
        self.base
    }

    /// Sources with knocks held.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// One knock from `src` at `at`. A knock on an index that holds another byte starts
    /// the collection afresh (a new attempt); the same byte again (a retransmitted SYN)
    /// changes nothing.
    pub fn handle_knock(
        &mut self,
        src: IpAddr,
        kind: KnockStep,
        tcp_flags: u8,
        at: Instant,
    ) -> Step {
        let KnockStep::Port { proto, port } = kind else {
            return Step::Outside;
        };
        let Some((index, byte)) = sealed::index_of(self.base, port) else {
            return Step::Outside;
        };
        if proto == crate::ruleset::Proto::Tcp && !FlagFilter::DEFAULT.accepts(tcp_flags) {
            return Step::Outside;
        }
        let (p, _) = self.sources.get_or_insert_with(src, || Partial::new(at));
        let bit = 1u64 << index;
        if at.saturating_duration_since(p.started) > ASSEMBLY_TIMEOUT
            || (p.have & bit != 0 && p.bytes[index] != byte)
        {
            *p = Partial::new(at);
        }
        if p.have & bit != 0 {
            return Step::Collecting;
        }
        p.have |= bit;
        p.bytes[index] = byte;
        // Whole for a length: every index below it, none above (a longer one's knocks
        // that came early mean it is the longer one).
        for len in LENGTHS {
            let below = (1u64 << len) - 1;
            if p.have & below == below && p.have & !below == 0 {
                return Step::Complete {
                    len,
                    bytes: p.bytes,
                };
            }
        }
        Step::Collecting
    }

    /// Forget `src`'s knocks (its sequence opened, or its longest length failed).
    pub fn forget(&mut self, src: &IpAddr) {
        self.sources.remove(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::Proto;
    use knockgate_proto::knock::tcp_flags::{ACK, SYN};

    const BASE: u16 = 20_000;

    fn knock(port: u16) -> KnockStep {
        KnockStep::Port {
            proto: Proto::Tcp,
            port,
        }
    }

    fn src() -> IpAddr {
        "10.240.0.3".parse().unwrap()
    }

    fn feed(a: &mut Assembler, ports: &[u16], at: Instant) -> Vec<Step> {
        ports
            .iter()
            .map(|&p| a.handle_knock(src(), knock(p), SYN, at))
            .collect()
    }

    fn ports(bytes: &[u8]) -> Vec<u16> {
        bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| sealed::port(BASE, i, b))
            .collect()
    }

    #[test]
    fn in_order_or_shuffled_the_sequence_comes_back_whole() {
        let bytes: Vec<u8> = (0..17).map(|i| i * 13 + 5).collect();
        let t = Instant::now();
        let mut shuffled = ports(&bytes);
        shuffled.reverse();
        shuffled.swap(3, 9);
        for order in [ports(&bytes), shuffled] {
            let mut a = Assembler::new(BASE, 16);
            let steps = feed(&mut a, &order, t);
            assert!(steps[..16].iter().all(|s| *s == Step::Collecting));
            let Step::Complete { len, bytes: got } = steps[16] else {
                panic!("{:?}", steps[16]);
            };
            assert_eq!(&got[..len], &bytes[..]);
        }
    }

    #[test]
    fn a_longer_sequence_is_offered_at_each_length_it_passes() {
        let bytes: Vec<u8> = (0..33).map(|i| 255 - i).collect();
        let mut a = Assembler::new(BASE, 16);
        let steps = feed(&mut a, &ports(&bytes), Instant::now());
        let complete: Vec<usize> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Complete { len, .. } => Some(*len),
                _ => None,
            })
            .collect();
        assert_eq!(complete, [17, 21, 33]);
        // Knocks of the longer sequence that arrive early: no premature candidate.
        let mut a = Assembler::new(BASE, 16);
        let mut order = ports(&bytes);
        order.swap(5, 30);
        let steps = feed(&mut a, &order, Instant::now());
        let n = steps
            .iter()
            .filter(|s| matches!(s, Step::Complete { .. }))
            .count();
        assert_eq!(n, 1, "only at 33");
    }

    #[test]
    fn retransmits_change_nothing_and_a_new_attempt_starts_afresh() {
        let t = Instant::now();
        let mut a = Assembler::new(BASE, 16);
        let first = ports(&[1; 17]);
        feed(&mut a, &first[..10], t);
        feed(&mut a, &first[..10], t);
        // A new attempt: its first knock differs from the held one; the old bytes go.
        let second = ports(&[2; 17]);
        let steps = feed(&mut a, &second, t);
        let Step::Complete { len, bytes } = steps[16] else {
            panic!("{steps:?}")
        };
        assert_eq!(&bytes[..len], &[2; 17]);
    }

    #[test]
    fn stale_knocks_expire_and_others_are_outside() {
        let t = Instant::now();
        let mut a = Assembler::new(BASE, 16);
        let p = ports(&[7; 17]);
        feed(&mut a, &p[..16], t);
        let late = t + ASSEMBLY_TIMEOUT + Duration::from_millis(1);
        assert_eq!(
            a.handle_knock(src(), knock(p[16]), SYN, late),
            Step::Collecting
        );
        assert_eq!(
            a.handle_knock(src(), knock(BASE - 1), SYN, t),
            Step::Outside
        );
        assert_eq!(
            a.handle_knock(src(), knock(BASE + sealed::RANGE), SYN, t),
            Step::Outside
        );
        assert_eq!(
            a.handle_knock(src(), knock(p[0]), SYN | ACK, t),
            Step::Outside
        );
        assert_eq!(a.handle_knock(src(), KnockStep::Icmp, 0, t), Step::Outside);
    }

    #[test]
    fn a_flood_of_sources_is_bounded() {
        let t = Instant::now();
        let mut a = Assembler::new(BASE, 100);
        for i in 0..10_000u32 {
            let src = IpAddr::from(i.to_be_bytes());
            a.handle_knock(src, knock(BASE + (i % 8448) as u16), SYN, t);
        }
        assert_eq!(a.len(), 100);
    }
}
