//! TLS towards the controller. At enrolment the agent has no CA yet, only the CA's
//! fingerprint from the operator: [`PinVerifier`] accepts a server only if its chain holds
//! a certificate with that SHA-256 and the server certificate verifies against it (chain,
//! validity and name, by webpki). After enrolment, `ca.pem` is the only trust anchor.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// A SHA-256 certificate fingerprint.
pub type Fingerprint = [u8; 32];

/// Parse a fingerprint as `knockgate-controller init` prints it: 64 hex digits, either
/// case, colons allowed between bytes.
pub fn parse_fingerprint(text: &str) -> Result<Fingerprint, String> {
    let hex: String = text.trim().chars().filter(|&c| c != ':').collect();
    let bad = || {
        format!(
            "--ca-sha256 must be 64 hex digits (the SHA-256 `knockgate-controller init` prints), got {} characters",
            hex.len()
        )
    };
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Lowercase hex SHA-256 of a certificate's DER.
pub fn fingerprint_hex(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fingerprint(der: &[u8]) -> Fingerprint {
    Sha256::digest(der).into()
}

/// Why the last handshake's certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinFailure {
    /// No certificate in the chain has the pinned fingerprint.
    Mismatch,
    /// The pinned CA is there, but the server certificate does not verify against it.
    Invalid(String),
}

/// Verifies the controller by its CA's fingerprint.
#[derive(Debug)]
pub struct PinVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
    failure: Arc<Mutex<Option<PinFailure>>>,
}

impl PinVerifier {
    pub fn new(pin: Fingerprint, provider: Arc<CryptoProvider>) -> Self {
        PinVerifier {
            pin,
            provider,
            failure: Arc::default(),
        }
    }

    /// Where the reason for a refused certificate is left, to tell the operator.
    pub fn failure(&self) -> Arc<Mutex<Option<PinFailure>>> {
        self.failure.clone()
    }

    fn fail(&self, f: PinFailure) {
        if let Ok(mut slot) = self.failure.lock() {
            *slot = Some(f);
        }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| fingerprint(c) == self.pin)
        else {
            self.fail(PinFailure::Mismatch);
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| {
            self.fail(PinFailure::Invalid(format!(
                "the pinned CA is not usable: {e}"
            )));
            e
        })?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| self.fail(PinFailure::Invalid(e.to_string())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The crypto provider in use: the process default (ring, installed by `main`), or ring.
pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

#[cfg(test)]
mod tests;
