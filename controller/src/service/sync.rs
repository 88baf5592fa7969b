//! One agent's `Sync` stream: Hello, a full config, then a delta for every
//! config version change and at every window boundary of its rotating
//! policies (fresh material, see `fanout.rs` on versions), pushed grant
//! revokes, and the agent's Applied / Refused answers. The stream ends when
//! the agent hangs up, is revoked, or the controller shuts down.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use knockgate_proto::api::{self, agent_message, controller_message};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Status, Streaming};
use tracing::Instrument as _;

use crate::desired::material::{self, Deriver};
use crate::desired::{self, AgentView};
use crate::error::{ErrorChain, ServiceError};
use crate::fanout::Registration;
use crate::fanout::Revocation;
use crate::name::AgentName;
use crate::server::Controller;
use crate::snapshot::Snapshot;
use crate::store::{ConfigVersion, Timestamp};
use crate::trail::{CONFIG_REFUSED, Entry};

/// Wake this long after a window boundary, so the new window has begun by
/// the wall clock too.
const BOUNDARY_SLACK: Duration = Duration::from_millis(10);

/// What the agent's config is computed from: the shared rows at one config version and
/// this agent's labels among them.
struct Inputs {
    snapshot: Arc<Snapshot>,
    labels: BTreeMap<String, String>,
}

/// Completes at `deadline`, never without one.
async fn wake_at(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One message on its way to the agent, boxed: a stream's queue is allocated 32 slots
/// at a time, and a pointer per slot instead of a whole message keeps an idle agent's
/// queue small.
pub(super) type Outbound = Box<Result<api::ControllerMessage, Status>>;

/// The state of one live stream.
pub(super) struct Session {
    state: Arc<Controller>,
    agent: AgentName,
    fingerprint: String,
    tx: mpsc::Sender<Outbound>,
    /// The last config sent and its version: what the next delta builds on.
    /// `None` after a refusal, so the next change sends a full config.
    sent: Option<(u64, AgentView)>,
    /// Grant refs already pushed as revoked on this stream.
    revoked_refs: BTreeSet<String>,
    touched: bool,
    /// The store rows the last config was computed from.
    inputs: Option<Inputs>,
    deriver: Deriver,
    /// When the material next changes by itself (a window boundary).
    next_boundary: Option<Instant>,
}

fn internal(e: impl Into<ServiceError>) -> Status {
    Status::from(e.into())
}

/// The address to record: the agent's own report, else the TCP peer's IP.
fn reported_address(hello: &str, peer: Option<SocketAddr>) -> Result<Option<String>, Status> {
    if hello.is_empty() {
        return Ok(peer.map(|p| p.ip().to_string()));
    }
    if hello.len() > 253 || !hello.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(
            "hello.address: expected a host name or IP address",
        ));
    }
    Ok(Some(hello.to_owned()))
}

impl Session {
    pub(super) fn new(
        state: Arc<Controller>,
        agent: AgentName,
        fingerprint: String,
        tx: mpsc::Sender<Outbound>,
    ) -> Self {
        Self {
            state,
            agent,
            fingerprint,
            tx,
            sent: None,
            revoked_refs: BTreeSet::new(),
            touched: false,
            inputs: None,
            deriver: Deriver::default(),
            next_boundary: None,
        }
    }

    /// Drives the stream to its end, then records the disconnect.
    pub(super) async fn run(
        mut self,
        mut inbound: Streaming<api::AgentMessage>,
        mut registration: Registration,
        peer: Option<SocketAddr>,
    ) {
        let end = self.drive(&mut inbound, &mut registration, peer).await;
        drop(registration);
        if let Err(status) = end {
            tracing::info!(agent = %self.agent, code = ?status.code(), reason = status.message(), "agent stream closed");
            let _ = self.tx.send(Box::new(Err(status))).await;
        }
        let hub = &self.state.hub;
        if self.touched && !hub.is_connected(&self.agent) {
            tracing::info!(agent = %self.agent, "agent disconnected");
            if let Err(e) = self
                .state
                .store
                .touch_agent(&self.agent, Timestamp::now(), false, None)
                .await
            {
                tracing::warn!(agent = %self.agent, error = %ErrorChain(&e), "failed to record the disconnect");
            }
        }
    }

    async fn drive(
        &mut self,
        inbound: &mut Streaming<api::AgentMessage>,
        registration: &mut Registration,
        peer: Option<SocketAddr>,
    ) -> Result<(), Status> {
        let hub = Arc::clone(&self.state.hub);
        let mut versions = hub.versions();
        let first = tokio::select! {
            m = inbound.message() => m,
            () = self.tx.closed() => return Ok(()),
            () = hub.stopped() => return Err(Status::unavailable("the controller is shutting down")),
        };
        let hello = match first {
            Ok(Some(api::AgentMessage {
                msg: Some(agent_message::Msg::Hello(h)),
            })) => h,
            Ok(Some(_)) => return Err(Status::invalid_argument("the first message must be Hello")),
            Ok(None) | Err(_) => return Ok(()),
        };
        let address = reported_address(&hello.address, peer)?;
        let store = &self.state.store;
        store
            .touch_agent(&self.agent, Timestamp::now(), true, address.as_deref())
            .await
            .map_err(internal)?;
        self.touched = true;
        tracing::info!(
            agent = %self.agent, address = ?address, applied = hello.applied_version,
            software = %hello.software, "agent connected"
        );
        versions.borrow_and_update();
        self.refresh().await?;
        loop {
            tokio::select! {
                changed = versions.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    versions.borrow_and_update();
                    self.refresh().await?;
                }
                () = wake_at(self.next_boundary) => self.refresh().await?,
                push = registration.pushes.recv() => match push {
                    Some(revoke) => {
                        let revoke = Arc::unwrap_or_clone(revoke);
                        self.send(controller_message::Msg::Revoke(revoke.into())).await;
                    }
                    None => return Err(Status::permission_denied(format!("agent {} is revoked", self.agent))),
                },
                m = inbound.message() => match m {
                    Ok(Some(msg)) => self.handle(msg).await?,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        tracing::debug!(agent = %self.agent, error = %e, "agent stream broke");
                        return Ok(());
                    }
                },
                () = self.tx.closed() => return Ok(()),
                () = hub.stopped() => {
                    return Err(Status::unavailable("the controller is shutting down"));
                }
            }
        }
    }

    async fn send(&self, msg: controller_message::Msg) {
        let msg = api::ControllerMessage {
            msg: Some(msg),
            trace_context: knockgate_telemetry::propagate::current_to_map(),
        };
        // A closed receiver means the agent is gone; the select loop notices.
        let _ = self.tx.send(Box::new(Ok(msg))).await;
    }

    async fn handle(&mut self, msg: api::AgentMessage) -> Result<(), Status> {
        match msg.msg {
            Some(agent_message::Msg::Applied(api::Applied { version })) => {
                let v = i64::try_from(version)
                    .map_err(|_| Status::invalid_argument("applied.version is out of range"))?;
                tracing::debug!(agent = %self.agent, version, "config applied");
                self.state
                    .applied
                    .record(self.agent.clone(), ConfigVersion(v))
                    .await;
            }
            Some(agent_message::Msg::Refused(api::Refused { version, reason })) => {
                tracing::warn!(agent = %self.agent, version, reason, "agent refused a config");
                let reason: String = reason.chars().take(1024).collect();
                Entry::new(
                    CONFIG_REFUSED,
                    json!({ "version": version, "reason": reason }),
                )
                .agent(Some(&self.agent))
                .write(&self.state.store)
                .await;
                // The agent keeps what it had, which is no longer what we sent:
                // the next change goes out as a full config.
                self.sent = None;
            }
            Some(agent_message::Msg::Hello(_)) => {
                return Err(Status::invalid_argument(
                    "Hello may only be the first message",
                ));
            }
            None => return Err(Status::invalid_argument("empty agent message")),
        }
        Ok(())
    }

    /// Recomputes the agent's config and material and sends what changed;
    /// after a version change, also any grant revokes flagged in the store
    /// (so revokes made on other replicas arrive too).
    async fn refresh(&mut self) -> Result<(), Status> {
        let state = &self.state;
        let wanted = u64::try_from(*state.hub.versions().borrow()).unwrap_or(0);
        let snapshot = state
            .snapshots
            .at_least(&state.store, wanted)
            .await
            .map_err(internal)?;
        let reload = self
            .inputs
            .as_ref()
            .is_none_or(|i| i.snapshot.version != snapshot.version);
        if reload {
            let labels = self.labels(&snapshot).await?;
            self.inputs = Some(Inputs { snapshot, labels });
        }
        let Some(Inputs { snapshot, labels }) = &self.inputs else {
            return Err(internal(ServiceError::Internal("sync inputs missing")));
        };
        let version = snapshot.version;
        let mut view = desired::compute_shared(
            &self.agent,
            labels,
            &snapshot.policies,
            &snapshot.users,
            &snapshot.shared,
        );
        let now = Timestamp::now();
        let (material, boundary) = self.deriver.derive(
            &material::Inputs {
                gateway: &self.agent,
                labels,
                policies: &snapshot.policies,
                users: &snapshot.users,
                claimed: &snapshot.claimed,
            },
            now,
        );
        view.material = material;
        self.next_boundary = boundary.map(|b| {
            let wait = u64::try_from(b.saturating_sub(now.unix_millis())).unwrap_or(0);
            Instant::now() + Duration::from_millis(wait) + BOUNDARY_SLACK
        });
        let config = match &self.sent {
            None => Some(api::AgentConfig::from(desired::full(&view, version))),
            Some((base, old)) if *base == version && *old == view => None,
            Some((base, old)) => Some(desired::delta(old, &view, *base, version).into()),
        };
        if let Some(config) = config {
            tracing::debug!(agent = %self.agent, version, full = config.full,
                material = config.material_changed, "sending config");
            let span = tracing::info_span!("config.push", otel.kind = "producer",
                agent = %self.agent, version, full = config.full);
            self.send(controller_message::Msg::Config(config))
                .instrument(span)
                .await;
            self.sent = Some((version, view));
        }
        if reload {
            self.push_flagged_revokes().await;
        }
        Ok(())
    }

    /// This agent's labels; refuses a revoked agent, or one whose certificate is no longer
    /// the pinned one. A row the snapshot lacks or refuses (an agent enrolled or renewed
    /// since it was read) is read afresh before anything is refused.
    async fn labels(&self, snapshot: &Snapshot) -> Result<BTreeMap<String, String>, Status> {
        let current = |a: &crate::store::Agent| {
            a.revoked_at.is_none()
                && a.cert_fingerprint.as_deref() == Some(self.fingerprint.as_str())
        };
        if let Some(agent) = snapshot.agents.get(&self.agent).filter(|a| current(a)) {
            return Ok(agent.labels.clone());
        }
        let agent = self
            .state
            .store
            .get_agent(&self.agent)
            .await
            .map_err(internal)?;
        if !current(&agent) {
            return Err(Status::permission_denied(format!(
                "agent {} is revoked",
                self.agent
            )));
        }
        Ok(agent.labels)
    }

    /// Pushes revokes of this agent's grants flagged since the last push.
    async fn push_flagged_revokes(&mut self) {
        let Some(inputs) = &self.inputs else { return };
        let grant_refs: Vec<String> = inputs
            .snapshot
            .revoke_requested
            .get(&self.agent)
            .into_iter()
            .flatten()
            .filter(|r| !self.revoked_refs.contains(*r))
            .cloned()
            .collect();
        if !grant_refs.is_empty() {
            self.revoked_refs.extend(grant_refs.iter().cloned());
            let revoke = Revocation {
                grant_refs,
                users: Vec::new(),
            };
            self.send(controller_message::Msg::Revoke(revoke.into()))
                .await;
        }
    }
}
