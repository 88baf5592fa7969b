//! Test certificates shaped like the controller's: a CA, a server certificate whose PEM
//! is the chain [server, CA], and agent certificates with SPIFFE identities.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};

pub struct TestPki {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    pub(crate) issuer: Issuer<'static, KeyPair>,
    /// [server cert, CA cert], PEM.
    pub server_chain_pem: String,
    pub server_key_pem: String,
}

impl TestPki {
    /// A CA and a server certificate for `sans` (IP addresses or DNS names).
    pub fn new(sans: &[&str]) -> TestPki {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "test knockgate CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca = params.self_signed(&key).expect("ca");
        let issuer = Issuer::new(params, key);
        let skey = KeyPair::generate().expect("server key");
        let mut sp = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("server params");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = sp.signed_by(&skey, &issuer).expect("server");
        TestPki {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            issuer,
            server_chain_pem: format!("{}{}", server.pem(), ca.pem()),
            server_key_pem: skey.serialize_pem(),
        }
    }

    /// Sign an agent CSR as `spiffe://knockgate/agent/<name>`, as the controller does.
    pub fn sign_agent_csr(&self, csr_pem: &str, name: &str) -> String {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).expect("csr");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = vec![SanType::URI(
            format!("spiffe://knockgate/agent/{name}")
                .try_into()
                .expect("uri"),
        )];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.signed_by(&csr.public_key, &self.issuer)
            .expect("sign")
            .pem()
    }

    /// A fresh agent key and certificate, PEM.
    pub fn agent(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let csr = CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        (self.sign_agent_csr(&csr, name), key.serialize_pem())
    }
}
