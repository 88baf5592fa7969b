//! `AgentControl.Claim`: an agent asks for a one-time key before granting
//! with it (or reports one it burned offline). Only keys of users its
//! one-time-key policies admit may be claimed; the store decides the claim in
//! one transaction; every outcome is audited, and a win moves every agent's
//! stock forward (the version bump in that transaction reaches this replica's
//! streams at once and the others' through NOTIFY).

use knockgate_proto::api;
use serde_json::{Value, json};

use crate::desired::material::OTK_STOCK;
use crate::error::ServiceError;
use crate::name::AgentName;
use crate::policy::OtkOffline;
use crate::server::Controller;
use crate::store::{ClaimOutcome, NewOtkClaim, OtkClaim, StoreError, Timestamp};
use crate::trail::{Entry, OTK_CLAIMED, OTK_REFUSED, OTK_REUSE};

/// Why a claim was not granted, as the agent is told.
const USED: &str = "used";
const UNKNOWN: &str = "unknown";
const NOT_ADMITTED: &str = "not_admitted";

fn granted() -> api::ClaimResponse {
    api::ClaimResponse {
        granted: true,
        reason: String::new(),
    }
}

fn refused(reason: &str) -> api::ClaimResponse {
    api::ClaimResponse {
        granted: false,
        reason: reason.to_owned(),
    }
}

fn described(c: &OtkClaim) -> Value {
    json!({
        "user": c.claim.user.as_str(),
        "agent": c.claim.agent.as_str(),
        "src": c.claim.src,
        "at_unix_ms": c.claim.at.unix_millis(),
        "offline": c.claim.offline,
    })
}

async fn audit(state: &Controller, kind: &str, claim: &NewOtkClaim, mut detail: Value) {
    if let Value::Object(m) = &mut detail {
        m.insert("counter".into(), claim.counter.into());
        m.insert("offline".into(), claim.offline.into());
        m.insert("at_unix_ms".into(), claim.at.unix_millis().into());
    }
    Entry::new(kind, detail)
        .agent(Some(&claim.agent))
        .user(Some(claim.user.as_str()))
        .src(Some(&claim.src))
        .write(&state.store)
        .await;
}

/// Decides `claim`, made by `agent`.
pub(super) async fn claim(
    state: &Controller,
    agent: &AgentName,
    claim: NewOtkClaim,
) -> Result<api::ClaimResponse, ServiceError> {
    let started = std::time::Instant::now();
    let resp = decide(state, agent, claim).await?;
    let outcome = if resp.granted {
        "granted"
    } else {
        resp.reason.as_str()
    };
    crate::metrics::claim_decided(outcome, started.elapsed());
    Ok(resp)
}

async fn decide(
    state: &Controller,
    agent: &AgentName,
    claim: NewOtkClaim,
) -> Result<api::ClaimResponse, ServiceError> {
    let (user_known, rules) = admitting_rules(state, agent, &claim).await?;
    if rules.is_empty() {
        return refuse_not_admitted(state, agent, &claim, user_known).await;
    }
    let offline_allowed = rules.contains(&OtkOffline::Local);
    let outcome = state
        .store
        .claim_otk(&claim, OTK_STOCK, Timestamp::now())
        .await?;
    Ok(answer(state, agent, &claim, outcome, offline_allowed).await)
}

/// The offline rules of the one-time-key policies that admit the claim's user
/// on `agent`, and whether that user exists at all: an unknown user is admitted
/// by none, which is an answer, not an error.
async fn admitting_rules(
    state: &Controller,
    agent: &AgentName,
    claim: &NewOtkClaim,
) -> Result<(bool, Vec<OtkOffline>), ServiceError> {
    let store = &state.store;
    let labels = store.get_agent(agent).await?.labels;
    let policies = super::load_policies(store).await?;
    let user = match store.get_user(&claim.user).await {
        Ok(u) => Some(u),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let rules = user
        .iter()
        .flat_map(|u| {
            policies
                .iter()
                .filter(|p| p.agents.matches(&labels) && p.admits(u))
                .filter_map(|p| p.otk)
        })
        .collect();
    Ok((user.is_some(), rules))
}

/// Refuses a claim no one-time-key policy of `agent` admits. An answer, not an
/// error: the agent must refuse, never fall back to its offline rule as if the
/// controller were out of reach.
async fn refuse_not_admitted(
    state: &Controller,
    agent: &AgentName,
    claim: &NewOtkClaim,
    user_known: bool,
) -> Result<api::ClaimResponse, ServiceError> {
    tracing::warn!(%agent, user = %claim.user, counter = claim.counter,
        offline = claim.offline,
        "one-time key claim for a user no one-time-key policy of the agent admits");
    if claim.offline && user_known {
        // Granted while the controller was away: burn the key fleet-wide all the same.
        if let ClaimOutcome::Won(version) = state
            .store
            .claim_otk(claim, OTK_STOCK, Timestamp::now())
            .await?
        {
            state.hub.bump(version);
        }
    }
    audit(
        state,
        OTK_REFUSED,
        claim,
        json!({ "reason": "not admitted", "flagged": claim.offline }),
    )
    .await;
    Ok(refused(NOT_ADMITTED))
}

/// Tells the agent what the store decided about an admitted claim, audits it,
/// and on a win moves every agent's stock forward.
async fn answer(
    state: &Controller,
    agent: &AgentName,
    claim: &NewOtkClaim,
    outcome: ClaimOutcome,
    offline_allowed: bool,
) -> api::ClaimResponse {
    match outcome {
        ClaimOutcome::Won(version) => {
            state.hub.bump(version);
            let mut detail = json!({});
            if claim.offline && !offline_allowed {
                // It happened: record it, and say the agent broke the rule.
                tracing::warn!(%agent, user = %claim.user, counter = claim.counter,
                    "agent granted a one-time key offline against its policies");
                detail = json!({ "offline_not_allowed": true, "flagged": true });
            }
            tracing::info!(%agent, user = %claim.user, counter = claim.counter,
                offline = claim.offline, "one-time key claimed");
            audit(state, OTK_CLAIMED, claim, detail).await;
            granted()
        }
        ClaimOutcome::Repeated => granted(),
        ClaimOutcome::Used(first) if claim.offline => {
            // Both agents have granted with the key: that wants a human.
            tracing::warn!(%agent, user = %claim.user, counter = claim.counter,
                "one-time key used twice (reported offline)");
            let detail = json!({
                "flagged": true,
                "first": first.as_ref().map(described),
                "second": { "agent": agent.as_str(), "src": claim.src },
            });
            audit(state, OTK_REUSE, claim, detail).await;
            refused(USED)
        }
        ClaimOutcome::Used(first) => {
            let detail = json!({
                "reason": USED,
                "first": first.as_ref().map(described),
            });
            audit(state, OTK_REFUSED, claim, detail).await;
            refused(USED)
        }
        ClaimOutcome::Unknown => {
            tracing::warn!(%agent, user = %claim.user, counter = claim.counter,
                "claim of a one-time key beyond the stock");
            audit(state, OTK_REFUSED, claim, json!({ "reason": UNKNOWN })).await;
            refused(UNKNOWN)
        }
    }
}
