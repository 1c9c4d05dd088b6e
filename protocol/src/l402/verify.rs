//! Verifying a presented credential, cheapest checks first (fact sheet §1.5): identifier,
//! sha256(preimage), third-party caveats, signature chain, caveats.

use subtle::ConstantTimeEq;

use super::authorization::Credential;
use super::caveats::{evaluate, key_id};
use super::error::L402Error;
use super::identifier::{Identifier, PaymentHash, TokenId};
use super::keys::{token_root_key, FilterKey};
use super::macaroon::SignatureError;
use crate::keys::KeySet;

/// A genuine, paid, unexpired token for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedToken {
    pub payment_hash: PaymentHash,
    pub token_id: TokenId,
    /// Unix seconds; a single-use claim may be forgotten after it.
    pub valid_until: u64,
}

/// `path` is the concrete request path without the query string.
pub fn verify_credential(
    keys: &KeySet<FilterKey>,
    credential: &Credential,
    service: &str,
    now: u64,
    path: &str,
    method: &str,
) -> Result<VerifiedToken, L402Error> {
    let macaroon = &credential.macaroon;
    let identifier = Identifier::from_bytes(&macaroon.identifier)?;
    let paid = PaymentHash::of_preimage(&credential.preimage);
    if !bool::from(paid.0.ct_eq(&identifier.payment_hash.0)) {
        return Err(L402Error::WrongPreimage);
    }
    // The key the token names (if still accepted at `now`); the signature then decides.
    let (filter_key, key_until) = keys
        .get(key_id(&macaroon.caveats, service), now)
        .ok_or(L402Error::BadSignature)?;
    let root_key = token_root_key(filter_key, &identifier);
    macaroon
        .verify_signature(&root_key.0)
        .map_err(|e| match e {
            SignatureError::ThirdPartyCaveat => L402Error::ThirdPartyCaveat,
            SignatureError::Mismatch => L402Error::BadSignature,
        })?;
    let restrictions = evaluate(&macaroon.caveats, service)?;
    restrictions.check(now, path, method)?;
    Ok(VerifiedToken {
        payment_hash: identifier.payment_hash,
        token_id: identifier.token_id,
        // Until the token's expiry or its key's retirement, whichever is first.
        valid_until: restrictions.valid_until.min(key_until),
    })
}
