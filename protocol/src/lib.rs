//! Tollway protocol: x402 wire formats, route table and challenges.
//!
//! Pure Rust with no I/O and no clock (callers pass `now` as unix seconds), so it builds for
//! `wasm32-wasip1` (the Envoy filter) and natively (the verifier). Nothing here panics on input:
//! a panic in the filter kills the Envoy worker's VM.
//!
//! - [`amount`]: USD prices and atomic token amounts, exact.
//! - [`network`]: CAIP-2 chain ids and the x402 v1 names.
//! - [`evm`]: addresses, EIP-712 / EIP-3009 digests, signer recovery.
//! - [`b64`]: the strict base64 x402 headers use.
//! - [`l402`]: L402 macaroons, credentials, keys and challenges (the Lightning rail).
//! - [`lightning`]: Bitcoin networks of the Lightning rail (BOLT11 prefixes, `bip122` ids).
//! - [`x402`]: wire types, error reasons, offers, payment checks, 402 challenges.
//! - [`routes`]: the route table and matcher.
//! - [`filter_config`]: the filter's configuration and its compiled form.
//! - [`rpc`]: filter → verifier gRPC messages.
//! - [`resource_url`]: the absolute URL a challenge names.

#![forbid(unsafe_code)]

pub mod amount;
pub mod b64;
pub mod cache;
pub mod evm;
pub mod filter_config;
pub mod headers;
pub mod hmac;
pub mod json;
pub mod keys;
pub mod l402;
pub mod lease;
pub mod lightning;
pub mod network;
pub mod path_template;
pub mod resource;
pub mod routes;
pub mod rpc;
pub mod x402;

pub use resource::resource_url;
