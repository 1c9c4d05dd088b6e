//! TLS on the verifier's channels: `verifier.tls` (the gRPC port `verifier.grpc`, with the
//! filter's API, ext_authz and RDS, and the admin listener `verifier.admin`), and the Envoy side
//! of it, rendered into the `tollway_verifier` cluster by `tollway envoy`.
//!
//! ```yaml
//! verifier:
//!   tls:
//!     cert: file:/etc/tollway/tls/verifier.pem       # PEM chain, leaf first
//!     key: file:/etc/tollway/tls/verifier-key.pem    # PEM private key (PKCS#8, PKCS#1 or SEC1)
//!     client_ca: file:/etc/tollway/tls/ca.pem        # optional: every client needs a certificate it signed (mTLS)
//!     server_name: verifier.internal                 # optional: default the certificate's first DNS name
//! envoy:
//!   verifier_ca: file:/etc/envoy/tollway/ca.pem      # what signed verifier.tls.cert; default verifier.tls.client_ca
//!   verifier_client_cert: file:/etc/envoy/tollway/client.pem      # with client_ca: required
//!   verifier_client_key: file:/etc/envoy/tollway/client-key.pem
//! ```
//!
//! The verifier reads its certificate, key and client CA (`check`, `serve`); the bootstrap
//! `tollway envoy` renders names Envoy's files by path and never holds key material.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

use crate::config::secret::SecretRef;
use crate::config::{Problems, Secrets};

/// A TLS handshake that takes longer is dropped (gRPC and admin listeners).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const TLS_EXAMPLE: &str = "tls: { cert: file:/etc/tollway/verifier.pem, key: file:/etc/tollway/verifier-key.pem, client_ca: file:/etc/tollway/ca.pem }";

/// `verifier.tls`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert: String,
    key: String,
    #[serde(default)]
    client_ca: Option<String>,
    #[serde(default)]
    server_name: Option<String>,
}

/// `verifier.tls`, validated.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub cert: SecretRef,
    pub key: SecretRef,
    /// Set: mTLS, every client must present a certificate this CA signed.
    pub client_ca: Option<SecretRef>,
    /// The name Envoy asks for (SNI) and checks in the verifier's certificate: `server_name`, or
    /// the certificate's first DNS name (first IP address without one). `None` when it could not
    /// be read here (`tollway envoy` then asks for `server_name`).
    pub server_name: Option<String>,
    /// The PEM files, read with [`Secrets::Resolve`] (`check`, `serve`).
    pub pem: Option<TlsPem>,
}

/// What the verifier serves with. The key is never printed.
#[derive(Clone)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

impl fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsPem")
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("key", &format_args!("<redacted>"))
            .field("client_ca", &self.client_ca.as_ref().map(Vec::len))
            .finish()
    }
}

/// How Envoy reaches a TLS verifier (`tollway_verifier` cluster): paths of Envoy's own files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvoyVerifierTls {
    /// SNI and the name checked in the verifier's certificate (DNS name or IP address).
    pub server_name: String,
    /// The CA that signed the verifier's certificate.
    pub trusted_ca: PathBuf,
    /// Envoy's client certificate chain and key (mTLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsSettings {
    pub fn mtls(&self) -> bool {
        self.client_ca.is_some()
    }

    /// The rustls configuration of the admin listener (HTTP/1.1): the same certificate, key and
    /// client CA as the gRPC port. `None` when the files were not read.
    pub fn server_config(&self) -> Option<Result<Arc<rustls::ServerConfig>, String>> {
        let pem = self.pem.as_ref()?;
        Some(server_config(pem, &[b"http/1.1"]).map(Arc::new))
    }

    /// tonic's TLS settings for the gRPC port (it negotiates `h2`). `None` when the files were
    /// not read.
    pub fn grpc_config(&self) -> Option<tonic::transport::ServerTlsConfig> {
        let pem = self.pem.as_ref()?;
        let mut c = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&pem.cert, &pem.key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &pem.client_ca {
            c = c.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        Some(c)
    }
}

fn certs(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate PEM does not parse: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into());
    }
    Ok(certs)
}

/// A rustls server configuration from the PEM files: the key must match the certificate, and
/// with a client CA every client must present a certificate it signed.
pub(crate) fn server_config(pem: &TlsPem, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, String> {
    let chain = certs(&pem.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&pem.key)
        .map_err(|_| "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".to_owned())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &pem.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca).map_err(|e| format!("client CA: {e}"))? {
                roots
                    .add(c)
                    .map_err(|e| format!("client CA certificate refused: {e}"))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| format!("client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not go together: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The DNS names, then the IP addresses, of a certificate's subject alternative names.
pub(crate) fn certificate_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;

    let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
    let san = cert
        .tbs_certificate
        .get::<SubjectAltName>()
        .map_err(|e| e.to_string())?;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in san.map(|(_, s)| s.0).unwrap_or_default() {
        match name {
            GeneralName::DnsName(d) => dns.push(d.to_string().to_ascii_lowercase()),
            GeneralName::IpAddress(o) => match o.as_bytes().len() {
                4 => {
                    let b: [u8; 4] = o.as_bytes().try_into().unwrap_or_default();
                    ips.push(IpAddr::from(b).to_string());
                }
                16 => {
                    let b: [u8; 16] = o.as_bytes().try_into().unwrap_or_default();
                    ips.push(IpAddr::from(b).to_string());
                }
                _ => {}
            },
            _ => {}
        }
    }
    dns.extend(ips);
    Ok(dns)
}

/// Whether `name` is one of `names` (a `*.` name covers one label).
fn covers(names: &[String], name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    names.iter().any(|n| {
        n == &name
            || n.strip_prefix("*.").is_some_and(|suffix| {
                name.split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
            })
    })
}

fn reference(p: &mut Problems, path: &str, text: &str, example: &str) -> Option<SecretRef> {
    match SecretRef::parse(text.trim()) {
        Ok(r) => Some(r),
        Err(_) => {
            p.hint(path, "not a file reference", format!("{path}: {example}"));
            None
        }
    }
}

fn read(p: &mut Problems, path: &str, r: &SecretRef) -> Option<Vec<u8>> {
    match r.resolve_bytes() {
        Ok(b) => Some(b),
        Err(e) => {
            p.add(path, e.to_string());
            None
        }
    }
}

/// `verifier.tls`. The files are read with [`Secrets::Resolve`]; the certificate also with
/// [`Secrets::Skip`] when it can be (it is public, and names the server for `tollway envoy`).
pub(super) fn verifier_tls(
    p: &mut Problems,
    raw: &RawTls,
    secrets: Secrets,
) -> Option<TlsSettings> {
    let before = p.0.len();
    let cert = reference(
        p,
        "verifier.tls.cert",
        &raw.cert,
        "file:/etc/tollway/verifier.pem",
    );
    let key = reference(
        p,
        "verifier.tls.key",
        &raw.key,
        "file:/etc/tollway/verifier-key.pem",
    );
    let client_ca = raw
        .client_ca
        .as_deref()
        .map(|t| reference(p, "verifier.tls.client_ca", t, "file:/etc/tollway/ca.pem"));
    let explicit = raw.server_name.as_deref().map(str::trim).map(str::to_owned);
    if let Some(name) = &explicit {
        if ServerName::try_from(name.as_str()).is_err() || name.contains('*') {
            p.hint(
                "verifier.tls.server_name",
                format!("{name:?} is not a DNS name or IP address"),
                "the name in verifier.tls.cert that Envoy asks for, e.g. verifier.internal",
            );
        }
    }
    let (cert, key) = (cert?, key?);
    let client_ca = match client_ca {
        None => None,
        Some(r) => Some(r?),
    };
    if p.0.len() > before {
        return None;
    }

    // The certificate: always when it can be read (Skip: silently not).
    let cert_bytes = match secrets {
        Secrets::Resolve => Some(read(p, "verifier.tls.cert", &cert)?),
        Secrets::Skip => cert.resolve_bytes().ok(),
    };
    let mut names = None;
    if let Some(bytes) = &cert_bytes {
        match certs(bytes) {
            Ok(chain) => match certificate_names(&chain[0]) {
                Ok(n) => names = Some(n),
                Err(e) => {
                    p.add(
                        "verifier.tls.cert",
                        format!("{cert}: not an X.509 certificate: {e}"),
                    );
                    return None;
                }
            },
            Err(e) => {
                p.hint(
                    "verifier.tls.cert",
                    format!("{cert}: {e}"),
                    "the verifier's certificate chain, PEM, leaf first",
                );
                return None;
            }
        }
    }
    let server_name = match (&explicit, &names) {
        (Some(name), Some(names)) if !covers(names, name) => {
            p.hint(
                "verifier.tls.server_name",
                format!(
                    "{name:?} is not a name of verifier.tls.cert ({})",
                    if names.is_empty() {
                        "it has none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
                "Envoy checks the verifier's certificate for this name: use one of its names",
            );
            return None;
        }
        (Some(name), _) => Some(name.clone()),
        (None, Some(names)) => names.first().cloned(),
        (None, None) => None,
    };

    let pem = match secrets {
        Secrets::Skip => None,
        Secrets::Resolve => {
            let key_bytes = read(p, "verifier.tls.key", &key)?;
            let ca_bytes = match &client_ca {
                Some(r) => Some(read(p, "verifier.tls.client_ca", r)?),
                None => None,
            };
            let pem = TlsPem {
                cert: cert_bytes.unwrap_or_default(),
                key: key_bytes,
                client_ca: ca_bytes,
            };
            if let Err(e) = server_config(&pem, &[]) {
                let at = if e.starts_with("client CA") {
                    "verifier.tls.client_ca"
                } else if e.contains("private key") || e.contains("go together") {
                    "verifier.tls.key"
                } else {
                    "verifier.tls.cert"
                };
                p.add(at, e);
                return None;
            }
            Some(pem)
        }
    };
    Some(TlsSettings {
        cert,
        key,
        client_ca,
        server_name,
        pem,
    })
}

/// Envoy's side: `envoy.verifier_ca`, `envoy.verifier_client_cert`, `envoy.verifier_client_key`
/// (`file:` paths on Envoy's host, never read here). `Err` when a problem was reported.
pub(super) fn envoy_verifier_tls(
    p: &mut Problems,
    tls: Option<&TlsSettings>,
    tls_written: bool,
    ca: Option<&str>,
    client_cert: Option<&str>,
    client_key: Option<&str>,
) -> Result<Option<EnvoyVerifierTls>, ()> {
    let before = p.0.len();
    let mut path = |field: &str, text: Option<&str>| -> Option<PathBuf> {
        let at = format!("envoy.{field}");
        match SecretRef::parse(text?.trim()) {
            Ok(SecretRef::File(f)) => Some(f),
            _ => {
                p.hint(
                    at,
                    "not a file path",
                    format!("{field}: file:/path/on/envoys/host (Envoy reads it; the bootstrap names the file, never its content)"),
                );
                None
            }
        }
    };
    let ca = path("verifier_ca", ca);
    let cert = path("verifier_client_cert", client_cert);
    let key = path("verifier_client_key", client_key);
    if p.0.len() > before {
        return Err(());
    }
    let Some(tls) = tls else {
        if !tls_written {
            for (field, set) in [
                ("verifier_ca", ca.is_some()),
                ("verifier_client_cert", cert.is_some()),
                ("verifier_client_key", key.is_some()),
            ] {
                if set {
                    p.hint(
                        format!("envoy.{field}"),
                        "has no effect without verifier.tls (the verifier's gRPC is plaintext)",
                        format!("verifier: {{ {TLS_EXAMPLE} }}"),
                    );
                }
            }
        }
        // With a verifier.tls that did not validate, its problems are reported already.
        return if p.0.len() > before {
            Err(())
        } else {
            Ok(None)
        };
    };

    let trusted_ca = match (ca, &tls.client_ca) {
        (Some(ca), _) => Some(ca),
        (None, Some(SecretRef::File(ca))) => Some(ca.clone()),
        (None, _) => {
            p.hint(
                "envoy.verifier_ca",
                "missing: Envoy must know the CA that signed verifier.tls.cert",
                "verifier_ca: file:/etc/envoy/tollway/ca.pem (without it, verifier.tls.client_ca's file is used: one private CA for both sides)",
            );
            None
        }
    };
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => {
            if tls.mtls() {
                p.hint(
                    "envoy.verifier_client_cert",
                    "missing: verifier.tls.client_ca makes the verifier refuse clients without a certificate",
                    "verifier_client_cert: file:/etc/envoy/tollway/client.pem and verifier_client_key: file:/etc/envoy/tollway/client-key.pem, signed by verifier.tls.client_ca",
                );
            }
            None
        }
        (Some(_), None) => {
            p.add(
                "envoy.verifier_client_key",
                "missing: envoy.verifier_client_cert needs its key",
            );
            None
        }
        (None, Some(_)) => {
            p.add(
                "envoy.verifier_client_cert",
                "missing: envoy.verifier_client_key needs its certificate",
            );
            None
        }
    };
    let server_name = match &tls.server_name {
        Some(n) => Some(n.clone()),
        None => {
            p.hint(
                "verifier.tls.server_name",
                "missing: Envoy must know the verifier's name to check its certificate, and verifier.tls.cert cannot be read here or names nothing",
                "server_name: verifier.internal (a DNS name or IP address in verifier.tls.cert)",
            );
            None
        }
    };
    if p.0.len() > before {
        return Err(());
    }
    Ok(Some(EnvoyVerifierTls {
        server_name: server_name.ok_or(())?,
        trusted_ca: trusted_ca.ok_or(())?,
        client_cert,
    }))
}

/// A throwaway PKI for tests: a CA, the verifier's certificate for `localhost` and 127.0.0.1, a
/// client certificate it signed, and a stranger's (another CA's) client certificate.
#[cfg(test)]
pub mod test_pki {
    use std::path::{Path, PathBuf};

    pub struct Pki {
        pub ca: PathBuf,
        pub cert: PathBuf,
        pub key: PathBuf,
        pub client_cert: PathBuf,
        pub client_key: PathBuf,
        pub stranger_cert: PathBuf,
        pub stranger_key: PathBuf,
    }

    fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        (params.self_signed(&key).expect("ca"), key)
    }

    fn leaf(
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
        ca: &(rcgen::Certificate, rcgen::KeyPair),
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca.0, &ca.1).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    impl Pki {
        pub fn new(dir: &Path) -> Pki {
            use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
            let authority = ca("Tollway test CA");
            let stranger_ca = ca("Someone else's CA");
            let write = |name: &str, text: &str| {
                let path = dir.join(name);
                std::fs::write(&path, text).expect("write");
                path
            };
            let (cert, key) = leaf(&["localhost", "127.0.0.1"], ServerAuth, &authority);
            let (client_cert, client_key) = leaf(&["envoy"], ClientAuth, &authority);
            let (stranger_cert, stranger_key) = leaf(&["envoy"], ClientAuth, &stranger_ca);
            Pki {
                ca: write("ca.pem", &authority.0.pem()),
                cert: write("verifier.pem", &cert),
                key: write("verifier-key.pem", &key),
                client_cert: write("client.pem", &client_cert),
                client_key: write("client-key.pem", &client_key),
                stranger_cert: write("stranger.pem", &stranger_cert),
                stranger_key: write("stranger-key.pem", &stranger_key),
            }
        }

        /// `verifier.tls` lines (indented for the `verifier:` block); with `mtls`, `client_ca`.
        pub fn verifier_yaml(&self, mtls: bool) -> String {
            let mut s = format!(
                "  tls:\n    cert: file:{}\n    key: file:{}\n",
                self.cert.display(),
                self.key.display()
            );
            if mtls {
                s += &format!("    client_ca: file:{}\n", self.ca.display());
            }
            s
        }

        /// `envoy:` lines for the verifier cluster's TLS (client certificate with `mtls`).
        pub fn envoy_yaml(&self, mtls: bool) -> String {
            let mut s = format!("  verifier_ca: file:{}\n", self.ca.display());
            if mtls {
                s += &format!(
                    "  verifier_client_cert: file:{}\n  verifier_client_key: file:{}\n",
                    self.client_cert.display(),
                    self.client_key.display()
                );
            }
            s
        }

        pub fn read(path: &Path) -> Vec<u8> {
            std::fs::read(path).expect("read")
        }
    }

    /// `text` (the example config) with `verifier_lines` added to `verifier:` and `envoy_lines`
    /// to `envoy:`.
    pub fn with_lines(text: &str, verifier_lines: &str, envoy_lines: &str) -> String {
        let text = text.replacen(
            "\nverifier:\n",
            &format!("\nverifier:\n{verifier_lines}"),
            1,
        );
        text.replacen("\nenvoy:\n", &format!("\nenvoy:\n{envoy_lines}"), 1)
    }
}

#[cfg(test)]
mod tests {
    use super::test_pki::{with_lines, Pki};
    use crate::config::{Config, ConfigErrors, Secrets};

    fn parse(
        dir: &std::path::Path,
        verifier: &str,
        envoy: &str,
        secrets: Secrets,
    ) -> Result<Config, ConfigErrors> {
        let text = with_lines(&crate::testkit::example_text(dir), verifier, envoy);
        Config::parse(&text, secrets)
    }

    /// Every problem as `path: message`.
    fn problems(r: Result<Config, ConfigErrors>) -> Vec<String> {
        match r {
            Ok(_) => panic!("expected problems"),
            Err(e) => {
                e.0.iter()
                    .map(|p| format!("{}: {}", p.path, p.message))
                    .collect()
            }
        }
    }

    fn has(problems: &[String], path: &str, words: &str) -> bool {
        problems
            .iter()
            .any(|p| p.starts_with(&format!("{path}: ")) && p.contains(words))
    }

    #[test]
    fn mtls_settings() {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = Pki::new(dir.path());
        let c = parse(
            dir.path(),
            &pki.verifier_yaml(true),
            &pki.envoy_yaml(true),
            Secrets::Resolve,
        )
        .expect("valid");
        let tls = c.verifier.tls.as_ref().expect("tls");
        assert!(tls.mtls());
        assert_eq!(tls.server_name.as_deref(), Some("localhost"));
        let pem = tls.pem.as_ref().expect("read");
        assert_eq!(pem.cert, Pki::read(&pki.cert));
        assert!(tls.server_config().expect("pem").is_ok());
        assert!(tls.grpc_config().is_some());
        // The key never prints.
        let debug = format!("{c:?}");
        let key = String::from_utf8(Pki::read(&pki.key)).expect("utf8");
        let body = key.lines().nth(1).expect("a base64 line");
        assert!(!debug.contains(body), "key in Debug output");
        assert!(!debug.contains("PRIVATE KEY"));
        let envoy = c
            .envoy
            .as_ref()
            .and_then(|e| e.verifier_tls.as_ref())
            .expect("envoy tls");
        assert_eq!(envoy.server_name, "localhost");
        assert_eq!(envoy.trusted_ca, pki.ca);
        assert_eq!(
            envoy.client_cert,
            Some((pki.client_cert.clone(), pki.client_key.clone()))
        );

        // `tollway envoy` (secrets skipped) reads the certificate for its name, nothing else.
        let c = parse(
            dir.path(),
            &pki.verifier_yaml(true),
            &pki.envoy_yaml(true),
            Secrets::Skip,
        )
        .expect("valid");
        let tls = c.verifier.tls.as_ref().expect("tls");
        assert!(tls.pem.is_none());
        assert_eq!(tls.server_name.as_deref(), Some("localhost"));
    }

    #[test]
    fn server_name_and_ca_defaults() {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = Pki::new(dir.path());
        // Without envoy.verifier_ca, Envoy trusts verifier.tls.client_ca (one private CA).
        let envoy = format!(
            "  verifier_client_cert: file:{}\n  verifier_client_key: file:{}\n",
            pki.client_cert.display(),
            pki.client_key.display()
        );
        let verifier = pki.verifier_yaml(true) + "    server_name: 127.0.0.1\n";
        let c = parse(dir.path(), &verifier, &envoy, Secrets::Resolve).expect("valid");
        let e = c
            .envoy
            .as_ref()
            .and_then(|e| e.verifier_tls.clone())
            .expect("tls");
        assert_eq!(e.trusted_ca, pki.ca);
        assert_eq!(e.server_name, "127.0.0.1");

        // A name the certificate does not carry: Envoy would refuse every connection.
        let verifier = pki.verifier_yaml(false) + "    server_name: verifier.internal\n";
        let p = problems(parse(
            dir.path(),
            &verifier,
            &pki.envoy_yaml(false),
            Secrets::Resolve,
        ));
        assert!(
            has(
                &p,
                "verifier.tls.server_name",
                "not a name of verifier.tls.cert (localhost, 127.0.0.1)"
            ),
            "{p:?}"
        );

        // No client CA and no envoy.verifier_ca: Envoy cannot check the verifier.
        let p = problems(parse(
            dir.path(),
            &pki.verifier_yaml(false),
            "",
            Secrets::Resolve,
        ));
        assert!(has(&p, "envoy.verifier_ca", "missing"), "{p:?}");

        // mTLS without Envoy's client certificate: every call would be refused.
        let p = problems(parse(
            dir.path(),
            &pki.verifier_yaml(true),
            &pki.envoy_yaml(false),
            Secrets::Skip,
        ));
        assert!(has(&p, "envoy.verifier_client_cert", "missing"), "{p:?}");
        let half = pki.envoy_yaml(false)
            + &format!(
                "  verifier_client_cert: file:{}\n",
                pki.client_cert.display()
            );
        let p = problems(parse(
            dir.path(),
            &pki.verifier_yaml(true),
            &half,
            Secrets::Skip,
        ));
        assert!(has(&p, "envoy.verifier_client_key", "missing"), "{p:?}");

        // Envoy's files are paths (the bootstrap names them), never env: values.
        let p = problems(parse(
            dir.path(),
            &pki.verifier_yaml(false),
            "  verifier_ca: env:CA_PEM\n",
            Secrets::Skip,
        ));
        assert!(has(&p, "envoy.verifier_ca", "not a file path"), "{p:?}");

        // Envoy's side without the verifier's.
        let p = problems(parse(dir.path(), "", &pki.envoy_yaml(true), Secrets::Skip));
        assert!(
            has(
                &p,
                "envoy.verifier_ca",
                "has no effect without verifier.tls"
            ),
            "{p:?}"
        );
        assert!(
            has(
                &p,
                "envoy.verifier_client_cert",
                "has no effect without verifier.tls"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn bad_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = Pki::new(dir.path());
        let envoy = pki.envoy_yaml(true);
        let tls = |cert: &std::path::Path, key: &str| {
            format!(
                "  tls:\n    cert: file:{}\n    key: {key}\n    client_ca: file:{}\n",
                cert.display(),
                pki.ca.display()
            )
        };
        // Another certificate's key.
        let other_key = format!("file:{}", pki.client_key.display());
        let p = problems(parse(
            dir.path(),
            &tls(&pki.cert, &other_key),
            &envoy,
            Secrets::Resolve,
        ));
        assert!(has(&p, "verifier.tls.key", "do not go together"), "{p:?}");
        // Not a key at all.
        let not_key = format!("file:{}", pki.ca.display());
        let p = problems(parse(
            dir.path(),
            &tls(&pki.cert, &not_key),
            &envoy,
            Secrets::Resolve,
        ));
        assert!(has(&p, "verifier.tls.key", "no PEM private key"), "{p:?}");
        // A key written inline is refused and never echoed.
        let key = String::from_utf8(Pki::read(&pki.key)).expect("utf8");
        let inline = format!("\"{}\"", key.lines().nth(1).expect("line"));
        let r = parse(
            dir.path(),
            &tls(&pki.cert, &inline),
            &envoy,
            Secrets::Resolve,
        );
        let p = problems(r);
        assert!(has(&p, "verifier.tls.key", "not a file reference"), "{p:?}");
        assert!(
            !p.iter()
                .any(|x| x.contains(key.lines().nth(1).expect("line"))),
            "{p:?}"
        );
        // A missing certificate, and a file that is no certificate.
        let key_ref = format!("file:{}", pki.key.display());
        let p = problems(parse(
            dir.path(),
            &tls(&dir.path().join("nope.pem"), &key_ref),
            &envoy,
            Secrets::Resolve,
        ));
        assert!(has(&p, "verifier.tls.cert", "cannot read"), "{p:?}");
        let p = problems(parse(
            dir.path(),
            &tls(&pki.key, &key_ref),
            &envoy,
            Secrets::Resolve,
        ));
        assert!(has(&p, "verifier.tls.cert", "no PEM certificate"), "{p:?}");
        // A client CA that is no certificate.
        let verifier = format!(
            "  tls:\n    cert: file:{}\n    key: {key_ref}\n    client_ca: file:{}\n",
            pki.cert.display(),
            pki.key.display()
        );
        let p = problems(parse(dir.path(), &verifier, &envoy, Secrets::Resolve));
        assert!(
            has(&p, "verifier.tls.client_ca", "no PEM certificate"),
            "{p:?}"
        );
        // Unknown fields are located.
        let p = problems(parse(
            dir.path(),
            &(pki.verifier_yaml(false) + "    ciphers: all\n"),
            &envoy,
            Secrets::Skip,
        ));
        assert!(
            p.iter()
                .any(|x| x.starts_with("verifier.tls") && x.contains("ciphers")),
            "{p:?}"
        );
    }

    #[test]
    fn admin_listener() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = parse(
            dir.path(),
            "  admin: 127.0.0.1:9091\n",
            "",
            Secrets::Resolve,
        )
        .expect("valid");
        assert_eq!(
            c.verifier.admin,
            Some("127.0.0.1:9091".parse().expect("addr"))
        );
        let c = parse(dir.path(), "", "", Secrets::Resolve).expect("valid");
        assert_eq!(c.verifier.admin, None);
        let p = problems(parse(
            dir.path(),
            "  admin: 127.0.0.1:9090\n",
            "",
            Secrets::Skip,
        ));
        assert!(
            has(&p, "verifier.admin", "same address as verifier.http"),
            "{p:?}"
        );
        let p = problems(parse(dir.path(), "  admin: localhost\n", "", Secrets::Skip));
        assert!(has(&p, "verifier.admin", "not an ip:port"), "{p:?}");
        // A listener without the bearer token.
        let text = crate::testkit::example_text(dir.path());
        let start = text.find("\nadmin:\n").expect("admin section");
        let end = start
            + 1
            + text[start + 1..]
                .find("\n\n")
                .unwrap_or(text.len() - start - 1);
        let text = format!("{}{}", &text[..start], &text[end..]);
        let text = with_lines(&text, "  admin: 127.0.0.1:9091\n", "");
        let p = problems(Config::parse(&text, Secrets::Skip));
        assert!(has(&p, "verifier.admin", "needs its bearer token"), "{p:?}");
    }
}
