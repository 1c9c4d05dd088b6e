//! TLS to Lightning nodes.
//!
//! LND serves a self-signed certificate with `IsCA: true`; webpki refuses such a certificate as
//! an end entity (`CaUsedAsEndEntity`, lnd#5450), so the usual "trust it as a root" does not
//! work. We pin it instead: the server must present exactly the configured certificate, and
//! its handshake signature is still checked with the provider's algorithms (so only the holder
//! of the pinned certificate's key can complete the handshake). For REST nodes (clnrest), the
//! configured file may also be a private CA that signed the server's certificate: a chain to it
//! is then verified as usual, host name included.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate found (expected PEM `-----BEGIN CERTIFICATE-----` or DER)")]
    NoCertificate,
    #[error("certificate PEM does not parse: {0}")]
    BadPem(String),
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// Certificates from PEM text (one or more) or a single DER certificate.
pub fn load_certs(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let looks_pem = bytes.windows(10).any(|w| w == b"-----BEGIN");
    if !looks_pem {
        // DER: an ASN.1 SEQUENCE.
        return match bytes.first() {
            Some(0x30) => Ok(vec![CertificateDer::from(bytes.to_vec())]),
            _ => Err(TlsError::NoCertificate),
        };
    }
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts the server only if its end-entity certificate is one of `pinned` (byte for byte),
/// or — when `ca` is set — if its chain verifies to one of them.
pub struct PinnedVerifier {
    pinned: Vec<CertificateDer<'static>>,
    ca: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedVerifier")
            .field("pinned", &self.pinned.len())
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

impl PinnedVerifier {
    /// Exact pinning only (LND).
    pub fn pinned(certs: Vec<CertificateDer<'static>>) -> Self {
        Self {
            pinned: certs,
            ca: None,
            provider: provider(),
        }
    }

    /// Pinned certificate, or a private CA the server's certificate chains to (clnrest's
    /// generated `ca.pem`).
    pub fn pinned_or_ca(certs: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        // Certificates webpki cannot use as anchors are simply only pinned.
        let (_added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
        let ca = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?,
            )
        };
        Ok(Self {
            pinned: certs,
            ca,
            provider,
        })
    }

    fn is_pinned(&self, cert: &CertificateDer<'_>) -> bool {
        self.pinned.iter().any(|p| {
            p.as_ref().len() == cert.as_ref().len() && bool::from(p.as_ref().ct_eq(cert.as_ref()))
        })
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.is_pinned(end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.ca {
            Some(ca) => {
                ca.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::General(
                "the node presented a certificate other than the pinned one".into(),
            )),
        }
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

/// A client config that trusts exactly `verifier`; `h2` sets ALPN for gRPC (grpc-go servers
/// require it).
pub fn client_config(verifier: PinnedVerifier, h2: bool) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    if h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    Ok(config)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed ECDSA P-256 certificate with `IsCA`, like LND's `tls.cert`.
    pub(crate) fn lnd_like_cert() -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_pem_and_der() {
        let (pem, _) = lnd_like_cert();
        let certs = load_certs(pem.as_bytes()).expect("pem");
        assert_eq!(certs.len(), 1);
        let der = certs[0].as_ref().to_vec();
        assert_eq!(load_certs(&der).expect("der")[0].as_ref(), der.as_slice());
        assert_eq!(load_certs(b"hello"), Err(TlsError::NoCertificate));
        assert!(
            load_certs(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err()
        );
    }

    #[test]
    fn pinning_is_exact() {
        let (a, _) = lnd_like_cert();
        let (b, _) = lnd_like_cert();
        let a = load_certs(a.as_bytes()).expect("a");
        let b = load_certs(b.as_bytes()).expect("b");
        let v = PinnedVerifier::pinned(a.clone());
        let name = ServerName::try_from("localhost").expect("name");
        assert!(v
            .verify_server_cert(&a[0], &[], &name, &[], UnixTime::now())
            .is_ok());
        assert!(v
            .verify_server_cert(&b[0], &[], &name, &[], UnixTime::now())
            .is_err());
    }

    #[test]
    fn webpki_alone_refuses_an_lnd_style_cert() {
        // Why we pin: trusting the CA-flagged self-signed cert as a root is not enough.
        let (pem, _) = lnd_like_cert();
        let certs = load_certs(pem.as_bytes()).expect("cert");
        let v = PinnedVerifier::pinned_or_ca(certs.clone()).expect("verifier");
        let ca_only = v.ca.clone().expect("webpki verifier");
        let name = ServerName::try_from("localhost").expect("name");
        assert!(ca_only
            .verify_server_cert(&certs[0], &[], &name, &[], UnixTime::now())
            .is_err());
        // ... while the pin accepts it.
        assert!(v
            .verify_server_cert(&certs[0], &[], &name, &[], UnixTime::now())
            .is_ok());
    }
}
