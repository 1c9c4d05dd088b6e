//! Tollway proxy-wasm HTTP filter: thin host glue over `tollway-protocol`.
//!
//! One request on a paid route: match the route, read the payment header, check it locally
//! (`protocol::x402::check`), ask the verifier sidecar (`tollway.v1.Payments/Verify`), forward,
//! then settle (`Settle`) before the upstream's response is released, or release the payment
//! (`Release`) when the upstream failed. Unpaid requests get the precomputed 402 challenge.
//!
//! Rules kept throughout (see `docs/internals.md` and the Envoy fact sheet):
//! - never panic: every host call that the SDK would `unwrap` on a host or client value is made
//!   through `hostcalls` with the error handled, and header values are read as bytes (the SDK's
//!   string getters panic on non-UTF-8 values);
//! - every paused stream is resumed or answered on every branch;
//! - request headers are only touched in the request-header phase, response headers only while
//!   paused in the response-header phase.

mod host;
mod http;
mod metrics;
mod reply;
mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Warn);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}
