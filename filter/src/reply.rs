//! Local replies. Each is queued by Envoy and sent when the current callback returns; the
//! caller then returns `Action::Pause` (or nothing, from a gRPC callback) and marks the stream as
//! answered so its own `on_http_response_headers` lets the reply through.

use tollway_protocol::x402::{Challenge, CHALLENGE_HEADERS, HEADER_PAYMENT_REQUIRED};

use crate::host;

const JSON: (&str, &str) = ("content-type", "application/json");
const NO_STORE: (&str, &str) = ("cache-control", "no-store");

/// 402 with the route's challenge in both dialects (v2 header, v1 body).
pub fn challenge(challenge: &Challenge, resource_url: &str, error: Option<&str>) {
    let rendered = challenge.render(resource_url, error);
    let mut headers = Vec::with_capacity(CHALLENGE_HEADERS.len() + 1);
    headers.extend_from_slice(CHALLENGE_HEADERS);
    headers.push((
        HEADER_PAYMENT_REQUIRED,
        rendered.payment_required_header.as_str(),
    ));
    host::send_response(402, headers, rendered.body.as_bytes());
}

/// A JSON error; `body` is a complete JSON document (a constant).
pub fn error(status: u32, body: &'static str) {
    host::send_response(status, vec![JSON, NO_STORE], body.as_bytes());
}

pub const DUPLICATE_PAYMENT: &str =
    r#"{"error":"more than one payment header (PAYMENT-SIGNATURE / X-PAYMENT)"}"#;
pub const PAYMENT_TOO_LARGE: &str = r#"{"error":"payment header too large"}"#;
pub const NOT_CONFIGURED: &str = r#"{"error":"payment gateway not configured"}"#;

/// 503: the verifier could not decide. Fail closed, never a free pass.
pub fn verifier_unavailable() {
    host::send_response(
        503,
        vec![("retry-after", "1"), JSON, NO_STORE],
        br#"{"error":"payment verifier unavailable"}"#,
    );
}

/// 402 replacing an upstream response whose payment could not be settled: the receipt
/// (`success:false`) in `header`, no upstream body.
pub fn settle_failed(header: &str, payment_response: &str) {
    let mut headers = Vec::with_capacity(CHALLENGE_HEADERS.len() + 1);
    headers.extend_from_slice(CHALLENGE_HEADERS);
    headers.push((header, payment_response));
    host::send_response(402, headers, b"{}");
}
