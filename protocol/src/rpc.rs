//! Messages of the filter → verifier gRPC API, service `tollway.v1.Payments`.
//!
//! Hand-written prost structs (no build script) so the wasm filter and the verifier share one
//! definition. Tag numbers are the wire contract: never renumber, only add.

/// Fully-qualified gRPC service name.
pub const SERVICE: &str = "tollway.v1.Payments";
pub const METHOD_VERIFY: &str = "Verify";
pub const METHOD_SETTLE: &str = "Settle";
pub const METHOD_RELEASE: &str = "Release";
pub const METHOD_CHALLENGE: &str = "Challenge";
pub const METHOD_CLAIM: &str = "Claim";
pub const METHOD_ROUTES: &str = "Routes";
pub const METHOD_PURCHASED: &str = "Purchased";

#[derive(Clone, PartialEq, prost::Message)]
pub struct VerifyRequest {
    /// Route name from the compiled table.
    #[prost(string, tag = "1")]
    pub route: String,
    /// Raw header value as the client sent it (base64 JSON).
    #[prost(string, tag = "2")]
    pub payment: String,
    /// `payment-signature` (v2) or `x-payment` (v1).
    #[prost(string, tag = "3")]
    pub header: String,
    /// Absolute URL of the resource, as offered in the challenge.
    #[prost(string, tag = "4")]
    pub resource_url: String,
    /// Unix milliseconds after which the caller has given up (0: none): the verifier starts no
    /// work past it and gives back what it took for a caller that is gone.
    #[prost(uint64, tag = "5")]
    pub deadline_ms: u64,
    /// What the payment buys when it can be bought only once (`lease::Renewal::key`); empty:
    /// an ordinary purchase.
    #[prost(string, tag = "6")]
    pub purchase: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum VerifyOutcome {
    Unspecified = 0,
    Valid = 1,
    /// The payment is wrong; `reason` holds the x402 error reason. Answer 402.
    Invalid = 2,
    /// Facilitator or store unreachable. Answer 503, never a free pass.
    Unavailable = 3,
    /// The `purchase` was paid for before: hand it out again; this payment is not taken.
    Purchased = 4,
    /// Another payment for the `purchase` is being settled: nothing taken; try again shortly.
    PurchaseInProgress = 5,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VerifyResponse {
    #[prost(enumeration = "VerifyOutcome", tag = "1")]
    pub outcome: i32,
    #[prost(string, tag = "2")]
    pub reason: String,
    #[prost(string, tag = "3")]
    pub payer: String,
    /// Handle for `Settle` / `Release`.
    #[prost(string, tag = "4")]
    pub payment_id: String,
    #[prost(uint32, tag = "5")]
    pub x402_version: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SettleRequest {
    #[prost(string, tag = "1")]
    pub payment_id: String,
    #[prost(uint32, tag = "2")]
    pub upstream_status: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SettleOutcome {
    Unspecified = 0,
    Settled = 1,
    /// Broadcast, receipt not seen yet: not a failure, the client keeps its response.
    Pending = 2,
    Failed = 3,
    Unavailable = 4,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SettleResponse {
    #[prost(enumeration = "SettleOutcome", tag = "1")]
    pub outcome: i32,
    #[prost(string, tag = "2")]
    pub reason: String,
    /// base64(JSON SettleResponse) for `PAYMENT-RESPONSE` (v2) or `X-PAYMENT-RESPONSE` (v1).
    #[prost(string, tag = "3")]
    pub payment_response: String,
    #[prost(string, tag = "4")]
    pub transaction: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReleaseRequest {
    #[prost(string, tag = "1")]
    pub payment_id: String,
    #[prost(uint32, tag = "2")]
    pub upstream_status: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReleaseResponse {}

/// Mint the Lightning part of a 402 for a route that sells Lightning access: a fresh invoice and
/// the L402 macaroon bound to its payment hash (and the x402 `bip122` offer carrying it).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChallengeRequest {
    #[prost(string, tag = "1")]
    pub route: String,
    /// Concrete request path (no query) the macaroon may be bound to.
    #[prost(string, tag = "2")]
    pub path: String,
    #[prost(string, tag = "3")]
    pub method: String,
    /// As in [`VerifyRequest::purchase`]: nothing is minted for a purchase already paid for or
    /// being paid for (a Lightning client pays before it asks).
    #[prost(string, tag = "4")]
    pub purchase: String,
    /// The client's address as Envoy sees it (`source.address`, `ip:port`): open invoices are
    /// handed out again to it and limited per client.
    #[prost(string, tag = "5")]
    pub client: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ChallengeOutcome {
    Unspecified = 0,
    Minted = 1,
    /// Node or verifier trouble: the 402 degrades to the x402 rails it can offer alone.
    Unavailable = 2,
    /// As [`VerifyOutcome::Purchased`]: nothing minted.
    Purchased = 3,
    /// As [`VerifyOutcome::PurchaseInProgress`]: nothing minted.
    PurchaseInProgress = 4,
    /// The client has as many open invoices as allowed (or everyone has): nothing minted; the
    /// 402 offers x402 alone, or a Lightning-only route answers 429 with `retry_after`.
    Limited = 5,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ChallengeResponse {
    #[prost(enumeration = "ChallengeOutcome", tag = "1")]
    pub outcome: i32,
    /// BOLT11 invoice.
    #[prost(string, tag = "2")]
    pub invoice: String,
    /// Standard padded base64 of the v2 binary macaroon.
    #[prost(string, tag = "3")]
    pub macaroon: String,
    /// JSON of the v2 x402 `bip122` requirement carrying the invoice (empty: not offered).
    #[prost(string, tag = "4")]
    pub x402_offer: String,
    /// With LIMITED: seconds until one of the client's open invoices expires.
    #[prost(uint64, tag = "5")]
    pub retry_after: u64,
}

/// Claim a single-use credential (an L402 payment hash) once, across every Envoy worker and
/// verifier replica.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClaimRequest {
    /// `l402:<payment hash hex>` or `lease:<lease id hex>`.
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub route: String,
    /// Unix seconds after which the claim may be forgotten (the credential's own expiry).
    #[prost(uint64, tag = "3")]
    pub expires_at: u64,
    /// A reusable L402 token's first use (per filter VM): claims its payment for the L402 rail,
    /// so the same invoice cannot also buy an x402 `bip122` request; CLAIMED again for the
    /// same token, ALREADY_USED when another rail spent the payment.
    #[prost(bool, tag = "4")]
    pub reusable: bool,
    /// As in [`VerifyRequest::deadline_ms`].
    #[prost(uint64, tag = "5")]
    pub deadline_ms: u64,
    /// As in [`VerifyRequest::purchase`]: what the claimed token buys when it can be bought
    /// only once.
    #[prost(string, tag = "6")]
    pub purchase: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ClaimOutcome {
    Unspecified = 0,
    Claimed = 1,
    AlreadyUsed = 2,
    Unavailable = 3,
    /// As [`VerifyOutcome::Purchased`]; the token was not used up.
    Purchased = 4,
    /// As [`VerifyOutcome::PurchaseInProgress`]; the token was not used up.
    PurchaseInProgress = 5,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ClaimResponse {
    #[prost(enumeration = "ClaimOutcome", tag = "1")]
    pub outcome: i32,
}

/// Where a purchase sold once stands (`lease::Renewal::key`): asked when an open stream's lease
/// reaches its expiry, to learn whether it was renewed (at any Envoy, any replica).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PurchasedRequest {
    #[prost(string, tag = "1")]
    pub purchase: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PurchaseOutcome {
    Unspecified = 0,
    /// Not bought (nor being paid for).
    Open = 1,
    /// Paid for.
    Bought = 2,
    /// A payment for it is being settled.
    InFlight = 3,
    /// The verifier could not tell (store down, malformed key).
    Unavailable = 4,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PurchasedResponse {
    #[prost(enumeration = "PurchaseOutcome", tag = "1")]
    pub outcome: i32,
}

/// The filter's route table, polled by every Envoy worker (the verifier owns the table).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoutesRequest {
    /// The version the filter serves (0: none yet).
    #[prost(uint64, tag = "1")]
    pub known_version: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RoutesResponse {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// JSON array of `filter_config::RouteConfig`; empty when `version == known_version`.
    #[prost(string, tag = "2")]
    pub routes_json: String,
}
