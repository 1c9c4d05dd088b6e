//! One HTTP request (filter mode).
//!
//! ```text
//! request headers ─ no route / free ───────────────────────────────► Continue
//!                 ─ paid, no payment ──────────────────────────────► 402 challenge (*)
//!                 ─ paid, bad payment (local checks) ──────────────► 402 with reason (*)
//!                 ─ paid, plausible ─ strip header, Verify ─ Pause
//!                       Verify VALID ─ resume ─► upstream
//!                       Verify INVALID ─► 402 with reason (*); gRPC error / UNAVAILABLE ─► 503
//!                 ─ Lightning route, L402/LSAT Authorization ─ verified here (no call)
//!                       invalid ─► 402 with the reason code (*)
//!                       valid ─ strip credential ─ reusable ─► Continue
//!                                               ─ single_use ─ Claim ─ Pause
//!                             CLAIMED ─ resume; ALREADY_USED ─► 402 (*); error ─► 503
//! response headers (verified) ─ status < 400 ─ Settle ─ Pause
//!                       SETTLED ─ add PAYMENT-RESPONSE ─ resume
//!                       PENDING / UNAVAILABLE / no answer (timeout, verifier down) ─ outcome
//!                           unknown: add a `settlement_pending` PAYMENT-RESPONSE ─ resume (the
//!                           root sends the Settle again until the verifier hears it)
//!                       FAILED ─► 402 (upstream body withheld; nothing was charged)
//!                  ─ status >= 400 ─ Release (nothing charged) ─ Continue
//!
//! (*) x402-only route: the precomputed challenge, no call. Lightning route: Challenge ─ Pause,
//!     MINTED ─► 402 with x402 (EVM offers + the bip122 entry) and the LSAT and L402
//!     WWW-Authenticate lines; UNAVAILABLE / error ─► the x402-only 402 (503 if the route has no
//!     EVM offer).
//! ```
//!
//! Phase rules (Envoy refuses a header call outside its phase): request headers are only
//! read or changed inside `on_http_request_headers`; response headers only inside
//! `on_http_response_headers` or while paused there (the Settle answer). Every branch that
//! paused either resumes or replies.

mod forward;
mod lease;

use std::borrow::Cow;
use std::rc::Rc;
use std::time::Duration;

use log::warn;
use prost::Message;
use tollway_protocol::filter_config::{CompiledL402, LightningPrice, UnknownSettlement};
use tollway_protocol::filter_config::{UnmatchedAction, REASON_NO_ROUTE};
use tollway_protocol::headers::{
    refuse_request, CONTEXT_AMOUNT, CONTEXT_PAYER, CONTEXT_RAIL, CONTEXT_RESOURCE,
    METHOD_OVERRIDE_HEADERS,
};
use tollway_protocol::l402::{
    carries_l402, parse_authorization, verify_credential, without_l402, www_authenticate,
    L402Error, HEADER_AUTHORIZATION, REASON_TOKEN_ALREADY_USED,
};
use tollway_protocol::lease::HEADER_LEASE;
use tollway_protocol::routes::RouteMatch;
use tollway_protocol::rpc::{
    ChallengeOutcome, ChallengeRequest, ChallengeResponse, ClaimOutcome, ClaimRequest,
    ClaimResponse, ReleaseRequest, SettleOutcome, SettleRequest, SettleResponse, VerifyOutcome,
    VerifyRequest, VerifyResponse, METHOD_CHALLENGE, METHOD_CLAIM, METHOD_RELEASE, METHOD_SETTLE,
    METHOD_VERIFY, SERVICE,
};
use tollway_protocol::x402::{
    self, check_lightning_payment, check_payment, decode_payment, is_json_object, ErrorReason,
    PaymentKind, HEADER_PAYMENT_RESPONSE, HEADER_PAYMENT_SIGNATURE, HEADER_X_PAYMENT,
    HEADER_X_PAYMENT_RESPONSE, MAX_PAYMENT_BYTES,
};

use self::forward::{response_presets, upstream_path, Forward};
use self::lease::{Sale, Target};
use crate::abi::Action;
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
    /// Paused until the Challenge call (a fresh invoice and macaroon for a 402) answers.
    Challenging(u32),
    /// Paused until the Claim of a single-use L402 token answers.
    Claiming(u32),
    /// Paused until the Claim of a single-use lease answers.
    ClaimingLease(u32),
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
    /// Path (no query) and method, kept on Lightning routes only: a rejection's fresh 402 binds
    /// its macaroon to them.
    path: String,
    method: String,
    payment_id: String,
    x402_version: u32,
    /// The upstream's status, once asked to settle (sent again if the Settle gets no answer).
    upstream_status: u32,
}

/// A 402 in the making on a Lightning route (waiting for Challenge), or a single-use token
/// waiting for its Claim (whose refusal becomes such a 402).
struct Pending {
    route: usize,
    url: String,
    /// What a minted macaroon is bound to: the path without query, and the method.
    path: String,
    method: String,
    /// The 402's `error` (a rejection reason), `None` for a plain challenge.
    error: Option<Cow<'static, str>>,
}

/// An L402 credential presented on a route that sells Lightning.
struct L402Request<'a> {
    route: usize,
    price: LightningPrice,
    l402: &'a CompiledL402,
    path: &'a str,
    method: &'a str,
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
    pending: Option<Box<Pending>>,
    /// Set once the request is known to go upstream (when allowed).
    forward: Option<Box<Forward>>,
    /// On a lease path: the lease the payment buys.
    sale: Option<Box<Sale>>,
    /// The lease URL of a 402 that a single-use claim may still need.
    lease_url: Option<String>,
    /// The L402 claim key of a lease sale (seeds the lease id).
    claim_key: Option<String>,
    /// The payment hash of a reusable L402 token being held for this VM.
    held: Option<[u8; 32]>,
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
            pending: None,
            forward: None,
            sale: None,
            lease_url: None,
            claim_key: None,
            held: None,
        }
    }

    /// Applies the forwarding plan and lets the request go upstream (request-header phase).
    fn forward_now(&mut self, shared: &Shared) -> Action {
        self.apply_forward(shared);
        self.state = State::Done;
        Action::Continue
    }

    /// Same, from a gRPC answer while paused in the request headers.
    fn resume(&mut self, shared: &Shared) {
        self.apply_forward(shared);
        self.state = State::Done;
        host::resume_request();
    }

    fn apply_forward(&self, shared: &Shared) {
        if let Some(forward) = self.forward.as_deref() {
            forward.apply(!shared.envoy_strips_context);
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
        message: &impl Message,
        timeout: Duration,
    ) -> Option<u32> {
        match host::dispatch_grpc_detached(
            self.root_id,
            self.id,
            &shared.verifier_cluster,
            SERVICE,
            method,
            &message.encode_to_vec(),
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

    /// Answers 402 for `pending.route`. A route that sells Lightning first asks the verifier
    /// for a fresh invoice and macaroon (paused until it answers, see `challenge_answer`); other
    /// routes get their precomputed x402 challenge at once, with no call.
    fn payment_required(&mut self, shared: &Shared, mut pending: Pending) -> Action {
        let Some(compiled) = shared.config.routes.get(pending.route) else {
            // Unreachable (only paid routes get here); fail closed rather than pass.
            return self.unavailable(shared);
        };
        let Some(paid) = compiled.paid.as_ref() else {
            return self.unavailable(shared);
        };
        if shared.config.lightning(paid).is_none() {
            self.answered();
            reply::challenge(&paid.challenge, &pending.url, pending.error.as_deref());
            return Action::Pause;
        }
        let request = ChallengeRequest {
            route: compiled.name.clone(),
            path: std::mem::take(&mut pending.path),
            method: std::mem::take(&mut pending.method),
            purchase: self.renewal_key(),
            client: host::source_address(),
        };
        match self.dispatch(shared, METHOD_CHALLENGE, &request, shared.verify_timeout) {
            Some(token) => {
                self.state = State::Challenging(token);
                self.pending = Some(Box::new(pending));
                Action::Pause
            }
            None => self.lightning_unavailable(shared, &pending),
        }
    }

    /// The verifier could not mint the Lightning part: the 402 offers x402 alone, or, on a
    /// Lightning-only route, nothing can be offered (503).
    fn lightning_unavailable(&mut self, shared: &Shared, pending: &Pending) -> Action {
        inc(shared.metrics.lightning_challenge_unavailable);
        match shared
            .config
            .routes
            .get(pending.route)
            .and_then(|r| r.paid.as_ref())
        {
            Some(paid) if paid.challenge.has_offers() => {
                self.answered();
                reply::challenge(&paid.challenge, &pending.url, pending.error.as_deref());
                Action::Pause
            }
            _ => self.unavailable(shared),
        }
    }

    fn challenge_answer(&mut self, shared: &Shared, status: u32, size: usize) {
        let answer = if status == 0 {
            host::grpc_response_body(size)
                .and_then(|b| ChallengeResponse::decode(b.as_slice()).ok())
        } else {
            warn!("Challenge failed with gRPC status {status}");
            None
        };
        let Some(pending) = self.pending.take() else {
            self.unavailable(shared);
            return;
        };
        let Some(paid) = shared
            .config
            .routes
            .get(pending.route)
            .and_then(|r| r.paid.as_ref())
        else {
            self.unavailable(shared);
            return;
        };
        match answer.as_ref().map(ChallengeResponse::outcome) {
            Some(ChallengeOutcome::Purchased) => {
                self.bought_before(shared, pending.route);
                return;
            }
            Some(ChallengeOutcome::PurchaseInProgress) => {
                self.renewal_in_progress(shared);
                return;
            }
            Some(ChallengeOutcome::Limited) if !paid.challenge.has_offers() => {
                // Lightning only, and this client has as many open invoices as allowed.
                inc(shared.metrics.lightning_challenge_unavailable);
                let retry_after = answer.as_ref().map_or(1, |a| a.retry_after.max(1));
                self.answered();
                reply::too_many_invoices(retry_after);
                return;
            }
            _ => {}
        }
        let minted = answer
            .filter(|a| a.outcome() == ChallengeOutcome::Minted)
            .and_then(|a| match www_authenticate(&a.macaroon, &a.invoice) {
                Ok(lines) => Some((lines, a.x402_offer)),
                Err(_) => {
                    warn!("Challenge answer has an unusable macaroon or invoice");
                    None
                }
            });
        let Some((www_authenticate, x402_offer)) = minted else {
            self.lightning_unavailable(shared, &pending);
            return;
        };
        // Spliced verbatim into the x402 JSON, so it must be one JSON object.
        let x402_offer = match x402_offer.as_str() {
            "" => None,
            offer if is_json_object(offer) => Some(offer),
            _ => {
                warn!("Challenge answer has a malformed x402 offer; offering L402 only");
                None
            }
        };
        self.answered();
        reply::payment_required(
            &paid.challenge,
            &pending.url,
            pending.error.as_deref(),
            Some(reply::Lightning {
                www_authenticate: &www_authenticate,
                x402_offer,
            }),
        );
    }

    fn reject(&mut self, shared: &Shared, pending: Pending) -> Action {
        inc(shared.metrics.rejected);
        self.payment_required(shared, pending)
    }

    fn unavailable(&mut self, shared: &Shared) -> Action {
        inc(shared.metrics.verifier_unavailable);
        self.answered();
        reply::verifier_unavailable();
        Action::Pause
    }

    /// `status` with `{"error": reason}` (a constant reason).
    fn refused(&mut self, status: u32, reason: &str) -> Action {
        self.answered();
        reply::json(status, &format!(r#"{{"error":"{reason}"}}"#));
        Action::Pause
    }

    fn error(&mut self, status: u32, body: &'static str) -> Action {
        self.answered();
        reply::error(status, body);
        Action::Pause
    }

    fn request_headers(&mut self, shared: &Shared) -> Action {
        let Some(headers) = host::request_header_map() else {
            // Unreadable headers cannot be checked: answer rather than let the request through.
            return self.error(500, reply::HEADERS_UNREADABLE);
        };
        let (Some(path), Some(method)) = (headers.get(":path"), headers.get(":method")) else {
            return Action::Continue;
        };
        // Lossy only copies when a value is not UTF-8; literal route segments are ASCII, so
        // such a request matches exactly the routes a byte-wise matcher would give it.
        let path = String::from_utf8_lossy(path);
        let method = String::from_utf8_lossy(method);
        // A path an upstream may read differently from the table gets no route decision.
        if let Some(reason) = refuse_request(&path) {
            return self.refused(400, reason);
        }
        for name in METHOD_OVERRIDE_HEADERS {
            if headers.get(name).is_some() {
                host::remove_request_header(name);
            }
        }
        // Routes that name no host match any authority.
        let authority = match shared.config.uses_hosts() {
            true => headers.get(":authority").map(String::from_utf8_lossy),
            false => None,
        };
        let authority = authority.as_deref().unwrap_or("");

        let found = match shared.config.table.find(authority, &method, &path) {
            Some(found) => found,
            None => match shared.config.unmatched(authority, &method, &path) {
                UnmatchedAction::Pass => {
                    strip_lease_header(&headers);
                    return Action::Continue;
                }
                UnmatchedAction::Deny => return self.refused(404, REASON_NO_ROUTE),
                UnmatchedAction::Route(index) => RouteMatch {
                    index,
                    params: Vec::new(),
                },
            },
        };
        let route = found.index;
        let Some(compiled) = shared.config.routes.get(route) else {
            return self.unavailable(shared);
        };
        if compiled.disabled {
            return self.error(404, reply::ROUTE_DISABLED);
        }
        if compiled.internal {
            return self.error(404, reply::NOT_FOUND);
        }
        let Some(paid) = compiled.paid.as_ref() else {
            inc(shared.metrics.requests_free);
            strip_lease_header(&headers);
            if compiled.upstream_path.is_some()
                || compiled.headers.filters_requests()
                || !compiled.headers.response_headers().is_empty()
            {
                self.forward = Some(Box::new(Forward::new(
                    route,
                    compiled,
                    &headers,
                    upstream_path(compiled, &found.params, &path),
                    Vec::new(),
                )));
            }
            return self.forward_now(shared);
        };

        let target = Target {
            route,
            params: &found.params,
            path: &path,
            method: &method,
            headers: &headers,
        };
        if compiled.lease.is_some() && !compiled.sells_lease {
            return self.leased(shared, &target);
        }
        if compiled.sells_lease {
            if let Err(answered) = self.prepare_sale(shared, &target) {
                return answered;
            }
        } else {
            self.forward = Some(Box::new(Forward::new(
                route,
                compiled,
                &headers,
                upstream_path(compiled, &found.params, &path),
                vec![(CONTEXT_RESOURCE, compiled.name.clone())],
            )));
        }
        let lightning = shared.config.lightning(paid);
        // What a Lightning 402 binds its macaroon to; x402-only routes never need it.
        let (bound_path, bound_method) = match lightning {
            Some(_) => (path_without_query(&path), &*method),
            None => ("", ""),
        };
        let pending = |url: String, error: Option<Cow<'static, str>>| Pending {
            route,
            url,
            path: bound_path.to_owned(),
            method: bound_method.to_owned(),
            error,
        };

        // All values of both payment headers: a second one is refused, never ignored (the
        // single-header getter would only show the first). On a Lightning route, every
        // Authorization value too (an L402 client may send an LSAT and an L402 line).
        let mut payment: Option<(&'static str, &[u8])> = None;
        let mut authorization: Vec<&[u8]> = Vec::new();
        for (name, value) in headers.iter() {
            let header = match name {
                HEADER_PAYMENT_SIGNATURE => HEADER_PAYMENT_SIGNATURE,
                HEADER_X_PAYMENT => HEADER_X_PAYMENT,
                HEADER_AUTHORIZATION if lightning.is_some() => {
                    authorization.push(value);
                    continue;
                }
                _ => continue,
            };
            if payment.is_some() {
                inc(shared.metrics.rejected);
                return self.error(400, reply::DUPLICATE_PAYMENT);
            }
            payment = Some((header, value));
        }
        if let Some((price, l402)) = lightning {
            if authorization.iter().any(|v| carries_l402(v)) {
                if payment.is_some() {
                    inc(shared.metrics.rejected);
                    return self.error(400, reply::BOTH_RAILS);
                }
                let request = L402Request {
                    route,
                    price,
                    l402,
                    path: bound_path,
                    method: bound_method,
                };
                return self.l402(shared, &request, &authorization, &target);
            }
        }
        let url = target.url(shared, &path);
        let Some((header, value)) = payment else {
            inc(shared.metrics.challenges);
            return self.payment_required(shared, pending(url, None));
        };
        if value.len() > MAX_PAYMENT_HEADER_LEN {
            inc(shared.metrics.rejected);
            return self.error(431, reply::PAYMENT_TOO_LARGE);
        }
        let Ok(value) = std::str::from_utf8(value).map(str::to_owned) else {
            let reason = ErrorReason::InvalidPayload.as_str();
            return self.reject(shared, pending(url, Some(reason.into())));
        };
        // (payer, amount) for the trusted context; a Lightning payer is known after Verify.
        let checked = decode_payment(&value).and_then(|payload| {
            match PaymentKind::of(&payload) {
                // The verifier checks the invoice with the node; only the shape is checked here.
                PaymentKind::Lightning if lightning.is_some() => check_lightning_payment(&payload)
                    .map(|_| {
                        let msat = lightning.map_or(0, |(p, _)| p.amount_msat);
                        (None, format!("{msat} msat"))
                    }),
                _ => check_payment(&paid.offers, &payload, host::now_unix()).map(|c| {
                    let amount = paid.offers.get(c.offer_index).map_or(String::new(), |o| {
                        format!("{} {}/erc20:{}", o.amount.get(), o.network, o.asset)
                    });
                    (Some(c.authorization.from.to_string()), amount)
                }),
            }
        });
        let (payer, amount) = match checked {
            Ok(context) => context,
            Err(reason) => {
                return self.reject(shared, pending(url, Some(reason.as_str().into())));
            }
        };
        if let Some(forward) = self.forward.as_mut() {
            forward.context.push((CONTEXT_RAIL, "x402".to_owned()));
            forward.context.push((CONTEXT_AMOUNT, amount));
            if let Some(payer) = payer {
                forward.context.push((CONTEXT_PAYER, payer));
            }
        }

        // The credential never reaches the upstream.
        host::remove_request_header(header);

        let request = VerifyRequest {
            route: compiled.name.clone(),
            payment: value,
            header: header.to_owned(),
            resource_url: url,
            deadline_ms: host::deadline_ms(shared.verify_timeout),
            purchase: self.renewal_key(),
        };
        let Some(token) = self.dispatch(shared, METHOD_VERIFY, &request, shared.verify_timeout)
        else {
            return self.unavailable(shared);
        };
        self.state = State::Verifying(token);
        self.payment = Some(Box::new(Payment {
            route,
            resource_url: request.resource_url,
            path: bound_path.to_owned(),
            method: bound_method.to_owned(),
            payment_id: String::new(),
            x402_version: 0,
            upstream_status: 0,
        }));
        Action::Pause
    }

    /// An L402 credential on a Lightning route, verified here with no sidecar call (unless the
    /// route is single-use). Any failure answers 402 with a fresh challenge (Aperture's
    /// behaviour: clients only re-pay on 402), the reason code in the body's `error`.
    fn l402(
        &mut self,
        shared: &Shared,
        request: &L402Request<'_>,
        authorization: &[&[u8]],
        target: &Target<'_>,
    ) -> Action {
        let now = host::now_unix();
        if now == 0 {
            // Expiry cannot be checked without a clock, and nothing downstream re-checks it.
            return self.unavailable(shared);
        }
        let cached =
            shared
                .l402_cache
                .borrow()
                .get(authorization, request.path, request.method, now);
        let verified = match cached {
            Some(token) => Ok(token),
            None => parse_authorization(authorization.iter().copied())
                .and_then(|c| c.ok_or(L402Error::BadHeader("no credential")))
                .and_then(|credential| {
                    verify_credential(
                        &request.l402.keys,
                        &credential,
                        &request.l402.service,
                        now,
                        request.path,
                        request.method,
                    )
                })
                .inspect(|token| {
                    shared.l402_cache.borrow_mut().insert(
                        authorization,
                        request.path,
                        request.method,
                        *token,
                    )
                }),
        };
        let pending = |error: Option<Cow<'static, str>>| Pending {
            route: request.route,
            url: target.url(shared, target.path),
            path: request.path.to_owned(),
            method: request.method.to_owned(),
            error,
        };
        let token = match verified {
            Ok(token) => token,
            Err(L402Error::HeaderTooLarge { .. }) => {
                inc(shared.metrics.rejected);
                inc(shared.metrics.l402_rejected);
                return self.error(431, reply::CREDENTIAL_TOO_LARGE);
            }
            Err(e) => {
                inc(shared.metrics.l402_rejected);
                return self.reject(shared, pending(Some(e.reason().into())));
            }
        };

        // The credential never reaches the upstream; other Authorization values (the API's own
        // auth) do.
        host::remove_request_header(HEADER_AUTHORIZATION);
        for value in authorization.iter().filter_map(|v| without_l402(v)) {
            host::add_request_header(HEADER_AUTHORIZATION, &value);
        }

        if let Some(forward) = self.forward.as_mut() {
            forward.context.push((CONTEXT_RAIL, "l402".to_owned()));
            forward
                .context
                .push((CONTEXT_PAYER, token.payment_hash.to_hex()));
            forward.context.push((
                CONTEXT_AMOUNT,
                format!("{} msat", request.price.amount_msat),
            ));
        }
        // A reusable token holds its payment for the L402 rail, asked once per VM (so the same
        // invoice cannot buy an x402 `bip122` request too); later uses make no call. A single-use
        // token, or one buying a lease, is claimed every time.
        let reusable = !request.price.single_use && self.sale.is_none();
        if reusable
            && shared
                .l402_held
                .borrow()
                .get(&token.payment_hash.0)
                .is_some()
        {
            inc(shared.metrics.l402_accepted);
            return self.forward_now(shared);
        }
        let Some(compiled) = shared.config.routes.get(request.route) else {
            return self.unavailable(shared);
        };
        let claim = ClaimRequest {
            key: format!("l402:{}", token.payment_hash.to_hex()),
            route: compiled.name.clone(),
            expires_at: token.valid_until,
            reusable,
            deadline_ms: host::deadline_ms(shared.verify_timeout),
            purchase: self.renewal_key(),
        };
        if reusable {
            self.held = Some(token.payment_hash.0);
        }
        if self.sale.is_some() {
            self.claim_key = Some(claim.key.clone());
        }
        let Some(call) = self.dispatch(shared, METHOD_CLAIM, &claim, shared.verify_timeout) else {
            if self.held.take().is_some() {
                // As when the Claim fails: see `claim_answer`.
                inc(shared.metrics.l402_accepted);
                return self.forward_now(shared);
            }
            return self.unavailable(shared);
        };
        self.state = State::Claiming(call);
        self.pending = Some(Box::new(pending(None)));
        Action::Pause
    }

    fn claim_answer(&mut self, shared: &Shared, status: u32, size: usize) {
        let answer = if status == 0 {
            host::grpc_response_body(size).and_then(|b| ClaimResponse::decode(b.as_slice()).ok())
        } else {
            warn!("Claim failed with gRPC status {status}");
            None
        };
        let Some(mut pending) = self.pending.take() else {
            self.unavailable(shared);
            return;
        };
        match answer.map(|a| a.outcome()) {
            Some(ClaimOutcome::Claimed) => {
                inc(shared.metrics.l402_accepted);
                if let Some(hash) = self.held.take() {
                    shared.l402_held.borrow_mut().insert(hash, ());
                }
                if self.sale.is_some() {
                    let claim_key = self.claim_key.take().unwrap_or_default();
                    self.grant(shared, pending.route, claim_key.as_bytes(), None);
                    return;
                }
                self.resume(shared);
            }
            Some(ClaimOutcome::Purchased) => {
                self.bought_before(shared, pending.route);
            }
            Some(ClaimOutcome::PurchaseInProgress) => {
                self.renewal_in_progress(shared);
            }
            Some(ClaimOutcome::AlreadyUsed) => {
                self.held = None;
                inc(shared.metrics.l402_rejected);
                pending.error = Some(REASON_TOKEN_ALREADY_USED.into());
                self.reject(shared, *pending);
            }
            // A reusable token is paid and verified here: it keeps working while the verifier
            // is down (nothing else can spend its invoice meanwhile: that needs the verifier);
            // not held, so the next use asks again.
            _ if self.held.take().is_some() => {
                inc(shared.metrics.l402_accepted);
                self.resume(shared);
            }
            _ => {
                self.unavailable(shared);
            }
        }
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
                inc(shared.metrics.verified);
                if self.sale.is_some() {
                    // A lease is issued only once its payment has settled.
                    self.settle(shared, 200);
                    return;
                }
                if let Some(forward) = self.forward.as_mut() {
                    let known = forward.context.iter().any(|(n, _)| *n == CONTEXT_PAYER);
                    if !known && !a.payer.is_empty() {
                        forward.context.push((CONTEXT_PAYER, a.payer));
                    }
                }
                self.apply_forward(shared);
                self.state = State::Verified;
                host::resume_request();
            }
            Some(a) if a.outcome() == VerifyOutcome::Purchased => {
                let route = payment.route;
                self.bought_before(shared, route);
            }
            Some(a) if a.outcome() == VerifyOutcome::PurchaseInProgress => {
                self.renewal_in_progress(shared);
            }
            Some(a) if a.outcome() == VerifyOutcome::Invalid => {
                let reason: Cow<'static, str> = if a.reason.is_empty() {
                    ErrorReason::UnexpectedVerifyError.as_str().into()
                } else {
                    a.reason.into()
                };
                let pending = Pending {
                    route: payment.route,
                    url: std::mem::take(&mut payment.resource_url),
                    path: std::mem::take(&mut payment.path),
                    method: std::mem::take(&mut payment.method),
                    error: Some(reason),
                };
                self.reject(shared, pending);
            }
            _ => {
                self.unavailable(shared);
            }
        }
    }

    fn response_headers(&mut self, shared: &Shared) -> Action {
        self.response_presets(shared);
        if self.payment.is_none() {
            self.state = State::Done;
            return Action::Continue;
        }
        let status = host::response_header(":status")
            .and_then(|s| {
                std::str::from_utf8(&s)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
            })
            .unwrap_or(0);
        if (100..400).contains(&status) {
            self.settle(shared, status);
            return Action::Pause;
        }
        // The upstream failed (or gave no status): nothing is charged.
        self.release(shared, status);
        inc(shared.metrics.upstream_failed_not_charged);
        Action::Continue
    }

    /// Asks the verifier to settle (paused until it answers); a failed dispatch answers 402.
    fn settle(&mut self, shared: &Shared, upstream_status: u32) {
        let Some(payment) = self.payment.as_mut() else {
            self.unavailable(shared);
            return;
        };
        payment.upstream_status = upstream_status;
        let request = SettleRequest {
            payment_id: payment.payment_id.clone(),
            upstream_status,
        };
        if let Some(token) = self.dispatch(shared, METHOD_SETTLE, &request, shared.settle_timeout) {
            self.state = State::Settling(token);
            return;
        }
        inc(shared.metrics.verifier_unavailable);
        self.settle_unknown(shared);
    }

    fn response_presets(&self, shared: &Shared) {
        if let Some(route) = self
            .forward
            .as_ref()
            .and_then(|f| shared.config.routes.get(f.route))
        {
            response_presets(route);
        }
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
            let _ = self.dispatch(shared, METHOD_RELEASE, &request, shared.settle_timeout);
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
            Some(a) if a.outcome() == SettleOutcome::Failed => {
                self.settle_failed(shared, &a.payment_response, &a.reason);
            }
            // UNAVAILABLE (an older verifier) or no answer: the outcome is not known.
            Some(a) if a.outcome() == SettleOutcome::Unavailable => self.settle_unknown(shared),
            None => {
                inc(shared.metrics.verifier_unavailable);
                self.settle_unknown(shared);
            }
            // SETTLED, or PENDING (the verifier's reconciler decides it).
            Some(a) => self.deliver(shared, &a.payment_response),
        }
    }

    /// Lets the upstream's response through with its receipt (on a lease path: the lease it
    /// bought).
    fn deliver(&mut self, shared: &Shared, payment_response: &str) {
        inc(shared.metrics.settled);
        if self.sale.is_some() {
            let route = self.payment.as_ref().map_or(usize::MAX, |p| p.route);
            let paid_by = self
                .payment
                .as_ref()
                .map(|p| p.payment_id.clone())
                .unwrap_or_default();
            let receipt =
                (!payment_response.is_empty()).then(|| (self.receipt_header(), payment_response));
            self.grant(shared, route, paid_by.as_bytes(), receipt);
            return;
        }
        if !payment_response.is_empty() {
            host::set_response_header(self.receipt_header(), payment_response);
        }
        if host::response_header("cache-control").is_none() {
            host::add_response_header("cache-control", "private");
        }
        host::add_response_header("access-control-expose-headers", EXPOSE_RECEIPT);
        host::resume_response();
    }

    /// The Settle got no answer (timeout, verifier down or restarting): a timeout is not a
    /// failure. The client keeps the upstream's answer with a `settlement_pending` receipt, and
    /// the root sends the Settle again until the verifier hears it.
    fn settle_unknown(&mut self, shared: &Shared) {
        inc(shared.metrics.settle_unknown);
        let receipt = pending_receipt();
        let withhold = self
            .payment
            .as_ref()
            .and_then(|p| shared.config.routes.get(p.route))
            .and_then(|r| r.paid.as_ref())
            .is_some_and(|paid| paid.on_unknown_settlement == UnknownSettlement::Withhold);
        if withhold {
            // Nothing delivered: tell the verifier not to charge (or, if the Settle it may
            // already be running goes through, to record that the answer was withheld).
            if let Some(p) = self.payment.as_ref() {
                let request = ReleaseRequest {
                    payment_id: p.payment_id.clone(),
                    upstream_status: 0,
                };
                let _ = self.dispatch(shared, METHOD_RELEASE, &request, shared.settle_timeout);
            }
            let header = self.receipt_header();
            self.answered();
            reply::settlement_withheld(header, &receipt);
            return;
        }
        if let Some(p) = self.payment.as_ref() {
            crate::retry::settle_later(&p.payment_id, p.upstream_status);
        }
        self.deliver(shared, &receipt);
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

/// A lease token means nothing off a leased route: it never reaches the upstream.
fn strip_lease_header(headers: &crate::abi::HeaderMap) {
    if headers.get(HEADER_LEASE).is_some() {
        host::remove_request_header(HEADER_LEASE);
    }
}

/// The decoded answer of a Claim call.
fn claim_outcome(status: u32, size: usize) -> Option<ClaimOutcome> {
    if status != 0 {
        warn!("Claim failed with gRPC status {status}");
        return None;
    }
    host::grpc_response_body(size)
        .and_then(|b| ClaimResponse::decode(b.as_slice()).ok())
        .map(|a| a.outcome())
}

/// The path a token is bound to: `:path` without its query string.
fn path_without_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// base64 JSON of a settlement whose outcome is not known yet (x402 `settlement_pending`).
fn pending_receipt() -> String {
    failed_receipt(x402::SETTLEMENT_PENDING)
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

/// The callbacks `exports.rs` delivers to a stream.
impl Stream {
    pub fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
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
            State::Challenging(token) if token == token_id => {
                self.challenge_answer(&shared, status_code, response_size)
            }
            State::Claiming(token) if token == token_id => {
                self.claim_answer(&shared, status_code, response_size)
            }
            State::ClaimingLease(token) if token == token_id => {
                let claimed = claim_outcome(status_code, response_size).and_then(|o| match o {
                    ClaimOutcome::Claimed => Some(true),
                    ClaimOutcome::AlreadyUsed => Some(false),
                    _ => None,
                });
                self.lease_claim_answer(&shared, claimed)
            }
            // A Release answer, or a call this stream stopped waiting for.
            _ => {}
        }
    }

    /// The stream is gone.
    pub fn on_delete(&mut self) {
        // Verified and forwarded, but the stream ended before any response header (client gone,
        // reset): nothing can be delivered, so nothing is charged.
        if self.state == State::Verified {
            if let Some(shared) = self.shared.clone() {
                self.release(&shared, 0);
            }
        }
    }

    /// A request on a context we never saw created: it cannot be checked, so it is answered.
    pub fn refuse_unknown() -> Action {
        reply::not_ready();
        Action::Pause
    }

    pub fn on_request_headers(&mut self) -> Action {
        match self.shared.clone() {
            Some(shared) => self.request_headers(&shared),
            None => {
                self.answered();
                reply::not_ready();
                Action::Pause
            }
        }
    }

    pub fn on_response_headers(&mut self) -> Action {
        if self.replied {
            return Action::Continue;
        }
        match self.state {
            State::Verified => match self.shared.clone() {
                Some(shared) => self.response_headers(&shared),
                None => Action::Continue,
            },
            // Envoy answered (timeout, reset) while we waited for a call: forget it.
            State::Verifying(_)
            | State::Challenging(_)
            | State::Claiming(_)
            | State::ClaimingLease(_) => {
                self.state = State::Done;
                Action::Continue
            }
            _ => {
                if let Some(shared) = self.shared.clone() {
                    self.response_presets(&shared);
                }
                Action::Continue
            }
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
