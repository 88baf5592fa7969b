//! One-time-key claims with the controller (`AgentControl.Claim`). Two loops share the
//! channel:
//!
//! - the engine's claims: each is one RPC with a short deadline, made concurrently, and
//!   its outcome goes back to the engine as [`Input::Claimed`]. Without a live sync stream
//!   the answer is "unreachable" at once, with no RPC;
//! - offline claims (keys granted while the controller was away): delivered from the
//!   queue in the state directory, oldest first, until the controller has each, retried
//!   with backoff. The controller decides whether that was allowed and flags a key used
//!   twice; the agent only has to make sure it hears of every one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::ControllerChannel;
use knockgate_proto::api::ClaimRequest;
use knockgate_proto::api::agent_control_client::AgentControlClient;
use tokio::sync::{Notify, mpsc};
use tonic::Code;
use tracing::{Instrument as _, debug, info, warn};

use super::backoff::{BASE, Backoff};
use crate::engine::{ClaimJob, ClaimOutcome, Input};
use crate::otk_store::{Claim, OfflineClaims};

/// How long one claim may take before the controller counts as out of reach.
pub const CLAIM_DEADLINE: Duration = Duration::from_secs(1);
/// How long delivering one offline claim may take.
const DELIVER_DEADLINE: Duration = Duration::from_secs(10);
/// Look at the offline queue at least this often even without being woken.
const IDLE: Duration = Duration::from_secs(30);

/// What the claim task needs besides the channel and the engine's claims.
pub struct ClaimParams {
    /// The engine's input queue, for the answers.
    pub engine: SyncSender<Input>,
    /// Set by the sync task while a stream is up.
    pub live: Arc<AtomicBool>,
    pub offline: Arc<Mutex<OfflineClaims>>,
    pub offline_added: Arc<Notify>,
    pub reconnect_max: Duration,
}

/// Serve the engine's claims and deliver offline ones, forever (until the runtime stops).
pub async fn run(channel: ControllerChannel, jobs: mpsc::Receiver<ClaimJob>, p: ClaimParams) {
    let ClaimParams {
        engine,
        live,
        offline,
        offline_added,
        reconnect_max,
    } = p;
    tokio::join!(
        serve(channel.clone(), jobs, engine, live),
        deliver(channel, offline, offline_added, reconnect_max),
    );
}

/// A claim as the wire carries it.
pub fn to_proto(c: &Claim) -> ClaimRequest {
    let Claim {
        user,
        counter,
        src,
        at_unix_ms,
        offline,
    } = c;
    ClaimRequest {
        user: user.clone(),
        counter: *counter,
        src: src.to_string(),
        at_unix_ms: *at_unix_ms,
        offline: *offline,
    }
}

async fn serve(
    channel: ControllerChannel,
    mut jobs: mpsc::Receiver<ClaimJob>,
    engine: SyncSender<Input>,
    live: Arc<AtomicBool>,
) {
    while let Some(job) = jobs.recv().await {
        let client = AgentControlClient::new(channel.clone());
        let (engine, live) = (engine.clone(), live.clone());
        tokio::spawn(async move {
            let outcome = if live.load(Ordering::Acquire) {
                claim(client, &job.claim).await
            } else {
                ClaimOutcome::Unreachable("no sync stream".into())
            };
            debug!(id = job.id, user = %job.claim.user, counter = job.claim.counter,
                ?outcome, "one-time key claim answered");
            let input = Input::Claimed {
                id: job.id,
                outcome,
            };
            // The engine's queue is a std channel: block on a blocking-pool thread.
            let _ = tokio::task::spawn_blocking(move || engine.send(input)).await;
        });
    }
}

/// Ask the controller for one key, within [`CLAIM_DEADLINE`].
pub async fn claim(client: AgentControlClient<ControllerChannel>, c: &Claim) -> ClaimOutcome {
    // A span of its own, whose context travels with the call: the controller's handling
    // of the claim is part of this trace.
    let span = tracing::info_span!("otk.claim", otel.kind = "client", knockgate.user = %c.user);
    claim_in_span(client, c).instrument(span).await
}

async fn claim_in_span(
    mut client: AgentControlClient<ControllerChannel>,
    c: &Claim,
) -> ClaimOutcome {
    let request = knockgate_telemetry::propagate::request(to_proto(c));
    match tokio::time::timeout(CLAIM_DEADLINE, client.claim(request)).await {
        Ok(Ok(resp)) => {
            let r = resp.into_inner();
            if r.granted {
                ClaimOutcome::Granted
            } else {
                ClaimOutcome::Refused(r.reason)
            }
        }
        // The controller answered and said no: a refusal, never a reason to fall back
        // to the offline rule.
        Ok(Err(status)) if refusal(status.code()) => {
            warn!(code = ?status.code(), error = %status.message(), user = %c.user,
                counter = c.counter, "the controller refused a one-time key claim");
            ClaimOutcome::Refused(format!("refused by the controller: {:?}", status.code()))
        }
        Ok(Err(status)) => {
            warn!(code = ?status.code(), error = %status.message(), user = %c.user,
                counter = c.counter, "one-time key claim failed");
            ClaimOutcome::Unreachable(format!("claim failed: {}", status.code()))
        }
        Err(_) => {
            warn!(user = %c.user, counter = c.counter, "no answer to a one-time key claim in time");
            ClaimOutcome::Unreachable("claim timed out".into())
        }
    }
}

/// Answers that are the controller's decision, not a failure to reach it: a claim with
/// one of these is refused, and an offline claim is not delivered again (it would only
/// be refused again).
fn refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::Unauthenticated
    )
}

async fn deliver(
    channel: ControllerChannel,
    queue: Arc<Mutex<OfflineClaims>>,
    added: Arc<Notify>,
    reconnect_max: Duration,
) {
    let mut client = AgentControlClient::new(channel);
    let mut backoff = Backoff::new(BASE, reconnect_max);
    let mut failing = false;
    loop {
        let batch = queue.lock().map(|q| q.pending()).unwrap_or_default();
        if batch.is_empty() {
            let _ = tokio::time::timeout(IDLE, added.notified()).await;
            continue;
        }
        let mut done = Vec::new();
        let mut failed = false;
        for c in batch {
            match tokio::time::timeout(DELIVER_DEADLINE, client.claim(to_proto(&c))).await {
                Ok(Ok(resp)) => {
                    let r = resp.into_inner();
                    if r.granted {
                        info!(user = %c.user, counter = c.counter, "offline one-time key claim delivered");
                    } else {
                        warn!(user = %c.user, counter = c.counter, reason = %r.reason,
                            "offline one-time key claim delivered, but the key was used elsewhere too");
                    }
                    done.push(c);
                }
                Ok(Err(status)) if refusal(status.code()) => {
                    warn!(user = %c.user, counter = c.counter, code = ?status.code(),
                        error = %status.message(), "the controller refuses an offline claim; dropping it");
                    done.push(c);
                }
                Ok(Err(status)) => {
                    if !failing {
                        warn!(code = ?status.code(), error = %status.message(),
                            "cannot deliver offline one-time key claims; they stay queued");
                    }
                    failed = true;
                    break;
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if !done.is_empty() {
            let queue = queue.clone();
            let removed = tokio::task::spawn_blocking(move || match queue.lock() {
                Ok(mut q) => q.remove(&done),
                Err(_) => Err(std::io::Error::other("lock poisoned")),
            })
            .await;
            if !matches!(removed, Ok(Ok(()))) {
                warn!(
                    "cannot remove delivered offline claims from the queue; they will be sent again"
                );
                failed = true;
            }
        }
        failing = failed;
        if failed {
            tokio::time::sleep(backoff.next_delay()).await;
        } else {
            backoff.reset();
        }
    }
}

#[cfg(test)]
mod tests;
