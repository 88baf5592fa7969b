//! Fuzz the edge between the gRPC API and the domain: any bytes, decoded by prost as the
//! messages the agent and the controller receive, must convert to a domain value or an
//! error, never a panic. The first byte picks the receiver:
//!
//! - 0: the agent's sync stream: length-delimited `ControllerMessage`s, each config
//!   merged into the one held (`control::delta::merge`), converted (`PolicySet`) and
//!   prepared for the engine against a file config (`control::prepare`), as
//!   `control::sync` does; a prepared config becomes the one held, so deltas apply on it.
//! - 1: the controller's `Report`: every `Event` into a `ReportedEvent` and its audit
//!   row and grant.
//! - 2: the controller's `Claim` (`claim_from_api`).
//! - 3: an admin's `PolicySpec` (`PolicyDef::try_from`); an accepted policy must also
//!   survive the way back (`policy_to_api`) unchanged, as `GetPolicy` and the store
//!   rely on.
//! - 4: the other admin requests converted in `controller::convert`: `AddAgentRequest`,
//!   `AuditQuery`, `ListGrantsRequest`, `RevokeGrantsRequest` (the same bytes as each).
//!
//! Random bytes rarely make a message that passes validation (a valid policy name, port,
//! key length and knock method at once), so half the inputs (an odd `first / 5`) are
//! merged over a valid message instead (prost's `merge`: the fields the bytes carry
//! replace or extend the template's), which takes the fuzzer straight to the accepting
//! paths and the checks after them.
#![no_main]

use std::sync::LazyLock;

use knockgate_agent::control::convert::PolicySet;
use knockgate_agent::control::{delta, prepare};
use knockgate_agent_core::config::Config;
use knockgate_controller::convert::{AgentRequest, claim_from_api, grant_filter, policy_to_api};
use knockgate_controller::event::ReportedEvent;
use knockgate_controller::name::AgentName;
use knockgate_controller::policy::PolicyDef;
use knockgate_controller::store::{AuditFilter, RevokeTarget, Timestamp};
use knockgate_proto::api::{self, controller_message};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The agent's own file: what a controller config is validated against.
static BASE: LazyLock<Config> = LazyLock::new(|| {
    Config::parse("[agent]\nname = \"gw1\"\ninterfaces = [\"lo\"]\nstate_dir = \"/nonexistent\"\n")
        .expect("base config")
});

static AGENT: LazyLock<AgentName> = LazyLock::new(|| AgentName::new("gw1").expect("agent name"));

const NOW: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);

fn access(proto: api::Proto, port: u32) -> api::Access {
    api::Access {
        proto: proto as i32,
        port,
    }
}

/// A full config the agent accepts: a fixed sequence, SPA and fwknop, a rotating policy
/// with one-time keys, a user with every kind of key, and derived material for both.
fn agent_config() -> api::AgentConfig {
    use api::Proto::{Tcp, Udp};
    api::AgentConfig {
        version: 7,
        full: true,
        policies: vec![
            api::Policy {
                name: "ssh".into(),
                open: vec![access(Tcp, 22)],
                timeout_secs: 30,
                sequence: vec!["tcp/7000".into(), "udp/8000".into(), "icmp".into()],
                sequence_timeout_secs: 5,
                ..Default::default()
            },
            api::Policy {
                name: "web".into(),
                open: vec![access(Tcp, 443), access(Udp, 51820)],
                timeout_secs: 60,
                max_timeout_secs: 600,
                users: vec!["alice".into()],
                spa: true,
                fwknop: true,
                ..Default::default()
            },
            api::Policy {
                name: "rot".into(),
                open: vec![access(Tcp, 2222)],
                timeout_secs: 60,
                users: vec!["alice".into()],
                rotating: true,
                window_secs: 30,
                otk: true,
                otk_offline: "local".into(),
                ..Default::default()
            },
        ],
        users: vec![api::User {
            name: "alice".into(),
            spa_key: vec![7; 32],
            fwknop_key: vec![1; 32],
            fwknop_hmac_key: vec![2; 64],
            fwknop_hmac: "sha512".into(),
            ..Default::default()
        }],
        rotating: vec![api::RotatingSequence {
            user: "alice".into(),
            policy: "rot".into(),
            window: 60_000_000,
            knocks: vec![access(Tcp, 20001), access(Udp, 20002), access(Tcp, 20003)],
            ..Default::default()
        }],
        one_time_keys: vec![api::OneTimeKey {
            user: "alice".into(),
            counter: 1,
            key: vec![9; 32],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A policy an admin may add, with every knock method.
fn policy_spec_template() -> api::PolicySpec {
    api::PolicySpec {
        name: "ssh".into(),
        open: vec![access(api::Proto::Tcp, 22)],
        users: vec!["alice".into()],
        groups: vec!["ops".into()],
        agents: "site=lab".into(),
        timeout_secs: 30,
        max_timeout_secs: 600,
        spa: true,
        fwknop: true,
        sequence: vec!["tcp/7000".into(), "udp/8000".into(), "icmp".into()],
        sequence_timeout_secs: 5,
        rotating: true,
        rotating_length: 4,
        rotating_protos: "tcp".into(),
        rotating_port_lo: 20000,
        rotating_port_hi: 60000,
        window_secs: 30,
        otk: true,
        otk_offline: "local".into(),
        ..Default::default()
    }
}

/// A `grant.opened` event the controller records as a grant.
fn event_template() -> api::Event {
    api::Event {
        seq: 7,
        at_unix_ms: 1_000,
        kind: "grant.opened".into(),
        user: "alice".into(),
        src: "192.0.2.7".into(),
        policy: "ssh".into(),
        reason: String::new(),
        grant: Some(api::GrantInfo {
            grant_ref: "g1".into(),
            addr: String::new(),
            access: Some(access(api::Proto::Tcp, 22)),
            expires_at_unix_ms: 31_000,
            ..Default::default()
        }),
        detail_json: r#"{"method":"spa"}"#.into(),
        ..Default::default()
    }
}

/// `bytes` as an `M`, or merged over `template` when there is one.
fn decode<M: Message + Default>(template: Option<M>, bytes: &[u8]) -> Option<M> {
    match template {
        None => M::decode(bytes).ok(),
        Some(mut m) => m.merge(bytes).is_ok().then_some(m),
    }
}

fn agent_sync(mut buf: &[u8], templated: bool) {
    let mut held: Option<api::AgentConfig> = None;
    while !buf.is_empty() {
        let config = if templated {
            // Length-delimited changes, each over the whole valid config.
            let Ok(len) = prost::encoding::decode_varint(&mut buf) else {
                return;
            };
            let len = usize::try_from(len).unwrap_or(usize::MAX).min(buf.len());
            let (chunk, rest) = buf.split_at(len);
            buf = rest;
            decode(Some(agent_config()), chunk)
        } else {
            let Ok(msg) = api::ControllerMessage::decode_length_delimited(&mut buf) else {
                return;
            };
            match msg.msg {
                Some(controller_message::Msg::Config(c)) => Some(c),
                // Revocations name grants and users as plain strings: nothing to convert.
                Some(controller_message::Msg::Revoke(api::RevokeGrants { .. })) | None => None,
            }
        };
        let Some(config) = config else {
            continue;
        };
        let Ok(merged) = delta::merge(held.as_ref(), config) else {
            continue;
        };
        let _ = PolicySet::try_from(&merged);
        if prepare(&BASE, &merged).is_ok() {
            held = Some(merged);
        }
    }
}

fn report(data: &[u8], templated: bool) {
    let events = if templated {
        decode(Some(event_template()), data).into_iter().collect()
    } else {
        decode::<api::ReportRequest>(None, data).map_or_else(Vec::new, |r| r.events)
    };
    for e in events {
        if let Ok(e) = ReportedEvent::try_from(e) {
            let _ = e.audit_row(&AGENT);
            let _ = e.new_grant(&AGENT);
            let _ = e.grant_error();
        }
    }
}

fn claim(data: &[u8], templated: bool) {
    let template = templated.then(|| api::ClaimRequest {
        user: "alice".into(),
        counter: 1,
        src: "192.0.2.7".into(),
        at_unix_ms: 1_000,
        ..Default::default()
    });
    if let Some(req) = decode(template, data) {
        let _ = claim_from_api(req, &AGENT, NOW);
    }
}

fn policy_spec(data: &[u8], templated: bool) {
    let Some(spec) = decode(templated.then(policy_spec_template), data) else {
        return;
    };
    if let Ok(def) = PolicyDef::try_from(spec) {
        let back = PolicyDef::try_from(policy_to_api(&def));
        assert_eq!(
            back.as_ref(),
            Ok(&def),
            "a policy does not survive its way back"
        );
    }
}

fn admin(data: &[u8], templated: bool) {
    let agent = templated.then(|| api::AddAgentRequest {
        name: "gw1".into(),
        labels: [("site".to_owned(), "lab".to_owned())].into(),
        address: "192.0.2.1".into(),
        token_ttl_secs: 600,
        ..Default::default()
    });
    if let Some(r) = decode(agent, data) {
        let _ = AgentRequest::try_from(r);
    }
    let query = templated.then(|| api::AuditQuery {
        since_unix_ms: 1_000,
        kind: "grant.opened".into(),
        user: "alice".into(),
        agent: "gw1".into(),
        after_id: 3,
        limit: 10,
        ..Default::default()
    });
    if let Some(q) = decode(query, data) {
        let _ = AuditFilter::try_from(q);
    }
    let grants = templated.then(|| api::ListGrantsRequest {
        agent: "gw1".into(),
        user: "alice".into(),
        ..Default::default()
    });
    if let Some(r) = decode(grants, data) {
        let _ = grant_filter(r, NOW);
    }
    if let Some(r) = decode::<api::RevokeGrantsRequest>(None, data) {
        let _ = RevokeTarget::try_from(r);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let templated = (first / 5) % 2 == 1;
    match first % 5 {
        0 => agent_sync(rest, templated),
        1 => report(rest, templated),
        2 => claim(rest, templated),
        3 => policy_spec(rest, templated),
        _ => admin(rest, templated),
    }
});
