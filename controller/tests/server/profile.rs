//! `UserGateways` through the real server: the gateways a user's profile lists, with
//! every policy admitting them there (what it opens, the methods that open it), the same
//! list `RotateUserKeys` returns with the keys, and refusals for unknown and disabled
//! users.

use knockgate_controller::convert::access_to_api;
use knockgate_proto::api::admin_client::AdminClient;
use knockgate_proto::{Access, api};
use tonic::Code;
use tonic::transport::Channel;

use super::harness::*;

fn policy(name: &str, open: &[Access], agents: &str) -> api::PolicySpec {
    api::PolicySpec {
        name: name.into(),
        open: open.iter().copied().map(access_to_api).collect(),
        users: vec!["alice".into()],
        agents: agents.into(),
        timeout_secs: 30,
        ..api::PolicySpec::default()
    }
}

fn admitting(name: &str, open: &[Access], methods: &[&str]) -> api::GatewayPolicy {
    api::GatewayPolicy {
        name: name.into(),
        open: open.iter().copied().map(access_to_api).collect(),
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
    }
}

async fn gateways(admin: &mut AdminClient<Channel>, name: &str) -> api::UserGatewaysResponse {
    admin
        .user_gateways(api::GetUserRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn add_agent_at(admin: &mut AdminClient<Channel>, name: &str, role: &str, address: &str) {
    admin
        .add_agent(api::AddAgentRequest {
            name: name.into(),
            labels: [("role".to_owned(), role.to_owned())].into_iter().collect(),
            address: address.into(),
            token_ttl_secs: 0,
        })
        .await
        .unwrap();
}

pub async fn user_gateways(server: &Server) {
    let mut admin = server.admin();
    new_user(server, "alice").await;
    new_user(server, "bob").await;
    add_agent_at(&mut admin, "gw1", "edge", "192.0.2.1").await;
    add_agent_at(&mut admin, "gw2", "core", "192.0.2.2:62201").await;

    // Listed before any policy admits her: being listed opens nothing.
    let before = gateways(&mut admin, "alice").await;
    assert_eq!(before.user.unwrap().name, "alice");
    let listed: Vec<(&str, &str, usize)> = before
        .gateways
        .iter()
        .map(|g| (g.name.as_str(), g.address.as_str(), g.policies.len()))
        .collect();
    assert_eq!(
        listed,
        [("gw1", "192.0.2.1", 0), ("gw2", "192.0.2.2:62201", 0)]
    );

    policies_added_later_show_up(&mut admin).await;
    let bobs = gateways(&mut admin, "bob").await;
    assert_eq!(bobs.gateways[0].policies[0].name, "bobs");
    the_same_list_comes_with_new_keys(&mut admin).await;
    unknown_and_disabled_users_are_refused(&mut admin).await;
}

/// Policies added after alice's profile was written are listed at the gateways they
/// select, with what they open and how; one for bob alone is not.
async fn policies_added_later_show_up(admin: &mut AdminClient<Channel>) {
    let ssh = api::PolicySpec {
        spa: true,
        fwknop: true,
        rotating: true,
        ..policy("ssh", &[Access::tcp(22)], "role=edge")
    };
    let web = api::PolicySpec {
        otk: true,
        ..policy("web", &[Access::tcp(443), Access::tcp(80)], "")
    };
    let legacy = api::PolicySpec {
        sequence: vec!["tcp/7000".into(), "udp/8000".into()],
        ..policy("legacy", &[Access::udp(1194)], "role=core")
    };
    let bobs = api::PolicySpec {
        users: vec!["bob".into()],
        spa: true,
        ..policy("bobs", &[Access::tcp(8080)], "")
    };
    for p in [ssh, web, legacy, bobs] {
        admin.add_policy(p).await.unwrap();
    }
    let now = gateways(admin, "alice").await;
    let web = admitting("web", &[Access::tcp(80), Access::tcp(443)], &["otk"]);
    assert_eq!(now.gateways[0].name, "gw1");
    assert_eq!(
        now.gateways[0].policies,
        [
            admitting("ssh", &[Access::tcp(22)], &["spa", "fwknop", "rotating"]),
            web.clone()
        ]
    );
    assert_eq!(now.gateways[0].rotating.len(), 1, "ssh rotates");
    assert_eq!(now.gateways[1].name, "gw2");
    assert_eq!(
        now.gateways[1].policies,
        [
            admitting("legacy", &[Access::udp(1194)], &["sequence"]),
            web
        ]
    );
}

/// `RotateUserKeys` lists exactly what `UserGateways` does: one computation.
async fn the_same_list_comes_with_new_keys(admin: &mut AdminClient<Channel>) {
    let listed = gateways(admin, "alice").await.gateways;
    let creds = admin
        .rotate_user_keys(api::RotateUserKeysRequest {
            name: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(creds.gateways, listed);
}

async fn unknown_and_disabled_users_are_refused(admin: &mut AdminClient<Channel>) {
    let status = assert_code(
        admin
            .user_gateways(api::GetUserRequest { name: "zed".into() })
            .await,
        Code::NotFound,
    );
    assert_eq!(status.message(), "user zed not found");
    assert_code(
        admin
            .user_gateways(api::GetUserRequest {
                name: "Not A Name".into(),
            })
            .await,
        Code::InvalidArgument,
    );
    admin
        .set_user_disabled(api::SetUserDisabledRequest {
            name: "alice".into(),
            disabled: true,
        })
        .await
        .unwrap();
    let status = assert_code(
        admin
            .user_gateways(api::GetUserRequest {
                name: "alice".into(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().starts_with("user alice is disabled"),
        "{status:?}"
    );
}
