//! Admin: the fleet at a glance (`knockadm status`): agents by state, how many are
//! behind on config, grants open now, and refusals counted by kind and reason.

use knockgate_proto::api;
use knockgate_proto::event::Kind;

use super::Ctx;
use crate::error::ServiceError;
use crate::store::{AgentState, GrantFilter, RefusalCount, RefusalKinds, Timestamp};
use crate::trail::{AUTH_REFUSED, CONFIG_REFUSED, ENROL_REFUSED, OTK_REFUSED};

/// What counts as a refusal: someone asked and was told no.
///
/// - The controller's own: a call or handshake refused (`auth.refused`), an enrolment
///   refused, a one-time key claim refused, a config an agent refused to apply.
/// - Agents': an SPA packet refused (`spa.rejected`, reported one by one but rate
///   limited), a completed sequence refused because it could not be recorded as used
///   (`knock.rejected`), and the periodic tally of every packet the SPA detector refused
///   (`spa.refused_summary`, which overlaps `spa.rejected`: both are shown by kind).
///
/// Not refusals: `knock.reset` and `knock.ignored` (knock noise, never reported),
/// `grant.failed` and `firewall.repair_failed` (faults, not answers), `otk.reuse` (a
/// key that was granted).
const REFUSALS: RefusalKinds<'static> = RefusalKinds {
    controller: &[AUTH_REFUSED, ENROL_REFUSED, OTK_REFUSED, CONFIG_REFUSED],
    reported: &[Kind::SpaRejected.as_str(), Kind::KnockRejected.as_str()],
    tallies: &[Kind::SpaRefusedSummary.as_str()],
};

/// Kinds and reasons returned at most (the most frequent).
const MAX_REFUSAL_ROWS: u32 = 256;

pub(super) async fn fleet(
    ctx: &Ctx<'_>,
    r: api::FleetStatusRequest,
) -> Result<api::FleetStatusResponse, ServiceError> {
    let api::FleetStatusRequest { since_unix_ms } = r;
    let since = (since_unix_ms != 0).then(|| Timestamp::from_unix_millis(since_unix_ms));
    let store = &ctx.state.store;
    let version = store.current_version().await?;
    let mut status = api::FleetStatusResponse {
        current_version: u64::try_from(version.0).unwrap_or(0),
        ..api::FleetStatusResponse::default()
    };
    let now = Timestamp::now();
    for agent in store.list_agents().await? {
        let n = match agent.state(now) {
            AgentState::Connected => &mut status.agents_connected,
            AgentState::Stale => &mut status.agents_stale,
            AgentState::NeverConnected => &mut status.agents_never_connected,
            AgentState::NotEnrolled => &mut status.agents_not_enrolled,
            AgentState::Revoked => &mut status.agents_revoked,
        };
        *n = n.saturating_add(1);
        if agent.is_behind(version) {
            status.agents_behind = status.agents_behind.saturating_add(1);
        }
    }
    let open = GrantFilter {
        active_at: Some(now),
        ..GrantFilter::default()
    };
    status.open_grants = store.count_grants(&open).await?;
    status.refusals = store
        .count_refusals(&REFUSALS, since, MAX_REFUSAL_ROWS)
        .await?
        .into_iter()
        .map(
            |RefusalCount {
                 kind,
                 reason,
                 count,
             }| api::RefusalCount {
                kind,
                reason,
                count,
            },
        )
        .collect();
    Ok(status)
}
