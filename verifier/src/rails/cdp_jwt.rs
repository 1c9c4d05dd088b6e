//! Coinbase CDP API-key JWTs for the hosted facilitator (x402 spec §3.3).
//!
//! One short-lived token per request: header `{alg, kid, typ: "JWT", nonce}`, claims
//! `{sub, iss: "cdp", iat, nbf, exp: iat + 120, uris: ["METHOD host/path"]}`. `ES256` for a PEM EC
//! (P-256) key, `EdDSA` for base64 of 64 bytes (Ed25519 seed ‖ public key).

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::json;

/// Token lifetime mandated by CDP.
pub const JWT_LIFETIME_SECS: u64 = 120;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CdpKeyError {
    #[error("PEM key is not a P-256 EC private key (SEC1 or PKCS#8)")]
    BadPem,
    #[error("key secret is neither a PEM EC key nor base64 of a 64-byte Ed25519 key")]
    NotBase64,
    #[error("Ed25519 key secret must be 64 bytes (seed ‖ public key), got {0}")]
    Ed25519Length(usize),
    #[error("Ed25519 key secret: public half does not match the seed")]
    Ed25519Mismatch,
    #[error("key id is empty")]
    EmptyKeyId,
}

enum CdpKey {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_dalek::SigningKey),
}

/// A CDP API key (id + private key). Debug output never shows the key.
pub struct CdpCredentials {
    key_id: String,
    key: CdpKey,
}

impl fmt::Debug for CdpCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CdpCredentials")
            .field("key_id", &self.key_id)
            .field("alg", &self.alg())
            .finish_non_exhaustive()
    }
}

impl CdpCredentials {
    /// Parses the key secret as CDP hands it out. PEM keys pasted into an environment variable
    /// often carry literal `\n`; those are accepted.
    pub fn new(key_id: &str, key_secret: &str) -> Result<Self, CdpKeyError> {
        let key_id = key_id.trim();
        if key_id.is_empty() {
            return Err(CdpKeyError::EmptyKeyId);
        }
        let secret = key_secret.trim();
        let key = if secret.contains("-----BEGIN") {
            let pem = secret.replace("\\n", "\n");
            let sk = p256::SecretKey::from_sec1_pem(&pem)
                .or_else(|_| {
                    use p256::pkcs8::DecodePrivateKey;
                    p256::SecretKey::from_pkcs8_pem(&pem)
                })
                .map_err(|_| CdpKeyError::BadPem)?;
            CdpKey::Es256(p256::ecdsa::SigningKey::from(sk))
        } else {
            let bytes = STANDARD
                .decode(secret)
                .map_err(|_| CdpKeyError::NotBase64)?;
            let arr: [u8; 64] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| CdpKeyError::Ed25519Length(bytes.len()))?;
            let sk = ed25519_dalek::SigningKey::from_keypair_bytes(&arr)
                .map_err(|_| CdpKeyError::Ed25519Mismatch)?;
            CdpKey::EdDsa(sk)
        };
        Ok(Self {
            key_id: key_id.to_owned(),
            key,
        })
    }

    pub fn alg(&self) -> &'static str {
        match self.key {
            CdpKey::Es256(_) => "ES256",
            CdpKey::EdDsa(_) => "EdDSA",
        }
    }

    /// Mints the bearer token for one request. `host_path` is `host[:port]/path` (no scheme).
    pub fn jwt(&self, method: &str, host_path: &str, now: u64) -> String {
        let nonce: [u8; 16] = rand::random();
        let header = json!({
            "alg": self.alg(),
            "kid": self.key_id,
            "typ": "JWT",
            "nonce": hex::encode(nonce),
        });
        let claims = json!({
            "sub": self.key_id,
            "iss": "cdp",
            "iat": now,
            "nbf": now,
            "exp": now + JWT_LIFETIME_SECS,
            "uris": [format!("{method} {host_path}")],
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Vec<u8> = match &self.key {
            CdpKey::Es256(k) => {
                use p256::ecdsa::signature::Signer;
                let sig: p256::ecdsa::Signature = k.sign(signing_input.as_bytes());
                sig.to_bytes().to_vec()
            }
            CdpKey::EdDsa(k) => {
                use ed25519_dalek::Signer;
                k.sign(signing_input.as_bytes()).to_bytes().to_vec()
            }
        };
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn split(token: &str) -> (Value, Value, Vec<u8>, String) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let h =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
        let c =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        let s = URL_SAFE_NO_PAD.decode(parts[2]).expect("b64");
        (h, c, s, format!("{}.{}", parts[0], parts[1]))
    }

    fn check_claims(h: &Value, c: &Value, alg: &str) {
        assert_eq!(h["alg"], alg);
        assert_eq!(h["kid"], "key-123");
        assert_eq!(h["typ"], "JWT");
        let nonce = h["nonce"].as_str().expect("nonce");
        assert_eq!(nonce.len(), 32);
        assert!(nonce.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(c["sub"], "key-123");
        assert_eq!(c["iss"], "cdp");
        assert_eq!(c["iat"], 1_700_000_000u64);
        assert_eq!(c["nbf"], 1_700_000_000u64);
        assert_eq!(c["exp"], 1_700_000_120u64);
        assert_eq!(
            c["uris"],
            serde_json::json!(["POST api.cdp.coinbase.com/platform/v2/x402/verify"])
        );
        assert!(c.get("aud").is_none());
    }

    #[test]
    fn es256_pem_token_verifies() {
        use p256::ecdsa::signature::Verifier;
        use p256::pkcs8::LineEnding;
        let sk = p256::SecretKey::from_slice(&[7u8; 32]).expect("key");
        let pem = sk.to_sec1_pem(LineEnding::LF).expect("pem");
        // As it usually arrives through an env var: escaped newlines.
        let escaped = pem.replace('\n', "\\n");
        let creds = CdpCredentials::new("key-123", &escaped).expect("creds");
        let token = creds.jwt(
            "POST",
            "api.cdp.coinbase.com/platform/v2/x402/verify",
            1_700_000_000,
        );
        let (h, c, sig, input) = split(&token);
        check_claims(&h, &c, "ES256");
        let vk = p256::ecdsa::VerifyingKey::from(&p256::ecdsa::SigningKey::from(sk));
        let sig = p256::ecdsa::Signature::from_slice(&sig).expect("64-byte r||s");
        vk.verify(input.as_bytes(), &sig)
            .expect("signature verifies");
        // Fresh nonce per token.
        let (h2, ..) = split(&creds.jwt("POST", "x/y", 1));
        assert_ne!(h["nonce"], h2["nonce"]);
        assert!(!format!("{creds:?}").contains("BEGIN"));
    }

    #[test]
    fn pkcs8_pem_accepted() {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let sk = p256::SecretKey::from_slice(&[9u8; 32]).expect("key");
        let pem = sk.to_pkcs8_pem(LineEnding::LF).expect("pem");
        let creds = CdpCredentials::new("k", &pem).expect("creds");
        assert_eq!(creds.alg(), "ES256");
    }

    #[test]
    fn eddsa_token_verifies() {
        use ed25519_dalek::Verifier;
        let sk = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        let secret = STANDARD.encode(sk.to_keypair_bytes());
        let creds = CdpCredentials::new("key-123", &secret).expect("creds");
        let token = creds.jwt(
            "POST",
            "api.cdp.coinbase.com/platform/v2/x402/verify",
            1_700_000_000,
        );
        let (h, c, sig, input) = split(&token);
        check_claims(&h, &c, "EdDSA");
        let sig = ed25519_dalek::Signature::from_slice(&sig).expect("sig");
        sk.verifying_key()
            .verify(input.as_bytes(), &sig)
            .expect("signature verifies");
    }

    #[test]
    fn bad_keys() {
        assert_eq!(
            CdpCredentials::new(
                "k",
                "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----"
            )
            .err(),
            Some(CdpKeyError::BadPem)
        );
        assert_eq!(
            CdpCredentials::new("k", &STANDARD.encode([1u8; 32])).err(),
            Some(CdpKeyError::Ed25519Length(32))
        );
        assert_eq!(
            CdpCredentials::new("k", &STANDARD.encode([1u8; 64])).err(),
            Some(CdpKeyError::Ed25519Mismatch)
        );
        assert_eq!(
            CdpCredentials::new("k", "not base64!").err(),
            Some(CdpKeyError::NotBase64)
        );
        assert_eq!(
            CdpCredentials::new(" ", "x").err(),
            Some(CdpKeyError::EmptyKeyId)
        );
    }
}
