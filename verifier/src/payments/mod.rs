//! The payment core shared by the filter API (gRPC `tollway.v1.Payments`) and ext_authz:
//! verify a client's payment, hold it while the upstream answers, then settle or release it.
//!
//! verify: decode → check against the route's offers (the filter checked too: defence in depth)
//! → recover the EIP-712 signer → claim the nonce → facilitator `/verify` → journal the payment
//! (committed before VALID is answered). The nonce stays claimed only if the payment is valid;
//! a facilitator outage or an unwritable ledger gives the claim back and answers UNAVAILABLE
//! (503 upstream of us, never a free pass).
//!
//! settle: runs detached from the caller (a gone Envoy does not cancel it) and journals its
//! outcome. A timeout or transport error is *unknown*, never *failed*: the client keeps its
//! answer with a pending receipt and [`Payments::reconcile`] decides it later (the chain, when
//! the rail has an `rpc_url`; else retrying the facilitator while the authorization is valid).
//! States and transitions: [`crate::payments::journal`].

pub mod journal;
mod purchase;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollway_protocol::b64;
use tollway_protocol::filter_config::{CompiledConfig, FilterConfig, LightningPrice};
use tollway_protocol::x402::lightning::{ASSET_BTC, PAY_TO_ANONYMOUS};
use tollway_protocol::x402::{
    check_lightning_payment, check_payment, decode_payment_json, ErrorReason, Offer, PaymentKind,
    PaymentPayload, ReplayKey, SETTLEMENT_PENDING,
};

use crate::clock::{unix_now, unix_now_millis};
use crate::config::{Config, Route, ValidRoutes};
use crate::metrics::Metrics;
use crate::payments::journal::{JournalEntry, JournalRow, JournalUpdate, PaymentState};
use crate::rails::chain::ChainReader;
use crate::rails::facilitator::{FacilitatorClient, FacilitatorRequest, SettleAnswer};
use crate::rails::invoices::{Ask, ClientId};
use crate::rails::l402::{
    bindable_method, bindable_path, is_l402_claim_key, l402_claim_key, LightningRail, MintError,
    MintedChallenge, RailError, CLAIM_PREFIX_L402_REUSABLE,
};
use crate::rails::lightning::{bolt11, InvoiceState, NodeError};
use crate::stores::ledger::{EventKind, Ledger, LedgerEvent, Op};
use crate::stores::replay::{Claim, ReplayGuard, EXPIRY_MARGIN_SECS};
use tollway_protocol::lease::Renewal;
use tollway_protocol::routes::canonical_path;

pub use self::purchase::{Purchase, Reservation};

/// Reason given when the facilitator (or the replay store) cannot be reached.
pub const REASON_UNAVAILABLE: &str = "facilitator_unavailable";
pub const REASON_STORE_UNAVAILABLE: &str = "replay_store_unavailable";
/// The caller's deadline passed before (or while) the work was done: nothing is kept for it.
pub const REASON_CALLER_GONE: &str = "caller_deadline_passed";
/// The ledger cannot be written (full disk): no payment is accepted unrecorded.
pub const REASON_LEDGER_UNAVAILABLE: &str = "ledger_unavailable";
pub const REASON_UNKNOWN_PAYMENT: &str = "unknown_payment_id";
pub const REASON_UNKNOWN_ROUTE: &str = "unknown_route";
/// A v2 payment whose `resource` names another path than the one it is presented on.
pub const REASON_RESOURCE_MISMATCH: &str = "payment_resource_mismatch";
/// x402 over Lightning: the invoice is not one we minted for this route (or we forgot it).
pub const REASON_INVOICE_UNKNOWN: &str = "invoice_unknown";
pub const REASON_INVOICE_EXPIRED: &str = "invoice_expired";
/// The node says the invoice is still open: pay it, then retry.
pub const REASON_INVOICE_NOT_PAID: &str = "invoice_not_paid";
pub const REASON_INVOICE_ALREADY_USED: &str = "invoice_already_used";
pub const REASON_INVOICE_AMOUNT: &str = "invoice_amount_mismatch";
/// x402 over Lightning: the invoice was sold for another path of the route.
pub const REASON_INVOICE_OTHER_PATH: &str = "invoice_other_path";
pub const REASON_NODE_UNAVAILABLE: &str = "lightning_node_unavailable";
/// Replay-guard key prefix of a single-use lease (`lease:<lease id hex>`).
pub const CLAIM_PREFIX_LEASE: &str = "lease:";
/// How long a verified Lightning payment waits for settle or release.
const LIGHTNING_PENDING_SECS: u64 = 300;
/// Longest wait between two attempts to resolve an unknown settlement.
const RECONCILE_BACKOFF_MAX_SECS: u64 = 30;
/// A journal row nobody touched for this long has no live owner (owners touch theirs at every
/// attempt, at most [`RECONCILE_BACKOFF_MAX_SECS`] apart).
const ORPHAN_AFTER_MS: i64 = 90_000;
/// Facilitator reasons that name the client's signature. Our own EIP-712 check passed before the
/// facilitator was asked, so from it they mean the facilitator could not check (its chain RPC
/// is down): unavailable, not the client's fault.
const SIGNATURE_REASONS: [&str; 2] = [
    "invalid_exact_evm_signature",
    "invalid_exact_evm_payload_signature",
];
/// Facilitator refusals that may just mean an earlier attempt already moved the money.
const ALREADY_USED_REASONS: [&str; 2] = [
    "invalid_exact_evm_nonce_already_used",
    "invalid_exact_evm_transaction_failed",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verified {
    Valid {
        payment_id: String,
        payer: String,
        x402_version: u8,
        /// The amount paid as the trusted `x-tollway-amount` context names it:
        /// `<atomic> <network>/erc20:<asset>` (EVM), `<n> msat` (Lightning).
        amount: String,
    },
    Invalid {
        reason: String,
        payer: Option<String>,
    },
    Unavailable {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettleOutcome {
    Settled,
    /// Outcome not known yet (timeout, broadcast without receipt): the client keeps its
    /// response with a `settlement_pending` receipt; the reconciler decides.
    Pending,
    /// The facilitator said no: nothing was charged.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    pub outcome: SettleOutcome,
    pub reason: String,
    /// base64(JSON SettleResponse) for `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`; may be empty
    /// when there is nothing to report (unknown payment id).
    pub payment_response: String,
    pub transaction: String,
    /// 1 or 2 (0 when the payment id is unknown): which response header to use.
    pub x402_version: u8,
}

/// How a verified payment is settled.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "rail", rename_all = "snake_case")]
enum Settlement {
    /// x402 on EVM: the facilitator broadcasts the authorization.
    Facilitator {
        payload: Value,
        requirements: Value,
        /// The facilitator's name in the config.
        facilitator: String,
        /// The token, authorizer and nonce: what the chain is asked about.
        asset: String,
        authorizer: String,
        nonce: String,
        /// Unix seconds: after this the authorization can no longer move money.
        valid_before: u64,
    },
    /// x402 over Lightning: already paid; settling only keeps the invoice's claim.
    Lightning {
        claim_key: String,
        #[serde(with = "hex_32")]
        payment_hash: [u8; 32],
    },
}

mod hex_32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// A verified payment waiting for the upstream's answer; kept whole in its journal row.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending {
    route: String,
    x402_version: u8,
    settlement: Settlement,
    payer: String,
    /// Network in the payment's dialect (v1 name or CAIP-2), for receipts.
    wire_network: String,
    event: LedgerEvent,
    expires_at: u64,
    /// The replay-guard key this payment holds (given back if its caller is gone).
    #[serde(default)]
    claim: String,
    /// What it buys when that can be bought once (`lease::Renewal::key`): marked paid when it
    /// settles, given back when it does not (see `purchase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    purchase: Option<String>,
}

/// A settlement whose outcome is not known yet (or being asked for right now).
struct Unresolved {
    pending: Pending,
    /// Unix milliseconds when it became unresolved (for the age metric).
    since_ms: i64,
    attempts: u32,
    /// Unix seconds of the next attempt.
    next_at: u64,
    /// An attempt (the first settle or a reconciliation) is running.
    busy: bool,
}

struct RouteInfo {
    offers: Vec<Offer>,
    facilitators: Vec<Arc<FacilitatorClient>>,
    lightning: Option<LightningPrice>,
    description: String,
    mime_type: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    #[error("filter config does not compile: {0}")]
    Compile(String),
    #[error("route {route}: facilitator {facilitator} has no client")]
    MissingFacilitator { route: String, facilitator: String },
    #[error(transparent)]
    Lightning(#[from] RailError),
}

/// Why a 402 carries no Lightning part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotMinted {
    /// The route sells no Lightning here, or the node is down or slow.
    Unavailable,
    /// The client (or everyone) has as many open invoices as allowed; one frees up in
    /// `retry_after` seconds.
    Limited { retry_after: u64 },
}

/// Outcome of a single-use token claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimResult {
    Claimed,
    AlreadyUsed,
    Unavailable,
}

pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The route table payments are checked against: swapped whole when the routes change (file
/// reload, admin API), so a request sees one table from start to end.
pub struct RouteSet {
    pub compiled: Arc<CompiledConfig>,
    routes: HashMap<String, RouteInfo>,
}

impl RouteSet {
    fn build(
        filter: &FilterConfig,
        compiled: CompiledConfig,
        routes: &[Route],
        facilitators: &HashMap<String, Arc<FacilitatorClient>>,
    ) -> Result<RouteSet, PaymentsError> {
        let mut infos = HashMap::new();
        for rc in &filter.routes {
            // A disabled route sells nothing (the filter and ext_authz answer 404).
            let Some(paid) = rc.paid.as_ref().filter(|_| !rc.disabled) else {
                continue;
            };
            let names = routes
                .iter()
                .find(|r| r.name == rc.name)
                .map(|r| r.facilitators.clone())
                .unwrap_or_default();
            let mut clients = Vec::new();
            for name in &names {
                let c =
                    facilitators
                        .get(name)
                        .ok_or_else(|| PaymentsError::MissingFacilitator {
                            route: rc.name.clone(),
                            facilitator: name.clone(),
                        })?;
                clients.push(c.clone());
            }
            if clients.len() != paid.offers.len() {
                return Err(PaymentsError::Compile(format!(
                    "route {}: {} offers but {} facilitators",
                    rc.name,
                    paid.offers.len(),
                    clients.len()
                )));
            }
            infos.insert(
                rc.name.clone(),
                RouteInfo {
                    offers: paid.offers.clone(),
                    facilitators: clients,
                    lightning: paid.lightning,
                    description: paid.description.clone(),
                    mime_type: paid.mime_type.clone(),
                },
            );
        }
        Ok(RouteSet {
            compiled: Arc::new(compiled),
            routes: infos,
        })
    }
}

/// What distinguishes the single-use claims: their metric, refusal reason and log line.
struct ClaimKind {
    metric: fn(&Metrics, &str),
    reason: &'static str,
    presented_again: &'static str,
}

const L402_CLAIM: ClaimKind = ClaimKind {
    metric: Metrics::l402_claim,
    reason: tollway_protocol::l402::REASON_TOKEN_ALREADY_USED,
    presented_again: "single-use L402 token presented again",
};

const LEASE_CLAIM: ClaimKind = ClaimKind {
    metric: Metrics::lease_claim,
    reason: tollway_protocol::lease::REASON_ALREADY_USED,
    presented_again: "single-use lease presented again",
};

pub struct Payments {
    table: RwLock<Arc<RouteSet>>,
    facilitators: HashMap<String, Arc<FacilitatorClient>>,
    public_url: Option<String>,
    replay: Arc<dyn ReplayGuard>,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    pending: Mutex<HashMap<String, Pending>>,
    unresolved: Mutex<HashMap<String, Unresolved>>,
    /// Chain readers by (network, lower-case token): rails with an `rpc_url`.
    chains: HashMap<(String, String), Arc<ChainReader>>,
    lightning: Option<Arc<LightningRail>>,
    clock: Clock,
}

impl Payments {
    pub fn new(
        config: &Config,
        facilitators: HashMap<String, Arc<FacilitatorClient>>,
        replay: Arc<dyn ReplayGuard>,
        ledger: Arc<Ledger>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PaymentsError> {
        let compiled = config
            .filter
            .compile()
            .map_err(|e| PaymentsError::Compile(e.to_string()))?;
        let table = RouteSet::build(&config.filter, compiled, &config.routes, &facilitators)?;
        let lightning = match (&config.lightning, &config.l402) {
            (Some(l), Some(k)) => Some(Arc::new(LightningRail::new(l, k, metrics.clone())?)),
            _ => None,
        };
        let mut chains = HashMap::new();
        for rail in &config.rails {
            let Some(url) = &rail.rpc_url else { continue };
            let timeout = config
                .facilitators
                .iter()
                .find(|(name, _)| *name == rail.facilitator)
                .map_or(std::time::Duration::from_secs(10), |(_, f)| f.timeout);
            let reader = ChainReader::new(url.clone(), timeout)
                .map_err(|e| PaymentsError::Compile(e.to_string()))?;
            chains.insert(
                (
                    rail.network.to_string(),
                    rail.asset.to_string().to_ascii_lowercase(),
                ),
                Arc::new(reader),
            );
        }
        Ok(Self {
            table: RwLock::new(Arc::new(table)),
            facilitators,
            public_url: config.filter.public_url.clone(),
            replay,
            ledger,
            metrics,
            pending: Mutex::new(HashMap::new()),
            unresolved: Mutex::new(HashMap::new()),
            chains,
            lightning,
            clock: Arc::new(unix_now),
        })
    }

    /// Replaces the wall clock (tests).
    #[cfg(test)]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the Lightning rail (tests: a node double).
    #[cfg(test)]
    pub fn with_lightning(mut self, rail: Arc<LightningRail>) -> Self {
        self.lightning = Some(rail);
        self
    }

    /// Writes a ledger event (ext_authz records the L402 tokens it accepts).
    pub fn record(&self, event: LedgerEvent) {
        self.ledger.record(event);
    }

    /// Unix seconds, by the clock verification uses.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The Lightning rail, when `lightning:` and `l402:` are configured.
    pub fn lightning(&self) -> Option<&Arc<LightningRail>> {
        self.lightning.as_ref()
    }

    /// The Lightning price of `route`, when it sells Lightning and the rail is up.
    pub fn lightning_price(&self, route: &str) -> Option<LightningPrice> {
        self.lightning.as_ref()?;
        self.routes().routes.get(route)?.lightning
    }

    /// The current route table (a snapshot: later swaps do not change it).
    pub fn routes(&self) -> Arc<RouteSet> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The current compiled route table (what ext_authz matches against).
    pub fn compiled(&self) -> Arc<CompiledConfig> {
        self.routes().compiled.clone()
    }

    /// Swaps in a new route table (validated by the route store). Payments verified under the
    /// old one keep their requirements until settled or released.
    pub fn set_routes(&self, valid: &ValidRoutes) -> Result<(), PaymentsError> {
        let set = RouteSet::build(
            &valid.filter,
            valid.compiled.clone(),
            &valid.routes,
            &self.facilitators,
        )?;
        let set = Arc::new(set);
        match self.table.write() {
            Ok(mut t) => *t = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
        Ok(())
    }

    pub fn public_url(&self) -> Option<&str> {
        self.public_url.as_deref()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    fn reject(&self, route: &str, reason: &str, event: LedgerEvent) -> Verified {
        self.metrics.verify("invalid", reason);
        self.ledger.record(LedgerEvent {
            reason: Some(reason.to_owned()),
            ..event
        });
        tracing::info!(route = %route, reason = %reason, "payment rejected");
        Verified::Invalid {
            reason: reason.to_owned(),
            payer: None,
        }
    }

    /// Verifies the payment in `raw_header` (the `header_name` header's value) for `route`.
    pub async fn verify(
        &self,
        route: &str,
        header_name: &str,
        raw_header: &str,
        resource_url: &str,
    ) -> Verified {
        self.verify_inner(route, header_name, raw_header, resource_url, None)
            .await
    }

    /// [`Payments::verify`] for a payment that buys `purchase`, which can be bought once: a
    /// second payment for it is not taken (see `purchase`).
    pub async fn verify_purchase(
        &self,
        route: &str,
        header_name: &str,
        raw_header: &str,
        resource_url: &str,
        purchase: &Renewal,
    ) -> Purchase<Verified> {
        match self.reserve(purchase).await {
            Ok(Reservation::Open) => {}
            Ok(Reservation::Bought) => return Purchase::Bought,
            Ok(Reservation::InFlight) => return Purchase::InFlight,
            Err(e) => {
                self.metrics.verify("unavailable", REASON_STORE_UNAVAILABLE);
                tracing::error!(error = %e, route = %route, "replay store unavailable");
                return Purchase::Taken(Verified::Unavailable {
                    reason: REASON_STORE_UNAVAILABLE.into(),
                });
            }
        }
        let key = purchase.key();
        let v = self
            .verify_inner(route, header_name, raw_header, resource_url, Some(&key))
            .await;
        if !matches!(v, Verified::Valid { .. }) {
            self.purchase_not_paid(&key).await;
        }
        Purchase::Taken(v)
    }

    async fn verify_inner(
        &self,
        route: &str,
        header_name: &str,
        raw_header: &str,
        resource_url: &str,
        purchase: Option<&str>,
    ) -> Verified {
        let now = (self.clock)();
        let base_event = LedgerEvent::new(EventKind::Rejected, route);
        let table = self.routes();
        let Some(info) = table.routes.get(route) else {
            tracing::warn!(
                route = %route,
                "verify for a route that is not a paid route here (stale filter config?)"
            );
            return self.reject(route, REASON_UNKNOWN_ROUTE, base_event);
        };
        if !self.ledger.writable() {
            return self.ledger_unavailable(route);
        }

        // Decode: typed for the checks, raw JSON to forward unchanged to the facilitator.
        let (payment, payload_json) = match decode_payment_json(raw_header.trim()) {
            Ok(decoded) => decoded,
            Err(reason) => return self.reject(route, reason.as_str(), base_event),
        };
        if PaymentKind::of(&payment) == PaymentKind::Lightning {
            let path = url_path(resource_url);
            return self
                .verify_lightning(route, path, info, &payment, now, purchase)
                .await;
        }
        let version = payment.x402_version();
        let expected_header = if version == 1 {
            "x-payment"
        } else {
            "payment-signature"
        };
        if !header_name.eq_ignore_ascii_case(expected_header) {
            tracing::debug!(
                route = %route,
                header = %header_name,
                version,
                "payment version differs from its header"
            );
        }

        let checked = match check_payment(&info.offers, &payment, now) {
            Ok(c) => c,
            Err(reason) => return self.reject(route, reason.as_str(), base_event),
        };
        // A payment names the resource it was signed for (v2): it buys that one, not another
        // route (or path) with the same price and payee.
        if let PaymentPayload::V2(p) = &payment {
            let signed_for = p
                .resource
                .as_ref()
                .map(|r| canonical_path(url_path(&r.url)));
            if signed_for.is_some_and(|signed| signed != canonical_path(url_path(resource_url))) {
                return self.reject(route, REASON_RESOURCE_MISMATCH, base_event);
            }
        }
        let Some(offer) = info.offers.get(checked.offer_index) else {
            return self.reject(
                route,
                ErrorReason::InvalidPaymentRequirements.as_str(),
                base_event,
            );
        };
        let payer = checked.payer().to_string();
        let event = LedgerEvent {
            network: Some(checked.network.to_string()),
            asset: Some(checked.asset.to_string()),
            payer: Some(payer.clone()),
            amount: Some(offer.amount.to_string()),
            nonce: Some(format!("0x{}", hex::encode(checked.authorization.nonce))),
            ..base_event
        };
        if let Err(reason) = checked.verify_signature(offer) {
            return self.reject(route, reason.as_str(), event);
        }

        // Claim before asking the facilitator: a concurrent replay loses here.
        let key: ReplayKey = checked.replay_key();
        let expires_at = checked
            .authorization
            .valid_before
            .saturating_add(EXPIRY_MARGIN_SECS);
        match self.replay.claim(&key.to_string(), expires_at, now).await {
            Ok(Claim::Claimed) => self.metrics.replay_claim("claimed"),
            Ok(Claim::AlreadyUsed) => {
                self.metrics.replay_claim("already_used");
                return self.reject(
                    route,
                    ErrorReason::InvalidExactEvmNonceAlreadyUsed.as_str(),
                    event,
                );
            }
            Err(e) => {
                self.metrics.replay_claim("error");
                self.metrics.verify("unavailable", REASON_STORE_UNAVAILABLE);
                tracing::error!(error = %e, route = %route, "replay store unavailable");
                return Verified::Unavailable {
                    reason: REASON_STORE_UNAVAILABLE.into(),
                };
            }
        }

        // Our own requirement, in the payload's dialect.
        let (requirements, wire_network) = if version == 1 {
            match offer.requirements_v1(resource_url, &info.description, &info.mime_type) {
                Some(r) => {
                    let net = r.network.clone();
                    (serde_json::to_value(r).unwrap_or(Value::Null), net)
                }
                None => {
                    self.release_claim(&key).await;
                    return self.reject(route, ErrorReason::InvalidNetwork.as_str(), event);
                }
            }
        } else {
            (offer.requirements_v2_value(), offer.network.to_string())
        };
        let Some(facilitator) = info.facilitators.get(checked.offer_index).cloned() else {
            self.release_claim(&key).await;
            return self.reject(
                route,
                ErrorReason::InvalidPaymentRequirements.as_str(),
                event,
            );
        };
        let request = FacilitatorRequest {
            x402_version: u32::from(version),
            payment_payload: &payload_json,
            payment_requirements: &requirements,
        };
        let answer = match facilitator.verify(&request).await {
            Ok(a) => a,
            Err(e) => {
                self.release_claim(&key).await;
                self.metrics.verify("unavailable", REASON_UNAVAILABLE);
                tracing::warn!(route = %route, facilitator = %facilitator.name(), error = %e, "verify: facilitator unavailable");
                return Verified::Unavailable {
                    reason: REASON_UNAVAILABLE.into(),
                };
            }
        };
        let blames_signature = answer
            .invalid_reason
            .as_deref()
            .is_some_and(|r| SIGNATURE_REASONS.contains(&r));
        if !answer.is_valid && blames_signature {
            // We recovered the signer ourselves: the facilitator could not check (chain down).
            self.release_claim(&key).await;
            self.metrics.verify("unavailable", REASON_UNAVAILABLE);
            tracing::warn!(
                route = %route,
                facilitator = %facilitator.name(),
                reason = answer.invalid_reason.as_deref().unwrap_or(""),
                "verify: the facilitator refused a signature we verified; its chain access is probably down"
            );
            return Verified::Unavailable {
                reason: REASON_UNAVAILABLE.into(),
            };
        }
        if !answer.is_valid {
            self.release_claim(&key).await;
            let reason = answer
                .invalid_reason
                .clone()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| ErrorReason::UnexpectedVerifyError.as_str().to_owned());
            if let Some(msg) = &answer.invalid_message {
                tracing::debug!(route = %route, reason = %reason, message = %msg, "facilitator: invalid");
            }
            let out = self.reject(route, &reason, event);
            return match out {
                Verified::Invalid { reason, .. } => Verified::Invalid {
                    reason,
                    payer: Some(answer.payer.unwrap_or(payer)),
                },
                other => other,
            };
        }

        let payment_id = hex::encode(rand::random::<[u8; 16]>());
        let payer = answer.payer.filter(|p| !p.is_empty()).unwrap_or(payer);
        let ttl = u64::from(offer.max_timeout_seconds);
        let pending = Pending {
            route: route.to_owned(),
            x402_version: version,
            settlement: Settlement::Facilitator {
                payload: payload_json,
                requirements,
                facilitator: facilitator.name().to_owned(),
                asset: checked.asset.to_string(),
                authorizer: checked.payer().to_string(),
                nonce: format!("0x{}", hex::encode(checked.authorization.nonce)),
                valid_before: checked.authorization.valid_before,
            },
            payer: payer.clone(),
            wire_network,
            event: event.clone(),
            expires_at: now
                .saturating_add(ttl)
                .min(checked.authorization.valid_before),
            claim: key.to_string(),
            purchase: purchase.map(str::to_owned),
        };
        if let Err(refused) = self.accept(&payment_id, pending).await {
            return refused;
        }
        tracing::info!(route = %route, payer = %payer, payment_id = %payment_id, version, "payment verified");
        Verified::Valid {
            payment_id,
            payer,
            x402_version: version,
            amount: format!(
                "{} {}/erc20:{}",
                offer.amount.get(),
                offer.network,
                offer.asset
            ),
        }
    }

    fn ledger_unavailable(&self, route: &str) -> Verified {
        self.metrics
            .verify("unavailable", REASON_LEDGER_UNAVAILABLE);
        tracing::warn!(route = %route, error = self.ledger.last_error().as_deref().unwrap_or(""), "payment refused: the ledger cannot be written");
        Verified::Unavailable {
            reason: REASON_LEDGER_UNAVAILABLE.into(),
        }
    }

    /// Takes a verified payment: journaled (committed) first, then held until its Settle or
    /// Release. If the ledger cannot record it, its claim is given back and the answer is
    /// UNAVAILABLE: no payment is accepted unrecorded.
    async fn accept(&self, payment_id: &str, pending: Pending) -> Result<(), Verified> {
        if let Err(e) = self.journal_verified(payment_id, &pending).await {
            self.release_key(&pending.claim).await;
            tracing::error!(route = %pending.route, error = %e, "verify: the ledger cannot record the payment; refused");
            return Err(self.ledger_unavailable(&pending.route));
        }
        self.metrics.verify("valid", "");
        if let Ok(mut p) = self.pending.lock() {
            p.insert(payment_id.to_owned(), pending);
            self.metrics.set_pending(p.len());
        }
        Ok(())
    }

    /// Writes the payment's journal row and its `verified` event, and waits for the commit.
    async fn journal_verified(
        &self,
        payment_id: &str,
        pending: &Pending,
    ) -> Result<(), crate::stores::ledger::LedgerError> {
        let settlement = serde_json::to_string(pending)
            .map_err(|e| crate::stores::ledger::LedgerError::Write(e.to_string()))?;
        let entry = JournalEntry {
            id: payment_id.to_owned(),
            state: PaymentState::Verified,
            event: pending.event.clone(),
            expires_at: pending.expires_at,
            settlement,
        };
        let verified = LedgerEvent {
            event: EventKind::Verified,
            ..pending.event.clone()
        };
        self.ledger
            .write(vec![Op::Insert(entry), Op::Event(verified)], false)
            .await
            .map(|_| ())
    }

    async fn release_claim(&self, key: &ReplayKey) {
        self.release_key(&key.to_string()).await;
    }

    async fn release_key(&self, key: &str) {
        if let Err(e) = self.replay.release(key).await {
            tracing::warn!(error = %e, "could not release a nonce claim");
        }
    }

    /// x402 over Lightning (invoice form, x402.md §6.1): the echoed requirement has our fixed
    /// fields, the invoice is one we minted for this route and price, unexpired, not used
    /// before, and paid according to the node.
    async fn verify_lightning(
        &self,
        route: &str,
        path: &str,
        info: &RouteInfo,
        payment: &PaymentPayload,
        now: u64,
        purchase: Option<&str>,
    ) -> Verified {
        let base_event = LedgerEvent::new(EventKind::Rejected, route);
        let (Some(rail), Some(price)) = (&self.lightning, info.lightning) else {
            return self.reject(route, ErrorReason::InvalidNetwork.as_str(), base_event);
        };
        let lp = match check_lightning_payment(payment) {
            Ok(p) => p,
            Err(reason) => return self.reject(route, reason.as_str(), base_event),
        };
        let network = rail.network();
        if lp.network != network {
            return self.reject(route, ErrorReason::InvalidNetwork.as_str(), base_event);
        }
        let mut event = LedgerEvent {
            network: Some(network.caip2().to_owned()),
            asset: Some(ASSET_BTC.to_owned()),
            payer: Some(PAY_TO_ANONYMOUS.to_owned()),
            amount: Some(price.amount_msat.to_string()),
            ..base_event
        };
        if lp.amount_msat != price.amount_msat {
            return self.reject(route, REASON_INVOICE_AMOUNT, event);
        }
        let decoded = match bolt11::decode(lp.invoice) {
            Ok(d) => d,
            Err(_) => return self.reject(route, ErrorReason::InvalidPayload.as_str(), event),
        };
        event.nonce = Some(hex::encode(decoded.payment_hash));
        if decoded.network != Some(network) {
            return self.reject(route, ErrorReason::InvalidNetwork.as_str(), event);
        }
        if decoded.amount_msat != Some(price.amount_msat) {
            return self.reject(route, REASON_INVOICE_AMOUNT, event);
        }
        // Ours, for this route and price: anti-substitution against the registry.
        let minted = match rail.minted(&decoded.payment_hash) {
            Some(m)
                if m.route == route
                    && m.amount_msat == price.amount_msat
                    && m.bolt11 == lp.invoice =>
            {
                m
            }
            _ => return self.reject(route, REASON_INVOICE_UNKNOWN, event),
        };
        // Sold for one path (e.g. one lease's symbol): it buys that path only.
        if minted.path.as_deref().is_some_and(|p| p != path) {
            return self.reject(route, REASON_INVOICE_OTHER_PATH, event);
        }
        if decoded.expires_at <= now || minted.expires_at <= now {
            return self.reject(route, REASON_INVOICE_EXPIRED, event);
        }
        // Whichever rail presents it, one Lightning payment is one purchase: the same key as
        // the L402 claims.
        let claim_key = l402_claim_key(&decoded.payment_hash);
        let claim_until = minted.expires_at.saturating_add(EXPIRY_MARGIN_SECS);
        match self.replay.claim(&claim_key, claim_until, now).await {
            Ok(Claim::Claimed) => self.metrics.replay_claim("claimed"),
            Ok(Claim::AlreadyUsed) => {
                self.metrics.replay_claim("already_used");
                return self.reject(route, REASON_INVOICE_ALREADY_USED, event);
            }
            Err(e) => {
                self.metrics.replay_claim("error");
                self.metrics.verify("unavailable", REASON_STORE_UNAVAILABLE);
                tracing::error!(error = %e, route = %route, "replay store unavailable");
                return Verified::Unavailable {
                    reason: REASON_STORE_UNAVAILABLE.into(),
                };
            }
        }
        let state = rail.node().lookup_invoice(&decoded.payment_hash).await;
        let refused = match state {
            Ok(InvoiceState::Settled { .. }) => None,
            Ok(InvoiceState::Open) => Some(REASON_INVOICE_NOT_PAID),
            Ok(InvoiceState::Canceled | InvoiceState::Expired) => Some(REASON_INVOICE_EXPIRED),
            Err(NodeError::NotFound) => Some(REASON_INVOICE_UNKNOWN),
            Err(e) => {
                self.release_key(&claim_key).await;
                self.metrics.verify("unavailable", REASON_NODE_UNAVAILABLE);
                tracing::warn!(route = %route, error = %e, "verify: lightning node unavailable");
                return Verified::Unavailable {
                    reason: REASON_NODE_UNAVAILABLE.into(),
                };
            }
        };
        if let Some(reason) = refused {
            // Not consumed: the same invoice may come back once paid.
            self.release_key(&claim_key).await;
            return self.reject(route, reason, event);
        }

        let payment_id = hex::encode(rand::random::<[u8; 16]>());
        let pending = Pending {
            route: route.to_owned(),
            x402_version: 2,
            settlement: Settlement::Lightning {
                claim_key: claim_key.clone(),
                payment_hash: decoded.payment_hash,
            },
            payer: PAY_TO_ANONYMOUS.to_owned(),
            wire_network: network.caip2().to_owned(),
            event: event.clone(),
            expires_at: now.saturating_add(LIGHTNING_PENDING_SECS),
            claim: claim_key.clone(),
            purchase: purchase.map(str::to_owned),
        };
        if let Err(refused) = self.accept(&payment_id, pending).await {
            return refused;
        }
        rail.invoices().spent(&decoded.payment_hash);
        tracing::info!(route = %route, payment_id = %payment_id, network = network.caip2(), "lightning payment verified");
        Verified::Valid {
            payment_id,
            payer: PAY_TO_ANONYMOUS.to_owned(),
            x402_version: 2,
            amount: format!("{} msat", price.amount_msat),
        }
    }

    /// The Lightning part of a 402 for `route`, bound to `path` and `method` (when given), for
    /// the client at `source` (Envoy's `source.address`): the client's open invoice for the
    /// same thing when it has one, else a fresh invoice and macaroon within the invoice limits
    /// (see `rails::invoices`). `Err`: the 402 offers x402 alone (or answers 429 when it has
    /// nothing else to offer).
    pub async fn challenge(
        &self,
        route: &str,
        path: &str,
        method: &str,
        source: &str,
    ) -> Result<MintedChallenge, NotMinted> {
        let now = (self.clock)();
        let unavailable = |why: &str| {
            self.metrics.challenge("unavailable");
            tracing::debug!(route = %route, why, "no lightning challenge");
            NotMinted::Unavailable
        };
        let Some(rail) = &self.lightning else {
            return Err(unavailable("no lightning rail"));
        };
        let table = self.routes();
        let Some(info) = table.routes.get(route) else {
            tracing::warn!(route = %route, "challenge for a route that is not a paid route here (stale filter config?)");
            return Err(unavailable("unknown route"));
        };
        let Some(price) = info.lightning else {
            return Err(unavailable("route sells no lightning"));
        };
        let path = match path {
            "" => None,
            p => match bindable_path(p) {
                Some(p) => Some(p.to_owned()),
                None => {
                    tracing::warn!(route = %route, "challenge: request path cannot be bound into a token");
                    return Err(unavailable("bad path"));
                }
            },
        };
        let method = match method {
            "" => None,
            m => match bindable_method(m) {
                Some(m) => Some(m),
                None => return Err(unavailable("bad method")),
            },
        };
        let ask = Ask {
            client: ClientId::from_source(source),
            route: route.to_owned(),
            path,
            method,
        };
        if let Some(open) = rail.invoices().reuse(&ask, now) {
            // Unless it was paid and used meanwhile (here or at another replica).
            let key = l402_claim_key(&open.invoice.payment_hash);
            match self.replay.held(&key, now).await {
                Ok(false) => {
                    self.metrics.challenge("reused");
                    return Ok(open);
                }
                Ok(true) => rail.invoices().spent(&open.invoice.payment_hash),
                Err(e) => {
                    tracing::warn!(route = %route, error = %e, "replay store unavailable");
                    return Err(unavailable("replay store unavailable"));
                }
            }
        }
        let memo = if info.description.is_empty() {
            route
        } else {
            info.description.as_str()
        };
        match rail.mint(ask, price, memo, now).await {
            Ok(c) => {
                self.metrics.challenge("minted");
                self.ledger.record(LedgerEvent {
                    network: Some(rail.network().caip2().to_owned()),
                    asset: Some(ASSET_BTC.to_owned()),
                    amount: Some(price.amount_msat.to_string()),
                    nonce: Some(hex::encode(c.invoice.payment_hash)),
                    ..LedgerEvent::new(EventKind::InvoiceCreated, route)
                });
                Ok(c)
            }
            Err(MintError::Limited(limited)) => {
                self.metrics.challenge(if limited.scope == "client" {
                    "limited_client"
                } else {
                    "limited_total"
                });
                tracing::debug!(route = %route, client = %source, scope = limited.scope, "invoice limit reached: nothing minted");
                Err(NotMinted::Limited {
                    retry_after: limited.retry_after,
                })
            }
            Err(e) => {
                tracing::warn!(route = %route, error = %e, "lightning challenge unavailable: the 402 offers x402 only");
                Err(unavailable(e.kind()))
            }
        }
    }

    /// Claims a single-use credential once, until `expires_at`: an L402 token
    /// (`l402:<payment hash>`) or a lease (`lease:<lease id>`).
    pub async fn claim(
        &self,
        key: &str,
        route: &str,
        expires_at: u64,
        reusable: bool,
    ) -> ClaimResult {
        if let Some(id) = key.strip_prefix(CLAIM_PREFIX_LEASE) {
            return self.claim_lease(key, id, route, expires_at).await;
        }
        if !is_l402_claim_key(key) {
            // The filter only sends well-formed keys: refuse (fail closed) and say so.
            tracing::error!(route = %route, key_len = key.len(), "claim: malformed key");
            self.metrics.l402_claim("error");
            return ClaimResult::Unavailable;
        }
        // Kept at most as long as a token lives.
        let lifetime = self.lightning.as_ref().map_or(0, |r| r.valid_seconds());
        let event = LedgerEvent {
            nonce: key
                .strip_prefix(crate::rails::l402::CLAIM_PREFIX_L402)
                .map(str::to_owned),
            amount: self
                .routes()
                .routes
                .get(route)
                .and_then(|r| r.lightning)
                .map(|p| p.amount_msat.to_string()),
            network: self
                .lightning
                .as_ref()
                .map(|r| r.network().caip2().to_owned()),
            asset: Some(ASSET_BTC.to_owned()),
            payer: Some(PAY_TO_ANONYMOUS.to_owned()),
            ..LedgerEvent::new(EventKind::L402Claimed, route)
        };
        if reusable {
            return self.claim_reusable(key, expires_at, lifetime, event).await;
        }
        self.claim_once(&L402_CLAIM, key, expires_at, lifetime, event)
            .await
    }

    /// A reusable L402 token's first use in a filter VM: its payment is held for the L402 rail
    /// (`l402:<hash>` plus the marker `l402r:<hash>`), so its invoice buys nothing on another
    /// rail; the same token's first use in another VM finds the marker and is CLAIMED too.
    async fn claim_reusable(
        &self,
        key: &str,
        expires_at: u64,
        lifetime: u64,
        event: LedgerEvent,
    ) -> ClaimResult {
        let now = (self.clock)();
        let until = claim_until(now, expires_at, lifetime);
        let Some(hash) = key.strip_prefix(crate::rails::l402::CLAIM_PREFIX_L402) else {
            return ClaimResult::Unavailable;
        };
        let marker = format!("{CLAIM_PREFIX_L402_REUSABLE}{hash}");
        let route = event.route.clone();
        let outcome = match self.replay.claim(key, until, now).await {
            Ok(Claim::Claimed) => match self.replay.claim(&marker, until, now).await {
                Ok(_) => ClaimResult::Claimed,
                Err(e) => {
                    self.release_key(key).await;
                    tracing::error!(error = %e, route = %route, "replay store unavailable");
                    ClaimResult::Unavailable
                }
            },
            // Spent before: by L402 tokens (the marker is there) or by another rail.
            Ok(Claim::AlreadyUsed) => match self.replay.claim(&marker, until, now).await {
                Ok(Claim::AlreadyUsed) => ClaimResult::Claimed,
                Ok(Claim::Claimed) => {
                    self.release_key(&marker).await;
                    ClaimResult::AlreadyUsed
                }
                Err(e) => {
                    tracing::error!(error = %e, route = %route, "replay store unavailable");
                    ClaimResult::Unavailable
                }
            },
            Err(e) => {
                tracing::error!(error = %e, route = %route, "replay store unavailable");
                ClaimResult::Unavailable
            }
        };
        match outcome {
            ClaimResult::Claimed => {
                self.metrics.l402_claim("reusable");
                self.invoice_spent(key);
            }
            ClaimResult::AlreadyUsed => {
                self.metrics.l402_claim("already_used");
                self.ledger.record(LedgerEvent {
                    event: EventKind::Rejected,
                    reason: Some(L402_CLAIM.reason.to_owned()),
                    ..event
                });
                tracing::info!(route = %route, "L402 token whose payment another rail spent");
            }
            ClaimResult::Unavailable => self.metrics.l402_claim("error"),
        }
        outcome
    }

    /// A single-use lease is used once (one request, one WebSocket session).
    async fn claim_lease(&self, key: &str, id: &str, route: &str, expires_at: u64) -> ClaimResult {
        let well_formed = id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            tracing::error!(route = %route, key_len = key.len(), "claim: malformed lease key");
            self.metrics.lease_claim("error");
            return ClaimResult::Unavailable;
        }
        // Kept at most as long as the route's leases last.
        let lifetime = self
            .compiled()
            .route(route)
            .and_then(|r| r.lease.as_ref())
            .map_or(0, |l| l.seconds);
        let event = LedgerEvent {
            nonce: Some(id.to_owned()),
            ..LedgerEvent::new(EventKind::LeaseClaimed, route)
        };
        self.claim_once(&LEASE_CLAIM, key, expires_at, lifetime, event)
            .await
    }

    /// Claims `key` in the replay store until `expires_at`, kept at least a minute (clock skew)
    /// and at most `lifetime` plus a margin; records `event` (as a rejection when already used).
    async fn claim_once(
        &self,
        kind: &ClaimKind,
        key: &str,
        expires_at: u64,
        lifetime: u64,
        mut event: LedgerEvent,
    ) -> ClaimResult {
        let now = (self.clock)();
        let until = claim_until(now, expires_at, lifetime);
        let count = |result: &str| (kind.metric)(&self.metrics, result);
        match self.replay.claim(key, until, now).await {
            Ok(Claim::Claimed) => {
                count("claimed");
                self.ledger.record(event);
                self.invoice_spent(key);
                ClaimResult::Claimed
            }
            Ok(Claim::AlreadyUsed) => {
                count("already_used");
                let route = event.route.clone();
                event.event = EventKind::Rejected;
                event.reason = Some(kind.reason.to_owned());
                self.ledger.record(event);
                tracing::info!(route = %route, "{}", kind.presented_again);
                ClaimResult::AlreadyUsed
            }
            Err(e) => {
                count("error");
                tracing::error!(error = %e, route = %event.route, "replay store unavailable");
                ClaimResult::Unavailable
            }
        }
    }

    /// An invoice whose token was just claimed (`l402:<hash>`) no longer counts as open.
    fn invoice_spent(&self, claim_key: &str) {
        let (Some(rail), Some(hash)) = (
            &self.lightning,
            claim_key.strip_prefix(crate::rails::l402::CLAIM_PREFIX_L402),
        ) else {
            return;
        };
        let mut out = [0u8; 32];
        if hex::decode_to_slice(hash, &mut out).is_ok() {
            rail.invoices().spent(&out);
        }
    }

    fn take(&self, payment_id: &str) -> Option<Pending> {
        let mut p = self.pending.lock().ok()?;
        let out = p.remove(payment_id);
        self.metrics.set_pending(p.len());
        out
    }

    fn unknown_payment() -> Settled {
        Settled {
            outcome: SettleOutcome::Failed,
            reason: REASON_UNKNOWN_PAYMENT.into(),
            payment_response: String::new(),
            transaction: String::new(),
            x402_version: 0,
        }
    }

    /// Settles a verified payment after the upstream answered `upstream_status` (0 = not
    /// known, as in ext_authz mode where settlement happens before forwarding). The work runs
    /// detached: if the caller goes away (Envoy killed, call cancelled) it still ends and its
    /// outcome is journaled.
    pub async fn settle(self: &Arc<Self>, payment_id: &str, upstream_status: u32) -> Settled {
        let Some(p) = self.take(payment_id) else {
            // Asked again for a settlement already under way (the filter retries a Settle it
            // timed out on): it stays with the reconciler; the answer is "pending".
            if let Some(s) = self.unresolved_answer(payment_id) {
                return s;
            }
            self.metrics.settle("failed");
            tracing::warn!(payment_id = %payment_id, "settle: unknown or expired payment id");
            return Self::unknown_payment();
        };
        if upstream_status >= 400 {
            // Never charge for a failed upstream: the filter should have called Release.
            tracing::warn!(
                payment_id = %payment_id,
                upstream_status,
                "settle called for a failed upstream; releasing instead"
            );
            let reason = format!("upstream_status_{upstream_status}");
            self.record_release(payment_id, &p, &reason);
            self.give_back_lightning(&p).await;
            self.metrics.settle("failed");
            return Settled {
                outcome: SettleOutcome::Failed,
                reason,
                payment_response: String::new(),
                transaction: String::new(),
                x402_version: p.x402_version,
            };
        }
        let me = self.clone();
        let id = payment_id.to_owned();
        let task = tokio::spawn(async move { me.settle_detached(id, p).await });
        match task.await {
            Ok(s) => s,
            Err(e) => {
                // The task panicked: its journal row says `settling`; the reconciler decides.
                tracing::error!(payment_id = %payment_id, error = %e, "settle task failed");
                self.metrics.settle("unknown");
                Settled {
                    outcome: SettleOutcome::Pending,
                    reason: SETTLEMENT_PENDING.into(),
                    payment_response: String::new(),
                    transaction: String::new(),
                    x402_version: 0,
                }
            }
        }
    }

    /// What to answer a Settle for a payment the reconciler holds.
    fn unresolved_answer(&self, payment_id: &str) -> Option<Settled> {
        let u = self.unresolved.lock().ok()?;
        let p = &u.get(payment_id)?.pending;
        let answer = pending_answer(p, None);
        Some(Settled {
            outcome: SettleOutcome::Pending,
            reason: SETTLEMENT_PENDING.into(),
            payment_response: receipt(&answer),
            transaction: String::new(),
            x402_version: p.x402_version,
        })
    }

    async fn settle_detached(self: Arc<Self>, payment_id: String, p: Pending) -> Settled {
        let (outcome, answer) = match &p.settlement {
            // Paid before the request was made: nothing to broadcast, the claim stays taken.
            Settlement::Lightning { payment_hash, .. } => (
                SettleOutcome::Settled,
                SettleAnswer {
                    success: true,
                    transaction: hex::encode(payment_hash),
                    network: p.wire_network.clone(),
                    payer: Some(PAY_TO_ANONYMOUS.to_owned()),
                    ..SettleAnswer::default()
                },
            ),
            Settlement::Facilitator { .. } => {
                // `settling` is durable before the facilitator can move money: after a crash
                // the row says "maybe paid", never "verified, not asked".
                let settling = JournalUpdate {
                    id: payment_id.clone(),
                    state: PaymentState::Settling,
                    transaction: None,
                    reason: None,
                    attempt: true,
                };
                match self
                    .ledger
                    .write(vec![Op::Transition(settling, None)], true)
                    .await
                {
                    Ok(true) => {}
                    // Not `verified` any more: decided elsewhere (another replica released it
                    // at expiry, or is settling it). Moving money now could pay twice.
                    Ok(false) => {
                        tracing::warn!(payment_id = %payment_id, "settle: the journal says this payment is no longer waiting; not settling it here");
                        return Settled {
                            outcome: SettleOutcome::Pending,
                            reason: SETTLEMENT_PENDING.into(),
                            payment_response: receipt(&pending_answer(&p, None)),
                            transaction: String::new(),
                            x402_version: p.x402_version,
                        };
                    }
                    Err(e) => {
                        tracing::error!(payment_id = %payment_id, error = %e, "settle: `settling` not journaled yet (held for retry); settling anyway");
                    }
                }
                self.track(&payment_id, &p, true);
                let attempt = self.ask_facilitator(&p).await;
                self.untrack_if_decided(&payment_id, &attempt);
                match attempt {
                    Attempt::Settled(a) => (SettleOutcome::Settled, a),
                    Attempt::Failed(a) => (SettleOutcome::Failed, a),
                    Attempt::Unknown(reason, a) => {
                        tracing::warn!(route = %p.route, payment_id = %payment_id, reason = %reason, "settlement outcome unknown; the client keeps its answer, the reconciler decides");
                        (SettleOutcome::Pending, pending_answer(&p, a))
                    }
                }
            }
        };
        self.finish(&payment_id, &p, outcome, answer)
    }

    /// Journals a settle's outcome and builds the answer.
    fn finish(
        &self,
        payment_id: &str,
        p: &Pending,
        outcome: SettleOutcome,
        mut answer: SettleAnswer,
    ) -> Settled {
        if answer.network.is_empty() {
            answer.network = p.wire_network.clone();
        }
        if answer.payer.as_deref().is_none_or(str::is_empty) {
            answer.payer = Some(p.payer.clone());
        }
        let reason = match outcome {
            SettleOutcome::Settled => String::new(),
            _ => answer
                .error_reason
                .clone()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| ErrorReason::UnexpectedSettleError.as_str().to_owned()),
        };
        let (kind, state, label) = match outcome {
            SettleOutcome::Settled => (EventKind::Settled, PaymentState::Settled, "settled"),
            SettleOutcome::Pending => (
                EventKind::SettlementUnknown,
                PaymentState::Unknown,
                "unknown",
            ),
            SettleOutcome::Failed => (EventKind::SettlementFailed, PaymentState::Failed, "failed"),
        };
        let transaction = answer.transaction.clone();
        self.journal(payment_id, p, state, kind, &reason, &transaction);
        self.metrics.settle(label);
        if outcome == SettleOutcome::Settled {
            tracing::info!(route = %p.route, payment_id = %payment_id, transaction = %transaction, "payment settled");
        } else if outcome != SettleOutcome::Pending {
            tracing::warn!(route = %p.route, payment_id = %payment_id, reason = %reason, "settlement failed");
        }
        Settled {
            outcome,
            reason,
            payment_response: receipt(&answer),
            transaction,
            x402_version: p.x402_version,
        }
    }

    /// Queues a state change and its event (held and retried if the disk is full).
    fn journal(
        &self,
        payment_id: &str,
        p: &Pending,
        state: PaymentState,
        kind: EventKind,
        reason: &str,
        transaction: &str,
    ) {
        self.conclude_purchase(p, state);
        let reason = (!reason.is_empty()).then(|| reason.to_owned());
        let transaction = (!transaction.is_empty()).then(|| transaction.to_owned());
        self.ledger.queue(vec![Op::Transition(
            JournalUpdate {
                id: payment_id.to_owned(),
                state,
                transaction: transaction.clone(),
                reason: reason.clone(),
                attempt: false,
            },
            Some(LedgerEvent {
                event: kind,
                reason,
                transaction,
                at: unix_now_millis(),
                ..p.event.clone()
            }),
        )]);
    }

    /// One `/settle` call, classified. Only a definite answer from the facilitator is a failure.
    async fn ask_facilitator(&self, p: &Pending) -> Attempt {
        let Settlement::Facilitator {
            payload,
            requirements,
            facilitator,
            ..
        } = &p.settlement
        else {
            return Attempt::Unknown("not an EVM payment".into(), None);
        };
        let Some(client) = self.facilitators.get(facilitator) else {
            return Attempt::Unknown(format!("facilitator {facilitator} is not configured"), None);
        };
        let request = FacilitatorRequest {
            x402_version: u32::from(p.x402_version),
            payment_payload: payload,
            payment_requirements: requirements,
        };
        match client.settle(&request).await {
            Ok(a) if a.success => Attempt::Settled(a),
            Ok(a) if a.error_reason.as_deref() == Some(SETTLEMENT_PENDING) => {
                Attempt::Unknown(SETTLEMENT_PENDING.into(), Some(a))
            }
            Ok(a) => Attempt::Failed(a),
            Err(e) => Attempt::Unknown(e.to_string(), None),
        }
    }

    /// Puts a payment in the unresolved set (busy: an attempt is running).
    fn track(&self, payment_id: &str, p: &Pending, busy: bool) {
        if let Ok(mut u) = self.unresolved.lock() {
            let entry = u
                .entry(payment_id.to_owned())
                .or_insert_with(|| Unresolved {
                    pending: p.clone(),
                    since_ms: unix_now_millis(),
                    attempts: 0,
                    next_at: 0,
                    busy,
                });
            entry.busy = busy;
        }
    }

    /// After an attempt: decided ones leave the set; unknown ones wait for their next try.
    fn untrack_if_decided(&self, payment_id: &str, attempt: &Attempt) {
        let now = (self.clock)();
        if let Ok(mut u) = self.unresolved.lock() {
            match attempt {
                Attempt::Unknown(..) => {
                    if let Some(e) = u.get_mut(payment_id) {
                        e.busy = false;
                        e.attempts = e.attempts.saturating_add(1);
                        let backoff = 1u64
                            .checked_shl(e.attempts.min(6))
                            .unwrap_or(RECONCILE_BACKOFF_MAX_SECS)
                            .min(RECONCILE_BACKOFF_MAX_SECS);
                        e.next_at = now.saturating_add(backoff);
                    }
                }
                _ => {
                    u.remove(payment_id);
                }
            }
        }
        self.publish_backlog();
    }

    fn publish_backlog(&self) {
        let (count, age_ms) = self.backlog();
        self.metrics.set_unresolved(count, age_ms as f64 / 1000.0);
    }

    /// Settlements whose outcome is not known yet, and the age of the oldest in milliseconds.
    fn backlog(&self) -> (usize, i64) {
        let Ok(u) = self.unresolved.lock() else {
            return (0, 0);
        };
        let oldest = u.values().map(|e| e.since_ms).min();
        let age = oldest.map_or(0, |t| unix_now_millis().saturating_sub(t).max(0));
        (u.len(), age)
    }

    /// Settlements whose outcome is not known yet.
    pub fn unresolved_count(&self) -> usize {
        self.backlog().0
    }

    /// Age of the oldest unresolved settlement, in seconds (0: none).
    pub fn unresolved_age_seconds(&self) -> u64 {
        u64::try_from(self.backlog().1 / 1000).unwrap_or(0)
    }

    /// Whether the ledger takes writes (paid routes answer 503 while it does not).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Takes up the journal's unfinished payments after a restart: verified ones wait for
    /// their Settle or Release again (the filter calls the same verifier back), the ones that
    /// were settling go to the reconciler.
    pub fn resume(&self) -> usize {
        let rows = self.ledger.take_open_payments();
        let n = rows.len();
        for row in rows {
            self.resume_row(row, "verifier_restarted");
        }
        if n > 0 {
            tracing::info!(payments = n, "resumed unfinished payments from the journal");
        }
        self.publish_backlog();
        n
    }

    /// Takes up payments a replica left unfinished (it died, or it is gone for good): rows
    /// nobody touched for [`ORPHAN_AFTER_MS`]. A replica touches its own unknown rows at every
    /// attempt, so a live one keeps them; the database hands each row to one replica.
    pub async fn adopt_orphans(&self) -> usize {
        let stale_before = unix_now_millis().saturating_sub(ORPHAN_AFTER_MS);
        let rows = match self.ledger.adopt(stale_before).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for unfinished payments of other replicas");
                return 0;
            }
        };
        let mut adopted = 0;
        for row in rows {
            let ours = self.pending.lock().is_ok_and(|p| p.contains_key(&row.id))
                || self
                    .unresolved
                    .lock()
                    .is_ok_and(|u| u.contains_key(&row.id));
            if !ours {
                tracing::warn!(payment_id = %row.id, state = row.state.as_str(), "adopting an unfinished payment nobody is working on");
                self.resume_row(row, "owner_gone");
                adopted += 1;
            }
        }
        self.publish_backlog();
        adopted
    }

    fn resume_row(&self, row: JournalRow, why: &str) {
        let pending: Pending = match serde_json::from_str(&row.settlement) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(payment_id = %row.id, error = %e, "journal row cannot be read back; left for an operator");
                return;
            }
        };
        match (row.state, &pending.settlement) {
            (PaymentState::Verified, _) => {
                if let Ok(mut p) = self.pending.lock() {
                    p.insert(row.id, pending);
                    self.metrics.set_pending(p.len());
                }
            }
            // A Lightning payment is paid before it is verified: settling it is local.
            (_, Settlement::Lightning { .. }) => {
                self.finish(
                    &row.id,
                    &pending,
                    SettleOutcome::Settled,
                    SettleAnswer {
                        success: true,
                        network: pending.wire_network.clone(),
                        ..SettleAnswer::default()
                    },
                );
            }
            (_, Settlement::Facilitator { .. }) => {
                if row.state == PaymentState::Settling {
                    self.journal(
                        &row.id,
                        &pending,
                        PaymentState::Unknown,
                        EventKind::SettlementUnknown,
                        why,
                        "",
                    );
                }
                if let Ok(mut u) = self.unresolved.lock() {
                    u.insert(
                        row.id,
                        Unresolved {
                            pending,
                            since_ms: row.created_at,
                            attempts: row.attempts,
                            next_at: 0,
                            busy: false,
                        },
                    );
                }
            }
        }
    }

    /// One round of reconciliation: every unresolved settlement due for an attempt is decided
    /// from the chain (rails with `rpc_url`) or asked of the facilitator again while its
    /// authorization is valid. Answers how many were decided.
    pub async fn reconcile(&self) -> usize {
        let now = (self.clock)();
        let due: Vec<(String, Pending)> = match self.unresolved.lock() {
            Ok(mut u) => u
                .iter_mut()
                .filter(|(_, e)| !e.busy && e.next_at <= now)
                .map(|(id, e)| {
                    e.busy = true;
                    (id.clone(), e.pending.clone())
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut decided = 0;
        for (id, p) in due {
            let attempt = self.reconcile_one(&id, &p, now).await;
            let outcome = match &attempt {
                Attempt::Settled(a) => Some((SettleOutcome::Settled, a.clone())),
                Attempt::Failed(a) => Some((SettleOutcome::Failed, a.clone())),
                Attempt::Unknown(..) => None,
            };
            self.untrack_if_decided(&id, &attempt);
            match outcome {
                Some((o, a)) => {
                    decided += 1;
                    self.metrics.reconciled(if o == SettleOutcome::Settled {
                        "settled"
                    } else {
                        "failed"
                    });
                    tracing::info!(payment_id = %id, outcome = ?o, "unknown settlement resolved");
                    self.finish(&id, &p, o, a);
                }
                None => {
                    self.metrics.reconciled("unknown");
                    // Still ours: other replicas leave a row that was touched lately.
                    self.ledger.queue(vec![Op::Transition(
                        JournalUpdate {
                            id: id.clone(),
                            state: PaymentState::Unknown,
                            transaction: None,
                            reason: None,
                            attempt: true,
                        },
                        None,
                    )]);
                }
            }
        }
        decided
    }

    async fn reconcile_one(&self, id: &str, p: &Pending, now: u64) -> Attempt {
        let Settlement::Facilitator {
            asset,
            authorizer,
            nonce,
            valid_before,
            ..
        } = &p.settlement
        else {
            return Attempt::Settled(SettleAnswer {
                success: true,
                ..SettleAnswer::default()
            });
        };
        let network = p.event.network.clone().unwrap_or_default();
        let chain = self
            .chains
            .get(&(network, asset.to_ascii_lowercase()))
            .cloned();
        if let Some(chain) = &chain {
            match chain.authorization_used(asset, authorizer, nonce).await {
                Ok(true) => return paid_on_chain(chain, asset, authorizer, nonce).await,
                // Past validBefore an unused authorization can never move money.
                Ok(false) if now > *valid_before => {
                    return Attempt::Failed(SettleAnswer {
                        error_reason: Some("authorization_expired_unsettled".into()),
                        ..SettleAnswer::default()
                    });
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(payment_id = %id, error = %e, "reconcile: chain unreadable; will retry");
                    return Attempt::Unknown(e.to_string(), None);
                }
            }
        } else if now > *valid_before {
            // Without a chain reader nothing can tell whether the first attempt paid.
            tracing::error!(payment_id = %id, route = %p.route, "reconcile: authorization expired and the rail has no rpc_url: the outcome stays unknown; check the chain by hand");
            return Attempt::Unknown("unresolvable_without_rpc_url".into(), None);
        }
        match self.ask_facilitator(p).await {
            Attempt::Failed(a) => {
                let maybe_paid = a
                    .error_reason
                    .as_deref()
                    .is_some_and(|r| ALREADY_USED_REASONS.contains(&r));
                match (&chain, maybe_paid) {
                    // The chain decides: an earlier attempt may have gone through meanwhile.
                    (Some(chain), _) => {
                        match chain.authorization_used(asset, authorizer, nonce).await {
                            Ok(true) => paid_on_chain(chain, asset, authorizer, nonce).await,
                            Ok(false) => Attempt::Failed(a),
                            Err(e) => Attempt::Unknown(e.to_string(), None),
                        }
                    }
                    (None, true) => Attempt::Unknown(a.error_reason.unwrap_or_default(), None),
                    (None, false) => Attempt::Failed(a),
                }
            }
            other => other,
        }
    }

    fn record_release(&self, payment_id: &str, p: &Pending, reason: &str) {
        self.journal(
            payment_id,
            p,
            PaymentState::Released,
            EventKind::Released,
            reason,
            "",
        );
    }

    /// A Lightning payment that was not consumed (the upstream failed, or nobody settled it):
    /// the client paid already, so its invoice may be presented again.
    async fn give_back_lightning(&self, p: &Pending) {
        if let Settlement::Lightning { claim_key, .. } = &p.settlement {
            self.release_key(claim_key).await;
        }
    }

    /// The upstream failed: nothing is charged. An EVM nonce stays claimed (the authorization
    /// was presented once; the client signs a new one to retry); a paid Lightning invoice is
    /// given back (the client cannot pay it twice).
    pub async fn release(&self, payment_id: &str, upstream_status: u32) {
        match self.take(payment_id) {
            Some(p) => {
                self.record_release(
                    payment_id,
                    &p,
                    &format!("upstream_status_{upstream_status}"),
                );
                self.give_back_lightning(&p).await;
                tracing::info!(route = %p.route, payment_id = %payment_id, upstream_status, "payment released, not charged");
            }
            // Its settlement has started (the filter timed out on it and withholds the answer):
            // too late to release; the ledger notes that nothing was delivered.
            None if upstream_status == 0 && payment_id.len() == 32 => {
                self.ledger.queue(vec![Op::Withheld(payment_id.to_owned())]);
                tracing::warn!(payment_id = %payment_id, "answer withheld while the settlement was under way; noted in the ledger");
            }
            None => {
                tracing::debug!(payment_id = %payment_id, "release: unknown or expired payment id")
            }
        }
    }

    /// A verified payment whose caller gave up before it was answered (its deadline passed):
    /// released, and its claim given back so the same payment can be presented again.
    pub async fn abandon(&self, payment_id: &str) {
        let Some(p) = self.take(payment_id) else {
            return;
        };
        self.record_release(payment_id, &p, REASON_CALLER_GONE);
        if !p.claim.is_empty() {
            self.release_key(&p.claim).await;
        }
        tracing::warn!(route = %p.route, payment_id = %payment_id, "verified after its caller gave up: released, claim given back");
    }

    /// Gives back a claim taken for a caller that is gone.
    pub async fn unclaim(&self, key: &str) {
        self.release_key(key).await;
        tracing::warn!(
            key_len = key.len(),
            "claim taken after its caller gave up: given back"
        );
    }

    /// Drops pending payments nobody settled or released in time; records them as released.
    /// Also forgets expired minted invoices.
    pub async fn sweep_expired(&self) -> usize {
        let now = (self.clock)();
        let expired: Vec<(String, Pending)> = match self.pending.lock() {
            Ok(mut p) => {
                let ids: Vec<String> = p
                    .iter()
                    .filter(|(_, v)| v.expires_at <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                let out = ids
                    .into_iter()
                    .filter_map(|id| p.remove(&id).map(|v| (id, v)))
                    .collect();
                self.metrics.set_pending(p.len());
                out
            }
            Err(_) => Vec::new(),
        };
        for (id, p) in &expired {
            self.record_release(id, p, "expired");
            self.give_back_lightning(p).await;
            tracing::warn!(route = %p.route, "pending payment expired without settle or release");
        }
        if let Some(rail) = &self.lightning {
            rail.sweep(now);
            self.metrics
                .set_invoices_open(rail.invoices().sweep_count(now));
        }
        expired.len()
    }
}

/// The chain says the authorization was used: settled, with the transaction that used it when
/// its log can be found (the settlement stands without it).
async fn paid_on_chain(chain: &ChainReader, asset: &str, authorizer: &str, nonce: &str) -> Attempt {
    let transaction = chain
        .authorization_transaction(asset, authorizer, nonce)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    Attempt::Settled(SettleAnswer {
        success: true,
        transaction,
        ..SettleAnswer::default()
    })
}

/// The path of an absolute URL (`/` when it has none), without query or fragment.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split(['?', '#']).next().unwrap_or("/")
}

/// How long a claim is kept: until the credential expires, at least a minute (clock skew) and at
/// most `lifetime` plus a margin.
fn claim_until(now: u64, expires_at: u64, lifetime: u64) -> u64 {
    let max = lifetime.saturating_add(EXPIRY_MARGIN_SECS);
    expires_at.clamp(now.saturating_add(60), now.saturating_add(max.max(60)))
}

/// One settle attempt, classified.
enum Attempt {
    Settled(SettleAnswer),
    /// The facilitator (or the chain) said no for good: nothing was charged.
    Failed(SettleAnswer),
    /// Nobody knows yet (timeout, transport error, the facilitator's own `settlement_pending`).
    Unknown(String, Option<SettleAnswer>),
}

/// The receipt of a settlement whose outcome is not known yet (x402 `settlement_pending`).
fn pending_answer(p: &Pending, from_facilitator: Option<SettleAnswer>) -> SettleAnswer {
    let transaction = from_facilitator.map(|a| a.transaction).unwrap_or_default();
    SettleAnswer {
        success: false,
        error_reason: Some(SETTLEMENT_PENDING.into()),
        transaction,
        network: p.wire_network.clone(),
        payer: Some(p.payer.clone()),
        ..SettleAnswer::default()
    }
}

/// base64(JSON) for `PAYMENT-RESPONSE`.
fn receipt(answer: &SettleAnswer) -> String {
    serde_json::to_vec(answer)
        .map(|json| b64::encode(&json))
        .unwrap_or_default()
}

#[cfg(test)]
mod settlement_tests;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rails::facilitator::fake::{dead_url, FakeFacilitator, Reply};
    use crate::testkit::{harness, offer, Payer};
    use serde_json::json;

    const URL: &str = "http://api.test/api/quote";

    fn decode(resp: &str) -> Value {
        serde_json::from_slice(&b64::decode_strict(resp, 4096).expect("b64")).expect("json")
    }

    #[tokio::test]
    async fn verify_then_settle_v2() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(1);
        let auth = payer.authorization(&offer, unix_now(), 1);
        let header = payer.header_v2(&offer, &auth, URL);
        let v = h
            .payments
            .verify("quote", "payment-signature", &header, URL)
            .await;
        let Verified::Valid {
            payment_id,
            payer: who,
            x402_version,
            amount,
        } = v
        else {
            panic!("expected valid, got {v:?}");
        };
        assert_eq!(x402_version, 2);
        assert_eq!(who, payer.address().to_string());
        assert_eq!(payment_id.len(), 32);
        assert_eq!(amount, format!("1000 eip155:84532/erc20:{}", offer.asset));
        // The facilitator got our requirement and the client's payload verbatim.
        let calls = fake.calls();
        assert_eq!(calls[0].1["x402Version"], 2);
        assert_eq!(
            calls[0].1["paymentRequirements"],
            offer.requirements_v2_value()
        );
        assert_eq!(calls[0].1["paymentPayload"]["resource"]["url"], URL);

        let s = h.payments.settle(&payment_id, 200).await;
        assert_eq!(s.outcome, SettleOutcome::Settled);
        assert_eq!(s.x402_version, 2);
        let receipt = decode(&s.payment_response);
        assert_eq!(receipt["success"], true);
        assert_eq!(receipt["network"], "eip155:84532");
        assert_eq!(receipt["transaction"], s.transaction);
        // Settling twice: the id is gone.
        assert_eq!(
            h.payments.settle(&payment_id, 200).await.reason,
            REASON_UNKNOWN_PAYMENT
        );

        h.ledger.flush().await.expect("flush");
        let events = h.ledger.recent(10).await.expect("events");
        assert_eq!(events[0].event, EventKind::Settled);
        assert_eq!(
            events[0].transaction.as_deref(),
            Some(s.transaction.as_str())
        );
        assert_eq!(events[1].event, EventKind::Verified);
        assert_eq!(events[1].amount.as_deref(), Some("1000"));
        assert_eq!(
            events[1].payer.as_deref(),
            Some(payer.address().to_string().as_str())
        );
    }

    #[tokio::test]
    async fn v1_payment_uses_v1_requirements() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let offer = offer(&h.config, "echo");
        let payer = Payer::new(2);
        let auth = payer.authorization(&offer, unix_now(), 7);
        let v = h
            .payments
            .verify(
                "echo",
                "x-payment",
                &payer.header_v1(&offer, &auth),
                "http://api.test/api/echo",
            )
            .await;
        let Verified::Valid {
            payment_id,
            x402_version: 1,
            ..
        } = v
        else {
            panic!("expected valid v1, got {v:?}");
        };
        let body = &fake.calls()[0].1;
        assert_eq!(body["x402Version"], 1);
        assert_eq!(body["paymentRequirements"]["network"], "base-sepolia");
        assert_eq!(body["paymentRequirements"]["maxAmountRequired"], "2000");
        assert_eq!(
            body["paymentRequirements"]["resource"],
            "http://api.test/api/echo"
        );
        let s = h.payments.settle(&payment_id, 201).await;
        assert_eq!(s.outcome, SettleOutcome::Settled);
        assert_eq!(decode(&s.payment_response)["network"], "base-sepolia");
    }

    #[tokio::test]
    async fn replay_is_rejected_even_before_settlement() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(3);
        let auth = payer.authorization(&offer, unix_now(), 9);
        let header = payer.header_v2(&offer, &auth, URL);
        assert!(matches!(
            h.payments
                .verify("quote", "payment-signature", &header, URL)
                .await,
            Verified::Valid { .. }
        ));
        let again = h
            .payments
            .verify("quote", "payment-signature", &header, URL)
            .await;
        assert_eq!(
            again,
            Verified::Invalid {
                reason: "invalid_exact_evm_nonce_already_used".into(),
                payer: None
            }
        );
        // Only one facilitator call: the replay never left the verifier.
        assert_eq!(fake.calls().len(), 1);
    }

    #[tokio::test]
    async fn local_checks_reject_without_facilitator() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(4);
        let now = unix_now();

        // Garbage.
        let v = h
            .payments
            .verify("quote", "payment-signature", "not base64!", URL)
            .await;
        assert!(
            matches!(v, Verified::Invalid { ref reason, .. } if reason == "invalid_payload"),
            "{v:?}"
        );

        // Signed by someone else than `from`.
        let mut auth = payer.authorization(&offer, now, 1);
        let mallory = Payer::new(5);
        let mut payload = payer.exact_payload(&offer, &auth);
        payload["signature"] = json!(mallory.sign(&offer, &auth));
        let header = b64::encode(
            json!({"x402Version": 2, "accepted": offer.requirements_v2_value(), "payload": payload})
                .to_string()
                .as_bytes(),
        );
        let v = h
            .payments
            .verify("quote", "payment-signature", &header, URL)
            .await;
        assert!(
            matches!(v, Verified::Invalid { ref reason, .. } if reason == "invalid_exact_evm_payload_signature"),
            "{v:?}"
        );

        // Wrong amount.
        auth.value = 1;
        let v = h
            .payments
            .verify(
                "quote",
                "payment-signature",
                &payer.header_v2(&offer, &auth, URL),
                URL,
            )
            .await;
        assert!(matches!(v, Verified::Invalid { .. }), "{v:?}");

        // Signed for another resource (same price and payee) than the one it is presented on.
        let auth = payer.authorization(&offer, now, 2);
        let elsewhere = "http://api.test/api/other";
        let v = h
            .payments
            .verify(
                "quote",
                "payment-signature",
                &payer.header_v2(&offer, &auth, elsewhere),
                URL,
            )
            .await;
        assert!(
            matches!(v, Verified::Invalid { ref reason, .. } if reason == REASON_RESOURCE_MISMATCH),
            "{v:?}"
        );

        // The same key twice in the JSON: two readers could see two payments.
        let twice = format!(
            r#"{{"x402Version":2,"x402Version":2,"accepted":{},"payload":{}}}"#,
            offer.requirements_v2_value(),
            payer.exact_payload(&offer, &auth)
        );
        let v = h
            .payments
            .verify(
                "quote",
                "payment-signature",
                &b64::encode(twice.as_bytes()),
                URL,
            )
            .await;
        assert!(
            matches!(v, Verified::Invalid { ref reason, .. } if reason == "invalid_payload"),
            "{v:?}"
        );

        // Unknown or free route.
        let v = h
            .payments
            .verify("free", "payment-signature", &header, URL)
            .await;
        assert!(
            matches!(v, Verified::Invalid { ref reason, .. } if reason == REASON_UNKNOWN_ROUTE)
        );

        assert!(fake.calls().is_empty());
        h.ledger.flush().await.expect("flush");
        let events = h.ledger.recent(10).await.expect("events");
        assert_eq!(events.len(), 6);
        assert!(events.iter().all(|e| e.event == EventKind::Rejected));
        assert_eq!(
            events[4].reason.as_deref(),
            Some("invalid_exact_evm_payload_signature")
        );
        assert_eq!(events[2].reason.as_deref(), Some(REASON_RESOURCE_MISMATCH));
        assert!(h.metrics.encode().contains(
            "tollway_verify_total{outcome=\"invalid\",reason=\"invalid_exact_evm_payload_signature\"} 1"
        ));
    }

    #[tokio::test]
    async fn facilitator_invalid_releases_the_claim() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(6);
        let auth = payer.authorization(&offer, unix_now(), 2);
        let header = payer.header_v2(&offer, &auth, URL);
        fake.set_verify(Reply::Json(
            200,
            json!({"isValid": false, "invalidReason": "invalid_exact_evm_insufficient_balance", "payer": payer.address().to_string()}),
        ));
        let v = h
            .payments
            .verify("quote", "payment-signature", &header, URL)
            .await;
        assert_eq!(
            v,
            Verified::Invalid {
                reason: "invalid_exact_evm_insufficient_balance".into(),
                payer: Some(payer.address().to_string())
            }
        );
        // Funds arrive, the same authorization is presented again: not a replay.
        fake.set_verify(Reply::Json(200, json!({"isValid": true})));
        let v = h
            .payments
            .verify("quote", "payment-signature", &header, URL)
            .await;
        assert!(matches!(v, Verified::Valid { .. }), "{v:?}");
    }

    #[tokio::test]
    async fn facilitator_down_is_unavailable_and_releases_the_claim() {
        let h = harness(&dead_url().await);
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(7);
        let auth = payer.authorization(&offer, unix_now(), 3);
        let header = payer.header_v2(&offer, &auth, URL);
        for _ in 0..2 {
            let v = h
                .payments
                .verify("quote", "payment-signature", &header, URL)
                .await;
            assert_eq!(
                v,
                Verified::Unavailable {
                    reason: REASON_UNAVAILABLE.into()
                }
            );
        }
    }

    #[tokio::test]
    async fn settle_failure_pending_and_unavailable() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(8);
        let mut n = 10u8;
        let mut verify = || {
            n += 1;
            let auth = payer.authorization(&offer, unix_now(), n);
            payer.header_v2(&offer, &auth, URL)
        };
        let id = |v: Verified| match v {
            Verified::Valid { payment_id, .. } => payment_id,
            other => panic!("expected valid, got {other:?}"),
        };

        fake.set_settle(Reply::Json(
            200,
            json!({"success": false, "errorReason": "invalid_exact_evm_transaction_failed", "transaction": "", "network": "eip155:84532"}),
        ));
        let pid = id(h
            .payments
            .verify("quote", "payment-signature", &verify(), URL)
            .await);
        let s = h.payments.settle(&pid, 200).await;
        assert_eq!(s.outcome, SettleOutcome::Failed);
        assert_eq!(s.reason, "invalid_exact_evm_transaction_failed");
        let receipt = decode(&s.payment_response);
        assert_eq!(receipt["success"], false);
        assert_eq!(
            receipt["errorReason"],
            "invalid_exact_evm_transaction_failed"
        );
        assert_eq!(receipt["payer"], payer.address().to_string());

        fake.set_settle(Reply::Json(
            200,
            json!({"success": false, "errorReason": "settlement_pending", "transaction": "0xfeed", "network": "eip155:84532"}),
        ));
        let pid = id(h
            .payments
            .verify("quote", "payment-signature", &verify(), URL)
            .await);
        let s = h.payments.settle(&pid, 200).await;
        assert_eq!(s.outcome, SettleOutcome::Pending);
        assert_eq!(s.transaction, "0xfeed");

        fake.set_settle(Reply::Json(503, json!({"error": "down"})));
        let pid = id(h
            .payments
            .verify("quote", "payment-signature", &verify(), URL)
            .await);
        // A facilitator outage at settle time is not a failure: the outcome is unknown.
        let s = h.payments.settle(&pid, 200).await;
        assert_eq!(s.outcome, SettleOutcome::Pending);
        let receipt = decode(&s.payment_response);
        assert_eq!(receipt["errorReason"], "settlement_pending");
        assert_eq!(receipt["payer"], payer.address().to_string());
        assert_eq!(h.payments.unresolved_count(), 2);

        h.ledger.flush().await.expect("flush");
        let kinds: Vec<EventKind> = h
            .ledger
            .recent(10)
            .await
            .expect("events")
            .iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::SettlementUnknown,
                EventKind::Verified,
                EventKind::SettlementUnknown,
                EventKind::Verified,
                EventKind::SettlementFailed,
                EventKind::Verified
            ]
        );
    }

    #[tokio::test]
    async fn release_and_expiry() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(9);
        let now = unix_now();
        let auth = payer.authorization(&offer, now, 1);
        let header = payer.header_v2(&offer, &auth, URL);
        let Verified::Valid { payment_id, .. } = h
            .payments
            .verify("quote", "payment-signature", &header, URL)
            .await
        else {
            panic!("valid");
        };
        h.payments.release(&payment_id, 502).await;
        assert_eq!(h.payments.pending_count(), 0);
        // The nonce stays claimed after a release.
        let v = h
            .payments
            .verify("quote", "payment-signature", &header, URL)
            .await;
        assert!(
            matches!(v, Verified::Invalid { ref reason, .. } if reason == "invalid_exact_evm_nonce_already_used")
        );
        // Settle with a failed upstream status releases instead of charging.
        let auth = payer.authorization(&offer, now, 2);
        let Verified::Valid { payment_id, .. } = h
            .payments
            .verify(
                "quote",
                "payment-signature",
                &payer.header_v2(&offer, &auth, URL),
                URL,
            )
            .await
        else {
            panic!("valid");
        };
        let s = h.payments.settle(&payment_id, 500).await;
        assert_eq!(
            (s.outcome, s.reason.as_str()),
            (SettleOutcome::Failed, "upstream_status_500")
        );
        assert_eq!(fake.calls().iter().filter(|c| c.0 == "settle").count(), 0);

        h.ledger.flush().await.expect("flush");
        let events = h.ledger.recent(10).await.expect("events");
        assert_eq!(events[0].event, EventKind::Released);
        assert_eq!(events[2].event, EventKind::Rejected);
        assert_eq!(events[3].event, EventKind::Released);
        assert_eq!(events[3].reason.as_deref(), Some("upstream_status_502"));
    }

    #[tokio::test]
    async fn sweep_drops_expired_pending() {
        let fake = FakeFacilitator::start().await;
        let now = unix_now();
        let clock = Arc::new(std::sync::atomic::AtomicU64::new(now));
        let c2 = clock.clone();
        let h = crate::testkit::harness_with_clock(
            &fake.url,
            Arc::new(move || c2.load(std::sync::atomic::Ordering::Relaxed)),
        );
        let payments = &h.payments;
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(10);
        let auth = payer.authorization(&offer, now, 1);
        let v = payments
            .verify(
                "quote",
                "payment-signature",
                &payer.header_v2(&offer, &auth, URL),
                URL,
            )
            .await;
        assert!(matches!(v, Verified::Valid { .. }));
        assert_eq!(payments.sweep_expired().await, 0);
        clock.store(now + 301, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(payments.sweep_expired().await, 1);
        assert_eq!(payments.pending_count(), 0);
    }

    // ---- x402 over Lightning, challenges and claims -----------------------------------------

    pub(crate) mod lightning {
        use super::*;
        use crate::rails::l402::LightningRail;
        use crate::rails::lightning::doubles::{Double, LndDouble, Mode};
        use crate::rails::lightning::lnd::LndNode;
        use crate::rails::lightning::tls::load_certs;
        use crate::rails::lightning::{Backend, Node};
        use crate::testkit::{
            lightning_harness, lightning_harness_on, lightning_harness_with_clock, Harness,
        };
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::time::Duration;
        use tollway_protocol::lightning::LightningNetwork;

        const REGTEST: &str = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328";

        /// The v2 payment a client sends for a minted x402 offer (after paying its invoice).
        fn header(offer: &str, invoice: &str) -> String {
            let accepted: Value = serde_json::from_str(offer).expect("offer json");
            b64::encode(
                json!({
                    "x402Version": 2,
                    "resource": {"url": URL, "description": "", "mimeType": ""},
                    "accepted": accepted,
                    "payload": {"invoice": invoice},
                })
                .to_string()
                .as_bytes(),
            )
        }

        fn pay(h: &Harness, bolt11: &str) -> [u8; 32] {
            let dev = h
                .payments
                .lightning()
                .and_then(|l| l.dev_node())
                .expect("dev node");
            dev.pay(bolt11, unix_now()).expect("pay").preimage
        }

        fn reason(v: &Verified) -> &str {
            match v {
                Verified::Invalid { reason, .. } | Verified::Unavailable { reason } => reason,
                Verified::Valid { .. } => "",
            }
        }

        #[tokio::test]
        async fn paid_invoice_is_verified_once_and_settled_without_facilitator() {
            let fake = FakeFacilitator::start().await;
            let h = lightning_harness(&fake.url);
            let c = h
                .payments
                .challenge("quote", "/api/quote", "GET", &crate::testkit::client())
                .await
                .expect("minted");
            let payment = header(&c.x402_offer, &c.invoice.bolt11);

            let v = h
                .payments
                .verify("quote", "payment-signature", &payment, URL)
                .await;
            assert_eq!(reason(&v), REASON_INVOICE_NOT_PAID, "{v:?}");

            pay(&h, &c.invoice.bolt11);
            let v = h
                .payments
                .verify("quote", "payment-signature", &payment, URL)
                .await;
            let Verified::Valid {
                payment_id,
                payer,
                x402_version,
                amount,
            } = v
            else {
                panic!("expected valid, got {v:?}");
            };
            assert_eq!((payer.as_str(), x402_version), ("anonymous", 2));
            assert_eq!(amount, "10000 msat");
            // Presented again (even before settlement): refused.
            let again = h
                .payments
                .verify("quote", "payment-signature", &payment, URL)
                .await;
            assert_eq!(reason(&again), REASON_INVOICE_ALREADY_USED);

            let s = h.payments.settle(&payment_id, 200).await;
            assert_eq!(s.outcome, SettleOutcome::Settled);
            assert_eq!(s.x402_version, 2);
            let hash = hex::encode(c.invoice.payment_hash);
            assert_eq!(s.transaction, hash);
            assert_eq!(
                decode(&s.payment_response),
                json!({"success": true, "transaction": hash, "network": REGTEST, "payer": "anonymous"})
            );
            assert!(
                fake.calls().is_empty(),
                "no facilitator on the Lightning rail"
            );

            h.ledger.flush().await.expect("flush");
            let events = h.ledger.recent(10).await.expect("events");
            let kinds: Vec<EventKind> = events.iter().map(|e| e.event).collect();
            assert_eq!(
                kinds,
                vec![
                    EventKind::Settled,
                    EventKind::Rejected,
                    EventKind::Verified,
                    EventKind::Rejected,
                    EventKind::InvoiceCreated
                ]
            );
            assert_eq!(events[0].transaction.as_deref(), Some(hash.as_str()));
            assert_eq!(events[2].network.as_deref(), Some(REGTEST));
            assert_eq!(events[2].asset.as_deref(), Some("BTC"));
            assert_eq!(events[2].amount.as_deref(), Some("10000"));
            assert_eq!(events[2].nonce.as_deref(), Some(hash.as_str()));
            assert_eq!(events[4].nonce.as_deref(), Some(hash.as_str()));
        }

        #[tokio::test]
        async fn refusals() {
            let fake = FakeFacilitator::start().await;
            let h = lightning_harness(&fake.url);
            let quote = h
                .payments
                .challenge("quote", "/api/quote", "GET", &crate::testkit::client())
                .await
                .expect("minted");
            let sats = h
                .payments
                .challenge("sats", "/api/sats", "GET", &crate::testkit::client())
                .await
                .expect("minted");
            pay(&h, &quote.invoice.bolt11);
            pay(&h, &sats.invoice.bolt11);

            // An invoice minted for another route.
            let v = h
                .payments
                .verify(
                    "sats",
                    "payment-signature",
                    &header(&quote.x402_offer, &quote.invoice.bolt11),
                    URL,
                )
                .await;
            assert_eq!(
                reason(&v),
                REASON_INVOICE_AMOUNT,
                "price of sats differs: {v:?}"
            );
            let mut offer: Value = serde_json::from_str(&quote.x402_offer).expect("json");
            offer["amount"] = json!("21000");
            let v = h
                .payments
                .verify(
                    "sats",
                    "payment-signature",
                    &header(&offer.to_string(), &quote.invoice.bolt11),
                    URL,
                )
                .await;
            assert_eq!(reason(&v), REASON_INVOICE_AMOUNT, "{v:?}");

            // Another node's invoice for the right amount: not ours.
            let stranger = crate::rails::lightning::dev::DevNode::new(LightningNetwork::Regtest)
                .create_at(10_000, "x", 600, unix_now())
                .expect("create");
            let mut offer: Value = serde_json::from_str(&quote.x402_offer).expect("json");
            offer["extra"]["invoice"] = json!(stranger.bolt11);
            let v = h
                .payments
                .verify(
                    "quote",
                    "payment-signature",
                    &header(&offer.to_string(), &stranger.bolt11),
                    URL,
                )
                .await;
            assert_eq!(reason(&v), REASON_INVOICE_UNKNOWN, "{v:?}");

            // Payload invoice differs from the offered one (anti-substitution, protocol check).
            let v = h
                .payments
                .verify(
                    "quote",
                    "payment-signature",
                    &header(&quote.x402_offer, &stranger.bolt11),
                    URL,
                )
                .await;
            assert_eq!(reason(&v), "invalid_payload", "{v:?}");

            // Another network's id with our regtest invoice.
            let mut offer: Value = serde_json::from_str(&quote.x402_offer).expect("json");
            offer["network"] = json!("bip122:000000000019d6689c085ae165831e93");
            let v = h
                .payments
                .verify(
                    "quote",
                    "payment-signature",
                    &header(&offer.to_string(), &quote.invoice.bolt11),
                    URL,
                )
                .await;
            assert!(matches!(v, Verified::Invalid { .. }), "{v:?}");

            // A route that sells no Lightning.
            let v = h
                .payments
                .verify(
                    "echo",
                    "payment-signature",
                    &header(&quote.x402_offer, &quote.invoice.bolt11),
                    URL,
                )
                .await;
            assert_eq!(reason(&v), "invalid_network", "{v:?}");

            // None of that consumed the paid invoice.
            let v = h
                .payments
                .verify(
                    "quote",
                    "payment-signature",
                    &header(&quote.x402_offer, &quote.invoice.bolt11),
                    URL,
                )
                .await;
            assert!(matches!(v, Verified::Valid { .. }), "{v:?}");
            assert!(fake.calls().is_empty());
        }

        #[tokio::test]
        async fn expired_invoice_and_release() {
            let fake = FakeFacilitator::start().await;
            let now = unix_now();
            let clock = Arc::new(AtomicU64::new(now));
            let c2 = clock.clone();
            let h = lightning_harness_with_clock(
                &fake.url,
                Arc::new(move || c2.load(Ordering::Relaxed)),
            );
            let c = h
                .payments
                .challenge("quote", "/api/quote", "GET", &crate::testkit::client())
                .await
                .expect("minted");
            pay(&h, &c.invoice.bolt11);
            let payment = header(&c.x402_offer, &c.invoice.bolt11);

            // The upstream fails: released, the paid invoice may come back.
            let Verified::Valid { payment_id, .. } = h
                .payments
                .verify("quote", "payment-signature", &payment, URL)
                .await
            else {
                panic!("valid");
            };
            h.payments.release(&payment_id, 502).await;
            let Verified::Valid { payment_id, .. } = h
                .payments
                .verify("quote", "payment-signature", &payment, URL)
                .await
            else {
                panic!("valid after release");
            };
            // Settling after a failed upstream releases too.
            let s = h.payments.settle(&payment_id, 500).await;
            assert_eq!(s.outcome, SettleOutcome::Failed);
            assert!(matches!(
                h.payments
                    .verify("quote", "payment-signature", &payment, URL)
                    .await,
                Verified::Valid { .. }
            ));

            // Past the invoice's expiry: refused, and the registry forgets it on the sweep.
            clock.store(now + 601, Ordering::Relaxed);
            let v = h
                .payments
                .verify("quote", "payment-signature", &payment, URL)
                .await;
            assert_eq!(reason(&v), REASON_INVOICE_EXPIRED, "{v:?}");
            h.payments.sweep_expired().await;
            let rail = h.payments.lightning().expect("rail");
            assert!(rail.minted(&c.invoice.payment_hash).is_none());
            let v = h
                .payments
                .verify("quote", "payment-signature", &payment, URL)
                .await;
            assert!(matches!(v, Verified::Invalid { .. }), "{v:?}");
        }

        /// The LND rail over `d`, for harnesses that take a rail builder.
        pub(crate) fn lnd_rail(
            d: &LndDouble,
        ) -> impl FnOnce(&Config, Arc<Metrics>) -> Arc<LightningRail> + '_ {
            move |config: &Config, metrics: Arc<Metrics>| {
                let lnd = LndNode::new(
                    "127.0.0.1",
                    d.addr.port(),
                    load_certs(d.cert_pem.as_bytes()).expect("cert"),
                    &d.macaroon,
                )
                .expect("client");
                let node = Node::new(
                    Backend::Lnd,
                    LightningNetwork::Regtest,
                    Arc::new(lnd),
                    metrics,
                );
                Arc::new(LightningRail::with_node(
                    node,
                    None,
                    600,
                    config.l402.as_ref().expect("l402"),
                ))
            }
        }

        #[tokio::test]
        async fn node_trouble_is_unavailable_never_a_grant() {
            let fake = FakeFacilitator::start().await;
            let d = LndDouble::start(LightningNetwork::Regtest).await;
            let h = lightning_harness_on(&fake.url, lnd_rail(&d));
            let c = h
                .payments
                .challenge("quote", "/api/quote", "GET", &crate::testkit::client())
                .await
                .expect("minted on LND");
            let payment = header(&c.x402_offer, &c.invoice.bolt11);
            d.pay(&c.invoice.payment_hash);

            d.set_mode(Mode::Fail);
            let v = h
                .payments
                .verify("quote", "payment-signature", &payment, URL)
                .await;
            assert_eq!(
                v,
                Verified::Unavailable {
                    reason: REASON_NODE_UNAVAILABLE.into()
                }
            );
            assert!(h
                .payments
                .challenge("quote", "/api/quote", "GET", &crate::testkit::client())
                .await
                .is_err());

            // Slow node: the challenge gives up within the node timeout (2 s).
            d.set_mode(Mode::Slow(Duration::from_secs(10)));
            let started = std::time::Instant::now();
            assert!(h
                .payments
                .challenge("quote", "/api/quote", "GET", &crate::testkit::client())
                .await
                .is_err());
            assert!(
                started.elapsed() < Duration::from_millis(2600),
                "{:?}",
                started.elapsed()
            );

            // Back up: the claim was given back, the paid invoice verifies.
            d.set_mode(Mode::Normal);
            assert!(matches!(
                h.payments
                    .verify("quote", "payment-signature", &payment, URL)
                    .await,
                Verified::Valid { .. }
            ));
            let text = h.metrics.encode();
            assert!(
                text.contains("tollway_lightning_challenges_total{outcome=\"unavailable\"} 2"),
                "{text}"
            );
            assert!(
                text.contains(
                    "tollway_lightning_node_errors_total{backend=\"lnd\",op=\"lookup_invoice\"} 1"
                ),
                "{text}"
            );
            assert!(text.contains("tollway_verify_total{outcome=\"unavailable\",reason=\"lightning_node_unavailable\"} 1"), "{text}");
        }

        #[tokio::test]
        async fn open_invoices_are_handed_out_again_and_limited() {
            let fake = FakeFacilitator::start().await;
            let h = lightning_harness(&fake.url);
            let me = crate::testkit::client();
            let first = h
                .payments
                .challenge("quote", "/api/quote", "GET", &me)
                .await
                .expect("minted");
            let again = h
                .payments
                .challenge("quote", "/api/quote", "GET", &me)
                .await
                .expect("reused");
            assert_eq!(again.invoice.bolt11, first.invoice.bolt11);
            assert_eq!(again.macaroon, first.macaroon);
            // Paid and used: the next 402 has a fresh invoice.
            let key = crate::rails::l402::l402_claim_key(&first.invoice.payment_hash);
            assert_eq!(
                h.payments
                    .claim(&key, "quote", unix_now() + 600, false)
                    .await,
                ClaimResult::Claimed
            );
            let fresh = h
                .payments
                .challenge("quote", "/api/quote", "GET", &me)
                .await
                .expect("minted");
            assert_ne!(fresh.invoice.payment_hash, first.invoice.payment_hash);
            // Ten open invoices per client (the default): the eleventh path gets none.
            for n in 1..10 {
                let path = format!("/api/quote/{n}");
                h.payments
                    .challenge("quote", &path, "GET", &me)
                    .await
                    .expect("minted");
            }
            let limited = h
                .payments
                .challenge("quote", "/api/quote/10", "GET", &me)
                .await;
            assert!(
                matches!(limited, Err(NotMinted::Limited { retry_after }) if (590..=600).contains(&retry_after)),
                "{limited:?}"
            );
            // The same client still gets its open ones; another client gets its own.
            h.payments
                .challenge("quote", "/api/quote/3", "GET", &me)
                .await
                .expect("reused");
            h.payments
                .challenge("quote", "/api/quote/10", "GET", &crate::testkit::client())
                .await
                .expect("minted");
        }

        #[tokio::test]
        async fn challenge_inputs() {
            let fake = FakeFacilitator::start().await;
            let h = lightning_harness(&fake.url);
            assert!(h
                .payments
                .challenge("nope", "/x", "GET", &crate::testkit::client())
                .await
                .is_err());
            assert!(
                h.payments
                    .challenge("echo", "/api/echo", "POST", &crate::testkit::client())
                    .await
                    .is_err(),
                "no Lightning price"
            );
            assert!(h
                .payments
                .challenge("quote", "/api/quote?x=1", "GET", &crate::testkit::client())
                .await
                .is_err());
            assert!(h
                .payments
                .challenge("quote", "/api/quote", "G E T", &crate::testkit::client())
                .await
                .is_err());
            // Unbound (no path/method given).
            let c = h
                .payments
                .challenge("once", "", "", &crate::testkit::client())
                .await
                .expect("minted");
            assert_eq!(c.invoice.amount_msat, 5000);
            // Without the rail nothing is minted.
            let plain = crate::testkit::harness(&fake.url);
            assert!(plain
                .payments
                .challenge("quote", "/api/quote", "GET", &crate::testkit::client())
                .await
                .is_err());
            assert!(plain.payments.lightning().is_none());
        }

        #[tokio::test]
        async fn single_use_claims() {
            let fake = FakeFacilitator::start().await;
            let h = lightning_harness(&fake.url);
            let key = crate::rails::l402::l402_claim_key(&[0xab; 32]);
            let until = unix_now() + 3600;
            assert_eq!(
                h.payments.claim(&key, "once", until, false).await,
                ClaimResult::Claimed
            );
            assert_eq!(
                h.payments.claim(&key, "once", until, false).await,
                ClaimResult::AlreadyUsed
            );
            // An expiry in the past still holds the claim a while.
            let other = crate::rails::l402::l402_claim_key(&[0xcd; 32]);
            assert_eq!(
                h.payments.claim(&other, "once", 1, false).await,
                ClaimResult::Claimed
            );
            assert_eq!(
                h.payments.claim(&other, "once", 1, false).await,
                ClaimResult::AlreadyUsed
            );
            for bad in [
                "",
                "l402:xyz",
                "bip122:abc",
                &format!("l402:{}", "AB".repeat(32)),
            ] {
                assert_eq!(
                    h.payments.claim(bad, "once", until, false).await,
                    ClaimResult::Unavailable,
                    "{bad}"
                );
            }
            h.ledger.flush().await.expect("flush");
            let events = h.ledger.recent(10).await.expect("events");
            let kinds: Vec<EventKind> = events.iter().map(|e| e.event).collect();
            assert_eq!(
                kinds,
                vec![
                    EventKind::Rejected,
                    EventKind::L402Claimed,
                    EventKind::Rejected,
                    EventKind::L402Claimed
                ]
            );
            assert_eq!(events[0].reason.as_deref(), Some("l402_token_already_used"));
            assert_eq!(events[3].nonce.as_deref(), Some("ab".repeat(32).as_str()));
            assert_eq!(events[3].amount.as_deref(), Some("5000"));
            assert!(h
                .metrics
                .encode()
                .contains("tollway_l402_claims_total{result=\"already_used\"} 2"));
        }
    }
}
