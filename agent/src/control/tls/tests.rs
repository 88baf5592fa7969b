use super::*;
use crate::control::test_pki::TestPki;
use rustls::pki_types::pem::PemObject;

fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("pem")
}

fn verify(pki: &TestPki, pin: Fingerprint, name: &str) -> (bool, Option<PinFailure>) {
    let v = PinVerifier::new(pin, Arc::new(rustls::crypto::ring::default_provider()));
    let certs = chain(&pki.server_chain_pem);
    let name = ServerName::try_from(name.to_string()).expect("name");
    let ok = v
        .verify_server_cert(&certs[0], &certs[1..], &name, &[], UnixTime::now())
        .is_ok();
    let failure = v.failure().lock().expect("lock").clone();
    (ok, failure)
}

#[test]
fn fingerprints_parse_in_every_spelling_and_reject_the_rest() {
    let pki = TestPki::new(&["127.0.0.1"]);
    let hex = fingerprint_hex(&pki.ca_der);
    assert_eq!(hex.len(), 64);
    let fp = parse_fingerprint(&hex).expect("lower");
    assert_eq!(parse_fingerprint(&hex.to_uppercase()), Ok(fp));
    let colons: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert_eq!(parse_fingerprint(&colons.join(":")), Ok(fp));
    for bad in [
        "",
        "abc",
        &hex[..62],
        &format!("{}zz", &hex[..62]),
        &format!("{hex}00"),
    ] {
        let e = parse_fingerprint(bad).expect_err(bad);
        assert!(e.contains("64 hex digits"), "{e}");
    }
    assert!(parse_fingerprint(&format!("{}é", &hex[..62])).is_err());
}

#[test]
fn the_pinned_ca_and_a_valid_name_are_both_required() {
    let pki = TestPki::new(&["127.0.0.1", "controller.test"]);
    let pin = fingerprint(&pki.ca_der);
    assert_eq!(verify(&pki, pin, "127.0.0.1"), (true, None));
    assert_eq!(verify(&pki, pin, "controller.test"), (true, None));

    let (ok, failure) = verify(&pki, [0x42; 32], "127.0.0.1");
    assert!(!ok);
    assert_eq!(failure, Some(PinFailure::Mismatch));

    let (ok, failure) = verify(&pki, pin, "other.test");
    assert!(!ok, "the name is checked against the SANs");
    assert!(
        matches!(failure, Some(PinFailure::Invalid(_))),
        "{failure:?}"
    );

    // Pinning the server certificate itself is not pinning a CA.
    let leaf = fingerprint(&chain(&pki.server_chain_pem)[0]);
    let (ok, failure) = verify(&pki, leaf, "127.0.0.1");
    assert!(!ok);
    assert!(
        matches!(failure, Some(PinFailure::Invalid(_))),
        "{failure:?}"
    );

    // Another CA's server with this CA's certificate appended is refused too.
    let other = TestPki::new(&["127.0.0.1"]);
    let mixed = TestPki {
        server_chain_pem: format!(
            "{}{}",
            other
                .server_chain_pem
                .split_inclusive("-----END CERTIFICATE-----\n")
                .next()
                .expect("leaf"),
            pki.ca_pem
        ),
        ..other
    };
    let (ok, failure) = verify(&mixed, pin, "127.0.0.1");
    assert!(!ok);
    assert!(
        matches!(failure, Some(PinFailure::Invalid(_))),
        "{failure:?}"
    );
}
