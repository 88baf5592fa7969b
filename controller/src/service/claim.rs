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
    let store = &state.store;
    let labels = store.get_agent(agent).await?.labels;
    let policies = super::load_policies(store).await?;
    let user = match store.get_user(&claim.user).await {
        Ok(u) => Some(u),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let rules: Vec<OtkOffline> = user
        .iter()
        .flat_map(|u| {
            policies
                .iter()
                .filter(|p| p.agents.matches(&labels) && p.admits(u))
                .filter_map(|p| p.otk)
        })
        .collect();
    if rules.is_empty() {
        // An answer, not an error: the agent must refuse, never fall back to its offline
        // rule as if the controller were out of reach.
        tracing::warn!(%agent, user = %claim.user, counter = claim.counter,
            offline = claim.offline,
            "one-time key claim for a user no one-time-key policy of the agent admits");
        if claim.offline && user.is_some() {
            // Granted while the controller was away: burn the key fleet-wide all the same.
            if let ClaimOutcome::Won(version) =
                store.claim_otk(&claim, OTK_STOCK, Timestamp::now()).await?
            {
                state.hub.bump(version);
            }
        }
        audit(
            state,
            OTK_REFUSED,
            &claim,
            json!({ "reason": "not admitted", "flagged": claim.offline }),
        )
        .await;
        return Ok(refused(NOT_ADMITTED));
    }
    let offline_allowed = rules.contains(&OtkOffline::Local);
    match store.claim_otk(&claim, OTK_STOCK, Timestamp::now()).await? {
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
            audit(state, OTK_CLAIMED, &claim, detail).await;
            Ok(granted())
        }
        ClaimOutcome::Repeated => Ok(granted()),
        ClaimOutcome::Used(first) if claim.offline => {
            // Both agents have granted with the key: that wants a human.
            tracing::warn!(%agent, user = %claim.user, counter = claim.counter,
                "one-time key used twice (reported offline)");
            let detail = json!({
                "flagged": true,
                "first": first.as_ref().map(described),
                "second": { "agent": agent.as_str(), "src": claim.src },
            });
            audit(state, OTK_REUSE, &claim, detail).await;
            Ok(refused(USED))
        }
        ClaimOutcome::Used(first) => {
            let detail = json!({
                "reason": USED,
                "first": first.as_ref().map(described),
            });
            audit(state, OTK_REFUSED, &claim, detail).await;
            Ok(refused(USED))
        }
        ClaimOutcome::Unknown => {
            tracing::warn!(%agent, user = %claim.user, counter = claim.counter,
                "claim of a one-time key beyond the stock");
            audit(state, OTK_REFUSED, &claim, json!({ "reason": UNKNOWN })).await;
            Ok(refused(UNKNOWN))
        }
    }
}
