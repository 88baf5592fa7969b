//! Passive OS fingerprinting of TCP SYNs with p0f version 3 signatures.
//!
//! [`Database::parse`] reads a p0f v3 `p0f.fp` and keeps its `[tcp:request]` signatures
//! (the other sections are checked for shape and skipped); [`syn`] turns a captured frame
//! into the fields p0f reads from a SYN; [`Database::classify`] matches them the way
//! p0f 3.09b's `tcp_find_match` does; [`os_matches`] is the policy check (`require_os`).
//!
//! Matching, as in p0f:
//!
//! - the option layout, EOL padding and IP options length must be equal, `mss`, `scale`
//!   and `pclass` equal unless `*`, and the window must fit (`mss*N` and `mtu*N` are
//!   checked against the first divisor p0f's `detect_win_multi` finds, not any divisor);
//! - the signature's initial TTL must be at most [`MAX_DIST`] hops above the observed
//!   one; for `ittl-` (randomised TTL) only "not above" is required;
//! - the quirks must be equal, after dropping IPv4-only quirks for IPv6 packets and
//!   `flow` for IPv4 packets when the signature says `*` for the IP version;
//! - the first exact match of a specific (`s:`) label wins at once; else the first exact
//!   generic (`g:`) one; else the first fuzzy one: a TTL out of range, or quirks that
//!   differ only by `df`/`id+` missing or `id-`/`ecn` present. Labels of userland tools
//!   (class `!`, such as NMap) never match fuzzily.
//!
//! One deliberate difference: a signature pinned to one IP version (`4:` or `6:`) only
//! matches packets of that version (p0f ignores the version when matching).

mod db;
mod sig;
#[cfg(test)]
mod tests;

use std::fmt;

pub use db::{Database, DbError, DbErrorKind};
pub use sig::{IpVersion, MAX_OPTS, Quirk, Quirks, Syn, syn};

use db::{Label, Sig, Window};

/// The farthest a sender may be (in hops) for its TTL to count as exact, as in p0f.
pub const MAX_DIST: u8 = 35;

/// What [`Database::classify`] found, borrowed from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'a> {
    label: &'a Label,
    label_id: usize,
    line: usize,
    /// A catch-all (`g:`) label: no specific one matched exactly.
    pub generic: bool,
    /// Matched only after tolerating a TTL out of range or a `df`/`id+`/`id-`/`ecn`
    /// difference.
    pub fuzzy: bool,
    /// Estimated hops between the sender and us.
    pub distance: u8,
}

impl<'a> Match<'a> {
    /// The OS or tool name, e.g. `"Linux"`, `"Windows"`, `"Mac OS X"`.
    pub fn name(&self) -> &'a str {
        self.label.text.get(..self.label.name_len).unwrap_or("")
    }

    /// The flavor, e.g. `"3.11 and newer"`; empty when the label has none.
    pub fn flavor(&self) -> &'a str {
        self.label.text.get(self.label.name_len + 1..).unwrap_or("")
    }

    /// The OS class (`"unix"`, `"win"`, `"other"`); `None` for userland tools (`!`).
    pub fn class(&self) -> Option<&'a str> {
        self.label.class.as_deref()
    }

    /// Name and flavor, e.g. `"Linux 3.11 and newer"`.
    pub fn label(&self) -> &'a str {
        &self.label.text
    }

    /// The 1-based line of the matching `sig` in the database text.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The label's number in its database ([`Database::label_text`] and
    /// [`Database::label_name`] give it back): a match that outlives its borrow.
    pub fn label_id(&self) -> usize {
        self.label_id
    }
}

impl fmt::Display for Match<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl Database {
    /// The best signature for an observed SYN, with p0f's preferences (see the module
    /// docs). Allocation-free.
    pub fn classify(&self, syn: &Syn) -> Option<Match<'_>> {
        let multiplier = syn.window_multiplier();
        let mut generic: Option<&Sig> = None;
        let mut fuzzy: Option<&Sig> = None;
        for sig in &self.sigs {
            if sig.layout != syn.layout
                || sig.olen != syn.ip_opt_len
                || sig.version.is_some_and(|v| v != syn.version)
            {
                continue;
            }
            let mut is_fuzzy = false;
            let want = match (sig.version, syn.version) {
                (None, IpVersion::V4) => sig.quirks.minus(Quirks::V6_ONLY),
                (None, IpVersion::V6) => sig.quirks.minus(Quirks::V4_ONLY),
                _ => sig.quirks,
            };
            if want != syn.quirks {
                let deleted = want.minus(syn.quirks).minus(Quirks::MAY_VANISH);
                let added = syn.quirks.minus(want).minus(Quirks::MAY_APPEAR);
                if fuzzy.is_some() || !deleted.is_empty() || !added.is_empty() {
                    continue;
                }
                is_fuzzy = true;
            }
            match sig.ittl.checked_sub(syn.ttl) {
                None if sig.bad_ttl => continue,
                Some(d) if sig.bad_ttl || d <= MAX_DIST => {}
                _ => is_fuzzy = true,
            }
            let window = match sig.window {
                Window::Any => true,
                Window::Value(w) => w == syn.window,
                Window::Mod(m) => syn.window.checked_rem(m) == Some(0),
                Window::Mss(n) => multiplier == Some((n, false)),
                Window::Mtu(n) => multiplier == Some((n, true)),
            };
            if !window
                || sig.mss.is_some_and(|m| m != syn.mss)
                || sig.wscale.is_some_and(|s| s != syn.wscale)
                || sig.payload.is_some_and(|p| p != syn.payload)
            {
                continue;
            }
            match (is_fuzzy, self.label(sig).generic) {
                (false, false) => return Some(self.matched(sig, syn, false)),
                (false, true) => _ = generic.get_or_insert(sig),
                (true, _) => _ = fuzzy.get_or_insert(sig),
            }
        }
        if let Some(sig) = generic {
            return Some(self.matched(sig, syn, false));
        }
        let sig = fuzzy?;
        self.label(sig).class.as_ref()?;
        Some(self.matched(sig, syn, true))
    }

    fn label(&self, sig: &Sig) -> &Label {
        // Labels are pushed before their sigs and never removed, so the index is valid;
        // the fallback only keeps this total.
        self.labels.get(sig.label).unwrap_or(&db::NO_LABEL)
    }

    fn matched(&self, sig: &Sig, syn: &Syn, fuzzy: bool) -> Match<'_> {
        let label = self.label(sig);
        let distance = match sig.ittl.checked_sub(syn.ttl) {
            Some(d) if sig.bad_ttl || d <= MAX_DIST => d,
            _ => sig::guess_distance(syn.ttl),
        };
        Match {
            label,
            label_id: sig.label,
            line: sig.line,
            generic: label.generic,
            fuzzy,
            distance,
        }
    }
}

/// The policy check behind `require_os`: true iff there is a match and its name equals
/// one of `required`, ASCII case-insensitively. Generic and fuzzy matches count; no
/// match never does.
pub fn os_matches<S: AsRef<str>>(m: Option<&Match<'_>>, required: &[S]) -> bool {
    m.is_some_and(|m| {
        required
            .iter()
            .any(|r| r.as_ref().eq_ignore_ascii_case(m.name()))
    })
}
