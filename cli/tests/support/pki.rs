//! Test certificates made with rcgen the way the controller makes them: a CA,
//! a server certificate for 127.0.0.1, and an admin client certificate with
//! a `spiffe://knockgate/admin/<name>` SAN, written as one identity PEM.

#![allow(dead_code)] // each test crate uses part of it

use std::net::{IpAddr, Ipv4Addr};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CA able to issue server and admin certificates.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed ca");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, cn: &str, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![eku];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The controller's server certificate, for 127.0.0.1 and localhost.
    pub fn server(&self) -> Leaf {
        self.leaf(
            "knockgate-controller",
            vec![
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                SanType::DnsName("localhost".try_into().expect("dns name")),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// An admin client certificate.
    pub fn admin(&self, name: &str) -> Leaf {
        let uri = format!("spiffe://knockgate/admin/{name}");
        self.leaf(
            name,
            vec![SanType::URI(uri.as_str().try_into().expect("uri"))],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// The admin identity file as `knockgate-controller init` writes it: admin
/// certificate, its key, then the CA certificate to trust.
pub fn identity_pem(admin: &Leaf, trust: &TestCa) -> String {
    format!("{}{}{}", admin.cert_pem, admin.key_pem, trust.cert_pem)
}
