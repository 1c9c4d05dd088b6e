//! Envoy `envoy.service.auth.v3.Authorization/Check` for ext_authz-only mode (no wasm).
//!
//! The verifier does the filter's whole job here: match the route, answer the 402 challenge,
//! verify a payment and — because ext_authz never sees the upstream's response — settle it
//! *before* the request is forwarded (documented trade-off: a failing upstream still charges).
//! Allowed requests get `PAYMENT-RESPONSE` (v2) / `X-PAYMENT-RESPONSE` (v1) on the response and
//! lose their payment headers on the way upstream. Facilitator down: 503 with `retry-after`.
//!
//! Lightning routes behave as in the filter: an `Authorization: L402|LSAT` credential is
//! verified here (single-use tokens are claimed once) and stripped before the upstream; an
//! unpaid request gets a 402 offering every rail (x402 with the `bip122` entry, and the LSAT
//! and L402 `WWW-Authenticate` lines); when the node is down the 402 offers x402 alone (503 on
//! a Lightning-only route).
//!
//! Leased routes (`http-stream`, `websocket`): a request on the resource needs a lease token
//! (`x-x402-lease`, or the `t` query parameter), checked here like the filter does (HMAC,
//! route, method, path, expiry; single-use leases claimed once as `lease:<id>`) and removed
//! before the upstream; no valid lease is a 402 with the lease route's challenge and a JSON
//! `error` (`lease_required`, `lease_invalid`, `lease_expired`, `lease_already_used`). Leases
//! are *sold* by the filter only: the lease path answers 501 `lease_sales_need_filter_mode`
//! here. A disabled route answers 404 `route_disabled`, and a rewritten route's upstream path
//! asked for directly 404 `not_found`.
//!
//! Every allowed request gets what the filter gives it (see [`Forward`]): the trusted payment
//! context (`x-tollway-rail`, `-payer`, `-amount`, `-resource`, replacing any client copy), the
//! route's request header allow-list (`headers_to_remove`), its `upstream_path` rewrite (a new
//! `:path` in `headers`, which Envoy sets as is when no `decoder_header_mutation_rules` are
//! configured) and its response presets (`response_headers_to_add`, `ADD_IF_ABSENT`).

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tollway_protocol::filter_config::{
    CompiledConfig, CompiledLease, CompiledPaid, CompiledRoute, LightningPrice, UnknownSettlement,
    UnmatchedAction, REASON_NO_ROUTE,
};
use tollway_protocol::headers::{
    refuse_request, CONTEXT_AMOUNT, CONTEXT_HEADERS, CONTEXT_PAYER, CONTEXT_RAIL, CONTEXT_RESOURCE,
    METHOD_OVERRIDE_HEADERS,
};
use tollway_protocol::l402::{
    carries_l402, parse_authorization, verify_credential, without_l402, www_authenticate,
    L402Error, HEADER_AUTHORIZATION, HEADER_WWW_AUTHENTICATE, INVOICE_LIMIT_BODY,
    REASON_TOKEN_ALREADY_USED,
};
use tollway_protocol::lease::{
    strip_query_token, Lease, HEADER_LEASE, REASON_ALREADY_USED, REASON_REQUIRED,
};
use tollway_protocol::resource_url;
use tollway_protocol::routes::{canonical_path, RouteMatch};
use tollway_protocol::x402::{
    is_json_object, CHALLENGE_HEADERS, HEADER_PAYMENT_REQUIRED, HEADER_PAYMENT_RESPONSE,
    HEADER_PAYMENT_SIGNATURE, HEADER_X_PAYMENT, HEADER_X_PAYMENT_RESPONSE,
};

use crate::metrics::Metrics;
use crate::payments::{
    ClaimResult, NotMinted, Payments, SettleOutcome, Verified, CLAIM_PREFIX_LEASE,
};
use crate::rails::l402::l402_claim_key;
use crate::stores::ledger::{EventKind, LedgerEvent};

/// gRPC codes carried in `CheckResponse.status`.
const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAVAILABLE: i32 = 14;

/// The one reason that maps to 412 instead of 402 (x402 spec §1.3).
const PERMIT2_ALLOWANCE_REQUIRED: &str = "permit2_allowance_required";

pub struct ExtAuthz {
    payments: Arc<Payments>,
    metrics: Arc<Metrics>,
}

/// A header we own: replaces any copy.
fn header(key: &str, value: &str) -> HeaderValueOption {
    header_with(key, value, HeaderAppendAction::OverwriteIfExistsOrAdd)
}

fn header_with(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    }
}

/// Allowed, with nothing changed (see [`allowed`] for what an allowed route gets).
fn ok(response: OkHttpResponse) -> CheckResponse {
    CheckResponse {
        status: Some(RpcStatus {
            code: GRPC_OK,
            ..RpcStatus::default()
        }),
        http_response: Some(HttpResponse::OkResponse(response)),
        ..CheckResponse::default()
    }
}

fn denied(
    grpc_code: i32,
    http_status: i32,
    headers: Vec<HeaderValueOption>,
    body: String,
) -> CheckResponse {
    CheckResponse {
        status: Some(RpcStatus {
            code: grpc_code,
            ..RpcStatus::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http_status }),
            headers,
            body,
        })),
        ..CheckResponse::default()
    }
}

fn unavailable() -> CheckResponse {
    denied(
        GRPC_UNAVAILABLE,
        503,
        vec![
            header("retry-after", "1"),
            header("content-type", "application/json"),
            header("cache-control", "no-store"),
        ],
        r#"{"error":"payment verification is temporarily unavailable"}"#.to_owned(),
    )
}

/// 429 on a Lightning-only route whose client has as many open invoices as allowed.
fn too_many_invoices(retry_after: u64) -> CheckResponse {
    denied(
        GRPC_PERMISSION_DENIED,
        429,
        vec![
            header("retry-after", &retry_after.to_string()),
            header("content-type", "application/json"),
            header("cache-control", "no-store"),
        ],
        INVOICE_LIMIT_BODY.to_owned(),
    )
}

/// Envoy's view of the client (`source.address`) as `ip:port`; empty when not given.
fn source_address(req: &CheckRequest) -> String {
    req.attributes
        .as_ref()
        .and_then(|a| a.source.as_ref())
        .and_then(|p| p.address.as_ref())
        .and_then(|a| match &a.address {
            Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                Some(s)
            }
            _ => None,
        })
        .map(|s| match &s.port_specifier {
            Some(
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                    p,
                ),
            ) => {
                format!("{}:{p}", s.address)
            }
            _ => s.address.clone(),
        })
        .unwrap_or_default()
}

fn bad_request(status: i32, body: &str) -> CheckResponse {
    denied(
        GRPC_PERMISSION_DENIED,
        status,
        vec![
            header("content-type", "application/json"),
            header("cache-control", "no-store"),
        ],
        body.to_owned(),
    )
}

const BOTH_RAILS: &str =
    r#"{"error":"both an x402 payment header and an L402 credential; send one"}"#;
const CREDENTIAL_TOO_LARGE: &str = r#"{"error":"L402 Authorization header too large"}"#;
const ROUTE_DISABLED: &str = r#"{"error":"route_disabled"}"#;
/// A rewritten route's upstream path, asked for directly (as the filter answers it).
const NOT_FOUND: &str = r#"{"error":"not_found"}"#;
const LEASE_SALES_NEED_FILTER: &str = r#"{"error":"lease_sales_need_filter_mode","message":"leases are sold by the Tollway wasm filter; ext_authz-only mode checks leases but cannot issue them"}"#;

/// The request as the route table and the challenge need it.
struct Request<'a> {
    route: &'a str,
    paid: &'a CompiledPaid,
    url: String,
    /// Path without the query (what a macaroon is bound to).
    path: &'a str,
    method: &'a str,
    /// The route's Lightning price when it sells Lightning and the rail is up.
    lightning: Option<LightningPrice>,
    /// The client's address as Envoy sees it (`ip:port`), for the invoice limits.
    source: String,
}

fn receipt_header(version: u8) -> &'static str {
    if version == 1 {
        HEADER_X_PAYMENT_RESPONSE
    } else {
        HEADER_PAYMENT_RESPONSE
    }
}

/// What an allowed request takes upstream and back, like the filter's `Forward`: the trusted
/// payment context, the `upstream_path` rewrite (or the path without the `t` lease parameter),
/// the route's request header allow-list, and its response presets.
struct Forward<'a> {
    http: &'a HttpRequest,
    route: &'a CompiledRoute,
    /// The `[name]` captures of the route's path, for `upstream_path`.
    params: &'a [(String, String)],
    /// Trusted context to set. Empty on a free route: nothing is set (client copies were
    /// removed by the bootstrap's early header mutation).
    context: Vec<(&'static str, String)>,
    /// A leased resource: the `t` query parameter (a lease token) never goes upstream.
    strip_lease_query: bool,
}

/// Headers no upstream gets from a client: method overrides always, a lease token off a
/// leased route (as the filter removes them).
fn strip_client_headers(http: &HttpRequest, leased: bool, ok: &mut OkHttpResponse) {
    let lease = (!leased).then_some(HEADER_LEASE);
    for name in METHOD_OVERRIDE_HEADERS.into_iter().chain(lease) {
        if http.headers.contains_key(name) && !ok.headers_to_remove.iter().any(|h| h == name) {
            ok.headers_to_remove.push(name.to_owned());
        }
    }
}

impl Forward<'_> {
    fn apply(&self, ok: &mut OkHttpResponse) {
        strip_client_headers(self.http, self.route.lease.is_some(), ok);
        if !self.context.is_empty() {
            // Ours replace any client copy; the ones we do not set go.
            for name in CONTEXT_HEADERS {
                match self.context.iter().find(|(n, _)| *n == name) {
                    Some((_, value)) => ok.headers.push(header(name, value)),
                    None => ok.headers_to_remove.push(name.to_owned()),
                }
            }
        }
        // A new `:path` (Envoy sets it as is: no header mutation rules are configured), with
        // the request's query minus the lease token, its other parameters in order and as sent.
        let stripped = if self.strip_lease_query {
            strip_query_token(&self.http.path).map(|(p, _)| p)
        } else {
            None
        };
        let base = stripped.as_deref().unwrap_or(&self.http.path);
        let path = match &self.route.upstream_path {
            Some(template) => {
                let mut rewritten = template.render(self.params);
                if let Some((_, query)) = base.split_once('?') {
                    rewritten.push('?');
                    rewritten.push_str(query);
                }
                Some(rewritten)
            }
            None => stripped.clone(),
        };
        if let Some(path) = path {
            ok.headers.push(header(":path", &path));
        }
        if self.route.headers.filters_requests() {
            // Envoy removes after it sets: the context we set must not be in this list.
            let mut dropped: Vec<String> = self
                .http
                .headers
                .keys()
                .map(|k| k.to_ascii_lowercase())
                .filter(|k| !self.route.headers.allows(k))
                .filter(|k| !self.context.iter().any(|(n, _)| n == k))
                .filter(|k| !ok.headers_to_remove.contains(k))
                .collect();
            dropped.sort();
            dropped.dedup();
            ok.headers_to_remove.extend(dropped);
        }
        // Before any other response header of ours: the upstream's own values win, then the
        // presets, then ours (as in the filter).
        let presets = self
            .route
            .headers
            .response_headers()
            .iter()
            .map(|(k, v)| header_with(k, v, HeaderAppendAction::AddIfAbsent));
        ok.response_headers_to_add.splice(0..0, presets);
    }
}

/// An OK answer: the request loses the `strip` headers (credentials) and gets `set` (the API's
/// own `Authorization` left over by an L402 credential), then `forward` is applied;
/// `response_headers` go back to the client after the route's presets.
fn allowed(
    forward: &Forward<'_>,
    set: Vec<HeaderValueOption>,
    strip: &[&str],
    response_headers: Vec<HeaderValueOption>,
) -> CheckResponse {
    let mut response = OkHttpResponse {
        headers: set,
        headers_to_remove: strip.iter().map(|h| (*h).to_owned()).collect(),
        response_headers_to_add: response_headers,
        ..OkHttpResponse::default()
    };
    forward.apply(&mut response);
    ok(response)
}

/// `cache-control: private` unless the upstream (or a preset) set one: paid content must not
/// land in a shared cache.
fn private_cache() -> HeaderValueOption {
    header_with("cache-control", "private", HeaderAppendAction::AddIfAbsent)
}

impl ExtAuthz {
    pub fn new(payments: Arc<Payments>, metrics: Arc<Metrics>) -> Self {
        Self { payments, metrics }
    }

    /// 402 (or `status`) offering every rail the route has: x402 (EVM offers, plus the
    /// `bip122` entry when the node minted an invoice) and the L402 `WWW-Authenticate` lines.
    /// Node down: x402 alone, or 503 when the route sells only Lightning.
    async fn challenge(&self, r: &Request<'_>, error: Option<&str>, status: i32) -> CheckResponse {
        let minted = match r.lightning {
            Some(_) => {
                self.payments
                    .challenge(r.route, r.path, r.method, &r.source)
                    .await
            }
            None => Err(NotMinted::Unavailable),
        };
        let lines = minted
            .as_ref()
            .ok()
            .and_then(|m| www_authenticate(&m.macaroon, &m.invoice.bolt11).ok());
        if lines.is_none() && !r.paid.challenge.has_offers() {
            if let Err(NotMinted::Limited { retry_after }) = minted {
                self.metrics.check("invoice_limited");
                return too_many_invoices(retry_after);
            }
            self.metrics.check("unavailable");
            return unavailable();
        }
        let minted = minted.ok();
        let x402_offer = lines
            .as_ref()
            .and(minted.as_ref())
            .map(|m| m.x402_offer.as_str())
            .filter(|o| is_json_object(o));
        let rendered = r.paid.challenge.render_with(&r.url, error, x402_offer);
        let mut headers: Vec<HeaderValueOption> = CHALLENGE_HEADERS
            .iter()
            .map(|(k, v)| header(k, v))
            .collect();
        if r.paid.challenge.has_offers() || x402_offer.is_some() {
            headers.push(header(
                HEADER_PAYMENT_REQUIRED,
                &rendered.payment_required_header,
            ));
        }
        for line in lines.iter().flatten() {
            // Two values, LSAT first: old clients read only the first.
            headers.push(header_with(
                HEADER_WWW_AUTHENTICATE,
                line,
                HeaderAppendAction::AppendIfExistsOrAdd,
            ));
        }
        denied(GRPC_PERMISSION_DENIED, status, headers, rendered.body)
    }

    /// An L402/LSAT credential on a Lightning route.
    async fn l402(
        &self,
        r: &Request<'_>,
        price: LightningPrice,
        auth: &str,
        mut forward: Forward<'_>,
    ) -> CheckResponse {
        let Some(rail) = self.payments.lightning() else {
            self.metrics.check("unavailable");
            return unavailable();
        };
        let now = self.payments.now();
        let verified = parse_authorization([auth.as_bytes()])
            .and_then(|c| c.ok_or(L402Error::BadHeader("no credential")))
            .and_then(|credential| {
                verify_credential(
                    rail.keys(),
                    &credential,
                    rail.service(),
                    now,
                    r.path,
                    r.method,
                )
            });
        let token = match verified {
            Ok(t) => t,
            Err(L402Error::HeaderTooLarge { .. }) => {
                self.metrics.check("invalid");
                return bad_request(431, CREDENTIAL_TOO_LARGE);
            }
            Err(e) => {
                self.metrics.check("invalid");
                tracing::debug!(route = %r.route, reason = e.reason(), "L402 credential refused");
                return self.challenge(r, Some(e.reason()), 402).await;
            }
        };
        // One payment, one purchase: a single-use token spends it; a reusable one holds it for
        // the L402 rail (so its invoice buys nothing over x402 `bip122` as well).
        let key = l402_claim_key(&token.payment_hash.0);
        let reusable = !price.single_use;
        match self
            .payments
            .claim(&key, r.route, token.valid_until, reusable)
            .await
        {
            ClaimResult::Claimed => {}
            ClaimResult::AlreadyUsed => {
                self.metrics.check("invalid");
                return self
                    .challenge(r, Some(REASON_TOKEN_ALREADY_USED), 402)
                    .await;
            }
            ClaimResult::Unavailable => {
                self.metrics.check("unavailable");
                return unavailable();
            }
        }
        if reusable {
            self.payments.record(LedgerEvent {
                network: Some(rail.network().caip2().to_owned()),
                amount: Some(price.amount_msat.to_string()),
                nonce: Some(token.payment_hash.to_hex()),
                ..LedgerEvent::new(EventKind::L402Accepted, r.route)
            });
        }
        self.metrics.check("paid");
        forward.context.extend([
            (CONTEXT_RAIL, "l402".to_owned()),
            (CONTEXT_PAYER, token.payment_hash.to_hex()),
            (CONTEXT_AMOUNT, format!("{} msat", price.amount_msat)),
        ]);
        // The credential never reaches the upstream; the API's own Authorization does.
        let (set, strip) = match without_l402(auth.as_bytes()) {
            Some(rest) => (
                vec![header(
                    HEADER_AUTHORIZATION,
                    &String::from_utf8_lossy(&rest),
                )],
                &[][..],
            ),
            None => (Vec::new(), &[HEADER_AUTHORIZATION][..]),
        };
        allowed(&forward, set, strip, vec![private_cache()])
    }

    /// A 402 refusing a lease: the lease route's x402 challenge (resource: the lease URL) with
    /// `reason` as the JSON `error`; a plain JSON 402 when the route has no x402 offer.
    async fn lease_refused(&self, r: &Request<'_>, reason: &str) -> CheckResponse {
        self.metrics.check("invalid");
        if r.paid.challenge.has_offers() {
            return self.challenge(r, Some(reason), 402).await;
        }
        let headers = CHALLENGE_HEADERS
            .iter()
            .map(|(k, v)| header(k, v))
            .collect();
        let body = serde_json::json!({ "error": reason }).to_string();
        denied(GRPC_PERMISSION_DENIED, 402, headers, body)
    }

    /// A request on a leased resource: allowed with a valid lease, else a 402.
    async fn leased(
        &self,
        http: &HttpRequest,
        compiled: &CompiledConfig,
        route: &CompiledRoute,
        lease: &CompiledLease,
        params: &[(String, String)],
    ) -> CheckResponse {
        let Some(paid) = &route.paid else {
            // Compile refuses an unpaid leased route; never a free pass.
            self.metrics.check("unavailable");
            return unavailable();
        };
        let sale_path = lease.sale.render(params);
        let refusal = Request {
            route: &route.name,
            paid,
            url: resource_url(
                self.payments.public_url(),
                &http.scheme,
                &http.host,
                &sale_path,
            ),
            path: &sale_path,
            method: &lease.method,
            // Leases cannot be bought in this mode: no invoice is minted for the 402.
            lightning: None,
            source: String::new(),
        };
        let header_token = http
            .headers
            .get(HEADER_LEASE)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty());
        let query_token = strip_query_token(&http.path).map(|(_, t)| t);
        let Some(token) = header_token.or(query_token.filter(|t| !t.is_empty())) else {
            return self.lease_refused(&refusal, REASON_REQUIRED).await;
        };
        let Some(keys) = compiled.lease_keys.as_ref() else {
            self.metrics.check("unavailable");
            return unavailable();
        };
        let now = self.payments.now();
        let checked = Lease::open(keys, token, now).and_then(|l| {
            l.check(&route.name, &http.method, &canonical_path(&http.path), now)
                .map(|()| l)
        });
        let granted = match checked {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(route = %route.name, reason = e.reason(), "lease refused");
                return self.lease_refused(&refusal, e.reason()).await;
            }
        };
        let id = granted.id_hex();
        if granted.single_use {
            let key = format!("{CLAIM_PREFIX_LEASE}{id}");
            match self
                .payments
                .claim(&key, &route.name, granted.expires_at, false)
                .await
            {
                ClaimResult::Claimed => {}
                ClaimResult::AlreadyUsed => {
                    return self.lease_refused(&refusal, REASON_ALREADY_USED).await
                }
                ClaimResult::Unavailable => {
                    self.metrics.check("unavailable");
                    return unavailable();
                }
            }
        }
        self.metrics.check("lease");
        let forward = Forward {
            http,
            route,
            params,
            context: vec![
                (CONTEXT_RAIL, "lease".to_owned()),
                (CONTEXT_PAYER, id),
                (CONTEXT_RESOURCE, route.name.clone()),
            ],
            // The credential never reaches the upstream, in either place (a `t` next to a
            // header token goes too).
            strip_lease_query: true,
        };
        allowed(&forward, Vec::new(), &[HEADER_LEASE], Vec::new())
    }

    pub async fn check(&self, req: &CheckRequest) -> CheckResponse {
        let Some(http) = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
        else {
            // Not an HTTP check: nothing we can price. Refuse rather than let it through.
            self.metrics.check("malformed");
            return denied(GRPC_PERMISSION_DENIED, 400, Vec::new(), String::new());
        };
        // As in the filter: no route decision on a path an upstream may read differently.
        if let Some(reason) = refuse_request(&http.path) {
            self.metrics.check("path_refused");
            return bad_request(400, &format!(r#"{{"error":"{reason}"}}"#));
        }
        let compiled = self.payments.compiled();
        let m = match compiled.table.find(&http.host, &http.method, &http.path) {
            Some(m) => m,
            None => match compiled.unmatched(&http.host, &http.method, &http.path) {
                UnmatchedAction::Pass => {
                    self.metrics.check("unmatched");
                    let mut pass = OkHttpResponse::default();
                    strip_client_headers(http, false, &mut pass);
                    return ok(pass);
                }
                UnmatchedAction::Deny => {
                    self.metrics.check("no_route");
                    return bad_request(404, &format!(r#"{{"error":"{REASON_NO_ROUTE}"}}"#));
                }
                UnmatchedAction::Route(index) => RouteMatch {
                    index,
                    params: Vec::new(),
                },
            },
        };
        let Some(route) = compiled.routes.get(m.index) else {
            self.metrics.check("unavailable");
            return unavailable();
        };
        if route.disabled {
            // Kept in the table so no broader (free) route serves it.
            self.metrics.check("disabled");
            return bad_request(404, ROUTE_DISABLED);
        }
        if route.internal {
            // Reached only rewritten: asked for directly, it would be a free pass.
            self.metrics.check("not_found");
            return bad_request(404, NOT_FOUND);
        }
        if let Some(lease) = &route.lease {
            if route.sells_lease {
                self.metrics.check("lease_sale_refused");
                return bad_request(501, LEASE_SALES_NEED_FILTER);
            }
            return self.leased(http, &compiled, route, lease, &m.params).await;
        }
        let Some(paid) = &route.paid else {
            self.metrics.check("free");
            let forward = Forward {
                http,
                route,
                params: &m.params,
                context: Vec::new(),
                strip_lease_query: false,
            };
            return allowed(&forward, Vec::new(), &[], Vec::new());
        };
        let mut forward = Forward {
            http,
            route,
            params: &m.params,
            context: vec![(CONTEXT_RESOURCE, route.name.clone())],
            strip_lease_query: false,
        };
        let url = resource_url(
            self.payments.public_url(),
            &http.scheme,
            &http.host,
            &http.path,
        );
        let request = Request {
            route: &route.name,
            paid,
            url,
            path: http.path.split(['?', '#']).next().unwrap_or(""),
            method: &http.method,
            lightning: paid
                .lightning
                .and_then(|_| self.payments.lightning_price(&route.name)),
            source: source_address(req),
        };

        // Envoy lower-cases header names in the check request.
        let payment = [HEADER_PAYMENT_SIGNATURE, HEADER_X_PAYMENT]
            .iter()
            .find_map(|name| http.headers.get(*name).map(|v| (*name, v.as_str())))
            .filter(|(_, v)| !v.trim().is_empty());
        if let Some(price) = request.lightning {
            if let Some(auth) = http
                .headers
                .get(HEADER_AUTHORIZATION)
                .filter(|v| carries_l402(v.as_bytes()))
            {
                if payment.is_some() {
                    self.metrics.check("invalid");
                    return bad_request(400, BOTH_RAILS);
                }
                return self.l402(&request, price, auth, forward).await;
            }
        }
        let Some((header_name, value)) = payment else {
            self.metrics.check("challenge");
            return self.challenge(&request, None, 402).await;
        };
        let url = request.url.clone();

        match self
            .payments
            .verify(&route.name, header_name, value, &url)
            .await
        {
            Verified::Invalid { reason, .. } => {
                self.metrics.check("invalid");
                let status = if reason == PERMIT2_ALLOWANCE_REQUIRED {
                    412
                } else {
                    402
                };
                self.challenge(&request, Some(&reason), status).await
            }
            Verified::Unavailable { .. } => {
                self.metrics.check("unavailable");
                unavailable()
            }
            Verified::Valid {
                payment_id,
                payer,
                amount,
                ..
            } => {
                // ext_authz cannot wait for the upstream: settle now.
                let s = self.payments.settle(&payment_id, 0).await;
                let name = receipt_header(s.x402_version);
                let withhold = request.paid.on_unknown_settlement == UnknownSettlement::Withhold;
                match s.outcome {
                    SettleOutcome::Pending if withhold => {
                        // Not forwarded: if it settles after all, the ledger says why.
                        self.payments.release(&payment_id, 0).await;
                        self.metrics.check("withheld");
                        denied(
                            GRPC_UNAVAILABLE,
                            503,
                            vec![
                                header("retry-after", "5"),
                                header(name, &s.payment_response),
                                header("content-type", "application/json"),
                                header("cache-control", "no-store"),
                            ],
                            r#"{"error":"settlement outcome unknown; the answer is withheld"}"#
                                .to_owned(),
                        )
                    }
                    SettleOutcome::Settled | SettleOutcome::Pending => {
                        self.metrics.check("paid");
                        forward.context.extend([
                            (CONTEXT_RAIL, "x402".to_owned()),
                            (CONTEXT_PAYER, payer),
                            (CONTEXT_AMOUNT, amount),
                        ]);
                        allowed(
                            &forward,
                            Vec::new(),
                            &[HEADER_PAYMENT_SIGNATURE, HEADER_X_PAYMENT],
                            vec![
                                header(name, &s.payment_response),
                                private_cache(),
                                // The upstream's own CORS list is kept; ours is appended.
                                header_with(
                                    "access-control-expose-headers",
                                    "PAYMENT-RESPONSE, X-PAYMENT-RESPONSE",
                                    HeaderAppendAction::AppendIfExistsOrAdd,
                                ),
                            ],
                        )
                    }
                    SettleOutcome::Failed => {
                        self.metrics.check("settle_failed");
                        let mut headers = vec![header(name, &s.payment_response)];
                        headers.extend(CHALLENGE_HEADERS.iter().map(|(k, v)| header(k, v)));
                        denied(GRPC_PERMISSION_DENIED, 402, headers, "{}".to_owned())
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            ExtAuthz::check(self, request.get_ref()).await,
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::unix_now;
    use crate::rails::facilitator::fake::{dead_url, FakeFacilitator, Reply};
    use crate::testkit::{harness, offer, Harness, Payer};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use serde_json::{json, Value};
    use std::collections::HashMap;
    use tollway_protocol::b64;

    pub(crate) fn check_request(
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: method.into(),
                        path: path.into(),
                        host: "api.test:10000".into(),
                        scheme: "http".into(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect::<HashMap<_, _>>(),
                        ..HttpRequest::default()
                    }),
                    ..Request::default()
                }),
                ..AttributeContext::default()
            }),
        }
    }

    fn authz(h: &Harness) -> ExtAuthz {
        ExtAuthz::new(h.payments.clone(), h.metrics.clone())
    }

    impl ExtAuthz {
        /// `check` of a request built by [`check_request`].
        async fn ask(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> CheckResponse {
            self.check(&check_request(method, path, headers)).await
        }
    }

    fn denied_of(r: &CheckResponse) -> &DeniedHttpResponse {
        match &r.http_response {
            Some(HttpResponse::DeniedResponse(d)) => d,
            other => panic!("expected denied, got {other:?}"),
        }
    }

    fn ok_of(r: &CheckResponse) -> &OkHttpResponse {
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(0));
        match &r.http_response {
            Some(HttpResponse::OkResponse(o)) => o,
            other => panic!("expected ok, got {other:?}"),
        }
    }

    fn header_of<'a>(hs: &'a [HeaderValueOption], name: &str) -> Option<&'a str> {
        hs.iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.as_str())
    }

    /// The four trusted context headers, each set once, overwriting any client copy.
    fn assert_context(
        hs: &[HeaderValueOption],
        rail: &str,
        payer: &str,
        amount: &str,
        route: &str,
    ) {
        for (name, value) in [
            ("x-tollway-rail", rail),
            ("x-tollway-payer", payer),
            ("x-tollway-amount", amount),
            ("x-tollway-resource", route),
        ] {
            let set: Vec<&HeaderValueOption> = hs
                .iter()
                .filter(|h| h.header.as_ref().is_some_and(|h| h.key == name))
                .collect();
            assert_eq!(set.len(), 1, "{name}");
            assert_eq!(header_of(hs, name), Some(value), "{name}");
            assert_eq!(
                set[0].append_action,
                HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                "{name}"
            );
        }
    }

    fn b64_json(s: &str) -> Value {
        serde_json::from_slice(&b64::decode_strict(s, 1 << 16).expect("b64")).expect("json")
    }

    #[tokio::test]
    async fn free_routes_pass_and_unmatched_requests_follow_the_rules() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let a = authz(&h);
        let r = a.ask("GET", "/free?x=1", &[]).await;
        assert!(ok_of(&r).headers_to_remove.is_empty());
        // A lease token or a method override never reaches the upstream.
        let r = a
            .ask(
                "GET",
                "/free",
                &[("x-x402-lease", "t"), ("x-http-method-override", "GET")],
            )
            .await;
        let mut removed = ok_of(&r).headers_to_remove.clone();
        removed.sort();
        assert_eq!(removed, ["x-http-method-override", "x-x402-lease"]);
        // No `unmatched:`: whatever no route prices is refused, including the other methods of a
        // GET-only paid path.
        for (method, path) in [("GET", "/somewhere/else"), ("POST", "/api/quote")] {
            let r = a.ask(method, path, &[]).await;
            let (status, body) = error_of(&r);
            assert_eq!(
                (status, body["error"].as_str()),
                (404, Some("no_route")),
                "{method} {path}"
            );
        }
        // Paths an upstream may read differently, and `_method`, get no route decision.
        for (path, reason) in [
            ("/api/quote%0a", "path_control_character"),
            ("/free;x=1", "path_parameter"),
            ("/api%2Fquote", "path_encoded_slash"),
            ("/free?_method=GET", "method_override_refused"),
        ] {
            let r = a.ask("POST", path, &[]).await;
            let (status, body) = error_of(&r);
            assert_eq!(
                (status, body["error"].as_str()),
                (400, Some(reason)),
                "{path}"
            );
        }
        // Case variants are the route (case-insensitive by default).
        let r = a.ask("GET", "/API/Quote", &[]).await;
        assert_eq!(denied_of(&r).status.as_ref().map(|s| s.code), Some(402));
        assert!(h
            .metrics
            .encode()
            .contains("tollway_check_total{result=\"free\"} 2"));

        // Rules: a space opened with `pass`, another priced as a route.
        let text = format!(
            "{}unmatched:\n  - {{ path: /open/**, action: pass }}\n  - {{ path: /v2/**, action: quote }}\n",
            crate::testkit::config_text(&fake.url)
        );
        let h = crate::testkit::harness_on(&text);
        let a = authz(&h);
        let r = a.ask("GET", "/open/x", &[("x-x402-lease", "t")]).await;
        assert_eq!(ok_of(&r).headers_to_remove, ["x-x402-lease"]);
        let r = a.ask("GET", "/v2/anything", &[]).await;
        assert_eq!(denied_of(&r).status.as_ref().map(|s| s.code), Some(402));
        let r = a.ask("GET", "/elsewhere", &[]).await;
        assert_eq!(error_of(&r).0, 404);
    }

    #[tokio::test]
    async fn unpaid_gets_402_challenge() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let r = authz(&h).ask("GET", "/api/quote?symbol=X", &[]).await;
        assert_eq!(
            r.status.as_ref().map(|s| s.code),
            Some(GRPC_PERMISSION_DENIED)
        );
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(402));
        let required =
            b64_json(header_of(&d.headers, "payment-required").expect("PAYMENT-REQUIRED"));
        assert_eq!(required["x402Version"], 2);
        assert_eq!(
            required["resource"]["url"],
            "http://api.test:10000/api/quote"
        );
        assert_eq!(required["accepts"][0]["amount"], "1000");
        assert_eq!(header_of(&d.headers, "cache-control"), Some("no-store"));
        assert_eq!(
            header_of(&d.headers, "content-type"),
            Some("application/json")
        );
        let body: Value = serde_json::from_str(&d.body).expect("v1 body");
        assert_eq!(body["x402Version"], 1);
        assert_eq!(body["accepts"][0]["network"], "base-sepolia");
        assert_eq!(
            body["accepts"][0]["resource"],
            "http://api.test:10000/api/quote"
        );
        assert!(d
            .headers
            .iter()
            .all(|h| h.append_action == HeaderAppendAction::OverwriteIfExistsOrAdd as i32));
    }

    #[tokio::test]
    async fn paid_request_is_settled_and_forwarded() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(21);
        let auth = payer.authorization(&offer, unix_now(), 1);
        let header = payer.header_v2(&offer, &auth, "http://api.test:10000/api/quote");
        let r = authz(&h)
            .ask("GET", "/api/quote", &[("payment-signature", &header)])
            .await;
        let o = ok_of(&r);
        assert_eq!(o.headers_to_remove, vec!["payment-signature", "x-payment"]);
        let receipt =
            b64_json(header_of(&o.response_headers_to_add, "payment-response").expect("receipt"));
        assert_eq!(receipt["success"], true);
        assert_eq!(receipt["payer"], payer.address().to_string());
        // The trusted context, replacing any client copy; the path is untouched.
        assert_context(
            &o.headers,
            "x402",
            &payer.address().to_string(),
            &format!("1000 eip155:84532/erc20:{}", offer.asset),
            "quote",
        );
        assert_eq!(header_of(&o.headers, ":path"), None);
        // The upstream's own cache-control wins (as in the filter).
        let cache = o
            .response_headers_to_add
            .iter()
            .find(|h| h.header.as_ref().is_some_and(|h| h.key == "cache-control"))
            .expect("cache-control");
        assert_eq!(cache.append_action, HeaderAppendAction::AddIfAbsent as i32);
        assert_eq!(
            fake.calls()
                .iter()
                .map(|c| c.0.as_str())
                .collect::<Vec<_>>(),
            vec!["verify", "settle"]
        );

        // v1 client on the POST route: X-PAYMENT in, X-PAYMENT-RESPONSE out.
        let offer = crate::testkit::offer(&h.config, "echo");
        let auth = payer.authorization(&offer, unix_now(), 2);
        let r = authz(&h)
            .ask(
                "POST",
                "/api/echo",
                &[("x-payment", &payer.header_v1(&offer, &auth))],
            )
            .await;
        let o = ok_of(&r);
        assert!(header_of(&o.response_headers_to_add, "x-payment-response").is_some());
        assert!(header_of(&o.response_headers_to_add, "payment-response").is_none());

        // The same payment again: 402 naming the reason.
        let r = authz(&h)
            .ask("GET", "/api/quote", &[("payment-signature", &header)])
            .await;
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(402));
        let required = b64_json(header_of(&d.headers, "payment-required").expect("challenge"));
        assert_eq!(required["error"], "invalid_exact_evm_nonce_already_used");
    }

    #[tokio::test]
    async fn bad_payment_gets_402_with_reason() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let r = authz(&h)
            .ask("GET", "/api/quote", &[("payment-signature", "garbage")])
            .await;
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(402));
        let body: Value = serde_json::from_str(&d.body).expect("json");
        assert_eq!(body["error"], "invalid_payload");
    }

    #[tokio::test]
    async fn facilitator_down_gives_503() {
        let h = harness(&dead_url().await);
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(22);
        let auth = payer.authorization(&offer, unix_now(), 1);
        let header = payer.header_v2(&offer, &auth, "http://api.test:10000/api/quote");
        let r = authz(&h)
            .ask("GET", "/api/quote", &[("payment-signature", &header)])
            .await;
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(GRPC_UNAVAILABLE));
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(503));
        assert_eq!(header_of(&d.headers, "retry-after"), Some("1"));
    }

    #[tokio::test]
    async fn settle_failure_gives_402_with_receipt() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        fake.set_settle(Reply::Json(
            200,
            json!({"success": false, "errorReason": "invalid_exact_evm_transaction_failed", "transaction": "", "network": "eip155:84532"}),
        ));
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(23);
        let auth = payer.authorization(&offer, unix_now(), 1);
        let header = payer.header_v2(&offer, &auth, "http://api.test:10000/api/quote");
        let r = authz(&h)
            .ask("GET", "/api/quote", &[("payment-signature", &header)])
            .await;
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(402));
        let receipt = b64_json(header_of(&d.headers, "payment-response").expect("receipt"));
        assert_eq!(receipt["success"], false);
        assert_eq!(d.body, "{}");
    }

    // ---- Lightning --------------------------------------------------------------------------

    mod lightning {
        use super::*;
        use crate::rails::lightning::doubles::{Double, LndDouble, Mode};
        use crate::testkit::{lightning_harness, lightning_harness_on};
        use sha2::{Digest, Sha256};
        use tollway_protocol::lightning::LightningNetwork;

        const REGTEST: &str = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328";

        fn headers_of<'a>(hs: &'a [HeaderValueOption], name: &str) -> Vec<&'a str> {
            hs.iter()
                .filter_map(|h| h.header.as_ref())
                .filter(|h| h.key == name)
                .map(|h| h.value.as_str())
                .collect()
        }

        /// (macaroon, invoice) of the L402 line of a 402.
        fn l402_challenge(d: &DeniedHttpResponse) -> (String, String) {
            let lines = headers_of(&d.headers, "www-authenticate");
            assert_eq!(lines.len(), 2, "{lines:?}");
            assert!(lines[0].starts_with("LSAT macaroon=\""), "{}", lines[0]);
            assert!(lines[1].starts_with("L402 macaroon=\""), "{}", lines[1]);
            let param = |name: &str| {
                let start = lines[1].find(&format!("{name}=\"")).expect(name) + name.len() + 2;
                let end = lines[1][start..].find('"').expect("quote") + start;
                lines[1][start..end].to_owned()
            };
            (param("macaroon"), param("invoice"))
        }

        fn pay(h: &Harness, invoice: &str) -> String {
            let dev = h
                .payments
                .lightning()
                .and_then(|l| l.dev_node())
                .expect("dev");
            hex::encode(dev.pay(invoice, unix_now()).expect("pay").preimage)
        }

        #[tokio::test]
        async fn unpaid_gets_every_rail() {
            let fake = FakeFacilitator::start().await;
            let h = lightning_harness(&fake.url);
            let r = authz(&h).ask("GET", "/api/quote", &[]).await;
            let d = denied_of(&r);
            assert_eq!(d.status.as_ref().map(|s| s.code), Some(402));
            let (macaroon, invoice) = l402_challenge(d);
            assert!(invoice.starts_with("lnbcrt100n1"));
            assert!(d
                .headers
                .iter()
                .filter(|h| h
                    .header
                    .as_ref()
                    .is_some_and(|h| h.key == "www-authenticate"))
                .all(|h| h.append_action == HeaderAppendAction::AppendIfExistsOrAdd as i32));
            let required = b64_json(header_of(&d.headers, "payment-required").expect("x402"));
            let accepts = required["accepts"].as_array().expect("accepts");
            assert_eq!(accepts.len(), 2);
            assert_eq!(accepts[0]["network"], "eip155:84532");
            assert_eq!(accepts[1]["network"], REGTEST);
            assert_eq!(accepts[1]["amount"], "10000");
            assert_eq!(accepts[1]["extra"]["invoice"], invoice.as_str());
            // v1 body: EVM only.
            let body: Value = serde_json::from_str(&d.body).expect("json");
            assert_eq!(body["accepts"].as_array().map(Vec::len), Some(1));
            assert!(!macaroon.is_empty());

            // Lightning-only route.
            let r = authz(&h).ask("GET", "/api/sats", &[]).await;
            let d = denied_of(&r);
            assert_eq!(d.status.as_ref().map(|s| s.code), Some(402));
            l402_challenge(d);
            let required = b64_json(header_of(&d.headers, "payment-required").expect("x402"));
            assert_eq!(required["accepts"].as_array().map(Vec::len), Some(1));
            assert_eq!(required["accepts"][0]["amount"], "21000");
        }

        #[tokio::test]
        async fn l402_credential_is_verified_and_stripped() {
            let fake = FakeFacilitator::start().await;
            let h = lightning_harness(&fake.url);
            let a = authz(&h);
            let r = a.ask("GET", "/api/quote", &[]).await;
            let (macaroon, invoice) = l402_challenge(denied_of(&r));
            let preimage = pay(&h, &invoice);

            // The API's own Authorization survives; the credential does not.
            let auth = format!("Bearer api-token, LSAT {macaroon}:{preimage}");
            let r = a
                .ask("GET", "/api/quote?x=1", &[("authorization", &auth)])
                .await;
            let o = ok_of(&r);
            assert_eq!(
                header_of(&o.headers, "authorization"),
                Some("Bearer api-token")
            );
            assert!(o.headers_to_remove.is_empty());
            let hash = hex::encode(Sha256::digest(hex::decode(&preimage).expect("hex")));
            assert_context(&o.headers, "l402", &hash, "10000 msat", "quote");
            // Reusable: again, L402 alone.
            let auth = format!("L402 {macaroon}:{preimage}");
            let r = a
                .ask("GET", "/api/quote", &[("authorization", &auth)])
                .await;
            let o = ok_of(&r);
            assert_eq!(o.headers_to_remove, vec!["authorization"]);
            assert_eq!(
                header_of(&o.response_headers_to_add, "cache-control"),
                Some("private")
            );

            // Bound to the path: not valid on another route.
            let r = a.ask("GET", "/api/sats", &[("authorization", &auth)]).await;
            let d = denied_of(&r);
            assert_eq!(d.status.as_ref().map(|s| s.code), Some(402));
            let required = b64_json(header_of(&d.headers, "payment-required").expect("x402"));
            assert_eq!(required["error"], "l402_wrong_path");
            l402_challenge(d);

            // Wrong preimage: a fresh challenge naming the reason.
            let bad = format!("L402 {macaroon}:{}", "00".repeat(32));
            let r = a.ask("GET", "/api/quote", &[("authorization", &bad)]).await;
            let d = denied_of(&r);
            let required = b64_json(header_of(&d.headers, "payment-required").expect("x402"));
            assert_eq!(required["error"], "l402_wrong_preimage");

            // Both rails at once: 400.
            let r = a
                .ask(
                    "GET",
                    "/api/quote",
                    &[("authorization", &auth), ("payment-signature", "e30=")],
                )
                .await;
            assert_eq!(denied_of(&r).status.as_ref().map(|s| s.code), Some(400));

            // An L402 header on a route that sells no Lightning is not a credential there.
            let r = a
                .ask("POST", "/api/echo", &[("authorization", &auth)])
                .await;
            let d = denied_of(&r);
            assert!(headers_of(&d.headers, "www-authenticate").is_empty());

            h.ledger.flush().await.expect("flush");
            let events = h.ledger.recent(20).await.expect("events");
            assert_eq!(
                events
                    .iter()
                    .filter(|e| e.event == EventKind::L402Accepted)
                    .count(),
                2
            );
        }

        #[tokio::test]
        async fn single_use_token_works_once() {
            let fake = FakeFacilitator::start().await;
            let h = lightning_harness(&fake.url);
            let a = authz(&h);
            let r = a.ask("GET", "/api/once/7", &[]).await;
            let (macaroon, invoice) = l402_challenge(denied_of(&r));
            let auth = format!("L402 {macaroon}:{}", pay(&h, &invoice));
            let r = a
                .ask("GET", "/api/once/7", &[("authorization", &auth)])
                .await;
            ok_of(&r);
            let r = a
                .ask("GET", "/api/once/7", &[("authorization", &auth)])
                .await;
            let d = denied_of(&r);
            assert_eq!(d.status.as_ref().map(|s| s.code), Some(402));
            let required = b64_json(header_of(&d.headers, "payment-required").expect("x402"));
            assert_eq!(required["error"], "l402_token_already_used");
            l402_challenge(d);
        }

        #[tokio::test]
        async fn x402_over_lightning() {
            let fake = FakeFacilitator::start().await;
            let h = lightning_harness(&fake.url);
            let a = authz(&h);
            let r = a.ask("GET", "/api/sats", &[]).await;
            let d = denied_of(&r);
            let required = b64_json(header_of(&d.headers, "payment-required").expect("x402"));
            let offer = required["accepts"][0].clone();
            let invoice = offer["extra"]["invoice"]
                .as_str()
                .expect("invoice")
                .to_owned();
            let payment = b64::encode(
                json!({"x402Version": 2, "resource": required["resource"], "accepted": offer, "payload": {"invoice": invoice}})
                    .to_string()
                    .as_bytes(),
            );
            // Not paid yet.
            let r = a
                .ask("GET", "/api/sats", &[("payment-signature", &payment)])
                .await;
            let d = denied_of(&r);
            let required = b64_json(header_of(&d.headers, "payment-required").expect("x402"));
            assert_eq!(required["error"], "invoice_not_paid");

            pay(&h, &invoice);
            let r = a
                .ask("GET", "/api/sats", &[("payment-signature", &payment)])
                .await;
            let o = ok_of(&r);
            let receipt = b64_json(
                header_of(&o.response_headers_to_add, "payment-response").expect("receipt"),
            );
            assert_eq!(receipt["success"], true);
            assert_eq!(receipt["network"], REGTEST);
            assert_eq!(receipt["payer"], "anonymous");
            assert!(fake.calls().is_empty());
            assert_context(&o.headers, "x402", "anonymous", "21000 msat", "sats");
        }

        #[tokio::test]
        async fn node_down_offers_x402_alone() {
            let fake = FakeFacilitator::start().await;
            let d = LndDouble::start(LightningNetwork::Regtest).await;
            let h =
                lightning_harness_on(&fake.url, crate::payments::tests::lightning::lnd_rail(&d));
            d.set_mode(Mode::Fail);
            let r = authz(&h).ask("GET", "/api/quote", &[]).await;
            let den = denied_of(&r);
            assert_eq!(den.status.as_ref().map(|s| s.code), Some(402));
            assert!(headers_of(&den.headers, "www-authenticate").is_empty());
            let required = b64_json(header_of(&den.headers, "payment-required").expect("x402"));
            assert_eq!(required["accepts"].as_array().map(Vec::len), Some(1));
            assert_eq!(required["accepts"][0]["network"], "eip155:84532");
            // Lightning-only: nothing to offer, 503.
            let r = authz(&h).ask("GET", "/api/sats", &[]).await;
            assert_eq!(r.status.as_ref().map(|s| s.code), Some(GRPC_UNAVAILABLE));
            assert_eq!(denied_of(&r).status.as_ref().map(|s| s.code), Some(503));
            // Back up: both rails again.
            d.set_mode(Mode::Normal);
            let r = authz(&h).ask("GET", "/api/quote", &[]).await;
            l402_challenge(denied_of(&r));
        }
    }

    // ---- leases ----------------------------------------------------------------------------

    use tollway_protocol::keys::KeySet;
    use tollway_protocol::lease::LeaseKey;

    fn lease_key() -> KeySet<LeaseKey> {
        KeySet::new(LeaseKey::derive(crate::testkit::LEASE_SECRET.as_bytes()))
    }

    fn lease(route: &str, path: &str, expires_at: u64, single_use: bool) -> Lease {
        Lease {
            id: [7; 16],
            route: route.into(),
            method: "GET".into(),
            path: path.into(),
            expires_at,
            single_use,
        }
    }

    fn error_of(r: &CheckResponse) -> (i32, Value) {
        let d = denied_of(r);
        let body: Value = serde_json::from_str(&d.body).expect("json body");
        (d.status.as_ref().map_or(0, |s| s.code), body)
    }

    #[tokio::test]
    async fn lease_allows_the_leased_path() {
        let h = crate::testkit::leased_harness(&dead_url().await);
        let a = authz(&h);
        let now = unix_now();
        let token = lease("ticker", "/stream/ticker/BTC", now + 60, false)
            .try_mint(&lease_key())
            .expect("mint");

        // In the header: removed before the upstream; context set; allow-list applied.
        let r = a
            .ask(
                "GET",
                "/stream/ticker/BTC",
                &[
                    ("x-x402-lease", &token),
                    ("authorization", "Bearer api"),
                    ("x-secret", "no"),
                    ("x-tollway-payer", "forged"),
                    ("accept", "text/event-stream"),
                ],
            )
            .await;
        let o = ok_of(&r);
        assert!(o.headers_to_remove.contains(&"x-x402-lease".to_owned()));
        assert!(o.headers_to_remove.contains(&"x-secret".to_owned()));
        assert!(
            !o.headers_to_remove.contains(&"authorization".to_owned()),
            "api-auth preset"
        );
        assert!(!o.headers_to_remove.contains(&"accept".to_owned()));
        assert!(o.query_parameters_to_remove.is_empty());
        assert_eq!(header_of(&o.headers, "x-tollway-rail"), Some("lease"));
        assert_eq!(
            header_of(&o.headers, "x-tollway-payer"),
            Some(hex::encode([7u8; 16]).as_str())
        );
        assert_eq!(header_of(&o.headers, "x-tollway-resource"), Some("ticker"));
        assert_eq!(
            header_of(&o.response_headers_to_add, "x-accel-buffering"),
            Some("no")
        );

        // Rewritten to the route's `upstream_path`.
        assert_eq!(header_of(&o.headers, ":path"), Some("/v1/ticker/BTC"));

        // In the query (EventSource): `t` removed from the rewritten path, the rest of the query
        // kept as sent; HEAD rides on a GET lease; the path is canonical (`//`, trailing `/`).
        for (method, path, upstream) in [
            (
                "GET",
                format!("/stream/ticker/BTC?x=1&t={token}&y=%2F"),
                "/v1/ticker/BTC?x=1&y=%2F",
            ),
            (
                "HEAD",
                format!("/stream//ticker/BTC/?t={token}"),
                "/v1/ticker/BTC",
            ),
        ] {
            let r = a.ask(method, &path, &[]).await;
            let o = ok_of(&r);
            assert_eq!(header_of(&o.headers, ":path"), Some(upstream), "{path}");
            assert!(o.query_parameters_to_remove.is_empty());
        }
        // No `upstream_path`: the path as sent, minus `t` (also next to a header token).
        let room = lease("room", "/ws/lobby", now + 30, false)
            .try_mint(&lease_key())
            .expect("mint");
        let r = a
            .ask(
                "GET",
                &format!("/ws/lobby?t={room}&z=1"),
                &[("x-x402-lease", &room)],
            )
            .await;
        assert_eq!(
            header_of(&ok_of(&r).headers, ":path"),
            Some("/ws/lobby?z=1")
        );
        let r = a.ask("GET", "/ws/lobby", &[("x-x402-lease", &room)]).await;
        let o = ok_of(&r);
        assert_eq!(header_of(&o.headers, ":path"), None);
        // Not an allow-list route: nothing but the credential and the amount go.
        assert_eq!(
            o.headers_to_remove,
            vec!["x-x402-lease", "x-tollway-amount"]
        );
        assert!(o.response_headers_to_add.is_empty());
        assert!(h
            .metrics
            .encode()
            .contains("tollway_check_total{result=\"lease\"} 5"));
    }

    #[tokio::test]
    async fn lease_refusals() {
        let h = crate::testkit::leased_harness(&dead_url().await);
        let a = authz(&h);
        let now = unix_now();
        let key = lease_key();
        let good = lease("ticker", "/stream/ticker/BTC", now + 60, false)
            .try_mint(&key)
            .expect("mint");
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "lease_required"),
            ("garbage".into(), "lease_invalid"),
            (
                lease("ticker", "/stream/ticker/BTC", now + 60, false)
                    .try_mint(&KeySet::new(LeaseKey::derive(&[1u8; 32])))
                    .expect("mint"),
                "lease_invalid",
            ),
            (
                lease("ticker", "/stream/ticker/ETH", now + 60, false)
                    .try_mint(&key)
                    .expect("mint"),
                "lease_invalid",
            ),
            (
                lease("room", "/stream/ticker/BTC", now + 60, false)
                    .try_mint(&key)
                    .expect("mint"),
                "lease_invalid",
            ),
            (
                lease("ticker", "/stream/ticker/BTC", now - 1, false)
                    .try_mint(&key)
                    .expect("mint"),
                "lease_expired",
            ),
        ];
        for (token, reason) in cases {
            let headers: Vec<(&str, &str)> = if token.is_empty() {
                Vec::new()
            } else {
                vec![("x-x402-lease", token.as_str())]
            };
            let r = a.ask("GET", "/stream/ticker/BTC", &headers).await;
            let (status, body) = error_of(&r);
            assert_eq!(status, 402, "{reason}");
            assert_eq!(body["error"], reason);
            // The 402 names the lease URL: that is where a lease is bought.
            let required = b64_json(
                header_of(&denied_of(&r).headers, "payment-required").expect("PAYMENT-REQUIRED"),
            );
            assert_eq!(
                required["resource"]["url"],
                "http://api.test:10000/lease/ticker/BTC"
            );
            assert_eq!(required["accepts"][0]["amount"], "10000");
        }
        // POST with a GET lease: another method.
        let r = a
            .ask("POST", "/stream/ticker/BTC", &[("x-x402-lease", &good)])
            .await;
        // The route takes any method (none listed); its lease grants GET only.
        let (status, body) = error_of(&r);
        assert_eq!(
            (status, body["error"].as_str()),
            (402, Some("lease_invalid"))
        );

        // Single use: the second use is refused.
        let once = lease("room", "/ws/lobby", now + 30, true)
            .try_mint(&key)
            .expect("mint");
        let r = a.ask("GET", "/ws/lobby", &[("x-x402-lease", &once)]).await;
        ok_of(&r);
        let r = a.ask("GET", "/ws/lobby", &[("x-x402-lease", &once)]).await;
        let (status, body) = error_of(&r);
        assert_eq!(
            (status, body["error"].as_str()),
            (402, Some("lease_already_used"))
        );
        h.ledger.flush().await.expect("flush");
        let events = h.ledger.recent(5).await.expect("events");
        assert!(events
            .iter()
            .any(|e| e.event == EventKind::LeaseClaimed && e.route == "room"));
    }

    #[tokio::test]
    async fn lease_sales_and_disabled_routes() {
        let h = crate::testkit::leased_harness(&dead_url().await);
        let a = authz(&h);
        for method in ["GET", "POST"] {
            let r = a.ask(method, "/lease/ticker/BTC", &[]).await;
            let (status, body) = error_of(&r);
            assert_eq!(status, 501);
            assert_eq!(body["error"], "lease_sales_need_filter_mode");
        }
        h.patch_route("quote", json!({"disabled": true}));
        let r = a.ask("GET", "/api/quote", &[]).await;
        let (status, body) = error_of(&r);
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("route_disabled"))
        );
        // A rewritten route's upstream path is not public.
        let r = a.ask("GET", "/v1/ticker/BTC", &[]).await;
        let (status, body) = error_of(&r);
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
        // A re-priced route is challenged at its new price at once.
        h.patch_route("echo", json!({"price": "0.5"}));
        let r = a.ask("POST", "/api/echo", &[]).await;
        let required = b64_json(
            header_of(&denied_of(&r).headers, "payment-required").expect("PAYMENT-REQUIRED"),
        );
        assert_eq!(required["accepts"][0]["amount"], "500000");
    }

    // ---- header policy and rewrites on per-request routes --------------------------------------

    fn put_route(h: &Harness, name: &str, body: Value) {
        h.store
            .change(crate::stores::routes_store::Change {
                op: crate::stores::routes_store::Op::Put,
                name: name.into(),
                body: Some(body),
            })
            .expect("valid route");
    }

    #[tokio::test]
    async fn header_policy_and_rewrite_on_paid_and_free_routes() {
        let fake = FakeFacilitator::start().await;
        let h = crate::testkit::leased_harness(&fake.url);
        put_route(
            &h,
            "hdr",
            json!({"path": "/api/h/[id]", "methods": ["GET"], "price": "0.001",
                   "upstream_path": "/v1/h/[id]", "request_headers": ["api-auth", "x-client-id"],
                   "response_headers": ["streaming"]}),
        );
        put_route(
            &h,
            "open",
            json!({"path": "/open/[x]", "free": true, "upstream_path": "/v1/open/[x]",
                   "request_headers": ["x-client-id"]}),
        );
        let a = authz(&h);

        // Paid: rewritten with the query as sent (`t` is no lease parameter here), allow-list
        // applied, context set, presets before our own response headers.
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(31);
        let auth = payer.authorization(&offer, unix_now(), 1);
        let payment = payer.header_v2(&offer, &auth, "http://api.test:10000/api/h/7");
        let r = a
            .ask(
                "GET",
                "/api/h/7?q=1&t=keep",
                &[
                    ("payment-signature", &payment),
                    ("authorization", "Bearer api"),
                    ("x-client-id", "c1"),
                    ("x-secret", "no"),
                    ("x-tollway-payer", "forged"),
                    ("user-agent", "t"),
                ],
            )
            .await;
        let o = ok_of(&r);
        assert_eq!(header_of(&o.headers, ":path"), Some("/v1/h/7?q=1&t=keep"));
        assert_eq!(
            o.headers_to_remove,
            vec!["payment-signature", "x-payment", "x-secret"]
        );
        assert_context(
            &o.headers,
            "x402",
            &payer.address().to_string(),
            &format!("1000 eip155:84532/erc20:{}", offer.asset),
            "hdr",
        );
        let response: Vec<(&str, &str, i32)> = o
            .response_headers_to_add
            .iter()
            .filter_map(|h| {
                h.header
                    .as_ref()
                    .map(|v| (v.key.as_str(), v.value.as_str(), h.append_action))
            })
            .collect();
        let if_absent = HeaderAppendAction::AddIfAbsent as i32;
        assert_eq!(response[0], ("cache-control", "no-cache", if_absent));
        assert_eq!(response[1], ("x-accel-buffering", "no", if_absent));
        assert_eq!(response[2].0, "payment-response");
        assert_eq!(response[3], ("cache-control", "private", if_absent));

        // Free: the same rewrite and allow-list; no context is set, a forged copy is dropped
        // like any header not on the list.
        let r = a
            .ask(
                "GET",
                "/open/abc?z=9",
                &[
                    ("x-client-id", "c1"),
                    ("x-other", "no"),
                    ("x-tollway-payer", "forged"),
                    ("accept", "*/*"),
                ],
            )
            .await;
        let o = ok_of(&r);
        assert_eq!(header_of(&o.headers, ":path"), Some("/v1/open/abc?z=9"));
        assert_eq!(o.headers.len(), 1);
        assert_eq!(o.headers_to_remove, vec!["x-other", "x-tollway-payer"]);
        assert!(o.response_headers_to_add.is_empty());
    }
}
