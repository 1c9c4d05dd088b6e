//! EVM primitives for the `exact` scheme: addresses and EIP-712 / EIP-3009 signatures.

mod address;
mod eip712;

pub use address::{AddressError, EvmAddress};
pub use eip712::{
    recover_signer, transfer_with_authorization_digest, Eip712Domain, SignatureError,
    TransferAuthorization, EIP712_DOMAIN_TYPE, TRANSFER_WITH_AUTHORIZATION_TYPE,
};

use sha3::{Digest, Keccak256};

/// Keccak-256 (Ethereum's hash, not NIST SHA3-256).
pub fn keccak256(data: &[u8]) -> [u8; 32] {
    Keccak256::digest(data).into()
}
