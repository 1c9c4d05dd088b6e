//! Tollway proxy-wasm HTTP filter: thin host glue over `tollway-protocol`.
//!
//! One request on a paid route: match the route, read the payment header, check it locally
//! (`protocol::x402::check`), ask the verifier sidecar (`tollway.v1.Payments/Verify`), forward,
//! then settle (`Settle`) before the upstream's response is released, or release the payment
//! (`Release`) when the upstream failed. Unpaid requests get the precomputed 402 challenge.
//!
//! Rules kept throughout (see `docs/internals.md` and the Envoy fact sheet):
//! - never panic (a panic aborts the worker's VM): host calls go through `host.rs`, which turns
//!   every host error into a value, and header values are read as bytes;
//! - export only the callbacks we use (`abi.rs` says why we bind the ABI ourselves);
//! - every paused stream is resumed or answered on every branch;
//! - request headers are only touched in the request-header phase, response headers only while
//!   paused in the response-header phase.

mod abi;
mod expiry;
mod exports;
mod host;
mod http;
mod metrics;
mod reply;
mod retry;
mod root;
