//! The nftables backend: owns the `inet knockgate` table (docs/ARCHITECTURE.md, "nftables
//! layout") and talks to the kernel over netlink, never through `nft`. Every change is
//! one atomic nf_tables transaction; the kernel expires grants by itself, so they close on
//! time even if the agent dies.

mod doors;
mod forward;
mod grants;
mod layout;
mod rules;
mod socket;
mod watch;

use std::error::Error;
use std::time::Duration;

use knockgate_agent_core::grants::GrantLabel;
use knockgate_agent_core::ruleset::{GrantKey, Ruleset};
use netlink_packet_core::NLM_F_EXCL;

use self::socket::{NfSocket, NlError};
pub use self::watch::watch;
use crate::firewall::{Firewall, FirewallError, Held};

/// How often `open` and `list` start over when the kernel's state changes under them.
const ATTEMPTS: usize = 3;
/// `NFT_MSG_NEWRULE`, the type of a dumped rule message.
const NFT_MSG_NEWRULE: u8 = 6;
/// `NFT_MSG_NEWSETELEM`, the type of a dumped element message.
const NFT_MSG_NEWSETELEM: u8 = 12;
/// `NFT_MSG_NEWCHAIN` and `NFT_MSG_NEWSET`, of dumped chains and sets, and the attributes
/// that name them.
const NFT_MSG_NEWCHAIN: u8 = 3;
const NFT_MSG_NEWSET: u8 = 9;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_SET_NAME: u16 = 2;

/// The [`Firewall`] that enforces grants with nftables, in the network namespace of the
/// thread that created it.
///
/// It is blocking; drive it from one dedicated thread.
pub struct NftFirewall {
    sock: NfSocket,
}

impl NftFirewall {
    /// Open a NETLINK_NETFILTER socket in the calling thread's network namespace.
    ///
    /// Touches no rules; call [`Firewall::ensure_base`] next.
    pub fn new() -> Result<Self, FirewallError> {
        let sock = NfSocket::open().map_err(|e| to_firewall_error("open socket", e))?;
        Ok(NftFirewall { sock })
    }

    /// The netlink port id of this backend's socket: the kernel names it as the origin of
    /// the changes this backend makes, so [`watch`] can tell them from anyone else's.
    pub fn port_id(&self) -> u32 {
        self.sock.port_id()
    }

    /// Delete `table inet knockgate` and every grant in it: `knockgate-agent uninstall`.
    /// A table that is not there is not an error.
    pub fn remove_table(&mut self) -> Result<(), FirewallError> {
        match self.sock.transact([layout::delete_table()]) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other.map_err(|e| to_firewall_error("remove table", e)),
        }
    }

    /// How many rules `chain` holds (0 without the table or the chain).
    fn count_rules(&mut self, chain: &str) -> Result<usize, NlError> {
        let mut n = 0;
        let result = self
            .sock
            .dump("dump rules", layout::dump_rules(chain), |kind, _| {
                n += usize::from(kind == NFT_MSG_NEWRULE);
                Ok(())
            });
        match result {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(0),
            other => other.map(|()| n),
        }
    }

    /// How many elements the set holds; `None` if the set (or the table) is missing.
    fn count_elements(&mut self, set: &str) -> Result<Option<usize>, NlError> {
        let mut n = 0;
        let result = self
            .sock
            .dump("dump set", grants::dump(set), |kind, payload| {
                if kind == NFT_MSG_NEWSETELEM {
                    n += grants::count_elements(payload)
                        .map_err(|e| NlError::Decode(e.to_string()))?;
                }
                Ok(())
            });
        match result {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            other => other.map(|()| Some(n)),
        }
    }

    /// Whether the kernel holds knockgate's table as `ruleset` wants it: every rule of its
    /// chains, the static sets and maps with their elements, both grant sets.
    fn check(&mut self, ruleset: &Ruleset) -> Result<bool, NlError> {
        for (chain, want) in layout::rule_counts(ruleset) {
            if self.count_rules(&chain)? != want {
                return Ok(false);
            }
        }
        let sets = layout::static_sets(ruleset)
            .into_iter()
            .map(|(set, n)| (set, Some(n)))
            .chain(
                [layout::GRANTS4, layout::GRANTS6]
                    .map(|s| (s.to_string(), None))
                    .into_iter()
                    .chain(doors::dynamic_sets(ruleset).into_iter().map(|s| (s, None))),
            );
        for (set, want) in sets {
            match (self.count_elements(&set)?, want) {
                (None, _) => return Ok(false),
                (Some(n), Some(want)) if n != want => return Ok(false),
                _ => {}
            }
        }
        Ok(true)
    }

    /// The forward chains that exist now (none without the table).
    fn forward_chains(&mut self) -> Result<Vec<&'static str>, NlError> {
        let mut present = Vec::new();
        for chain in layout::FORWARD_CHAINS {
            match self.sock.get("get chain", layout::get_chain(chain)) {
                Ok(()) => present.push(chain),
                Err(e) if e.errno() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(present)
    }

    /// The chains and the sets of kernel doors the table holds and `ruleset` does not
    /// have (none without the table).
    fn stale_doors(&mut self, ruleset: &Ruleset) -> Result<(Vec<String>, Vec<String>), NlError> {
        let wanted = doors::wanted(ruleset);
        let chains = self.stale_names(
            layout::dump_chains(),
            NFT_MSG_NEWCHAIN,
            NFTA_CHAIN_NAME,
            &wanted,
        )?;
        let sets = self.stale_names(layout::dump_sets(), NFT_MSG_NEWSET, NFTA_SET_NAME, &wanted)?;
        Ok((chains, sets))
    }

    /// The names, in a dump of `kind` messages naming them with `attr`, of door chains or
    /// sets that are not `wanted`.
    fn stale_names(
        &mut self,
        req: netlink_packet_netfilter::nftables::NfTablesMessage,
        kind: u8,
        attr: u16,
        wanted: &[String],
    ) -> Result<Vec<String>, NlError> {
        let mut stale = Vec::new();
        let result = self.sock.dump("dump names", req, |k, payload| {
            if k == kind
                && let Some(raw) = grants::attribute(payload, attr)
            {
                let name = String::from_utf8_lossy(raw.split(|b| *b == 0).next().unwrap_or(&[]));
                if name.starts_with(doors::PREFIX) && !wanted.iter().any(|w| *w == name) {
                    stale.push(name.into_owned());
                }
            }
            Ok(())
        });
        match result {
            // No table: nothing is stale.
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(stale),
            other => other.map(|()| stale),
        }
    }

    /// Whether the kernel holds `key` now (an expired grant is not held).
    fn holds(&mut self, key: &GrantKey) -> Result<bool, NlError> {
        match self.sock.get("get element", grants::get(key)) {
            Ok(()) => Ok(true),
            // No such element, or no such set: either way it is not held.
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn dump_set(&mut self, set: &'static str, held: &mut Vec<Held>) -> Result<(), NlError> {
        let start = held.len();
        let mut attempt = 1;
        loop {
            let result = self
                .sock
                .dump("dump set", grants::dump(set), |kind, payload| {
                    if kind == NFT_MSG_NEWSETELEM {
                        grants::read_dump(set, payload, held)
                            .map_err(|e| NlError::Decode(e.to_string()))?;
                    }
                    Ok(())
                });
            match result {
                Err(NlError::DumpInterrupted) if attempt < ATTEMPTS => {
                    held.truncate(start);
                    attempt += 1;
                }
                // No table or no set: nothing is held.
                Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
                other => return other,
            }
        }
    }
}

impl Firewall for NftFirewall {
    fn ensure_base(&mut self, ruleset: &Ruleset) -> Result<(), FirewallError> {
        // Forward chains left from a config that forwarded are removed; only a config
        // that forwards needs (and creates) them.
        let stale = if ruleset.forwards.is_empty() {
            self.forward_chains()
                .map_err(|e| to_firewall_error("ensure_base", e))?
        } else {
            Vec::new()
        };
        let stale_doors = self
            .stale_doors(ruleset)
            .map_err(|e| to_firewall_error("ensure_base", e))?;
        let err = match self
            .sock
            .transact(layout::adopt(ruleset, &stale, &stale_doors))
        {
            Ok(()) => {
                tracing::debug!(
                    protected = ruleset.protected.len(),
                    knock_ports = ruleset.knock_ports.len(),
                    forwards = ruleset.forwards.len(),
                    "nftables table inet knockgate in place"
                );
                return Ok(());
            }
            // Only a refusal can mean the table is not ours to adopt.
            Err(e) if e.errno().is_none() || is_permission(&e) => {
                return Err(to_firewall_error("ensure_base", e));
            }
            Err(e) => e,
        };
        // A table whose sets or chain differ from ours (an older layout, a hand edit)
        // cannot be adopted in place: rebuild it and carry the grants over.
        tracing::warn!(
            error = %chain(&err),
            "cannot adopt the existing nftables table inet knockgate, rebuilding it"
        );
        let carried: Vec<_> = match self.list() {
            Ok(held) => held
                .into_iter()
                // Never re-add a grant without a timeout: knockgate did not make it.
                .filter(|h| h.remaining != Duration::MAX)
                .map(|h| (h.key, timeout_ms(h.remaining), h.label))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the grants to carry over, dropping them");
                Vec::new()
            }
        };
        self.sock
            .transact(layout::rebuild(ruleset, &carried))
            .map_err(|e| to_firewall_error("ensure_base", e))
    }

    fn open(
        &mut self,
        key: &GrantKey,
        timeout: Duration,
        label: &GrantLabel,
    ) -> Result<(), FirewallError> {
        let ms = timeout_ms(timeout);
        // Before 6.10 the kernel keeps an element's expiry when it is added again, so a
        // refresh is delete + add in one transaction. The lookup decides which transaction
        // to send, because a refused one is rolled back at a cost of milliseconds.
        let mut attempt = 1;
        loop {
            let held = self.holds(key).map_err(|e| to_firewall_error("open", e))?;
            let result = if held {
                self.sock
                    .transact([grants::delete(key), grants::add(key, ms, label, NLM_F_EXCL)])
            } else {
                self.sock
                    .transact([grants::add(key, ms, label, NLM_F_EXCL)])
            };
            let raced = match result.as_ref().err().and_then(NlError::errno) {
                Some(libc::ENOENT) => held, // it expired between lookup and transaction
                Some(libc::EEXIST) => !held,
                _ => false,
            };
            if !raced || attempt == ATTEMPTS {
                return result.map_err(|e| to_firewall_error("open", e));
            }
            attempt += 1;
        }
    }

    fn close(&mut self, key: &GrantKey) -> Result<(), FirewallError> {
        // Most grants are closed around the time the kernel expires them; looking first
        // avoids a refused (and slow to roll back) delete.
        if !self.holds(key).map_err(|e| to_firewall_error("close", e))? {
            return Ok(());
        }
        match self.sock.transact([grants::delete(key)]) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other.map_err(|e| to_firewall_error("close", e)),
        }
    }

    /// The grants in both sets. An element without a timeout (knockgate never adds one)
    /// is reported with `remaining == Duration::MAX`.
    fn list(&mut self) -> Result<Vec<Held>, FirewallError> {
        let mut held = Vec::new();
        for set in [layout::GRANTS4, layout::GRANTS6] {
            self.dump_set(set, &mut held)
                .map_err(|e| to_firewall_error("list", e))?;
        }
        Ok(held)
    }

    fn matches_sequences(&self) -> bool {
        true
    }

    fn keep_doors_alive(&mut self, ttl: Duration) -> Result<(), FirewallError> {
        let ms = if ttl.is_zero() { 0 } else { timeout_ms(ttl) };
        match self.sock.transact(doors::alive(ms)) {
            // No table (uninstalled): nothing opens anyway.
            Err(e) if ms == 0 && e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other.map_err(|e| to_firewall_error("keep doors alive", e)),
        }
    }

    fn intact(&mut self, ruleset: &Ruleset) -> Result<bool, FirewallError> {
        let mut attempt = 1;
        loop {
            match self.check(ruleset) {
                Err(NlError::DumpInterrupted) if attempt < ATTEMPTS => attempt += 1,
                other => return other.map_err(|e| to_firewall_error("check", e)),
            }
        }
    }
}

/// Milliseconds for the kernel, at least 1: a zero timeout would mean "never expires".
fn timeout_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn is_permission(e: &NlError) -> bool {
    matches!(e.errno(), Some(libc::EPERM | libc::EACCES))
}

/// The one place netlink failures become [`FirewallError`]s.
fn to_firewall_error(op: &'static str, e: NlError) -> FirewallError {
    if is_permission(&e) {
        return FirewallError::Permission(format!("{op}: {}", chain(&e)));
    }
    match e {
        NlError::Refused { what, errno } => FirewallError::Kernel { op: what, errno },
        other => FirewallError::Netlink(format!("{op}: {}", chain(&other))),
    }
}

/// An error and its sources, joined with ": ".
fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
