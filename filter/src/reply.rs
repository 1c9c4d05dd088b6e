//! Local replies. Each is queued by Envoy and sent when the current callback returns; the
//! caller then returns `Action::Pause` (or nothing, from a gRPC callback) and marks the stream as
//! answered so its own `on_http_response_headers` lets the reply through.

use tollway_protocol::l402::{HEADER_WWW_AUTHENTICATE, INVOICE_LIMIT_BODY};
use tollway_protocol::lease::HEADER_LEASE;
use tollway_protocol::x402::{Challenge, CHALLENGE_HEADERS};

use crate::host;

const JSON: (&str, &str) = ("content-type", "application/json");
const NO_STORE: (&str, &str) = ("cache-control", "no-store");
/// Where a leased resource's lease is sold.
const HEADER_LEASE_URL: &str = "x-x402-lease-url";

/// The Lightning part of a 402, minted by the verifier for this request.
pub struct Lightning<'a> {
    /// The LSAT and L402 `WWW-Authenticate` values.
    pub www_authenticate: &'a [String; 2],
    /// The x402 `bip122` accepts entry (JSON object), if the verifier offers one.
    pub x402_offer: Option<&'a str>,
}

/// 402 with the route's x402 challenge in both dialects (v2 header, v1 body).
pub fn challenge(challenge: &Challenge, resource_url: &str, error: Option<&str>) {
    payment_required(challenge, resource_url, error, None);
}

/// 402 offering every rail: x402 (v2 header with the EVM offers plus the Lightning entry, v1
/// body with the EVM offers) and, when given, the two L402 `WWW-Authenticate` lines. The
/// `PAYMENT-REQUIRED` header is left out when it would offer nothing (a Lightning-only route
/// without an x402 Lightning entry).
pub fn payment_required(
    challenge: &Challenge,
    resource_url: &str,
    error: Option<&str>,
    lightning: Option<Lightning<'_>>,
) {
    let x402_offer = lightning.as_ref().and_then(|l| l.x402_offer);
    let rendered = challenge.render_with(resource_url, error, x402_offer);
    let mut headers = rendered.headers(challenge.has_offers() || x402_offer.is_some());
    if let Some(l) = &lightning {
        // Two values, LSAT first: old clients read only the first line.
        for value in l.www_authenticate {
            headers.push((HEADER_WWW_AUTHENTICATE, value.as_str()));
        }
    }
    host::send_response(402, headers, rendered.body.as_bytes());
}

/// A JSON error; `body` is a complete JSON document (a constant).
pub fn error(status: u32, body: &'static str) {
    json(status, body);
}

/// A JSON answer built for this request.
pub fn json(status: u32, body: &str) {
    host::send_response(status, vec![JSON, NO_STORE], body.as_bytes());
}

/// 402 on a leased resource: the lease path's challenge (resource = the lease URL, which is also
/// in `x-x402-lease-url`) with the reason in `error`.
pub fn lease_required(challenge: &Challenge, lease_url: &str, reason: &str) {
    let rendered = challenge.render(lease_url, Some(reason));
    let mut headers = rendered.headers(challenge.has_offers());
    headers.push((HEADER_LEASE_URL, lease_url));
    host::send_response(402, headers, rendered.body.as_bytes());
}

/// 200 with a newly sold (or renewed) lease: the grant JSON, the token in `x-x402-lease`, and
/// the x402 receipt when paid with x402.
pub fn lease_granted(token: &str, body: &str, receipt: Option<(&str, &str)>) {
    let mut headers = vec![
        JSON,
        NO_STORE,
        (HEADER_LEASE, token),
        (
            "access-control-expose-headers",
            "PAYMENT-RESPONSE, X-PAYMENT-RESPONSE, x-x402-lease",
        ),
    ];
    if let Some(receipt) = receipt {
        headers.push(receipt);
    }
    host::send_response(200, headers, body.as_bytes());
}

/// 409: another request for the same thing is being paid for; nothing was charged.
pub const RENEWAL_IN_PROGRESS: &str = r#"{"error":"lease_renewal_in_progress"}"#;

/// `status` with `Retry-After: 1`: ask again shortly.
pub fn retry_later(status: u32, body: &'static str) {
    host::send_response(
        status,
        vec![("retry-after", "1"), JSON, NO_STORE],
        body.as_bytes(),
    );
}

/// 429 on a Lightning-only route: the client has as many open invoices as the verifier allows.
pub fn too_many_invoices(retry_after: u64) {
    let retry_after = retry_after.to_string();
    host::send_response(
        429,
        vec![("retry-after", retry_after.as_str()), JSON, NO_STORE],
        INVOICE_LIMIT_BODY.as_bytes(),
    );
}

/// 503 until the first route table arrives from the verifier.
pub fn not_ready() {
    host::send_response(
        503,
        vec![("retry-after", "1"), JSON, NO_STORE],
        br#"{"error":"payment gateway starting: route table not loaded yet"}"#,
    );
}

pub const DUPLICATE_PAYMENT: &str =
    r#"{"error":"more than one payment header (PAYMENT-SIGNATURE / X-PAYMENT)"}"#;
pub const PAYMENT_TOO_LARGE: &str = r#"{"error":"payment header too large"}"#;
pub const BOTH_RAILS: &str =
    r#"{"error":"both an x402 payment header and an L402 credential; send one"}"#;
pub const CREDENTIAL_TOO_LARGE: &str = r#"{"error":"L402 Authorization header too large"}"#;
pub const ROUTE_DISABLED: &str = r#"{"error":"route_disabled"}"#;
/// Envoy would not hand the filter the request headers (never seen; fail closed).
pub const HEADERS_UNREADABLE: &str = r#"{"error":"request headers unreadable"}"#;
/// A rewritten route's upstream path, asked for directly.
pub const NOT_FOUND: &str = r#"{"error":"not_found"}"#;

/// 503: the verifier could not decide. Fail closed, never a free pass.
pub fn verifier_unavailable() {
    host::send_response(
        503,
        vec![("retry-after", "1"), JSON, NO_STORE],
        br#"{"error":"payment verifier unavailable"}"#,
    );
}

/// 503 replacing an upstream response whose settlement outcome is unknown on a route that
/// withholds: the pending receipt in `header`, no upstream body, try again later.
pub fn settlement_withheld(header: &str, payment_response: &str) {
    host::send_response(
        503,
        vec![
            ("retry-after", "5"),
            JSON,
            NO_STORE,
            (header, payment_response),
        ],
        br#"{"error":"settlement outcome unknown; the answer is withheld"}"#,
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
