//! Keeping the agent's certificate fresh: when the time the controller gave at enrolment
//! (or at the last renewal) has come, make a new key, have the controller sign it over
//! the authenticated channel (`AgentControl.Renew`), store key and certificate, and ask
//! the agent to restart itself so every connection uses them. The controller pins the
//! new certificate at once, so the old one is refused from then on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::control::ControllerChannel;
use knockgate_proto::api::RenewRequest;
use knockgate_proto::api::agent_control_client::AgentControlClient;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{STATE_CERT, STATE_KEY, STATE_RENEW_AFTER, enroll};
use crate::report::unix_ms;
use crate::state::write_atomic;

/// How often the renewal time is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long a failed renewal waits before the next try (the controller may be away).
const RETRY: Duration = Duration::from_secs(60);

/// Renew when due, forever; `restart` is notified once a new certificate is stored.
pub async fn run(
    channel: ControllerChannel,
    state_dir: PathBuf,
    name: String,
    restart: Arc<Notify>,
) {
    loop {
        let due = renew_after(&state_dir).is_none_or(|at| unix_ms(SystemTime::now()) >= at);
        if due {
            match renew(channel.clone(), &state_dir, &name).await {
                Ok(()) => {
                    info!(target: "knockgate::event", event = "agent.renewed",
                        "certificate renewed; restarting to use it");
                    restart.notify_one();
                    return;
                }
                Err(e) => {
                    warn!(error = %e, retry_s = RETRY.as_secs(), "certificate renewal failed");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// The renewal time recorded in `state_dir`; `None` if none was (renew now).
fn renew_after(state_dir: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(state_dir.join(STATE_RENEW_AFTER)).ok()?;
    text.trim().parse::<i64>().ok().filter(|at| *at > 0)
}

async fn renew(channel: ControllerChannel, state_dir: &Path, name: &str) -> Result<(), String> {
    let (key, csr_pem) = enroll::key_and_csr(name).map_err(|e| e.to_string())?;
    let resp = AgentControlClient::new(channel)
        .renew(RenewRequest { csr_pem })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    // The key first: a certificate never points at a key that is not there.
    for (file, text) in [
        (STATE_KEY, key.serialize_pem()),
        (STATE_CERT, resp.cert_pem),
        (STATE_RENEW_AFTER, format!("{}\n", resp.renew_after_unix_ms)),
    ] {
        let path = state_dir.join(file);
        write_atomic(&path, |f| std::io::Write::write_all(f, text.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
