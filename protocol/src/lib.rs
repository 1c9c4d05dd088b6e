//! Tollway protocol: x402 wire formats, route table and challenges.
//!
//! Pure Rust with no I/O and no clock (callers pass `now`), so it builds for `wasm32-wasip1`
//! (the Envoy filter) and natively (the verifier).

pub mod rpc;
