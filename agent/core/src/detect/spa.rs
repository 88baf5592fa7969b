//! SPA verification for both formats, cheapest check first, with the replay cache and the
//! policy decision. Pure: the datagram, its source and the wall clock come in; a grant to
//! open or a rejection with its reason comes out.
//!
//! Native packets name their key (a clear key id), so a packet costs one hash lookup and
//! at most one AEAD open. fwknop packets carry no key hint, so users are tried in turn
//! with precomputed HMAC key schedules, starting with the user who last succeeded from the
//! same source address.
//!
//! One-time keys (pushed by the controller, `proto/rotation.md`) are native keys too: a
//! packet whose key id is in the stock is checked the same way, against policies that
//! take one-time keys, and its key leaves the stock as soon as it is accepted, so a resend
//! is refused here without asking the controller.

mod verdict;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use knockgate_proto::fwknop::{self, FwknopError, FwknopPacket, PreparedKeys};
use knockgate_proto::sealed::{self, SealedKeys};
use knockgate_proto::spa::{self, KeyId, SpaError, SpaKey};

use crate::config::{Config, Otk};
use crate::lru::BoundedLru;
use crate::replay::{Owner, ReplayCache, ReplayError, ReplayKey, owner_of};
use crate::ruleset::Access;
pub use verdict::{Method, Reason, Rejection, SpaGrant};

struct SpaPolicy {
    index: usize,
    open: BTreeSet<Access>,
    timeout: Duration,
    max_timeout: Duration,
    users: BTreeSet<usize>,
    native: bool,
    fwknop: bool,
    otk: bool,
    sealed: bool,
}

impl SpaPolicy {
    fn takes(&self, method: Method) -> bool {
        match method {
            Method::Native => self.native,
            Method::Fwknop => self.fwknop,
            Method::Otk => self.otk,
            Method::Sealed => self.sealed,
        }
    }
}

/// Keys, policies and replay state for one gateway.
pub struct SpaDetector {
    gateway: String,
    max_age: u64,
    native: HashMap<KeyId, (usize, SpaKey)>,
    /// The one-time keys not used yet: user and counter.
    otks: HashMap<KeyId, (usize, u64, SpaKey)>,
    fwknop: Vec<(usize, PreparedKeys)>,
    hints: BoundedLru<IpAddr, usize>,
    policies: Vec<SpaPolicy>,
    replay: ReplayCache,
    /// Each user's replay-cache owner number, by user index.
    owners: Vec<Owner>,
    /// Users sealed policies admit, with their sealed keys.
    sealed: Vec<(usize, SealedKeys)>,
    /// Slots in `sealed` and sequence lengths by their hints, for the hint windows of
    /// acceptable ages.
    sealed_hints: HashMap<[u8; sealed::HINT_LEN], Vec<(usize, usize)>>,
    /// The hint window `sealed_hints` was computed for.
    sealed_window: Option<u64>,
}

impl SpaDetector {
    /// Build from a validated config (keys were checked when it was parsed).
    pub fn new(config: &Config) -> Self {
        let native = config
            .users
            .iter()
            .enumerate()
            .filter_map(|(i, u)| u.spa_key.clone().map(|k| (k.id(), (i, k))))
            .collect();
        let fwknop = config
            .users
            .iter()
            .enumerate()
            .filter_map(|(i, u)| {
                u.fwknop
                    .as_ref()
                    .and_then(|k| PreparedKeys::new(k).ok())
                    .map(|p| (i, p))
            })
            .collect();
        let policies = config
            .policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.spa || p.fwknop || p.otk.is_some() || p.sealed)
            .map(|(index, p)| SpaPolicy {
                index,
                open: p.open.iter().copied().collect(),
                timeout: p.timeout,
                max_timeout: p.max_timeout,
                users: p.users.clone(),
                native: p.spa,
                fwknop: p.fwknop,
                otk: p.otk.is_some(),
                sealed: p.sealed,
            })
            .collect();
        let sealed = config
            .users
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                config
                    .policies
                    .iter()
                    .any(|p| p.sealed && p.users.contains(i))
            })
            .filter_map(|(i, u)| u.spa_key.as_ref().map(|k| (i, SealedKeys::derive(k))))
            .collect();
        SpaDetector {
            gateway: config.agent.name.clone(),
            max_age: config.spa.max_age.as_secs(),
            native,
            otks: HashMap::new(),
            fwknop,
            hints: BoundedLru::new(4096),
            policies,
            replay: ReplayCache::new(config.spa.replay_cache_max),
            owners: config.users.iter().map(|u| owner_of(&u.name)).collect(),
            sealed,
            sealed_hints: HashMap::new(),
            sealed_window: None,
        }
    }

    /// Replace the stock of one-time keys (user indexes are this config's). Keys the
    /// caller knows are used must be left out.
    pub fn set_otks(&mut self, otks: impl IntoIterator<Item = Otk>) {
        self.otks = otks
            .into_iter()
            .map(|o| (o.key.id(), (o.user, o.counter, o.key)))
            .collect();
    }

    /// One-time keys in stock.
    pub fn otk_count(&self) -> usize {
        self.otks.len()
    }

    /// The replay cache, to restore it from disk at start.
    pub fn replay_cache_ref(&self) -> &ReplayCache {
        &self.replay
    }

    pub fn replay_cache(&mut self) -> &mut ReplayCache {
        &mut self.replay
    }

    /// Judge one datagram that arrived on the SPA port from `src` at `now` (unix seconds).
    pub fn handle_datagram(
        &mut self,
        src: IpAddr,
        payload: &[u8],
        now: u64,
    ) -> Result<SpaGrant, Rejection> {
        if payload.first() == Some(&spa::MAGIC) {
            self.native(src, payload, now)
        } else {
            self.fwknop(src, payload, now)
        }
    }

    fn native(&mut self, src: IpAddr, payload: &[u8], now: u64) -> Result<SpaGrant, Rejection> {
        let reject = |reason, user| Rejection {
            reason,
            method: Some(Method::Native),
            user,
        };
        let id = spa::peek_key_id(payload).map_err(|e| reject(native_reason(e), None))?;
        let (method, user, key, otk) = match self.native.get(&id) {
            Some((user, key)) => (Method::Native, *user, key, None),
            None => {
                let (user, counter, key) =
                    self.otks.get(&id).ok_or(reject(Reason::UnknownKey, None))?;
                (Method::Otk, *user, key, Some(*counter))
            }
        };
        let reject = |reason, user| Rejection {
            reason,
            method: Some(method),
            user,
        };
        let req = spa::open(key, payload).map_err(|e| reject(native_reason(e), Some(user)))?;
        if req.gateway != self.gateway {
            return Err(reject(Reason::WrongGateway, Some(user)));
        }
        self.check_age(req.timestamp, now)
            .map_err(|r| reject(r, Some(user)))?;
        let mut rkey = [0u8; 32];
        rkey[..8].copy_from_slice(&id.0);
        rkey[8..24].copy_from_slice(&req.nonce);
        let addr = req.allow_ip.unwrap_or(src);
        let mut grant = self
            .decide(
                method,
                user,
                addr,
                &req.access,
                req.duration_secs,
                rkey,
                req.timestamp,
                now,
            )
            .map_err(|r| reject(r, Some(user)))?;
        if otk.is_some() {
            // Burned here whatever the controller says: a resend costs no round trip.
            self.otks.remove(&id);
            grant.otk = otk;
        }
        Ok(grant)
    }

    fn fwknop(&mut self, src: IpAddr, payload: &[u8], now: u64) -> Result<SpaGrant, Rejection> {
        let reject = |reason, user| Rejection {
            reason,
            method: Some(Method::Fwknop),
            user,
        };
        if self.fwknop.is_empty() {
            return Err(Rejection {
                reason: Reason::Malformed,
                method: None,
                user: None,
            });
        }
        let packet = FwknopPacket::parse(payload).map_err(|_| reject(Reason::Malformed, None))?;
        let hint = self
            .hints
            .get_mut(&src)
            .copied()
            .filter(|&i| i < self.fwknop.len());
        let found = hint
            .filter(|&i| self.fwknop[i].1.verify_hmac(&packet))
            .or_else(|| {
                (0..self.fwknop.len())
                    .find(|&i| Some(i) != hint && self.fwknop[i].1.verify_hmac(&packet))
            });
        let Some(slot) = found else {
            return Err(reject(Reason::NoMatchingKey, None));
        };
        *self.hints.get_or_insert_with(src, || slot).0 = slot;
        let (user, keys) = &self.fwknop[slot];
        let user = *user;
        let req = keys.decrypt(&packet).map_err(|e| {
            let reason = if matches!(e, FwknopError::BadHmac) {
                Reason::NoMatchingKey
            } else {
                Reason::BadEncryptionKey
            };
            reject(reason, Some(user))
        })?;
        self.check_age(req.timestamp, now)
            .map_err(|r| reject(r, Some(user)))?;
        if !req.is_access() {
            return Err(reject(Reason::NotAccessRequest, Some(user)));
        }
        let addr = req.explicit_ip().map_or(src, IpAddr::V4);
        let duration = req.client_timeout.unwrap_or(0);
        let rkey = fwknop::replay_digest(payload);
        self.decide(
            Method::Fwknop,
            user,
            addr,
            &req.access,
            duration,
            rkey,
            req.timestamp,
            now,
        )
        .map_err(|r| reject(r, Some(user)))
    }

    /// Judge the bytes of a whole sealed knock sequence from `src` at `now` (unix
    /// seconds). The clear hint picks the candidate users (none: junk, refused for the
    /// price of a table lookup); each candidate costs two HMACs. `Ok(None)`: the hint is
    /// of a longer sequence, whose remaining knocks may still come.
    pub fn handle_sealed(
        &mut self,
        src: IpAddr,
        bytes: &[u8],
        now: u64,
    ) -> Result<Option<SpaGrant>, Rejection> {
        let reject = |reason, user| Rejection {
            reason,
            method: Some(Method::Sealed),
            user,
        };
        self.refresh_hints(now);
        let hint = [
            bytes.first().copied().unwrap_or(0),
            bytes.get(1).copied().unwrap_or(0),
        ];
        let Some(slots) = self.sealed_hints.get(&hint) else {
            return Err(reject(Reason::UnknownKey, None));
        };
        // The hint says how long its sequence is: shorter ones wait for their knocks.
        if !slots.iter().any(|&(_, len)| len == bytes.len()) {
            return Ok(None);
        }
        let found = slots
            .iter()
            .filter(|&&(_, len)| len == bytes.len())
            .find_map(|&(slot, _)| {
                let (user, keys) = self.sealed.get(slot)?;
                sealed::open(keys, &self.gateway, src, bytes)
                    .ok()
                    .map(|req| (*user, req))
            });
        let Some((user, req)) = found else {
            return Err(reject(Reason::BadTag, None));
        };
        let timestamp = u64::from(req.timestamp);
        self.check_age(timestamp, now)
            .map_err(|r| reject(r, Some(user)))?;
        // The tag is unique per request; the last byte keeps sealed entries apart from
        // native ones (key id ‖ nonce) in the one replay cache.
        let mut rkey = [0u8; 32];
        let tag_at = bytes.len().saturating_sub(sealed::TAG_LEN);
        rkey[..sealed::TAG_LEN].copy_from_slice(&bytes[tag_at..]);
        rkey[31] = b'S';
        let addr = req.allow_ip.unwrap_or(src);
        self.decide(
            Method::Sealed,
            user,
            addr,
            &[req.access],
            0,
            rkey,
            timestamp,
            now,
        )
        .map(Some)
        .map_err(|r| reject(r, Some(user)))
    }

    /// Whether any user can send sealed sequences here.
    pub fn takes_sealed(&self) -> bool {
        !self.sealed.is_empty()
    }

    /// The hints of every sealed user for every hint window a sequence of acceptable age
    /// (`max_age` either side of `now`) can be stamped in, recomputed when the window
    /// turns.
    fn refresh_hints(&mut self, now: u64) {
        let window = now / sealed::HINT_WINDOW_SECS;
        if self.sealed_window == Some(window) {
            return;
        }
        self.sealed_window = Some(window);
        self.sealed_hints.clear();
        let first = now.saturating_sub(self.max_age) / sealed::HINT_WINDOW_SECS;
        let last = now.saturating_add(self.max_age) / sealed::HINT_WINDOW_SECS;
        for (slot, (_, keys)) in self.sealed.iter().enumerate() {
            for w in first..=last {
                for len in sealed::LENGTHS {
                    let slots = self.sealed_hints.entry(keys.hint(w, len)).or_default();
                    if !slots.contains(&(slot, len)) {
                        slots.push((slot, len));
                    }
                }
            }
        }
    }

    fn check_age(&self, timestamp: u64, now: u64) -> Result<(), Reason> {
        if timestamp + self.max_age < now {
            return Err(Reason::Stale);
        }
        if timestamp > now + self.max_age {
            return Err(Reason::Future);
        }
        Ok(())
    }

    /// Burn the packet, then find a policy admitting this user, method and access.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        method: Method,
        user: usize,
        addr: IpAddr,
        access: &[Access],
        duration_secs: u32,
        rkey: ReplayKey,
        timestamp: u64,
        now: u64,
    ) -> Result<SpaGrant, Reason> {
        // Expires when the packet could no longer pass the age check anyway.
        let expires = timestamp.max(now) + self.max_age + 1;
        let owner = self.owners.get(user).copied().unwrap_or(Owner::MAX);
        self.replay
            .handle_seen(rkey, expires, now, owner)
            .map_err(|e| match e {
                ReplayError::Replay => Reason::Replay,
                ReplayError::Full => Reason::ReplayCacheFull,
            })?;
        let policy = self
            .policies
            .iter()
            .find(|p| {
                p.takes(method)
                    && p.users.contains(&user)
                    && !access.is_empty()
                    && access.iter().all(|a| p.open.contains(a))
            })
            .ok_or(Reason::AccessDenied)?;
        let asked = Duration::from_secs(u64::from(duration_secs));
        let (timeout, capped) = if asked.is_zero() {
            (policy.timeout, false)
        } else if asked > policy.max_timeout {
            (policy.max_timeout, true)
        } else {
            (asked, false)
        };
        let mut access = access.to_vec();
        access.sort();
        access.dedup();
        Ok(SpaGrant {
            method,
            user,
            policy: policy.index,
            addr,
            access,
            timeout,
            capped,
            replay: (rkey, expires),
            otk: None,
        })
    }
}

fn native_reason(e: SpaError) -> Reason {
    match e {
        SpaError::UnknownKey => Reason::UnknownKey,
        SpaError::BadTag | SpaError::KeyMismatch => Reason::BadTag,
        _ => Reason::Malformed,
    }
}

#[cfg(test)]
mod tests;
