//! Delivers the spool to the controller: batches of the oldest events through
//! `AgentControl.Report`, acknowledged in the spool up to what the controller says it
//! stored. At least once: a batch whose answer is lost is sent again, and the controller
//! de-duplicates by sequence number.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::ControllerChannel;
use knockgate_proto::api::agent_control_client::AgentControlClient;
use knockgate_proto::api::{self, ReportRequest};
use tracing::{Instrument as _, debug, info, warn};

use super::spool::Spool;
use crate::control::backoff::{BASE, Backoff};

/// Most events in one Report call.
pub const BATCH: usize = 500;
/// Look at the spool at least this often even without being woken.
const IDLE: Duration = Duration::from_secs(5);

/// Run forever (until the runtime stops): deliver whatever the spool holds.
pub async fn run(
    channel: ControllerChannel,
    spool: Arc<Mutex<Spool>>,
    appended: Arc<tokio::sync::Notify>,
    reconnect_max: Duration,
) {
    let mut client = AgentControlClient::new(channel);
    let mut backoff = Backoff::new(BASE, reconnect_max);
    let mut failing = false;
    loop {
        let batch = match with_spool(&spool, |s| s.peek(BATCH)).await {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot read the report spool");
                tokio::time::sleep(IDLE).await;
                continue;
            }
        };
        let Some(last) = batch.last().map(|e| e.seq) else {
            let _ = tokio::time::timeout(IDLE, appended.notified()).await;
            continue;
        };
        let first = batch.first().map_or(last, |e| e.seq);
        let request = ReportRequest {
            events: batch.into_iter().map(api::Event::from).collect(),
        };
        let span = tracing::info_span!("report", otel.kind = "client", events = last - first + 1);
        let result = async {
            client
                .report(knockgate_telemetry::propagate::request(request))
                .await
        }
        .instrument(span)
        .await;
        let stored = match result {
            Ok(resp) => resp.into_inner().stored_through_seq.min(last),
            Err(status) => {
                if !failing {
                    warn!(code = ?status.code(), error = %status.message(),
                        "cannot deliver events to the controller; they stay spooled");
                }
                failing = true;
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        if stored < first {
            // The controller stored nothing of this batch: treat it as a failure so a
            // controller that keeps refusing is not hammered.
            if !failing {
                warn!(
                    first,
                    last, stored, "the controller did not store the reported events"
                );
            }
            failing = true;
            tokio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        if failing {
            info!("delivering spooled events to the controller again");
            failing = false;
        }
        backoff.reset();
        debug!(first, last, stored, "events reported");
        if let Err(e) = with_spool(&spool, move |s| s.ack(stored)).await {
            warn!(error = %e, "cannot remove reported events from the spool; they will be sent again");
        }
    }
}

/// Run `f` on the spool on a blocking thread (it does file IO under a std mutex).
async fn with_spool<T: Send + 'static>(
    spool: &Arc<Mutex<Spool>>,
    f: impl FnOnce(&mut Spool) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = spool
            .lock()
            .map_err(|_| std::io::Error::other("the spool lock is poisoned"))?;
        f(&mut s)
    })
    .await
    .map_err(std::io::Error::other)?
}
