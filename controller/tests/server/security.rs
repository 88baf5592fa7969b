//! Security stories: every refusal the issue lists, each visible in the
//! audit trail through Admin.QueryAudit.

use std::time::Duration;

use knockgate_controller::name::AgentName;
use knockgate_controller::store::{Timestamp, TokenHash};
use knockgate_proto::api;
use knockgate_proto::api::admin_client::AdminClient;
use knockgate_proto::api::agent_control_client::AgentControlClient;
use tonic::Code;

use super::harness::*;

/// No client certificate: Admin and AgentControl refused, Enrollment reachable.
pub async fn no_client_certificate(server: &Server) {
    let anon = server.channel(None);
    let status = assert_code(
        AdminClient::new(anon.clone())
            .list_agents(api::ListAgentsRequest {})
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(status.message(), "a client certificate is required");
    assert_code(
        AgentControlClient::new(anon.clone())
            .report(api::ReportRequest { events: vec![] })
            .await,
        Code::Unauthenticated,
    );
    // Enrollment answers (here: the token is unknown), it is not refused by authz.
    let (csr_pem, _) = csr();
    let status = assert_code(
        server
            .anonymous_enrollment()
            .enroll(api::EnrollRequest {
                token: "nope".into(),
                csr_pem,
            })
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(status.message(), "enrolment token is unknown");

    let e = audit_until(server, "auth.refused", |e| {
        detail(e)["service"] == "knockgate.v1.Admin" && detail(e)["identity"] == "anonymous"
    })
    .await;
    assert_eq!(e.src, "127.0.0.1");
    assert_eq!(detail(&e)["method"], "ListAgents");
    audit_until(server, "auth.refused", |e| {
        detail(e)["service"] == "knockgate.v1.AgentControl"
    })
    .await;
    audit_until(server, "enrol.refused", |e| {
        detail(e)["reason"] == "enrolment token is unknown"
    })
    .await;
}

/// A certificate from another CA: the handshake itself is refused.
pub async fn foreign_ca_certificate(server: &Server) {
    let (cert, key) = foreign_admin();
    let client = AdminClient::new(server.channel(Some((&cert, &key))));
    let mut client = client;
    let err = client
        .list_agents(api::ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    let e = audit_until(server, "auth.refused", |e| {
        detail(e)["stage"] == "tls handshake"
    })
    .await;
    assert_eq!(e.src, "127.0.0.1");
    let reason = detail(&e)["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("UnknownIssuer"), "{reason}");
}

/// An agent certificate on the admin service, and the admin's on the agent service.
pub async fn wrong_service_for_identity(server: &Server) {
    let gw = enrolled_agent(server, "gw1", &[]).await;
    let status = assert_code(
        gw.admin_client(server)
            .list_agents(api::ListAgentsRequest {})
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(
        status.message(),
        "agent certificates may not call the admin service"
    );
    let e = audit_until(server, "auth.refused", |e| e.agent == "gw1").await;
    assert_eq!(detail(&e)["identity"], "spiffe://knockgate/agent/gw1");
    assert_eq!(detail(&e)["service"], "knockgate.v1.Admin");

    let pem = server.admin_pem();
    let status = assert_code(
        AgentControlClient::new(server.channel(Some((&pem, &pem))))
            .report(api::ReportRequest { events: vec![] })
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(
        status.message(),
        "admin certificates may not call the agent service"
    );
    audit_until(server, "auth.refused", |e| {
        detail(e)["identity"] == "spiffe://knockgate/admin/admin"
    })
    .await;
}

/// A revoked agent: its live stream ends at once, new calls are refused.
pub async fn revoked_agent(server: &Server) {
    let gw = enrolled_agent(server, "gw1", &[]).await;
    let mut sync = SyncStream::open(&gw, server, "").await;
    sync.next_config(Duration::from_secs(5)).await;
    let mut ok = gw.client(server);
    ok.report(api::ReportRequest { events: vec![] })
        .await
        .unwrap();

    server
        .admin()
        .revoke_agent(api::RevokeAgentRequest { name: "gw1".into() })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let end = sync.next(Duration::from_secs(1)).await;
    let status = end.expect_err("the stream must end with an error");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(1));

    let status = assert_code(
        ok.report(api::ReportRequest { events: vec![] }).await,
        Code::PermissionDenied,
    );
    assert_eq!(status.message(), "agent gw1 is revoked");
    let e = audit_until(server, "auth.refused", |e| {
        detail(e)["reason"] == "agent gw1 is revoked"
    })
    .await;
    assert_eq!(e.agent, "gw1");
    audit_until(server, "admin.agent.revoke", |e| e.agent == "gw1").await;
    let agents = server
        .admin()
        .list_agents(api::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(agents.agents[0].revoked);
    assert!(!agents.agents[0].connected);
    // A new stream is refused too.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(tx);
    let status = assert_code(
        gw.client(server)
            .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(status.message(), "agent gw1 is revoked");
}

/// A token works once; an expired token never.
pub async fn reused_and_expired_tokens(server: &Server) {
    let token = add_agent(server, "gw1", &[]).await;
    let (csr_pem, _) = csr();
    let mut enroll = server.anonymous_enrollment();
    enroll
        .enroll(api::EnrollRequest {
            token: token.clone(),
            csr_pem: csr_pem.clone(),
        })
        .await
        .unwrap();
    let status = assert_code(
        enroll
            .enroll(api::EnrollRequest {
                token,
                csr_pem: csr_pem.clone(),
            })
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(status.message(), "enrolment token was already used");

    add_agent(server, "gw2", &[]).await;
    let expired = "expired-token-for-gw2";
    let now = Timestamp::now();
    let past = Timestamp::from_unix_millis(now.unix_millis() - 1000);
    server
        .store
        .create_token(
            &AgentName::new("gw2").unwrap(),
            &TokenHash::of(expired),
            past,
            past,
        )
        .await
        .unwrap();
    let status = assert_code(
        enroll
            .enroll(api::EnrollRequest {
                token: expired.into(),
                csr_pem: csr_pem.clone(),
            })
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(status.message(), "enrolment token has expired");

    // A bad CSR does not burn a token.
    let token = add_agent(server, "gw3", &[]).await;
    assert_code(
        enroll
            .enroll(api::EnrollRequest {
                token: token.clone(),
                csr_pem: "junk".into(),
            })
            .await,
        Code::InvalidArgument,
    );
    enroll
        .enroll(api::EnrollRequest { token, csr_pem })
        .await
        .unwrap();

    audit_until(server, "enrol.refused", |e| {
        detail(e)["reason"] == "enrolment token was already used"
    })
    .await;
    audit_until(server, "enrol.refused", |e| {
        detail(e)["reason"] == "enrolment token has expired"
    })
    .await;
    let ok = audit_until(server, "enrol.ok", |e| e.agent == "gw1").await;
    assert_eq!(detail(&ok)["fingerprint"].as_str().unwrap().len(), 64);
}

/// An agent renews its certificate: the new one works, the old one is refused from then
/// on; a certificate past its end is refused even though it is the pinned one.
pub async fn renewed_and_expired_certificates(server: &Server) {
    let gw = enrolled_agent(server, "gw1", &[]).await;
    let (csr_pem, key) = csr();
    let renewed = gw
        .client(server)
        .renew(api::RenewRequest { csr_pem })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.renew_after_unix_ms > Timestamp::now().unix_millis());
    let fresh = AgentCreds {
        cert_pem: renewed.cert_pem,
        key_pem: key.serialize_pem(),
    };
    fresh
        .client(server)
        .report(api::ReportRequest { events: vec![] })
        .await
        .unwrap();
    let status = assert_code(
        gw.client(server)
            .report(api::ReportRequest { events: vec![] })
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(
        status.message(),
        "this is not the certificate issued to agent gw1"
    );
    audit_until(server, "agent.renewed", |e| e.agent == "gw1").await;

    // A pinned certificate that has run out is refused at the handshake.
    let data = server.dir.path().join("data");
    let ca = knockgate_controller::pki::Ca::load(
        &std::fs::read_to_string(data.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(data.join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let (csr_pem, key) = csr();
    let name = AgentName::new("gw1").unwrap();
    let short = ca
        .sign_agent_csr_for(&csr_pem, &name, time::Duration::seconds(1))
        .unwrap();
    let der: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(short.as_bytes()).unwrap();
    let fingerprint = knockgate_controller::pki::cert_fingerprint(&der);
    server
        .store
        .set_agent_enrolled(&name, &fingerprint, Timestamp::now())
        .await
        .unwrap();
    let expired = AgentCreds {
        cert_pem: short,
        key_pem: key.serialize_pem(),
    };
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refused = expired
        .client(server)
        .report(api::ReportRequest { events: vec![] })
        .await;
    assert!(refused.is_err(), "an expired certificate must be refused");
}
