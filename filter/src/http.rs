//! One HTTP request (filter mode).
//!
//! ```text
//! request headers ─ no route / free ───────────────────────────────► Continue
//!                 ─ paid, no payment ──────────────────────────────► 402 challenge
//!                 ─ paid, bad payment (local checks) ──────────────► 402 with reason
//!                 ─ paid, plausible ─ strip header, Verify ─ Pause
//!                       Verify VALID ─ resume ─► upstream
//!                       Verify INVALID ─► 402 with reason; gRPC error / UNAVAILABLE ─► 503
//! response headers (verified) ─ status < 400 ─ Settle ─ Pause
//!                       SETTLED / PENDING ─ add PAYMENT-RESPONSE ─ resume
//!                       FAILED / UNAVAILABLE / error ─► 402 (upstream body withheld)
//!                  ─ status >= 400 ─ Release (nothing charged) ─ Continue
//! ```
//!
//! Phase rules (a header call outside its phase makes the SDK panic): request headers are only
//! read or changed inside `on_http_request_headers`; response headers only inside
//! `on_http_response_headers` or while paused there (the Settle answer). Every branch that
//! paused either resumes or replies.

use std::borrow::Cow;
use std::rc::Rc;
use std::time::Duration;

use log::warn;
use prost::Message;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollway_protocol::resource_url;
use tollway_protocol::rpc::{
    ReleaseRequest, SettleOutcome, SettleRequest, SettleResponse, VerifyOutcome, VerifyRequest,
    VerifyResponse, METHOD_RELEASE, METHOD_SETTLE, METHOD_VERIFY, SERVICE,
};
use tollway_protocol::x402::{
    self, check_payment, decode_payment, ErrorReason, HEADER_PAYMENT_RESPONSE,
    HEADER_PAYMENT_SIGNATURE, HEADER_X_PAYMENT, HEADER_X_PAYMENT_RESPONSE, MAX_PAYMENT_BYTES,
};

use crate::host;
use crate::metrics::inc;
use crate::reply;
use crate::root::Shared;

/// Longest payment header value accepted: the base64 length of `MAX_PAYMENT_BYTES`.
const MAX_PAYMENT_HEADER_LEN: usize = MAX_PAYMENT_BYTES.div_ceil(3) * 4;

/// Browser clients may read the receipt headers of a paid response.
const EXPOSE_RECEIPT: &str = "PAYMENT-RESPONSE, X-PAYMENT-RESPONSE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing in flight (not a paid request, or not decided yet).
    Idle,
    /// Paused in the request headers until the Verify call with this token answers.
    Verifying(u32),
    /// Forwarded upstream with a verified payment, not settled yet.
    Verified,
    /// Paused in the response headers until the Settle call with this token answers.
    Settling(u32),
    /// Answered, settled or released: nothing more to do.
    Done,
}

/// What a paid request carries from the request phase to the response phase.
struct Payment {
    route: usize,
    resource_url: String,
    payment_id: String,
    x402_version: u32,
}

pub struct Stream {
    id: u32,
    root_id: u32,
    shared: Option<Rc<Shared>>,
    state: State,
    /// We sent a local reply: Envoy runs our own `on_http_response_headers` for it, which must
    /// let it through untouched.
    replied: bool,
    payment: Option<Box<Payment>>,
}

impl Stream {
    pub fn new(id: u32, root_id: u32, shared: Option<Rc<Shared>>) -> Stream {
        Stream {
            id,
            root_id,
            shared,
            state: State::Idle,
            replied: false,
            payment: None,
        }
    }

    /// Marks the stream answered; the caller sends the reply right after.
    fn answered(&mut self) {
        self.replied = true;
        self.state = State::Done;
    }

    fn dispatch(
        &self,
        shared: &Shared,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Option<u32> {
        match host::dispatch_grpc_detached(
            self.root_id,
            self.id,
            &shared.verifier_cluster,
            SERVICE,
            method,
            message,
            timeout,
        ) {
            Ok(token) => Some(token),
            Err(status) => {
                warn!(
                    "cannot call {SERVICE}/{method} on cluster {:?}: {status:?}",
                    shared.verifier_cluster
                );
                None
            }
        }
    }

    fn challenge(
        &mut self,
        shared: &Shared,
        route: usize,
        resource_url: &str,
        error: Option<&str>,
    ) -> Action {
        let Some(paid) = shared
            .config
            .routes
            .get(route)
            .and_then(|r| r.paid.as_ref())
        else {
            // Unreachable (only paid routes get here); fail closed rather than pass.
            return self.unavailable(shared);
        };
        self.answered();
        reply::challenge(&paid.challenge, resource_url, error);
        Action::Pause
    }

    fn reject(
        &mut self,
        shared: &Shared,
        route: usize,
        resource_url: &str,
        reason: &str,
    ) -> Action {
        inc(shared.metrics.rejected);
        self.challenge(shared, route, resource_url, Some(reason))
    }

    fn unavailable(&mut self, shared: &Shared) -> Action {
        inc(shared.metrics.verifier_unavailable);
        self.answered();
        reply::verifier_unavailable();
        Action::Pause
    }

    fn error(&mut self, status: u32, body: &'static str) -> Action {
        self.answered();
        reply::error(status, body);
        Action::Pause
    }

    fn request_headers(&mut self, shared: &Shared) -> Action {
        let (Some(path), Some(method)) = (
            host::request_header(":path"),
            host::request_header(":method"),
        ) else {
            return Action::Continue;
        };
        let authority = host::request_header(":authority").unwrap_or_default();
        // Lossy only copies when a value is not UTF-8; literal route segments are ASCII, so
        // such a request matches exactly the routes a byte-wise matcher would give it.
        let path = String::from_utf8_lossy(&path);
        let method = String::from_utf8_lossy(&method);
        let authority = String::from_utf8_lossy(&authority);

        let Some(found) = shared.config.table.find(&authority, &method, &path) else {
            return Action::Continue;
        };
        let route = found.index;
        let Some(compiled) = shared.config.routes.get(route) else {
            return Action::Continue;
        };
        let Some(paid) = compiled.paid.as_ref() else {
            inc(shared.metrics.requests_free);
            return Action::Continue;
        };

        let scheme = host::request_header(":scheme").unwrap_or_default();
        let url = resource_url(
            shared.public_url.as_deref(),
            &String::from_utf8_lossy(&scheme),
            &authority,
            &path,
        );

        // All values of both payment headers: a second one is refused, never ignored (the SDK's
        // single-header getter would only show the first).
        let mut payment: Option<(&'static str, Vec<u8>)> = None;
        for (name, value) in host::request_headers() {
            let header = match name.as_str() {
                HEADER_PAYMENT_SIGNATURE => HEADER_PAYMENT_SIGNATURE,
                HEADER_X_PAYMENT => HEADER_X_PAYMENT,
                _ => continue,
            };
            if payment.is_some() {
                inc(shared.metrics.rejected);
                return self.error(400, reply::DUPLICATE_PAYMENT);
            }
            payment = Some((header, value));
        }
        let Some((header, value)) = payment else {
            inc(shared.metrics.challenges);
            return self.challenge(shared, route, &url, None);
        };
        if value.len() > MAX_PAYMENT_HEADER_LEN {
            inc(shared.metrics.rejected);
            return self.error(431, reply::PAYMENT_TOO_LARGE);
        }
        let Ok(value) = String::from_utf8(value) else {
            return self.reject(shared, route, &url, ErrorReason::InvalidPayload.as_str());
        };
        let checked = decode_payment(&value)
            .and_then(|payload| check_payment(&paid.offers, &payload, host::now_unix()));
        if let Err(reason) = checked {
            return self.reject(shared, route, &url, reason.as_str());
        }

        // The credential never reaches the upstream.
        host::remove_request_header(header);

        let request = VerifyRequest {
            route: compiled.name.clone(),
            payment: value,
            header: header.to_owned(),
            resource_url: url,
        };
        let Some(token) = self.dispatch(
            shared,
            METHOD_VERIFY,
            &request.encode_to_vec(),
            shared.verify_timeout,
        ) else {
            return self.unavailable(shared);
        };
        self.state = State::Verifying(token);
        self.payment = Some(Box::new(Payment {
            route,
            resource_url: request.resource_url,
            payment_id: String::new(),
            x402_version: 0,
        }));
        Action::Pause
    }

    fn verify_answer(&mut self, shared: &Shared, status: u32, size: usize) {
        let answer = if status == 0 {
            host::grpc_response_body(size).and_then(|b| VerifyResponse::decode(b.as_slice()).ok())
        } else {
            warn!("Verify failed with gRPC status {status}");
            None
        };
        let Some(payment) = self.payment.as_mut() else {
            self.unavailable(shared);
            return;
        };
        match answer {
            Some(a) if a.outcome() == VerifyOutcome::Valid => {
                payment.payment_id = a.payment_id;
                payment.x402_version = a.x402_version;
                self.state = State::Verified;
                inc(shared.metrics.verified);
                host::resume_request();
            }
            Some(a) if a.outcome() == VerifyOutcome::Invalid => {
                let (route, url) = (payment.route, std::mem::take(&mut payment.resource_url));
                let reason = if a.reason.is_empty() {
                    ErrorReason::UnexpectedVerifyError.as_str()
                } else {
                    &a.reason
                };
                self.reject(shared, route, &url, reason);
            }
            _ => {
                self.unavailable(shared);
            }
        }
    }

    fn response_headers(&mut self, shared: &Shared) -> Action {
        let Some(payment) = self.payment.as_ref() else {
            self.state = State::Done;
            return Action::Continue;
        };
        let status = host::response_header(":status")
            .and_then(|s| {
                std::str::from_utf8(&s)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
            })
            .unwrap_or(0);
        if (100..400).contains(&status) {
            let request = SettleRequest {
                payment_id: payment.payment_id.clone(),
                upstream_status: status,
            };
            if let Some(token) = self.dispatch(
                shared,
                METHOD_SETTLE,
                &request.encode_to_vec(),
                shared.settle_timeout,
            ) {
                self.state = State::Settling(token);
                return Action::Pause;
            }
            inc(shared.metrics.verifier_unavailable);
            self.settle_failed(shared, "", "");
            return Action::Pause;
        }
        // The upstream failed (or gave no status): nothing is charged.
        self.release(shared, status);
        inc(shared.metrics.upstream_failed_not_charged);
        Action::Continue
    }

    fn release(&mut self, shared: &Shared, upstream_status: u32) {
        self.state = State::Done;
        if let Some(payment) = self.payment.as_ref() {
            let request = ReleaseRequest {
                payment_id: payment.payment_id.clone(),
                upstream_status,
            };
            // Owned by the root context, so it completes even after this stream is gone; the
            // answer (empty) is ignored.
            let _ = self.dispatch(
                shared,
                METHOD_RELEASE,
                &request.encode_to_vec(),
                shared.settle_timeout,
            );
        }
    }

    fn receipt_header(&self) -> &'static str {
        match self.payment.as_ref() {
            Some(p) if p.x402_version == 1 => HEADER_X_PAYMENT_RESPONSE,
            _ => HEADER_PAYMENT_RESPONSE,
        }
    }

    fn settle_answer(&mut self, shared: &Shared, status: u32, size: usize) {
        let answer = if status == 0 {
            host::grpc_response_body(size).and_then(|b| SettleResponse::decode(b.as_slice()).ok())
        } else {
            warn!("Settle failed with gRPC status {status}");
            None
        };
        self.state = State::Done;
        match answer {
            Some(a) if matches!(a.outcome(), SettleOutcome::Settled | SettleOutcome::Pending) => {
                if !a.payment_response.is_empty() {
                    host::set_response_header(self.receipt_header(), &a.payment_response);
                }
                if host::response_header("cache-control").is_none() {
                    host::add_response_header("cache-control", "private");
                }
                host::add_response_header("access-control-expose-headers", EXPOSE_RECEIPT);
                inc(shared.metrics.settled);
                host::resume_response();
            }
            Some(a) if a.outcome() == SettleOutcome::Failed => {
                self.settle_failed(shared, &a.payment_response, &a.reason);
            }
            other => {
                inc(shared.metrics.verifier_unavailable);
                let (receipt, reason) = other
                    .map(|a| (a.payment_response, a.reason))
                    .unwrap_or_default();
                self.settle_failed(shared, &receipt, &reason);
            }
        }
    }

    /// Replaces the upstream response with a 402 carrying a `success:false` receipt.
    fn settle_failed(&mut self, shared: &Shared, payment_response: &str, reason: &str) {
        inc(shared.metrics.settle_failed);
        let receipt: Cow<str> = if payment_response.is_empty() {
            let reason = if reason.is_empty() {
                ErrorReason::UnexpectedSettleError.as_str()
            } else {
                reason
            };
            Cow::Owned(failed_receipt(reason))
        } else {
            Cow::Borrowed(payment_response)
        };
        let header = self.receipt_header();
        self.answered();
        reply::settle_failed(header, &receipt);
    }
}

/// base64 JSON `SettleResponse{success:false}` for when the verifier gave none.
fn failed_receipt(reason: &str) -> String {
    x402::SettleResponse {
        success: false,
        error_reason: Some(reason.to_owned()),
        error_message: None,
        transaction: String::new(),
        network: String::new(),
        payer: None,
        amount: None,
    }
    .to_header_value()
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        match self.state {
            State::Verifying(token) if token == token_id => {
                self.verify_answer(&shared, status_code, response_size)
            }
            State::Settling(token) if token == token_id => {
                self.settle_answer(&shared, status_code, response_size)
            }
            // A Release answer, or a call this stream stopped waiting for.
            _ => {}
        }
    }

    fn on_done(&mut self) -> bool {
        // Verified and forwarded, but the stream ended before any response header (client gone,
        // reset): nothing can be delivered, so nothing is charged.
        if self.state == State::Verified {
            if let Some(shared) = self.shared.clone() {
                self.release(&shared, 0);
            }
        }
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.shared.clone() {
            Some(shared) => self.request_headers(&shared),
            None => self.error(503, reply::NOT_CONFIGURED),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Continue;
        }
        match self.state {
            State::Verified => match self.shared.clone() {
                Some(shared) => self.response_headers(&shared),
                None => Action::Continue,
            },
            // Envoy answered (timeout, reset) while we waited for Verify: forget the call.
            State::Verifying(_) => {
                self.state = State::Done;
                Action::Continue
            }
            _ => Action::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollway_protocol::b64;

    #[test]
    fn header_limit_admits_every_payload_the_protocol_accepts() {
        let largest = b64::encode(&vec![b'x'; MAX_PAYMENT_BYTES]);
        assert_eq!(largest.len(), MAX_PAYMENT_HEADER_LEN);
        assert!(b64::decode_strict(&largest, MAX_PAYMENT_BYTES).is_ok());
    }

    #[test]
    fn failed_receipt_is_a_success_false_settle_response() {
        let json = b64::decode_strict(&failed_receipt("unexpected_settle_error"), 4096).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["success"], serde_json::json!(false));
        assert_eq!(
            v["errorReason"],
            serde_json::json!("unexpected_settle_error")
        );
    }
}
