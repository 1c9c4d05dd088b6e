//! Leased resources (`http-stream`, `websocket`): using a lease on the resource path, and
//! selling one on the lease path (see `docs/leases.md`).
//!
//! ```text
//! resource ─ no token ─► 402 lease_required (the lease path's challenge, no call)
//!          ─ bad / expired / other path ─► 402 with the reason (no call)
//!          ─ valid ─ strip token ─ reusable ─► Continue
//!                                ─ single-use ─ Claim ─ Pause ─ CLAIMED ─ resume
//!                                                          ─ ALREADY_USED ─► 402
//! lease path ─ renewal token invalid ─► 400; not renewable / outside window ─► 409 (no charge)
//!            ─ x402 ─ Verify ─ VALID ─ Settle ─ SETTLED/PENDING ─► 200 grant + PAYMENT-RESPONSE
//!            ─ L402 ─ verified here ─ Claim (one lease per token) ─ CLAIMED ─► 200 grant
//! renewal: the Verify or Claim names it (`Renewal::key`), sold once:
//!            ─ PURCHASED (paid before) ─► 200 the same grant, nothing charged
//!            ─ PURCHASE_IN_PROGRESS ─► 409 lease_renewal_in_progress + Retry-After (no charge)
//! ```

use std::borrow::Cow;

use tollway_protocol::filter_config::CompiledRoute;
use tollway_protocol::headers::{CONTEXT_PAYER, CONTEXT_RAIL, CONTEXT_RESOURCE};
use tollway_protocol::hmac::sha256;
use tollway_protocol::lease::{
    grant_json, mintable, renewal_open, strip_query_token, Lease, Renewal, HEADER_LEASE,
    REASON_ALREADY_USED, REASON_INVALID, REASON_NOT_RENEWABLE, REASON_REQUIRED, REASON_TOO_LONG,
};
use tollway_protocol::resource_url;
use tollway_protocol::routes::canonical_path;
use tollway_protocol::rpc::{ClaimRequest, METHOD_CLAIM};

use super::forward::{upstream_path, Forward};
use super::{State, Stream};
use crate::abi::{Action, HeaderMap};
use crate::host;
use crate::metrics::inc;
use crate::reply;
use crate::root::Shared;

/// A lease being sold: what it will grant once the payment is in.
pub struct Sale {
    /// Canonical resource path the lease unlocks.
    pub path: String,
    /// Absolute URL of that path, for the grant.
    pub url: String,
    /// The lease being renewed.
    pub renew: Option<Lease>,
}

/// What a request names: its path, method, and the headers the URL of an answer comes from.
pub struct Target<'a> {
    pub route: usize,
    pub params: &'a [(String, String)],
    pub path: &'a str,
    pub method: &'a str,
    /// The request's headers as read on arrival.
    pub headers: &'a HeaderMap,
}

impl Target<'_> {
    /// Absolute URL of `path` for this request: under `public_url`, or on the request's own
    /// scheme and authority.
    pub fn url(&self, shared: &Shared, path: &str) -> String {
        if shared.public_url.is_some() {
            return resource_url(shared.public_url.as_deref(), "", "", path);
        }
        let header = |name| String::from_utf8_lossy(self.headers.get(name).unwrap_or_default());
        resource_url(None, &header(":scheme"), &header(":authority"), path)
    }
}

impl Stream {
    /// A request on a leased resource.
    pub(super) fn leased(&mut self, shared: &Shared, target: &Target<'_>) -> Action {
        let Some(route) = shared.config.routes.get(target.route) else {
            return self.unavailable(shared);
        };
        let header = target.headers.get(HEADER_LEASE);
        let query = strip_query_token(target.path);
        // Neither copy of the credential goes upstream, whatever happens next.
        if header.is_some() {
            host::remove_request_header(HEADER_LEASE);
        }
        let token = header
            .map(String::from_utf8_lossy)
            .or_else(|| query.as_ref().map(|(_, t)| Cow::Borrowed(*t)));
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return self.lease_refused(shared, route, target, REASON_REQUIRED);
        };
        let now = host::now_unix();
        let Some(keys) = shared.config.lease_keys.as_ref() else {
            return self.unavailable(shared);
        };
        let check = |lease: &Lease| {
            let path = canonical_path(target.path);
            lease
                .check(&route.name, target.method, &path, now)
                .map(|()| (lease.id, lease.id_hex(), lease.single_use, lease.expires_at))
        };
        // A token seen before skips its HMAC; the lease's terms are checked on every request.
        let cached = shared.lease_cache.borrow().get(&*token).map(check);
        let checked = cached.unwrap_or_else(|| {
            let lease = Lease::open(keys, &token, now)?;
            let checked = check(&lease);
            shared
                .lease_cache
                .borrow_mut()
                .insert(token.into_owned(), lease);
            checked
        });
        let (id, id_hex, single_use, expires_at) = match checked {
            Ok(lease) if now != 0 => lease,
            Ok(_) => return self.unavailable(shared),
            Err(e) => return self.lease_refused(shared, route, target, e.reason()),
        };
        // The stream (an SSE stream, a WebSocket session) ends when the lease does, unless it
        // is renewed meanwhile.
        let terms = route.lease.as_ref();
        let renew_seconds = terms
            .filter(|t| t.renew_window_seconds.is_some())
            .map(|t| t.seconds);
        crate::expiry::watch(self.id, id, expires_at, renew_seconds);
        let base = query.as_ref().map_or(target.path, |(p, _)| p.as_str());
        self.forward = Some(Box::new(Forward::new(
            target.route,
            route,
            target.headers,
            upstream_path(route, target.params, base).or_else(|| query.map(|(p, _)| p)),
            vec![
                (CONTEXT_RAIL, "lease".to_owned()),
                (CONTEXT_PAYER, id_hex.clone()),
                (CONTEXT_RESOURCE, route.name.clone()),
            ],
        )));
        if !single_use {
            inc(shared.metrics.leases_accepted);
            return self.forward_now(shared);
        }
        let claim = ClaimRequest {
            key: format!("lease:{id_hex}"),
            route: route.name.clone(),
            expires_at,
            reusable: false,
            deadline_ms: host::deadline_ms(shared.verify_timeout),
            purchase: String::new(),
        };
        let Some(call) = self.dispatch(shared, METHOD_CLAIM, &claim, shared.verify_timeout) else {
            return self.unavailable(shared);
        };
        self.state = State::ClaimingLease(call);
        self.lease_url = Some(lease_url(shared, route, target));
        Action::Pause
    }

    pub(super) fn lease_claim_answer(&mut self, shared: &Shared, claimed: Option<bool>) {
        let route = self.forward.as_ref().map(|f| f.route);
        match (claimed, route) {
            (Some(true), Some(_)) => {
                inc(shared.metrics.leases_accepted);
                self.resume(shared);
            }
            (Some(false), Some(route)) => {
                let url = self.lease_url.take().unwrap_or_default();
                if let Some(compiled) = shared.config.routes.get(route) {
                    self.lease_refused_at(shared, compiled, &url, REASON_ALREADY_USED);
                } else {
                    self.unavailable(shared);
                }
            }
            _ => {
                self.unavailable(shared);
            }
        }
    }

    fn lease_refused(
        &mut self,
        shared: &Shared,
        route: &CompiledRoute,
        target: &Target<'_>,
        reason: &str,
    ) -> Action {
        let url = lease_url(shared, route, target);
        self.lease_refused_at(shared, route, &url, reason);
        Action::Pause
    }

    fn lease_refused_at(
        &mut self,
        shared: &Shared,
        route: &CompiledRoute,
        url: &str,
        reason: &str,
    ) {
        inc(shared.metrics.leases_rejected);
        let Some(paid) = route.paid.as_ref() else {
            self.unavailable(shared);
            return;
        };
        self.answered();
        reply::lease_required(&paid.challenge, url, reason);
    }

    /// On the lease path: checks a renewal token, if any, and records what the lease will
    /// grant. `Err` carries the answer already sent (nothing is charged).
    pub(super) fn prepare_sale(
        &mut self,
        shared: &Shared,
        target: &Target<'_>,
    ) -> Result<(), Action> {
        let Some(route) = shared.config.routes.get(target.route) else {
            return Err(self.unavailable(shared));
        };
        let Some(lease) = route.lease.as_ref() else {
            return Err(self.unavailable(shared));
        };
        let path = canonical_path(&lease.resource.render(target.params));
        // A lease whose token `Lease::open` would refuse is not sold: refused before any payment.
        if mintable(&route.name, &lease.method, &path).is_err() {
            inc(shared.metrics.leases_rejected);
            return Err(self.lease_error(414, REASON_TOO_LONG, None));
        }
        let url = target.url(shared, &path);
        let renew = match target.headers.get(HEADER_LEASE) {
            None => None,
            Some(token) => {
                host::remove_request_header(HEADER_LEASE);
                let now = host::now_unix();
                let old = shared
                    .config
                    .lease_keys
                    .as_ref()
                    .and_then(|keys| Lease::open(keys, &String::from_utf8_lossy(token), now).ok())
                    .filter(|old| {
                        old.route == route.name && old.path == path && old.method == lease.method
                    });
                let Some(old) = old else {
                    inc(shared.metrics.leases_rejected);
                    return Err(self.lease_error(400, REASON_INVALID, None));
                };
                let Some(window) = lease.renew_window_seconds else {
                    inc(shared.metrics.leases_rejected);
                    return Err(self.lease_error(409, REASON_NOT_RENEWABLE, Some(&old)));
                };
                if let Err(reason) = renewal_open(old.expires_at, window, now) {
                    inc(shared.metrics.leases_rejected);
                    return Err(self.lease_error(409, reason, Some(&old)));
                }
                Some(old)
            }
        };
        self.sale = Some(Box::new(Sale { path, url, renew }));
        Ok(())
    }

    /// The purchase key of the renewal being sold (empty: not a renewal).
    pub(super) fn renewal_key(&self) -> String {
        self.sale
            .as_ref()
            .and_then(|s| s.renew.as_ref())
            .map(|old| Renewal::of(old).key())
            .unwrap_or_default()
    }

    /// The renewal being sold was paid for before (a client asking again after a timeout):
    /// the same lease again, nothing charged.
    pub(super) fn bought_before(&mut self, shared: &Shared, route: usize) {
        self.grant(shared, route, &[], None);
    }

    /// Another payment for this renewal is being settled: nothing charged; ask again.
    pub(super) fn renewal_in_progress(&mut self, shared: &Shared) {
        inc(shared.metrics.leases_rejected);
        self.answered();
        reply::retry_later(409, reply::RENEWAL_IN_PROGRESS);
    }

    fn lease_error(&mut self, status: u32, reason: &str, old: Option<&Lease>) -> Action {
        let body = match old {
            Some(old) => format!(r#"{{"error":"{reason}","expires_at":{}}}"#, old.expires_at),
            None => format!(r#"{{"error":"{reason}"}}"#),
        };
        self.answered();
        reply::json(status, &body);
        Action::Pause
    }

    /// The payment for the lease is in (settled or claimed): answer with the lease. `paid_by`
    /// names the payment (its id seeds a new lease's id); `receipt` is the x402 receipt header.
    pub(super) fn grant(
        &mut self,
        shared: &Shared,
        route: usize,
        paid_by: &[u8],
        receipt: Option<(&str, &str)>,
    ) {
        let sale = self.sale.take();
        let compiled = shared.config.routes.get(route);
        let (Some(sale), Some(compiled), Some(key)) =
            (sale, compiled, shared.config.lease_keys.as_ref())
        else {
            self.unavailable(shared);
            return;
        };
        let Some(terms) = compiled.lease.as_ref() else {
            self.unavailable(shared);
            return;
        };
        let now = host::now_unix();
        let (id, expires_at) = match &sale.renew {
            Some(old) => (old.id, old.expires_at.saturating_add(terms.seconds)),
            None => {
                let mut id = [0u8; 16];
                id.copy_from_slice(&sha256(paid_by)[..16]);
                (id, now.saturating_add(terms.seconds))
            }
        };
        let lease = Lease {
            id,
            route: compiled.name.clone(),
            method: terms.method.clone(),
            path: sale.path,
            expires_at,
            single_use: terms.single_use,
        };
        // Checked before the sale (`mintable`): cannot fail here; fail closed if it does.
        let Ok(token) = lease.try_mint(key) else {
            let _ = self.unavailable(shared);
            return;
        };
        let body = grant_json(
            &lease,
            &token,
            &sale.url,
            terms.renew_window_seconds.is_some(),
            now,
        );
        inc(shared.metrics.leases_sold);
        self.answered();
        reply::lease_granted(&token, &body, receipt);
    }
}

/// Absolute URL of the lease path for this request's resource.
fn lease_url(shared: &Shared, route: &CompiledRoute, target: &Target<'_>) -> String {
    let path = route
        .lease
        .as_ref()
        .map(|l| l.sale.render(target.params))
        .unwrap_or_default();
    target.url(shared, &path)
}
