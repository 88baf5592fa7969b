//! Profiles from credentials and the user table.

use super::*;
use knockgate_proto::api::{Access, GatewayAddress, GatewayPolicy, GatewayRotation};

fn creds() -> UserCredentials {
    UserCredentials {
        user: Some(UserInfo {
            name: "alice".into(),
            groups: vec!["ops".into()],
            disabled: false,
            key_version: 1,
            created_at_unix_ms: 1_748_779_200_000,
            spa_key_id: "0011223344556677".into(),
        }),
        spa_key: vec![7; 32],
        fwknop_key: vec![1; 32],
        fwknop_hmac_key: vec![2; 64],
        fwknop_hmac: "SHA256".into(),
        rotating_secret: vec![],
        gateways: vec![GatewayAddress {
            name: "gw1".into(),
            address: "203.0.113.7".into(),
            rotating: vec![GatewayRotation {
                policy: "ssh".into(),
                length: 5,
                protos: "udp".into(),
                port_lo: 41000,
                port_hi: 41015,
                window_secs: 60,
                exclude: vec![41003],
            }],
            policies: vec![GatewayPolicy {
                name: "ssh".into(),
                open: vec![Access { proto: 1, port: 22 }, Access { proto: 2, port: 53 }],
                methods: vec!["spa".into(), "rotating".into()],
            }],
        }],
    }
}

#[test]
fn profile_from_credentials() {
    let p = profile_from("alice", &creds());
    assert_eq!(p.user.name, "alice");
    assert_eq!(p.user.spa_key, Some(encode_key(&[7; 32])));
    assert_eq!(p.user.fwknop_hmac.as_deref(), Some("sha256"));
    assert_eq!(p.user.rotating_secret, None, "empty secret left out");
    assert_eq!(p.gateways.len(), 1);
    assert_eq!(p.gateways[0].address, "203.0.113.7");
    assert_eq!(
        p.gateways[0].rotating,
        [ProfileRotation {
            policy: "ssh".into(),
            length: 5,
            protos: "udp".into(),
            port_lo: 41000,
            port_hi: 41015,
            window_secs: 60,
            exclude: vec![41003],
        }]
    );
    assert_eq!(
        p.gateways[0].policies,
        [ProfileGatewayPolicy {
            name: "ssh".into(),
            open: vec!["tcp/22".into(), "udp/53".into()],
            methods: vec!["spa".into(), "rotating".into()],
        }]
    );
}

#[test]
fn user_list_table() {
    let users = vec![UserJson::from(&creds().user.unwrap())];
    let mut out = Vec::new();
    user_table(&users).render(&mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "NAME   GROUPS  STATUS  KEY-VERSION  SPA-KEY-ID        CREATED\n\
         alice  ops     active  1            0011223344556677  2025-06-01T12:00:00Z\n"
    );
}
