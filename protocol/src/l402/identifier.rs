//! The Aperture token identifier: `u16be version (0) || payment_hash[32] || token_id[32]`,
//! stored raw in the macaroon's identifier field.

use std::fmt;

use super::error::L402Error;
use crate::hmac::sha256;

pub const IDENTIFIER_LEN: usize = 66;
const VERSION_0: [u8; 2] = [0, 0];

/// SHA-256 of the invoice preimage: what the macaroon commits to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PaymentHash(pub [u8; 32]);

/// 32 random bytes naming the token (Aperture's stable user handle).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenId(pub [u8; 32]);

impl PaymentHash {
    pub fn of_preimage(preimage: &[u8; 32]) -> PaymentHash {
        PaymentHash(sha256(preimage))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl TokenId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for PaymentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PaymentHash({})", self.to_hex())
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({})", self.to_hex())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identifier {
    pub payment_hash: PaymentHash,
    pub token_id: TokenId,
}

impl Identifier {
    pub fn new(payment_hash: PaymentHash, token_id: TokenId) -> Identifier {
        Identifier {
            payment_hash,
            token_id,
        }
    }

    pub fn to_bytes(&self) -> [u8; IDENTIFIER_LEN] {
        let mut out = [0u8; IDENTIFIER_LEN];
        out[..2].copy_from_slice(&VERSION_0);
        out[2..34].copy_from_slice(&self.payment_hash.0);
        out[34..].copy_from_slice(&self.token_id.0);
        out
    }

    /// Exactly 66 bytes, version 0 (Aperture does not check the length; we do).
    pub fn from_bytes(bytes: &[u8]) -> Result<Identifier, L402Error> {
        let bytes: &[u8; IDENTIFIER_LEN] = bytes
            .try_into()
            .map_err(|_| L402Error::BadIdentifier("length is not 66 bytes"))?;
        let (version, rest) = bytes.split_at(2);
        if version != VERSION_0 {
            return Err(L402Error::BadIdentifier("unknown version"));
        }
        let (hash, id) = rest.split_at(32);
        let mut payment_hash = [0u8; 32];
        payment_hash.copy_from_slice(hash);
        let mut token_id = [0u8; 32];
        token_id.copy_from_slice(id);
        Ok(Identifier::new(
            PaymentHash(payment_hash),
            TokenId(token_id),
        ))
    }
}
