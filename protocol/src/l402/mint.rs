//! Minting (verifier side): the macaroon for one invoice.

use super::caveats::mint_caveats;
use super::identifier::{Identifier, PaymentHash, TokenId};
use super::keys::{token_root_key, FilterKey};
use super::macaroon::Macaroon;
use crate::keys::KeyId;

/// Aperture's macaroon location.
pub const LOCATION: &[u8] = b"lsat";

/// A macaroon for `payment_hash` valid for `service` until `valid_until` (unix seconds), bound
/// to `path` (no query) and `method` when given (see [`super::caveats`]), minted with the filter
/// key `key_id` names.
pub fn mint(
    (key_id, filter_key): (KeyId, &FilterKey),
    payment_hash: &PaymentHash,
    token_id: &TokenId,
    service: &str,
    valid_until: u64,
    path: Option<&str>,
    method: Option<&str>,
) -> Macaroon {
    let identifier = Identifier::new(*payment_hash, *token_id);
    let root_key = token_root_key(filter_key, &identifier);
    let mut macaroon = Macaroon::new(
        &root_key.0,
        identifier.to_bytes().to_vec(),
        Some(LOCATION.to_vec()),
    );
    for caveat in mint_caveats(service, valid_until, key_id, path, method) {
        macaroon.add_first_party_caveat(caveat);
    }
    macaroon
}
