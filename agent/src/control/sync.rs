//! The sync stream: one `AgentControl.Sync` call held open for as long as the controller
//! allows, re-opened with backoff forever. Each config that arrives is merged, validated
//! as a whole and applied through the engine, or refused as a whole while the engine
//! keeps enforcing what it had (fail closed: nothing half-applied). What was applied is
//! cached on disk before the controller hears `Applied`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use crate::control::ControllerChannel;
use knockgate_agent_core::config::Config;
use knockgate_proto::api::agent_control_client::AgentControlClient;
use knockgate_proto::api::{
    AgentConfig, AgentMessage, Applied, Hello, Refused, RevokeGrants, agent_message,
    controller_message,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument as _, debug, info, warn};

use super::backoff::{BASE, Backoff};
use super::{cache, delta, prepare};
use crate::engine::{Input, Update};

/// What the sync task needs besides the channel.
pub struct SyncParams {
    /// The engine's input queue.
    pub engine: SyncSender<Input>,
    /// The config file's own sections; policies and users come from the controller.
    pub base: Config,
    pub state_dir: PathBuf,
    /// The first capture interface, whose address Hello reports.
    pub interface: Option<String>,
    pub reconnect_max: Duration,
    /// The controller config the engine enforces now (from the cache), if any.
    pub current: Option<AgentConfig>,
    /// Set while a stream is up (the controller counts as reachable for claims).
    pub live: Arc<AtomicBool>,
}

/// How a session ended.
enum End {
    /// The controller ended the stream.
    Closed,
    /// A delta did not fit: a new stream brings a full config.
    Resync(String),
}

/// Keep the sync stream up forever (until the runtime stops).
pub async fn run(channel: ControllerChannel, params: SyncParams) {
    let mut backoff = Backoff::new(BASE, params.reconnect_max);
    let mut syncer = Syncer {
        p: params,
        up: false,
        warned: false,
    };
    loop {
        let result = syncer.session(&channel, &mut backoff).await;
        syncer.p.live.store(false, Ordering::Release);
        let was_up = std::mem::replace(&mut syncer.up, false);
        match result {
            Ok(End::Resync(reason)) => {
                info!(%reason, "reconnecting to the controller for a full config");
            }
            Ok(End::Closed) if was_up => {
                warn!(url = %channel.url(),
                    "the controller closed the sync stream; enforcing the last config and reconnecting");
            }
            Ok(End::Closed) => debug!("the controller closed the sync stream"),
            Err(status) if was_up || !syncer.warned => {
                syncer.warned = true;
                warn!(url = %channel.url(), code = ?status.code(), error = %status.message(),
                    "controller unreachable; enforcing the last config and retrying");
            }
            Err(status) => debug!(code = ?status.code(), error = %status.message(),
                "controller still unreachable"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

struct Syncer {
    p: SyncParams,
    /// The current session has heard from the controller.
    up: bool,
    /// Unreachability was logged at WARN since the last time the controller was up.
    warned: bool,
}

impl Syncer {
    async fn session(
        &mut self,
        channel: &ControllerChannel,
        backoff: &mut Backoff,
    ) -> Result<End, tonic::Status> {
        let (tx, rx) = mpsc::channel::<AgentMessage>(8);
        let address = match &self.p.interface {
            Some(i) => super::address::of_interface(i).await,
            None => String::new(),
        };
        let hello = Hello {
            applied_version: self.p.current.as_ref().map_or(0, |c| c.version),
            address,
            software: format!("knockgate-agent {}", env!("CARGO_PKG_VERSION")),
        };
        let _ = tx.send(message(agent_message::Msg::Hello(hello))).await;
        let mut client = AgentControlClient::new(channel.clone());
        let mut inbound = client.sync(ReceiverStream::new(rx)).await?.into_inner();
        while let Some(msg) = inbound.message().await? {
            if !self.up {
                self.up = true;
                self.p.live.store(true, Ordering::Release);
                self.warned = false;
                backoff.reset();
                info!(url = %channel.url(), "connected to the controller");
            }
            match msg.msg {
                Some(controller_message::Msg::Config(c)) => {
                    // Part of the controller's push: one trace across both.
                    let span = tracing::info_span!(
                        "config.apply",
                        otel.kind = "consumer",
                        version = c.version,
                        full = c.full
                    );
                    let parent = knockgate_telemetry::propagate::from_map(&msg.trace_context);
                    knockgate_telemetry::propagate::set_parent(&span, parent);
                    let (reply, resync) = self.handle_config(c).instrument(span).await;
                    if tx.send(reply).await.is_err() {
                        return Ok(End::Closed);
                    }
                    if let Some(reason) = resync {
                        // Let the refusal go out before the stream is torn down.
                        drop(tx);
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), inbound.message()).await;
                        return Ok(End::Resync(reason));
                    }
                }
                Some(controller_message::Msg::Revoke(r)) => self.revoke(r).await,
                None => {}
            }
        }
        Ok(End::Closed)
    }

    /// Merge, validate, apply and cache one config; the reply for the controller, and
    /// why to reconnect if a full config is needed.
    async fn handle_config(&mut self, c: AgentConfig) -> (AgentMessage, Option<String>) {
        let (version, full) = (c.version, c.full);
        let merged = match delta::merge(self.p.current.as_ref(), c) {
            Ok(m) => m,
            Err(e) => {
                warn!(version, error = %e, "refusing a config from the controller");
                let resync = e.needs_full().then(|| e.to_string());
                return (refused(version, e.to_string()), resync);
            }
        };
        if self.p.current.as_ref() == Some(&merged) {
            debug!(version, "config from the controller unchanged");
            return (applied(version), None);
        }
        let result = match prepare(&self.p.base, &merged) {
            Ok(update) => self.apply(update).await,
            Err(reason) => Err(format!("invalid config: {reason}")),
        };
        if let Err(reason) = result {
            warn!(version, full, %reason,
                "refusing a config from the controller; the previous one stays enforced");
            return (refused(version, reason), None);
        }
        let state_dir = self.p.state_dir.clone();
        let to_cache = merged.clone();
        let saved = tokio::task::spawn_blocking(move || cache::save(&state_dir, &to_cache)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(version, error = %e,
                "config enforced but not cached; a restart without the controller would enforce the previous one"),
            Err(e) => warn!(version, error = %e, "config enforced but not cached"),
        }
        let material_only = self
            .p
            .current
            .as_ref()
            .is_some_and(|c| c.policies == merged.policies && c.users == merged.users);
        if material_only {
            // Every window boundary brings one: not worth the journal.
            debug!(
                version,
                sequences = merged.rotating.len(),
                one_time_keys = merged.one_time_keys.len(),
                "derived material from the controller enforced"
            );
        } else {
            info!(
                version,
                full,
                policies = merged.policies.len(),
                users = merged.users.len(),
                sequences = merged.rotating.len(),
                one_time_keys = merged.one_time_keys.len(),
                "config from the controller enforced"
            );
        }
        self.p.current = Some(merged);
        (applied(version), None)
    }

    /// Have the engine enforce `update` and wait until it has (or could not).
    async fn apply(&self, update: Update) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.send(Input::Apply {
            update: Box::new(update),
            done,
        })
        .await?;
        wait.await.map_err(|_| "the engine stopped".to_string())?
    }

    async fn revoke(&self, r: RevokeGrants) {
        let RevokeGrants { grant_refs, users } = r;
        info!(
            grant_refs = grant_refs.len(),
            users = users.len(),
            "the controller revoked grants"
        );
        if let Err(e) = self.send(Input::Revoke { grant_refs, users }).await {
            warn!(error = %e, "cannot pass a revocation to the engine");
        }
    }

    /// The engine's queue is a std channel: block on a blocking-pool thread, never on the
    /// runtime's.
    async fn send(&self, input: Input) -> Result<(), String> {
        let tx = self.p.engine.clone();
        tokio::task::spawn_blocking(move || tx.send(input))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the engine stopped".to_string())
    }
}

fn message(msg: agent_message::Msg) -> AgentMessage {
    AgentMessage { msg: Some(msg) }
}

/// `Applied{version}`, and the config version gauge says so.
fn applied(version: u64) -> AgentMessage {
    crate::metrics::CONFIG_VERSION.store(version, std::sync::atomic::Ordering::Relaxed);
    message(agent_message::Msg::Applied(Applied { version }))
}

fn refused(version: u64, reason: String) -> AgentMessage {
    message(agent_message::Msg::Refused(Refused { version, reason }))
}
