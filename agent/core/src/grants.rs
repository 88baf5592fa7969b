//! Grant bookkeeping: who is open until when. The firewall expires grants by itself; this
//! table mirrors it so the agent can report when a grant closes and restart a timeout
//! when the same source knocks again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::ruleset::GrantKey;

/// What the agent knows about one open grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The policy that opened it (empty for a grant adopted from the firewall).
    pub policy: String,
    /// The user who opened it: `None` for sequence knocks and adopted grants.
    pub user: Option<String>,
    /// This grant's id, `<prefix>-<n>`; an extension keeps it.
    pub grant_ref: String,
    pub opened_at: Instant,
    pub expires_at: Instant,
}

/// Who a grant belongs to, stored with it in the firewall (as the element's comment), so a
/// restarted agent adopts it with its ref, policy and user: the controller's grant table
/// and revocations by ref or by user keep working across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantLabel {
    pub grant_ref: String,
    pub policy: String,
    pub user: Option<String>,
}

impl GrantLabel {
    /// Longest comment nft shows (`NFTNL_UDATA_COMMENT_MAXLEN`, without its NUL).
    pub const MAX_COMMENT: usize = 127;

    /// `ref=R policy=P user=U`, each value escaped to `[A-Za-z0-9._:@-]` and `%XX`; the
    /// policy is left out if the whole would be longer than [`Self::MAX_COMMENT`], and
    /// `None` if even the ref and the user do not fit (or there is no ref).
    pub fn to_comment(&self) -> Option<String> {
        if self.grant_ref.is_empty() {
            return None;
        }
        let mut head = format!("ref={}", escape(&self.grant_ref));
        if let Some(u) = &self.user {
            head.push_str(" user=");
            head.push_str(&escape(u));
        }
        let full = format!("{head} policy={}", escape(&self.policy));
        [full, head]
            .into_iter()
            .find(|c| c.len() <= Self::MAX_COMMENT)
    }

    /// The label a comment written by [`GrantLabel::to_comment`] holds; `None` for any
    /// other comment.
    pub fn from_comment(comment: &str) -> Option<GrantLabel> {
        let mut label = GrantLabel::default();
        for field in comment.split(' ') {
            let (k, v) = field.split_once('=')?;
            let v = unescape(v)?;
            match k {
                "ref" => label.grant_ref = v,
                "policy" => label.policy = v,
                "user" => label.user = Some(v),
                _ => return None,
            }
        }
        (!label.grant_ref.is_empty()).then_some(label)
    }
}

/// `now + d`, saturating far in the future: the config caps every timeout far below, a
/// grant found in the firewall may not be.
fn expiry(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(u64::from(u32::MAX)))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b".:_@-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// A grant a firewall holds, with the time it has left and the label stored with it
/// (`None` if it has none knockgate can read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub key: GrantKey,
    pub remaining: Duration,
    pub label: Option<GrantLabel>,
}

/// Whether an open created a grant or extended one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    New,
    Extended,
}

/// All open grants, indexed by key and by expiry.
#[derive(Debug, Default)]
pub struct Grants {
    by_key: BTreeMap<GrantKey, Grant>,
    by_expiry: BTreeSet<(Instant, GrantKey)>,
    ref_prefix: String,
    next_ref: u64,
}

impl Grants {
    /// An empty table whose grant refs are `g-1`, `g-2`, …
    pub fn new() -> Self {
        Self::with_ref_prefix("g")
    }

    /// An empty table whose grant refs are `<prefix>-1`, `<prefix>-2`, … Give each run
    /// of the agent its own prefix, so refs are never reused across restarts.
    pub fn with_ref_prefix(prefix: &str) -> Self {
        Grants {
            ref_prefix: prefix.to_string(),
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn get(&self, key: &GrantKey) -> Option<&Grant> {
        self.by_key.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&GrantKey, &Grant)> {
        self.by_key.iter()
    }

    /// Record a grant opened now for `timeout` by `policy` for `user`. An open grant is
    /// extended: it keeps its ref and now belongs to the latest policy and user.
    pub fn handle_open(
        &mut self,
        key: GrantKey,
        policy: &str,
        user: Option<&str>,
        timeout: Duration,
        now: Instant,
    ) -> Opened {
        let expires_at = expiry(now, timeout);
        let opened = match self.by_key.get_mut(&key) {
            Some(g) => {
                self.by_expiry.remove(&(g.expires_at, key));
                g.expires_at = expires_at;
                g.policy = policy.to_string();
                g.user = user.map(str::to_string);
                Opened::Extended
            }
            None => {
                self.next_ref += 1;
                let grant = Grant {
                    policy: policy.to_string(),
                    user: user.map(str::to_string),
                    grant_ref: self.nth_ref(self.next_ref),
                    opened_at: now,
                    expires_at,
                };
                self.by_key.insert(key, grant);
                Opened::New
            }
        };
        self.by_expiry.insert((expires_at, key));
        opened
    }

    /// The ref of this run's `n`th grant.
    fn nth_ref(&self, n: u64) -> String {
        format!("{}-{n}", self.ref_prefix)
    }

    /// Take over a grant found in the firewall at start, with the time it has left and,
    /// if the firewall kept it, its label (its ref, policy and user).
    pub fn adopt(
        &mut self,
        key: GrantKey,
        remaining: Duration,
        label: Option<&GrantLabel>,
        now: Instant,
    ) {
        let Some(label) = label else {
            self.handle_open(key, "", None, remaining, now);
            return;
        };
        // Its own ref, not one of this run's: insert it as it was.
        self.handle_close(&key);
        let expires_at = expiry(now, remaining);
        let grant = Grant {
            policy: label.policy.clone(),
            user: label.user.clone(),
            grant_ref: label.grant_ref.clone(),
            opened_at: now,
            expires_at,
        };
        self.by_key.insert(key, grant);
        self.by_expiry.insert((expires_at, key));
    }

    /// The label an open of `key` now would store: its ref if it is open (an extension
    /// keeps it), else the ref the next new grant gets.
    pub fn label_for_open(&self, key: &GrantKey, policy: &str, user: Option<&str>) -> GrantLabel {
        let grant_ref = match self.by_key.get(key) {
            Some(g) => g.grant_ref.clone(),
            None => self.nth_ref(self.next_ref + 1),
        };
        GrantLabel {
            grant_ref,
            policy: policy.to_string(),
            user: user.map(str::to_string),
        }
    }

    /// The label to store with the grant at `key`.
    pub fn label(&self, key: &GrantKey) -> GrantLabel {
        self.by_key
            .get(key)
            .map(|g| GrantLabel {
                grant_ref: g.grant_ref.clone(),
                policy: g.policy.clone(),
                user: g.user.clone(),
            })
            .unwrap_or_default()
    }

    /// The keys of the grants selected by `pick`, for closing them.
    pub fn select(&self, mut pick: impl FnMut(&Grant) -> bool) -> Vec<GrantKey> {
        self.by_key
            .iter()
            .filter(|(_, g)| pick(g))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Forget a grant closed now; returns it if it was open.
    pub fn handle_close(&mut self, key: &GrantKey) -> Option<Grant> {
        let g = self.by_key.remove(key)?;
        self.by_expiry.remove(&(g.expires_at, *key));
        Some(g)
    }

    /// The next instant a grant expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first().map(|(t, _)| *t)
    }

    /// Remove and return every grant that has expired by `now`.
    pub fn poll_expired(&mut self, now: Instant) -> Vec<(GrantKey, Grant)> {
        let mut out = Vec::new();
        while let Some(&(t, key)) = self.by_expiry.first() {
            if t > now {
                break;
            }
            self.by_expiry.pop_first();
            if let Some(g) = self.by_key.remove(&key) {
                out.push((key, g));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::Proto;

    #[test]
    fn labels_round_trip_through_comments_and_fit() {
        let label = GrantLabel {
            grant_ref: "1a2b3c4d-7".into(),
            policy: "ssh admins".into(),
            user: Some("alice".into()),
        };
        let c = label.to_comment().expect("fits");
        assert_eq!(c, "ref=1a2b3c4d-7 user=alice policy=ssh%20admins");
        assert_eq!(GrantLabel::from_comment(&c), Some(label.clone()));
        let long = GrantLabel {
            policy: "p".repeat(200),
            ..label.clone()
        };
        let c = long.to_comment().expect("policy dropped");
        assert_eq!(
            GrantLabel::from_comment(&c).map(|l| l.user),
            Some(Some("alice".into()))
        );
        let huge = GrantLabel {
            user: Some("u".repeat(200)),
            ..label
        };
        assert_eq!(huge.to_comment(), None);
        for other in ["", "an operator's note", "ref=", "ref=a%zz", "ref=a x=1"] {
            assert_eq!(GrantLabel::from_comment(other), None, "{other:?}");
        }
    }

    #[test]
    fn adopted_grants_keep_their_label() {
        let t0 = Instant::now();
        let mut g = Grants::with_ref_prefix("new");
        let label = GrantLabel {
            grant_ref: "old-3".into(),
            policy: "ssh".into(),
            user: Some("bob".into()),
        };
        g.adopt(key(4), Duration::from_secs(5), Some(&label), t0);
        assert_eq!(g.label(&key(4)), label);
        let next = g.label_for_open(&key(5), "ssh", None);
        g.handle_open(key(5), "ssh", None, Duration::from_secs(5), t0);
        assert_eq!(g.get(&key(5)).expect("open").grant_ref, "new-1");
        assert_eq!(next, g.label(&key(5)), "the label stored is the grant's");
        assert_eq!(
            g.label_for_open(&key(4), "web", None).grant_ref,
            "old-3",
            "an extension keeps the ref"
        );
    }

    fn key(last: u8) -> GrantKey {
        GrantKey {
            addr: [10, 240, 0, last].into(),
            proto: Proto::Tcp,
            port: 22,
        }
    }

    #[test]
    fn grants_expire_in_order_and_reopening_extends() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = Grants::new();
        assert_eq!(g.handle_open(key(2), "ssh", None, s(30), t0), Opened::New);
        assert_eq!(g.handle_open(key(3), "ssh", None, s(10), t0), Opened::New);
        assert_eq!(g.next_expiry(), Some(t0 + s(10)));
        assert_eq!(
            g.handle_open(key(2), "ssh", None, s(30), t0 + s(20)),
            Opened::Extended
        );
        assert!(g.poll_expired(t0 + s(9)).is_empty());
        let closed = g.poll_expired(t0 + s(31));
        assert_eq!(
            closed.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![key(3)]
        );
        assert_eq!(g.next_expiry(), Some(t0 + s(50)));
        assert_eq!(g.handle_close(&key(2)).map(|g| g.opened_at), Some(t0));
        assert!(g.is_empty());
        assert_eq!(g.next_expiry(), None);
    }

    #[test]
    fn grants_keep_their_user_and_ref_and_refs_are_never_reused() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = Grants::with_ref_prefix("boot7");
        g.handle_open(key(2), "web", Some("alice"), s(30), t0);
        g.handle_open(key(3), "ssh", None, s(30), t0);
        let first = g.get(&key(2)).expect("open").clone();
        assert_eq!(first.grant_ref, "boot7-1");
        assert_eq!(first.user.as_deref(), Some("alice"));
        assert_eq!(g.get(&key(3)).expect("open").grant_ref, "boot7-2");
        g.handle_open(key(2), "web", Some("bob"), s(30), t0 + s(5));
        let extended = g.get(&key(2)).expect("open");
        assert_eq!(extended.grant_ref, "boot7-1", "an extension keeps its ref");
        assert_eq!(extended.user.as_deref(), Some("bob"));
        assert_eq!(
            g.select(|gr| gr.user.as_deref() == Some("bob")),
            vec![key(2)]
        );
        g.handle_close(&key(2));
        g.handle_open(key(2), "web", Some("bob"), s(30), t0 + s(6));
        assert_eq!(g.get(&key(2)).expect("open").grant_ref, "boot7-3");
    }

    #[test]
    fn adopted_grants_expire_after_their_remaining_time() {
        let t0 = Instant::now();
        let mut g = Grants::new();
        g.adopt(key(9), Duration::from_secs(3), None, t0);
        assert_eq!(g.poll_expired(t0 + Duration::from_secs(3)).len(), 1);
    }
}
