//! L402 (ex-LSAT): Lightning-paid macaroon tokens, verified statelessly.
//!
//! - [`macaroon`]: the v2 binary codec and first-party signature chain (libmacaroons format).
//! - [`identifier`]: Aperture's 66-byte identifier (version, payment hash, token id).
//! - [`keys`]: root secret → filter key → per-token root key.
//! - [`caveats`]: what we mint and how a token's caveats are evaluated.
//! - [`mint`]: a token for one invoice (verifier).
//! - [`authorization`]: the `Authorization: L402|LSAT <macaroon>:<preimage>` parser.
//! - [`verify`]: the full check of a credential against a request (filter, ext_authz).
//! - [`challenge`]: the `WWW-Authenticate` values of a 402.

pub mod authorization;
pub mod cache;
pub mod caveats;
pub mod challenge;
pub mod error;
pub mod identifier;
pub mod keys;
pub mod macaroon;
pub mod mint;
pub mod verify;

pub use authorization::{
    carries_l402, parse_authorization, without_l402, Credential, MAX_AUTHORIZATION_BYTES,
};
pub use challenge::{www_authenticate, HEADER_WWW_AUTHENTICATE, INVOICE_LIMIT_BODY};
pub use error::{L402Error, REASON_TOKEN_ALREADY_USED};
pub use identifier::{Identifier, PaymentHash, TokenId, IDENTIFIER_LEN};
pub use keys::{filter_key, token_root_key, BadFilterKey, FilterKey, RootKey};
pub use macaroon::{Caveat, Macaroon, MacaroonError, MAX_MACAROON_BYTES};
pub use mint::{mint, LOCATION};
pub use verify::{verify_credential, VerifiedToken};

/// Request header carrying the credential.
pub const HEADER_AUTHORIZATION: &str = "authorization";

#[cfg(test)]
mod tests;
