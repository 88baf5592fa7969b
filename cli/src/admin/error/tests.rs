//! Status and transport mapping: messages and exit codes.

use super::*;
use crate::admin::dial::RefusedAfterHandshake;
use std::path::PathBuf;

const URL: &str = "https://127.0.0.1:7443";

fn status(code: Code, msg: &str) -> AdminError {
    AdminError::from_status(
        URL,
        Subject::Named("user", "alice"),
        &Status::new(code, msg),
    )
}

#[test]
fn statuses_become_one_line_errors_with_exit_codes() {
    let cases = [
        (Code::NotFound, "no such row", "no user named alice", 1),
        (
            Code::AlreadyExists,
            "dup",
            "a user named alice already exists",
            1,
        ),
        (Code::InvalidArgument, "bad\nname", "bad name", 1),
        (
            Code::PermissionDenied,
            "agent certificate",
            "the controller refused this identity: agent certificate",
            1,
        ),
        (
            Code::Unauthenticated,
            "revoked",
            "the controller refused this identity: revoked",
            1,
        ),
        (
            Code::Unavailable,
            "shutting down",
            "cannot reach controller at https://127.0.0.1:7443: shutting down",
            69,
        ),
        (
            Code::Internal,
            "internal error",
            "the controller failed: internal error (Internal error)",
            1,
        ),
    ];
    for (code, msg, want, exit) in cases {
        let err = status(code, msg);
        assert_eq!(err.to_string(), want, "{code:?}");
        assert_eq!(err.exit_code(), exit, "{code:?}");
    }
    let err = AdminError::from_status(URL, Subject::Grant(7), &Status::not_found("x"));
    assert_eq!(err.to_string(), "no grant with id 7");
    let err = AdminError::from_status(
        URL,
        Subject::Named("agent", "gw1"),
        &Status::already_exists("x"),
    );
    assert_eq!(err.to_string(), "an agent named gw1 already exists");
    let err = AdminError::from_status(URL, Subject::None, &Status::not_found("nothing here"));
    assert_eq!(err.to_string(), "nothing here");
}

#[test]
fn local_errors_exit_64() {
    let path = PathBuf::from("admin.pem");
    for err in [
        AdminError::Identity(IdentityError::NoKey { path: path.clone() }),
        AdminError::BadUrl {
            url: "x".into(),
            reason: "not a URL".into(),
        },
        AdminError::Input("bad".into()),
        AdminError::Profile(ProfileError::Exists { path: path.clone() }),
    ] {
        assert_eq!(err.exit_code(), EXIT_USAGE, "{err}");
    }
    let lost = AdminError::ProfileLost {
        user: "alice".into(),
        source: Box::new(ProfileError::Write {
            path,
            source: io::Error::other("disk full"),
        }),
    };
    assert_eq!(lost.exit_code(), EXIT_FAILURE);
    assert!(lost.to_string().contains("rotate-keys alice"), "{lost}");
}

#[test]
fn transport_causes() {
    let refused = io::Error::new(
        io::ErrorKind::ConnectionRefused,
        "Connection refused (os error 111)",
    );
    let err = AdminError::from_transport(URL, &refused);
    assert_eq!(
        err.to_string(),
        "cannot reach controller at https://127.0.0.1:7443: connection refused"
    );
    assert_eq!(err.exit_code(), EXIT_UNAVAILABLE);

    let unknown_ca = io::Error::new(
        io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
    );
    let err = AdminError::from_transport(URL, &unknown_ca);
    assert!(matches!(err, AdminError::Tls { .. }), "{err}");
    assert!(
        err.to_string().ends_with(
            "(the controller's certificate is not signed by the CA in the identity file)"
        ),
        "{err}"
    );
    assert_eq!(err.exit_code(), EXIT_FAILURE);

    let alert = io::Error::new(
        io::ErrorKind::InvalidData,
        rustls::Error::AlertReceived(AlertDescription::CertificateRevoked),
    );
    let err = AdminError::from_transport(URL, &alert);
    assert_eq!(
        err.to_string(),
        "the controller refused this identity: received fatal alert: CertificateRevoked"
    );
    // h2 keeps only the text of the IO error.
    let text_only = io::Error::new(
        io::ErrorKind::InvalidData,
        "received fatal alert: UnknownCA".to_owned(),
    );
    let err = AdminError::from_transport(URL, &text_only);
    assert!(matches!(err, AdminError::Refused(_)), "{err}");
    let text_only = io::Error::other("received fatal alert: HandshakeFailure".to_owned());
    let err = AdminError::from_transport(URL, &text_only);
    assert!(matches!(err, AdminError::Tls { .. }), "{err}");

    let status = Status::from_error(Box::new(io::Error::new(
        io::ErrorKind::ConnectionReset,
        "reset",
    )));
    let err = AdminError::from_status(URL, Subject::None, &status);
    assert_eq!(err.exit_code(), EXIT_UNAVAILABLE, "{err}");
}

#[test]
fn anything_ending_the_connection_after_the_handshake_is_a_refusal() {
    for reason in [
        "received fatal alert: DecryptError",
        "connection reset by peer",
    ] {
        let err = io::Error::new(
            io::ErrorKind::InvalidData,
            RefusedAfterHandshake {
                reason: reason.to_owned(),
            },
        );
        let err = AdminError::from_transport(URL, &err);
        assert_eq!(
            err.to_string(),
            format!("the controller refused this identity: {reason}")
        );
        assert_eq!(err.exit_code(), EXIT_FAILURE);
    }
}

#[test]
fn one_line_drops_control_characters() {
    assert_eq!(one_line("a\n b\x1b[31m\tc  "), "a b [31m c");
}
