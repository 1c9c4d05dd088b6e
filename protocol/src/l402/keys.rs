//! Key derivation: one root secret (verifier only) → the filter key (in the filter config) →
//! one macaroon root key per token. Derived, not stored, so any filter or verifier replica
//! verifies a token with no database.

use std::fmt;

use super::identifier::Identifier;
use crate::hmac::{hmac_sha256, sha256};

/// Domain separation: the filter key is useless for anything but L402 v1 tokens.
const FILTER_KEY_LABEL: &[u8] = b"tollway/l402/v1";

/// `HMAC-SHA256(root_secret, "tollway/l402/v1")`. Mints and verifies every token; never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct FilterKey([u8; 32]);

/// A token's macaroon root key.
#[derive(Clone, PartialEq, Eq)]
pub struct RootKey(pub [u8; 32]);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the L402 filter key must be 64 hex characters")]
pub struct BadFilterKey;

impl FilterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> FilterKey {
        FilterKey(bytes)
    }

    pub fn from_hex(s: &str) -> Result<FilterKey, BadFilterKey> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadFilterKey)?;
        Ok(FilterKey(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for FilterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FilterKey(..)")
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey(..)")
    }
}

pub fn filter_key(root_secret: &[u8]) -> FilterKey {
    FilterKey(hmac_sha256(root_secret, &[FILTER_KEY_LABEL]))
}

/// `HMAC-SHA256(filter_key, sha256(identifier))`: Aperture also keys its secret store by
/// sha256(identifier).
pub fn token_root_key(filter_key: &FilterKey, identifier: &Identifier) -> RootKey {
    RootKey(hmac_sha256(
        &filter_key.0,
        &[&sha256(&identifier.to_bytes())],
    ))
}
