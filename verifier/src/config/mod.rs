//! `tollway.yaml`: parsing, validation and compilation into the filter's [`FilterConfig`].
//!
//! Two passes. Serde (with `deny_unknown_fields` and `serde_path_to_error`) reads the shape and
//! stops at the first structural error; fields that users get wrong in many ways (prices,
//! addresses, networks, secrets, paths) are read loosely and checked afterwards, where every
//! problem is collected and reported as `path: message (hint: ...)`.

pub mod envoy;
pub mod secret;
pub mod tls;

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use tollway_protocol::amount::{AmountError, UsdPrice};
use tollway_protocol::evm::EvmAddress;
use tollway_protocol::filter_config::{
    CompiledConfig, FilterConfig, L402Filter, LeaseConfig, LightningPrice, PaidRoute, PathCase,
    ResourceKind, RouteConfig, UnknownSettlement, UnmatchedRule,
};
use tollway_protocol::keys::{FilterKeys, KeySet, TokenKey};
use tollway_protocol::l402::caveats::is_valid_service;
use tollway_protocol::l402::{filter_key, FilterKey};
use tollway_protocol::lease::LeaseKey;
use tollway_protocol::lightning::LightningNetwork;
use tollway_protocol::network::Network;
use tollway_protocol::routes::{RouteError, RouteSpec, RouteTable};
use tollway_protocol::x402::Offer;

use crate::config::secret::{Secret, SecretRef, MIN_SECRET_BYTES};
use crate::rails::cdp_jwt::CdpCredentials;
use crate::rails::facilitator::{FacilitatorAuth, FacilitatorSettings};
use crate::rails::invoices::InvoiceLimits;
use crate::rails::lightning::tls::load_certs;
use crate::rails::lightning::{Backend, NODE_TIMEOUT};
use crate::stores::ledger::LedgerLocation;

/// Envoy cluster name of the verifier in rendered bootstraps.
pub const VERIFIER_CLUSTER: &str = "tollway_verifier";
pub const DEFAULT_FACILITATOR_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_TIMEOUT_SECONDS: u32 = 300;
const MAX_FACILITATOR_TIMEOUT_MS: u64 = 120_000;
/// The filter's gRPC deadline exceeds the facilitator timeout by this much, so the verifier
/// answers UNAVAILABLE itself instead of the filter timing out.
const VERIFIER_TIMEOUT_MARGIN_MS: u64 = 1_000;
pub const DEFAULT_INVOICE_EXPIRY_SECONDS: u64 = 600;
const INVOICE_EXPIRY_RANGE: (u64, u64) = (60, 86_400);
pub const DEFAULT_L402_SERVICE: &str = "tollway";
pub const DEFAULT_L402_VALID_SECONDS: u64 = 3600;
const MAX_L402_VALID_SECONDS: u64 = 366 * 86_400;
/// 21 million BTC in msat: no price is higher.
const MAX_MSAT: u64 = 21_000_000 * 100_000_000 * 1000;
/// How often the filter polls the verifier for the route table (`tollway envoy` renders it).
pub const SYNC_INTERVAL_MS: u64 = 1000;
/// Longest lease: a year.
const MAX_LEASE_SECONDS: u64 = 366 * 86_400;

// ------------------------------------------------------------------------------------------
// Problems

/// One thing wrong with the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `routes[1].price`, `rails.usdc.network`, or the file name for file-level problems.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Every problem found, one per line when displayed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
            hint: None,
        });
    }

    fn hint(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
            hint: Some(hint.into()),
        });
    }
}

// ------------------------------------------------------------------------------------------
// Raw shape (what serde reads)

/// A YAML mapping kept in file order, duplicate keys refused.
#[derive(Debug)]
struct Named<T>(Vec<(String, T)>);

impl<T> Default for Named<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Named<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to entries")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Named(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("duplicate name `{key}`")));
                    }
                    let value = map.next_value::<T>()?;
                    out.push((key, value));
                }
                Ok(Named(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    verifier: RawVerifier,
    #[serde(default)]
    envoy: Option<RawEnvoy>,
    #[serde(default)]
    public_url: Option<String>,
    #[serde(default)]
    facilitators: Named<RawFacilitator>,
    #[serde(default)]
    rails: Named<RawRail>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    lightning: Option<RawLightning>,
    #[serde(default)]
    l402: Option<RawL402>,
    #[serde(default)]
    leases: Option<RawLeases>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    stores: Option<RawStores>,
    /// `case_insensitive` (default) or `case_sensitive`.
    #[serde(default)]
    paths: Option<PathCase>,
    #[serde(default)]
    unmatched: Option<RawUnmatched>,
}

/// `unmatched: deny` (or `pass`, or a route name) for every request no route matches, or a list
/// of rules `{ host, path, action }`, first match first.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawUnmatched {
    All(String),
    Rules(Vec<RawUnmatchedRule>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnmatchedRule {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    path: Option<String>,
    action: String,
}

/// `stores: { replay: ... }`. The value is read loosely (a URL string or a mapping) and checked
/// in [`stores`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStores {
    #[serde(default)]
    replay: Option<serde_yaml::Value>,
    /// A Redis replay store without persistence (AOF or RDB) forgets every claim on restart:
    /// the verifier refuses to start on one unless this says the loss is accepted.
    #[serde(default)]
    allow_volatile_replay: bool,
}

/// `leases: { secret: env:NAME, previous: { secret: env:OLD, until: <unix seconds> } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeases {
    secret: String,
    #[serde(default)]
    previous: Option<RawPreviousSecret>,
}

/// The secret a rotation replaced, still accepted for tokens minted with it until `until`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreviousSecret {
    #[serde(alias = "root_secret")]
    secret: String,
    until: u64,
}

/// `admin: { token: env:NAME }`: the bearer token of the admin API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLightning {
    backend: String,
    network: String,
    #[serde(default)]
    invoice_expiry_seconds: Option<u64>,
    #[serde(default)]
    invoice_limits: Option<RawInvoiceLimits>,
    /// Shape only: `dev: {}` has nothing to set.
    #[serde(default)]
    #[allow(dead_code)]
    dev: Option<RawLightningDev>,
    #[serde(default)]
    lnd: Option<RawLnd>,
    #[serde(default)]
    cln: Option<RawCln>,
    #[serde(default)]
    lnbits: Option<RawLnbits>,
}

/// `lightning.invoice_limits`: open (unpaid, unexpired) invoices at most.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInvoiceLimits {
    #[serde(default)]
    per_client: Option<usize>,
    #[serde(default)]
    total: Option<usize>,
}

/// `dev: {}`: nothing to set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLightningDev {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLnd {
    grpc: String,
    tls_cert: String,
    macaroon: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCln {
    url: String,
    rune: String,
    #[serde(default)]
    tls_cert: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLnbits {
    url: String,
    invoice_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawL402 {
    root_secret: String,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    valid_seconds: Option<u64>,
    /// `{ root_secret: env:OLD, until: <unix seconds> }` during a rotation.
    #[serde(default)]
    previous: Option<RawPreviousSecret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerifier {
    #[serde(default = "default_grpc")]
    grpc: String,
    #[serde(default = "default_http")]
    http: String,
    #[serde(default = "default_ledger")]
    ledger: String,
    /// The admin API's listener; absent: the admin API is off.
    #[serde(default)]
    admin: Option<String>,
    #[serde(default)]
    tls: Option<tls::RawTls>,
}

impl Default for RawVerifier {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            http: default_http(),
            ledger: default_ledger(),
            admin: None,
            tls: None,
        }
    }
}

fn default_grpc() -> String {
    "127.0.0.1:50051".into()
}
fn default_http() -> String {
    "127.0.0.1:9090".into()
}
fn default_ledger() -> String {
    "tollway-ledger.db".into()
}
fn default_listen() -> String {
    "0.0.0.0:10000".into()
}
fn default_admin() -> String {
    "127.0.0.1:9901".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvoy {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_admin")]
    admin: String,
    upstream: String,
    #[serde(default)]
    wasm: Option<String>,
    /// With `verifier.tls`: Envoy's files (paths) for the TLS of its verifier cluster.
    #[serde(default)]
    verifier_ca: Option<String>,
    #[serde(default)]
    verifier_client_cert: Option<String>,
    #[serde(default)]
    verifier_client_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFacilitator {
    url: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    auth: Option<RawAuth>,
}

/// `{ bearer: env:X }` or `{ cdp: { key_id: ..., key_secret: ... } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    bearer: Option<String>,
    #[serde(default)]
    cdp: Option<RawCdp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCdp {
    key_id: String,
    key_secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRail {
    network: String,
    asset: String,
    decimals: u8,
    eip712: RawEip712,
    pay_to: String,
    facilitator: String,
    #[serde(default)]
    max_timeout_seconds: Option<u32>,
    #[serde(default)]
    v1_name: Option<String>,
    /// JSON-RPC of the rail's chain: settlements whose outcome is unknown are decided by
    /// reading the token's `authorizationState`.
    #[serde(default)]
    rpc_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEip712 {
    name: String,
    version: String,
}

/// One route in `tollway.yaml` shape: what the file holds, what the admin API takes and lists
/// (as JSON), and what the route store keeps. Validated by [`Config::validate_routes`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Read as any YAML value so an unquoted number gets a precise message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub free: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rails: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mime_type: String,
    /// Read as any YAML value for precise messages (like `price`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_sats: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_msat: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_use: Option<bool>,
    /// `http` (default), `http-stream` or `websocket`; read as text for a precise message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<RawLease>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// `deliver` (default) or `withhold`: what a client gets while its settlement's outcome is
    /// unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_unknown_settlement: Option<UnknownSettlement>,
    /// `case_insensitive` or `case_sensitive`: overrides the top-level `paths`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<PathCase>,
}

/// `lease: { path, seconds, single_use, renewal: { window_seconds } }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLease {
    pub path: String,
    pub seconds: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub single_use: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RawRenewal>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRenewal {
    pub window_seconds: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl RawRoute {
    /// A route from JSON (the admin API's body), `index` being its place in the table (for
    /// the problem's path).
    pub fn from_json(value: serde_json::Value, index: usize) -> Result<RawRoute, Problem> {
        serde_path_to_error::deserialize::<_, RawRoute>(value).map_err(|e| {
            let inner = e.path().to_string();
            let message = e.inner().to_string();
            let path = if inner == "." {
                format!("routes[{index}]")
            } else {
                format!("routes[{index}].{inner}")
            };
            let hint = serde_hint(&inner, &message);
            Problem {
                path,
                message,
                hint,
            }
        })
    }

    /// The route as JSON (`tollway.yaml` shape, defaults left out).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

// ------------------------------------------------------------------------------------------
// Validated config

#[derive(Clone, Debug)]
pub struct VerifierSettings {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// A SQLite file (one verifier) or a PostgreSQL URL (shared by every replica).
    pub ledger: LedgerLocation,
    /// The admin API's own listener (`None`: the admin API is off).
    pub admin: Option<SocketAddr>,
    /// TLS (and mTLS) on `grpc` and `admin`; `http` stays plaintext.
    pub tls: Option<tls::TlsSettings>,
}

/// `host:port`, where host is an IP literal or a DNS name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }
}

#[derive(Clone, Debug)]
pub struct EnvoySettings {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub upstream: HostPort,
    pub wasm: Option<PathBuf>,
    /// How the `tollway_verifier` cluster speaks TLS (with `verifier.tls`).
    pub verifier_tls: Option<tls::EnvoyVerifierTls>,
}

#[derive(Clone, Debug)]
pub struct Rail {
    pub name: String,
    pub network: Network,
    pub asset: EvmAddress,
    pub decimals: u8,
    pub pay_to: EvmAddress,
    pub eip712_name: String,
    pub eip712_version: String,
    pub facilitator: String,
    pub max_timeout_seconds: u32,
    pub v1_name: Option<String>,
    /// The chain's JSON-RPC, for reconciliation (may hold an API key in its path: never logged).
    pub rpc_url: Option<reqwest::Url>,
}

/// The Lightning node to use, credentials resolved (`None` when loaded with
/// [`Secrets::Skip`]).
#[derive(Clone)]
pub enum NodeSettings {
    Dev,
    Lnd {
        host: String,
        port: u16,
        tls_cert: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
        /// The macaroon's raw bytes (sent hex-encoded).
        macaroon: Option<Vec<u8>>,
    },
    Cln {
        url: reqwest::Url,
        rune: Option<Secret>,
        tls_cert: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    },
    Lnbits {
        url: reqwest::Url,
        invoice_key: Option<Secret>,
    },
}

impl NodeSettings {
    pub fn backend(&self) -> Backend {
        match self {
            Self::Dev => Backend::Dev,
            Self::Lnd { .. } => Backend::Lnd,
            Self::Cln { .. } => Backend::Cln,
            Self::Lnbits { .. } => Backend::Lnbits,
        }
    }
}

impl fmt::Debug for NodeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials never printed.
        match self {
            Self::Dev => f.write_str("Dev"),
            Self::Lnd { host, port, .. } => write!(f, "Lnd({host}:{port})"),
            Self::Cln { url, .. } => write!(f, "Cln({url})"),
            Self::Lnbits { url, .. } => write!(f, "Lnbits({url})"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LightningSettings {
    pub node: NodeSettings,
    pub network: LightningNetwork,
    pub invoice_expiry_seconds: u64,
    pub invoice_limits: InvoiceLimits,
}

/// `l402:`. Only the filter key derived from the root secret is kept.
#[derive(Clone, Debug)]
pub struct L402Settings {
    pub filter_key: FilterKey,
    pub service: String,
    pub valid_seconds: u64,
    /// The filter key of the previous root secret, accepted until the time given (rotation).
    pub previous: Option<(FilterKey, u64)>,
}

#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    pub price: Option<UsdPrice>,
    /// Lightning price (L402 and x402 `bip122`).
    pub lightning: Option<LightningPrice>,
    /// Rail names, in offer order (`offers[i]` of the compiled route comes from `rails[i]`).
    pub rails: Vec<String>,
    /// Facilitator name per offer, same order.
    pub facilitators: Vec<String>,
}

/// A validated `tollway.yaml`.
#[derive(Clone, Debug)]
pub struct Config {
    pub verifier: VerifierSettings,
    pub envoy: Option<EnvoySettings>,
    /// Auth is [`FacilitatorAuth::None`] when loaded with [`Secrets::Skip`].
    pub facilitators: Vec<(String, FacilitatorSettings)>,
    pub rails: Vec<Rail>,
    pub routes: Vec<Route>,
    pub lightning: Option<LightningSettings>,
    pub l402: Option<L402Settings>,
    pub leases: Option<LeaseSettings>,
    pub admin: Option<AdminSettings>,
    pub stores: Stores,
    /// What the filter receives (and what ext_authz mode compiles too).
    pub filter: FilterConfig,
    /// The file's `routes:` as written, for the route store (admin changes go on top).
    pub file_routes: Vec<RawRoute>,
    /// Every section but `routes:` (which is live): a change there needs a restart.
    pub static_sections: serde_yaml::Value,
}

/// `leases:`. Only the key derived from the secret is kept.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub key: LeaseKey,
    /// The key of the previous secret, accepted until the time given (rotation).
    pub previous: Option<(LeaseKey, u64)>,
}

/// `admin:`. The token is `None` when loaded with [`Secrets::Skip`].
#[derive(Clone, Debug)]
pub struct AdminSettings {
    pub token: Option<Secret>,
}

/// `stores:`: where shared state lives.
#[derive(Clone, Debug, Default)]
pub struct Stores {
    pub replay: ReplayStoreSettings,
    /// `stores.allow_volatile_replay`: start on a Redis without persistence.
    pub allow_volatile_replay: bool,
}

/// Where claims (x402 nonces, single-use L402 tokens and leases) are held.
#[derive(Clone, Debug, Default)]
pub enum ReplayStoreSettings {
    /// The ledger database (durable; shared when the ledger is PostgreSQL).
    #[default]
    Ledger,
    /// This process only, forgotten on restart (`stores.replay: memory`).
    Memory,
    /// A Redis shared by every replica.
    Redis(RedisSettings),
}

/// `stores.replay: redis://host:port/db` or `{ url: ..., password: env:NAME }`.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://` or `rediss://`, never with a password (so it may be logged).
    pub url: reqwest::Url,
    /// `None` without a `password:`, or when loaded with [`Secrets::Skip`].
    pub password: Option<Secret>,
}

/// A route table that passed every check of `tollway check`, compiled.
#[derive(Clone, Debug)]
pub struct ValidRoutes {
    pub routes: Vec<Route>,
    /// The whole filter config with these routes.
    pub filter: FilterConfig,
    pub compiled: CompiledConfig,
}

impl Config {
    /// Validates `raw` as the `routes:` of this config (its rails, Lightning, L402 and lease
    /// settings): the same rules and messages as `tollway check`, then the filter's compile.
    pub fn validate_routes(&self, raw: &[RawRoute]) -> Result<ValidRoutes, ConfigErrors> {
        let rail_names: Vec<String> = self.rails.iter().map(|r| r.name.clone()).collect();
        let ctx = RouteCtx {
            rails: &self.rails,
            rail_names: &rail_names,
            lightning_block: self.lightning.is_some(),
            lightning: self.lightning.as_ref(),
            leases_block: self.leases.is_some(),
            paths: self.filter.paths,
        };
        let mut p = Problems::default();
        let (routes, configs) = validate_routes(&mut p, &ctx, raw);
        if !p.0.is_empty() {
            return Err(ConfigErrors(p.0));
        }
        let filter = FilterConfig {
            routes: configs,
            ..self.filter.clone()
        };
        match compile_filter(&mut p, &filter, raw) {
            Some(compiled) if p.0.is_empty() => Ok(ValidRoutes {
                routes,
                filter,
                compiled,
            }),
            _ => Err(ConfigErrors(p.0)),
        }
    }

    pub fn paid_routes(&self) -> usize {
        self.routes
            .iter()
            .filter(|r| r.price.is_some() || r.lightning.is_some())
            .count()
    }

    #[cfg(test)]
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}

/// Whether secret references are read (`check`, `serve`) or only syntax-checked (`envoy`, which
/// runs where the secrets may not exist). The exceptions are `l402.root_secret` and
/// `leases.secret`: they are always read, because the filter configuration `envoy` renders
/// carries the keys derived from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    Resolve,
    Skip,
}

impl Config {
    pub fn load(path: &Path, secrets: Secrets) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![Problem {
                path: path.display().to_string(),
                message: format!("cannot read: {e}"),
                hint: None,
            }])
        })?;
        Self::parse(&text, secrets)
    }

    pub fn parse(text: &str, secrets: Secrets) -> Result<Config, ConfigErrors> {
        let raw = parse_raw(text)?;
        let static_sections = static_sections(text);
        let mut problems = Problems::default();
        let config = validate(raw, secrets, &mut problems);
        match config {
            Some(c) if problems.0.is_empty() => Ok(Config {
                static_sections,
                ..c
            }),
            _ => Err(ConfigErrors(problems.0)),
        }
    }
}

/// The `routes:` of a config file and its other sections (to compare with the running
/// config's), for a reload. The file's shape is checked whole; the routes are not validated
/// here (see [`Config::validate_routes`]).
pub fn parse_routes(text: &str) -> Result<(Vec<RawRoute>, serde_yaml::Value), ConfigErrors> {
    let raw = parse_raw(text)?;
    Ok((raw.routes, static_sections(text)))
}

/// The YAML document without its `routes:` key.
fn static_sections(text: &str) -> serde_yaml::Value {
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(text).unwrap_or(serde_yaml::Value::Null);
    if let serde_yaml::Value::Mapping(m) = &mut value {
        m.remove("routes");
    }
    value
}

fn parse_raw(text: &str) -> Result<RawConfig, ConfigErrors> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
        let path = e.path().to_string();
        let message = strip_path_prefix(&e.inner().to_string(), &path);
        let (path, hint) = if path == "." {
            ("(top level)".to_owned(), None)
        } else {
            let hint = serde_hint(&path, &message);
            (path, hint)
        };
        ConfigErrors(vec![Problem {
            path,
            message,
            hint,
        }])
    })
}

/// serde_yaml prefixes its own (sometimes shorter) path; ours is printed already.
fn strip_path_prefix(message: &str, path: &str) -> String {
    let mut candidate = path;
    loop {
        if let Some(rest) = message.strip_prefix(&format!("{candidate}: ")) {
            return rest.to_owned();
        }
        match candidate.rfind(['.', '[']) {
            Some(i) if i > 0 => candidate = &candidate[..i],
            _ => return message.to_owned(),
        }
    }
}

fn serde_hint(path: &str, message: &str) -> Option<String> {
    if message.contains("unknown field") {
        return Some("check the spelling; docs/internals.md lists every field".into());
    }
    if message.contains("flow mapping") || message.contains("flow sequence") {
        return Some(
            "inside { } or [ ], quote values that contain [ ] or , (e.g. path: \"/lease/[id]\"), or use block style"
                .into(),
        );
    }
    if path.ends_with("decimals") {
        return Some("the token's decimals, e.g. 6 for USDC".into());
    }
    None
}

// ------------------------------------------------------------------------------------------
// Validation

fn socket_addr(p: &mut Problems, path: &str, text: &str) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.hint(
                path,
                format!("{text:?} is not an ip:port address"),
                "e.g. 127.0.0.1:50051 or [::1]:50051",
            );
            None
        }
    }
}

fn host_port(p: &mut Problems, path: &str, text: &str) -> Option<HostPort> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(HostPort {
            host: a.ip().to_string(),
            port: a.port(),
        });
    }
    let bad = |p: &mut Problems| {
        p.hint(
            path,
            format!("{text:?} is not host:port"),
            "e.g. 127.0.0.1:8080 or api.internal:80",
        )
    };
    let Some((host, port)) = text.rsplit_once(':') else {
        bad(p);
        return None;
    };
    let host_ok = !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    match (host_ok, port.parse::<u16>()) {
        (true, Ok(port)) if port > 0 => Some(HostPort {
            host: host.to_owned(),
            port,
        }),
        _ => {
            bad(p);
            None
        }
    }
}

fn evm_address(p: &mut Problems, path: &str, text: &str) -> Option<EvmAddress> {
    match text.parse::<EvmAddress>() {
        Ok(a) => {
            let digits = &text[2..];
            let mixed = digits.bytes().any(|b| b.is_ascii_lowercase())
                && digits.bytes().any(|b| b.is_ascii_uppercase());
            let checksummed = a.to_string();
            if mixed && text != checksummed {
                p.hint(
                    path,
                    format!("{text} fails its EIP-55 checksum"),
                    format!("a typo? the checksummed form of these bytes is {checksummed}"),
                );
                return None;
            }
            Some(a)
        }
        Err(e) => {
            p.hint(
                path,
                format!("{text:?} is not an EVM address: {e}"),
                "0x followed by 40 hex digits, quoted",
            );
            None
        }
    }
}

fn network(p: &mut Problems, path: &str, text: &str) -> Option<Network> {
    match text.parse::<Network>() {
        Ok(n) => {
            if n.evm_chain_id().is_none() {
                p.hint(
                    path,
                    format!("{text} is not an EVM chain; only eip155 networks are supported (scheme exact with EIP-3009)"),
                    "e.g. eip155:8453 (Base) or eip155:84532 (Base Sepolia)",
                );
                return None;
            }
            Some(n)
        }
        Err(e) => {
            let hint = match Network::from_v1_name(text) {
                Some(caip) => format!("{text} is a v1 name; write the CAIP-2 id: network: {caip}"),
                None => "CAIP-2 namespace:reference, e.g. eip155:84532".into(),
            };
            p.hint(path, format!("{text:?} is not a CAIP-2 network: {e}"), hint);
            None
        }
    }
}

fn secret_ref(p: &mut Problems, path: &str, text: &str) -> Option<SecretRef> {
    match SecretRef::parse(text) {
        Ok(r) => Some(r),
        Err(e) => {
            // The value might be the secret itself: never echo it.
            p.add(path, e.to_string());
            None
        }
    }
}

fn resolve(
    p: &mut Problems,
    path: &str,
    r: &SecretRef,
    min: usize,
) -> Option<crate::config::secret::Secret> {
    match r.resolve(min) {
        Ok(s) => Some(s),
        Err(e) => {
            p.add(path, e.to_string());
            None
        }
    }
}

fn facilitator(
    p: &mut Problems,
    name: &str,
    raw: &RawFacilitator,
    secrets: Secrets,
) -> Option<FacilitatorSettings> {
    let base = format!("facilitators.{name}");
    let mut ok = true;
    let url = match reqwest::Url::parse(&raw.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            if u.query().is_some() || u.fragment().is_some() {
                p.add(format!("{base}.url"), "must not have a query or fragment");
                ok = false;
            }
            if !u.username().is_empty() || u.password().is_some() {
                // Never echo the URL: it holds a credential.
                p.hint(
                    format!("{base}.url"),
                    "credentials in the URL are not allowed",
                    "auth: { bearer: env:FACILITATOR_TOKEN }",
                );
                ok = false;
            }
            Some(u)
        }
        Ok(u) => {
            p.hint(
                format!("{base}.url"),
                format!("scheme {:?} is not http or https", u.scheme()),
                "e.g. https://x402.org/facilitator or http://127.0.0.1:4020",
            );
            None
        }
        Err(e) => {
            p.hint(
                format!("{base}.url"),
                format!("{:?} is not a URL: {e}", raw.url),
                "e.g. https://x402.org/facilitator or http://127.0.0.1:4020",
            );
            None
        }
    };
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_FACILITATOR_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > MAX_FACILITATOR_TIMEOUT_MS {
        p.hint(
            format!("{base}.timeout_ms"),
            format!("{timeout_ms} is out of range 1..={MAX_FACILITATOR_TIMEOUT_MS}"),
            "settlement waits for a receipt: 10000 is a good start",
        );
        ok = false;
    }
    let auth = match &raw.auth {
        None => Some(FacilitatorAuth::None),
        Some(RawAuth {
            bearer: Some(_),
            cdp: Some(_),
        })
        | Some(RawAuth {
            bearer: None,
            cdp: None,
        }) => {
            p.hint(
                format!("{base}.auth"),
                "give exactly one of bearer or cdp",
                "auth: { bearer: env:FACILITATOR_TOKEN } or auth: { cdp: { key_id: env:CDP_API_KEY_ID, key_secret: env:CDP_API_KEY_SECRET } }",
            );
            None
        }
        Some(RawAuth {
            bearer: Some(token),
            cdp: None,
        }) => {
            let path = format!("{base}.auth.bearer");
            let r = secret_ref(p, &path, token)?;
            match secrets {
                Secrets::Skip => Some(FacilitatorAuth::None),
                Secrets::Resolve => resolve(p, &path, &r, 0).map(FacilitatorAuth::Bearer),
            }
        }
        Some(RawAuth {
            bearer: None,
            cdp: Some(cdp),
        }) => {
            let id_path = format!("{base}.auth.cdp.key_id");
            let secret_path = format!("{base}.auth.cdp.key_secret");
            let id_ref = secret_ref(p, &id_path, &cdp.key_id);
            let secret_ref_ = secret_ref(p, &secret_path, &cdp.key_secret);
            match (id_ref, secret_ref_, secrets) {
                (Some(_), Some(_), Secrets::Skip) => Some(FacilitatorAuth::None),
                (Some(id_ref), Some(secret_ref_), Secrets::Resolve) => {
                    let id = resolve(p, &id_path, &id_ref, 0);
                    let secret = resolve(p, &secret_path, &secret_ref_, MIN_SECRET_BYTES);
                    match (id, secret) {
                        (Some(id), Some(secret)) => {
                            match CdpCredentials::new(id.expose(), secret.expose()) {
                                Ok(c) => Some(FacilitatorAuth::Cdp(Arc::new(c))),
                                Err(e) => {
                                    p.hint(
                                        secret_path,
                                        e.to_string(),
                                        "the CDP API key secret: a PEM EC key or base64 Ed25519 key",
                                    );
                                    None
                                }
                            }
                        }
                        _ => None,
                    }
                }
                _ => None,
            }
        }
    };
    match (url, auth, ok) {
        (Some(url), Some(auth), true) => Some(FacilitatorSettings {
            url,
            timeout: Duration::from_millis(timeout_ms),
            auth,
        }),
        _ => None,
    }
}

fn rail(p: &mut Problems, name: &str, raw: &RawRail, facilitators: &[String]) -> Option<Rail> {
    let base = format!("rails.{name}");
    let before = p.0.len();
    let network = network(p, &format!("{base}.network"), raw.network.trim());
    let asset = evm_address(p, &format!("{base}.asset"), raw.asset.trim());
    let pay_to = evm_address(p, &format!("{base}.pay_to"), raw.pay_to.trim());
    if pay_to == Some(EvmAddress([0u8; 20])) {
        p.hint(
            format!("{base}.pay_to"),
            "the zero address burns every payment",
            "your wallet address",
        );
    }
    if raw.decimals > 36 {
        p.hint(
            format!("{base}.decimals"),
            format!("{} decimals is more than any token uses", raw.decimals),
            "6 for USDC, 18 for most ERC-20s",
        );
    }
    if raw.eip712.name.trim().is_empty() {
        p.hint(
            format!("{base}.eip712.name"),
            "must not be empty",
            "the token's name(), e.g. \"USD Coin\" on Base, \"USDC\" on Base Sepolia",
        );
    }
    if raw.eip712.version.trim().is_empty() {
        p.hint(
            format!("{base}.eip712.version"),
            "must not be empty",
            "the token's EIP-712 version(), \"2\" for USDC",
        );
    }
    if !facilitators.contains(&raw.facilitator) {
        p.hint(
            format!("{base}.facilitator"),
            format!("unknown facilitator {:?}", raw.facilitator),
            defined("facilitators", facilitators),
        );
    }
    let max_timeout_seconds = raw
        .max_timeout_seconds
        .unwrap_or(DEFAULT_MAX_TIMEOUT_SECONDS);
    if max_timeout_seconds == 0 || max_timeout_seconds > 86_400 {
        p.hint(
            format!("{base}.max_timeout_seconds"),
            format!("{max_timeout_seconds} is out of range 1..=86400"),
            "clients sign validBefore = now + this; 300 is common",
        );
    }
    if let Some(v1) = &raw.v1_name {
        let ok = !v1.is_empty()
            && v1
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            p.hint(
                format!("{base}.v1_name"),
                format!("{v1:?} is not a v1 network name"),
                "lower-case like base-sepolia",
            );
        }
    }
    let rpc_url = raw.rpc_url.as_deref().and_then(|u| {
        node_url(
            p,
            &format!("{base}.rpc_url"),
            u,
            "https://sepolia.base.org or http://127.0.0.1:8545",
        )
    });
    if p.0.len() != before {
        return None;
    }
    Some(Rail {
        name: name.to_owned(),
        network: network?,
        asset: asset?,
        decimals: raw.decimals,
        pay_to: pay_to?,
        eip712_name: raw.eip712.name.clone(),
        eip712_version: raw.eip712.version.clone(),
        facilitator: raw.facilitator.clone(),
        max_timeout_seconds,
        v1_name: raw.v1_name.clone(),
        rpc_url,
    })
}

/// `verifier.ledger`: a SQLite path, or `postgres://user@host:port/db` (the password comes from
/// the server's own auth, e.g. a client certificate or `trust` on a private network, never from
/// this file: it is rendered into manifests and logs).
fn ledger_location(p: &mut Problems, text: &str) -> Option<LedgerLocation> {
    let path = "verifier.ledger";
    if text.is_empty() {
        p.hint(
            path,
            "must not be empty",
            "a SQLite file path, e.g. tollway-ledger.db, or postgres://tollway@db:5432/tollway",
        );
        return None;
    }
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        return Some(LedgerLocation::Sqlite(PathBuf::from(text)));
    }
    match reqwest::Url::parse(text) {
        Ok(u) if u.password().is_some() => {
            // Never echo the URL: it holds a credential.
            p.hint(
                path,
                "a password in the URL is not allowed (it would be in every rendered config)",
                "authenticate with the server's pg_hba (cert, or trust on a private network)",
            );
            None
        }
        Ok(u) if u.host_str().is_some() && u.path().len() > 1 => {
            Some(LedgerLocation::Postgres(text.to_owned()))
        }
        Ok(_) => {
            p.hint(
                path,
                "a PostgreSQL URL needs a host and a database",
                "postgres://tollway@127.0.0.1:5432/tollway",
            );
            None
        }
        Err(e) => {
            p.add(path, format!("not a PostgreSQL URL: {e}"));
            None
        }
    }
}

fn defined(what: &str, names: &[String]) -> String {
    if names.is_empty() {
        format!("no {what} are defined")
    } else {
        format!("defined {what}: {}", names.join(", "))
    }
}

fn price(p: &mut Problems, path: &str, value: &serde_yaml::Value) -> Option<UsdPrice> {
    use serde_yaml::Value;
    let text = match value {
        Value::String(s) => s.trim(),
        Value::Number(n) => {
            p.hint(
                path,
                format!("{n} is a YAML number; prices must be quoted decimal strings so they stay exact"),
                format!("quote it: price: \"{n}\""),
            );
            return None;
        }
        other => {
            p.hint(
                path,
                format!("expected a quoted decimal string, got {}", yaml_kind(other)),
                "price: \"0.001\" (USD)",
            );
            return None;
        }
    };
    match text.strip_prefix('$').unwrap_or(text).parse::<UsdPrice>() {
        Ok(v) if v.is_zero() => {
            p.hint(
                path,
                "price must be greater than 0",
                "use free: true for a free route",
            );
            None
        }
        Ok(v) => {
            if let Some(bare) = text.strip_prefix('$') {
                p.hint(
                    path,
                    format!("{text:?} has a currency sign"),
                    format!("price: \"{bare}\" (USD is implied)"),
                );
                return None;
            }
            Some(v)
        }
        Err(e) => {
            let hint = match e {
                AmountError::Exponent => "write the number out, e.g. \"0.001\"",
                _ => "a decimal USD amount like \"0.001\"",
            };
            p.hint(path, format!("{text:?} is not a price: {e}"), hint);
            None
        }
    }
}

fn yaml_kind(v: &serde_yaml::Value) -> &'static str {
    use serde_yaml::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Maps a protocol route error to the field it is about; strips the `route "x": ` prefix.
fn route_error(p: &mut Problems, base: &str, e: &RouteError) {
    const PATH_HINT: &str =
        "segments are literals, `*` (one segment), `[name]` (one captured segment) or a final `**` (any depth)";
    let text = e.to_string();
    // `route "name": message` or `route "name" matches ...`: the path already says which route.
    let message = text
        .strip_prefix("route \"")
        .and_then(|rest| rest.split_once('"'))
        .map(|(_, rest)| rest.trim_start_matches(':').trim_start().to_owned())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| text.clone());
    match e {
        RouteError::EmptyName => p.add(format!("{base}.name"), message),
        RouteError::DuplicateName(_) => p.add(format!("{base}.name"), message),
        RouteError::PathNotAbsolute { path, .. } => p.hint(
            format!("{base}.path"),
            message,
            format!("path: /{}", path.trim_start_matches('/')),
        ),
        RouteError::EmptySegment { .. }
        | RouteError::RestNotLast { .. }
        | RouteError::BadParamName { .. }
        | RouteError::DuplicateParam { .. }
        | RouteError::BadSegment { .. } => p.hint(format!("{base}.path"), message, PATH_HINT),
        RouteError::BadHost { .. } => p.hint(
            format!("{base}.host"),
            message,
            "api.example.com or *.example.com",
        ),
        RouteError::BadMethod { .. } => {
            p.hint(format!("{base}.methods"), message, "e.g. [GET, POST]")
        }
        RouteError::Shadowed { .. } => p.hint(
            base.to_owned(),
            message,
            "give it a different path, host or methods, or remove one",
        ),
    }
}

// ------------------------------------------------------------------------------------------
// Lightning

/// An http(s) URL of a node API: no credentials, query or fragment.
fn node_url(p: &mut Problems, path: &str, text: &str, example: &str) -> Option<reqwest::Url> {
    match reqwest::Url::parse(text.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                // Never echo the URL: it holds a credential.
                p.add(path, "credentials in the URL are not allowed");
                return None;
            }
            if u.query().is_some() || u.fragment().is_some() {
                p.add(path, "must not have a query or fragment");
                return None;
            }
            Some(u)
        }
        Ok(u) => {
            p.hint(
                path,
                format!("scheme {:?} is not http or https", u.scheme()),
                format!("e.g. {example}"),
            );
            None
        }
        Err(e) => {
            p.hint(
                path,
                format!("{:?} is not a URL: {e}", text.trim()),
                format!("e.g. {example}"),
            );
            None
        }
    }
}

/// A certificate by reference (`file:PATH`, or `env:NAME` holding PEM), read and parsed in
/// [`Secrets::Resolve`] mode.
fn cert_ref(
    p: &mut Problems,
    path: &str,
    text: &str,
    secrets: Secrets,
) -> Option<Option<Vec<rustls::pki_types::CertificateDer<'static>>>> {
    let r = match SecretRef::parse(text.trim()) {
        Ok(r) => r,
        Err(_) => {
            p.hint(
                path,
                "not a file reference",
                "tls_cert: file:/path/to/tls.cert (PEM or DER)",
            );
            return None;
        }
    };
    if secrets == Secrets::Skip {
        return Some(None);
    }
    let bytes = match r.resolve_bytes() {
        Ok(b) => b,
        Err(e) => {
            p.add(path, e.to_string());
            return None;
        }
    };
    match load_certs(&bytes) {
        Ok(certs) => Some(Some(certs)),
        Err(e) => {
            p.hint(
                path,
                format!("{r}: {e}"),
                "the node's certificate (LND: tls.cert; clnrest: ca.pem or its server cert)",
            );
            None
        }
    }
}

/// LND's macaroon: `file:` with the binary macaroon (or its hex), or `env:` with hex.
fn macaroon_ref(
    p: &mut Problems,
    path: &str,
    text: &str,
    secrets: Secrets,
) -> Option<Option<Vec<u8>>> {
    let r = secret_ref(p, path, text.trim())?;
    if secrets == Secrets::Skip {
        return Some(None);
    }
    let bytes = match r.resolve_bytes() {
        Ok(b) => b,
        Err(e) => {
            p.add(path, e.to_string());
            return None;
        }
    };
    let text = std::str::from_utf8(&bytes).ok().map(str::trim);
    let hex_text = text.filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()));
    let raw = match (hex_text, &r) {
        (Some(t), _) => hex::decode(t).ok(),
        (None, SecretRef::File(_)) => Some(bytes),
        (None, SecretRef::Env(_)) => None,
    };
    // A v2 binary macaroon starts with 0x02.
    match raw {
        Some(m) if m.first() == Some(&0x02) => Some(Some(m)),
        _ => {
            p.hint(
                path,
                format!("{r} does not hold a macaroon"),
                "the binary invoice.macaroon file (file:) or its hex (env: or file:)",
            );
            None
        }
    }
}

fn missing_backend_block(p: &mut Problems, backend: &str, example: &str) {
    p.hint(
        format!("lightning.{backend}"),
        format!("missing: backend {backend} needs its settings"),
        example.to_owned(),
    );
}

fn lightning(p: &mut Problems, raw: &RawLightning, secrets: Secrets) -> Option<LightningSettings> {
    let before = p.0.len();
    let network = match raw.network.trim().parse::<LightningNetwork>() {
        Ok(n) => Some(n),
        Err(_) => {
            p.hint(
                "lightning.network",
                format!("{:?} is not a Bitcoin network", raw.network),
                "mainnet, testnet, signet or regtest",
            );
            None
        }
    };
    let expiry = raw
        .invoice_expiry_seconds
        .unwrap_or(DEFAULT_INVOICE_EXPIRY_SECONDS);
    if !(INVOICE_EXPIRY_RANGE.0..=INVOICE_EXPIRY_RANGE.1).contains(&expiry) {
        p.hint(
            "lightning.invoice_expiry_seconds",
            format!(
                "{expiry} is out of range {}..={}",
                INVOICE_EXPIRY_RANGE.0, INVOICE_EXPIRY_RANGE.1
            ),
            "the time a client has to pay a 402's invoice; 600 is common",
        );
    }
    let defaults = InvoiceLimits::default();
    let limits = raw.invoice_limits.as_ref();
    let invoice_limits = InvoiceLimits {
        per_client: limits
            .and_then(|l| l.per_client)
            .unwrap_or(defaults.per_client),
        total: limits.and_then(|l| l.total).unwrap_or(defaults.total),
    };
    for (field, value, max) in [
        ("per_client", invoice_limits.per_client, 1_000),
        ("total", invoice_limits.total, 1_000_000),
    ] {
        if !(1..=max).contains(&value) {
            p.hint(
                format!("lightning.invoice_limits.{field}"),
                format!("{value} is out of range 1..={max}"),
                "open (unpaid, unexpired) invoices at most; defaults: per_client 10, total 10000",
            );
        }
    }
    if invoice_limits.per_client > invoice_limits.total {
        p.hint(
            "lightning.invoice_limits.per_client",
            format!(
                "{} is more than total ({})",
                invoice_limits.per_client, invoice_limits.total
            ),
            "per_client is at most total",
        );
    }
    let node = match Backend::parse(raw.backend.trim()) {
        None => {
            p.hint(
                "lightning.backend",
                format!("unknown backend {:?}", raw.backend),
                "dev, lnd, cln or lnbits",
            );
            None
        }
        Some(Backend::Dev) => {
            if network == Some(LightningNetwork::Mainnet) {
                p.hint(
                    "lightning.backend",
                    "the dev backend cannot run on mainnet: it hands out preimages for free",
                    "network: regtest, or a real node (lnd, cln, lnbits)",
                );
            }
            Some(NodeSettings::Dev)
        }
        Some(Backend::Lnd) => match &raw.lnd {
            None => {
                missing_backend_block(
                    p,
                    "lnd",
                    "lnd: { grpc: \"127.0.0.1:10009\", tls_cert: file:/path/tls.cert, macaroon: file:/path/invoice.macaroon }",
                );
                None
            }
            Some(lnd) => {
                let target = host_port(p, "lightning.lnd.grpc", lnd.grpc.trim());
                let tls_cert = cert_ref(p, "lightning.lnd.tls_cert", &lnd.tls_cert, secrets);
                let macaroon = macaroon_ref(p, "lightning.lnd.macaroon", &lnd.macaroon, secrets);
                match (target, tls_cert, macaroon) {
                    (Some(t), Some(tls_cert), Some(macaroon)) => Some(NodeSettings::Lnd {
                        host: t.host,
                        port: t.port,
                        tls_cert,
                        macaroon,
                    }),
                    _ => None,
                }
            }
        },
        Some(Backend::Cln) => match &raw.cln {
            None => {
                missing_backend_block(
                    p,
                    "cln",
                    "cln: { url: \"https://127.0.0.1:3010\", rune: env:CLN_RUNE, tls_cert: file:/path/ca.pem }",
                );
                None
            }
            Some(cln) => {
                let url = node_url(p, "lightning.cln.url", &cln.url, "https://127.0.0.1:3010");
                let tls_cert = match &cln.tls_cert {
                    None => Some(None),
                    Some(t) => {
                        if url.as_ref().is_some_and(|u| u.scheme() != "https") {
                            p.hint(
                                "lightning.cln.tls_cert",
                                "a certificate needs an https url",
                                "url: https://... or remove tls_cert",
                            );
                        }
                        cert_ref(p, "lightning.cln.tls_cert", t, secrets)
                    }
                };
                let rune =
                    secret_ref(p, "lightning.cln.rune", cln.rune.trim()).and_then(
                        |r| match secrets {
                            Secrets::Skip => Some(None),
                            Secrets::Resolve => resolve(p, "lightning.cln.rune", &r, 0).map(Some),
                        },
                    );
                match (url, tls_cert, rune) {
                    (Some(url), Some(tls_cert), Some(rune)) => Some(NodeSettings::Cln {
                        url,
                        rune,
                        tls_cert,
                    }),
                    _ => None,
                }
            }
        },
        Some(Backend::Lnbits) => match &raw.lnbits {
            None => {
                missing_backend_block(
                    p,
                    "lnbits",
                    "lnbits: { url: \"https://lnbits.example\", invoice_key: env:LNBITS_INVOICE_KEY }",
                );
                None
            }
            Some(lnbits) => {
                let url = node_url(
                    p,
                    "lightning.lnbits.url",
                    &lnbits.url,
                    "https://lnbits.example",
                );
                let key = secret_ref(p, "lightning.lnbits.invoice_key", lnbits.invoice_key.trim())
                    .and_then(|r| match secrets {
                        Secrets::Skip => Some(None),
                        Secrets::Resolve => {
                            resolve(p, "lightning.lnbits.invoice_key", &r, 0).map(Some)
                        }
                    });
                match (url, key) {
                    (Some(url), Some(invoice_key)) => {
                        Some(NodeSettings::Lnbits { url, invoice_key })
                    }
                    _ => None,
                }
            }
        },
    };
    if p.0.len() != before {
        return None;
    }
    Some(LightningSettings {
        node: node?,
        network: network?,
        invoice_expiry_seconds: expiry,
        invoice_limits,
    })
}

fn l402(p: &mut Problems, raw: &RawL402) -> Option<L402Settings> {
    let before = p.0.len();
    let service = raw
        .service
        .as_deref()
        .map_or(DEFAULT_L402_SERVICE, str::trim)
        .to_owned();
    if !is_valid_service(&service) {
        p.hint(
            "l402.service",
            format!("{service:?} is not a service name"),
            "1-64 letters, digits, '-', '_' or '.': it is written into every token's caveats",
        );
    }
    let valid_seconds = raw.valid_seconds.unwrap_or(DEFAULT_L402_VALID_SECONDS);
    if valid_seconds == 0 || valid_seconds > MAX_L402_VALID_SECONDS {
        p.hint(
            "l402.valid_seconds",
            format!("{valid_seconds} is out of range 1..={MAX_L402_VALID_SECONDS}"),
            "how long a paid token stays valid; 3600 is common",
        );
    }
    // Always resolved, even for `tollway envoy` (which validates the filter config whole).
    let secret = secret_ref(p, "l402.root_secret", raw.root_secret.trim())
        .and_then(|r| resolve(p, "l402.root_secret", &r, MIN_SECRET_BYTES));
    let previous = raw
        .previous
        .as_ref()
        .and_then(|prev| previous_secret(p, "l402.previous", prev));
    if p.0.len() != before {
        return None;
    }
    Some(L402Settings {
        filter_key: filter_key(secret?.expose().as_bytes()),
        service,
        valid_seconds,
        previous: previous.map(|(s, until)| (filter_key(s.expose().as_bytes()), until)),
    })
}

/// A positive whole number: a YAML integer, or a string of digits.
fn whole_number(
    p: &mut Problems,
    path: &str,
    value: &serde_yaml::Value,
    unit: &str,
) -> Option<u64> {
    use serde_yaml::Value;
    let n = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s)
            if !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.trim().parse::<u64>().ok()
        }
        _ => None,
    };
    match n {
        Some(0) => {
            p.hint(
                path,
                "must be greater than 0",
                "use free: true for a free route",
            );
            None
        }
        Some(n) => Some(n),
        None => {
            p.hint(
                path,
                format!(
                    "expected a whole number of {unit}, got {}",
                    yaml_kind(value)
                ),
                format!(
                    "e.g. {path_tail}: 10",
                    path_tail = path.rsplit('.').next().unwrap_or(path)
                ),
            );
            None
        }
    }
}

/// The route's Lightning price, if it sells Lightning (`price_sats` or `price_msat`).
fn lightning_price(
    p: &mut Problems,
    base: &str,
    r: &RawRoute,
    lightning_block: bool,
    lightning: Option<&LightningSettings>,
) -> Option<LightningPrice> {
    let amount_msat = match (&r.price_sats, &r.price_msat) {
        (None, None) => {
            if r.single_use.is_some() {
                p.hint(
                    format!("{base}.single_use"),
                    "single_use applies to L402 tokens, and this route has no Lightning price",
                    "add price_sats: 10, or remove single_use",
                );
            }
            return None;
        }
        (Some(_), Some(_)) => {
            p.hint(
                format!("{base}.price_msat"),
                "give price_sats or price_msat, not both",
                "price_sats: 10 is the same as price_msat: 10000",
            );
            return None;
        }
        (Some(v), None) => {
            let path = format!("{base}.price_sats");
            let sats = whole_number(p, &path, v, "satoshis")?;
            match sats.checked_mul(1000).filter(|m| *m <= MAX_MSAT) {
                Some(m) => m,
                None => {
                    p.add(path, format!("{sats} sats is more than all bitcoin"));
                    return None;
                }
            }
        }
        (None, Some(v)) => {
            let path = format!("{base}.price_msat");
            let msat = whole_number(p, &path, v, "millisatoshis")?;
            if msat > MAX_MSAT {
                p.add(path, format!("{msat} msat is more than all bitcoin"));
                return None;
            }
            if !msat.is_multiple_of(1000)
                && lightning.is_some_and(|l| l.node.backend() == Backend::Lnbits)
            {
                p.hint(
                    path,
                    format!("{msat} msat is not a whole number of satoshis, which LNbits needs"),
                    format!(
                        "price_sats: {} or price_msat: {}",
                        msat.div_ceil(1000),
                        msat.div_ceil(1000) * 1000
                    ),
                );
                return None;
            }
            msat
        }
    };
    if r.free {
        p.hint(
            format!("{base}.free"),
            "a free route has no Lightning price",
            "remove price_sats/price_msat, or remove free: true",
        );
        return None;
    }
    if !lightning_block {
        let field = if r.price_sats.is_some() {
            "price_sats"
        } else {
            "price_msat"
        };
        p.hint(
            format!("{base}.{field}"),
            "the route sells Lightning but there is no lightning: section",
            "add lightning: { backend: dev, network: regtest } and l402: { root_secret: env:TOLLWAY_L402_SECRET }",
        );
        return None;
    }
    Some(LightningPrice {
        amount_msat,
        single_use: r.single_use.unwrap_or(false),
    })
}

/// What route validation needs from the rest of the config.
struct RouteCtx<'a> {
    rails: &'a [Rail],
    rail_names: &'a [String],
    /// A `lightning:` section is present (even if it has problems of its own).
    lightning_block: bool,
    lightning: Option<&'a LightningSettings>,
    /// A `leases:` section is present.
    leases_block: bool,
    /// The top-level `paths`.
    paths: PathCase,
}

/// Every route on its own (cross-route rules are [`compile_filter`]'s): the validated routes
/// and their filter configs, for the routes without problems.
fn validate_routes(
    p: &mut Problems,
    ctx: &RouteCtx<'_>,
    raw_routes: &[RawRoute],
) -> (Vec<Route>, Vec<RouteConfig>) {
    let mut routes = Vec::new();
    let mut route_configs = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, r) in raw_routes.iter().enumerate() {
        let base = format!("routes[{i}]");
        let before = p.0.len();
        let name_ok = !r.name.is_empty()
            && r.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !name_ok {
            p.hint(
                format!("{base}.name"),
                format!("{:?} is not a route name", r.name),
                "letters, digits, '-', '_' or '.': it appears in metrics and the ledger",
            );
        } else if let Some(j) = seen.get(r.name.as_str()) {
            p.hint(
                format!("{base}.name"),
                format!("duplicate route name {:?} (also routes[{j}])", r.name),
                "route names must be unique",
            );
        } else {
            seen.insert(&r.name, i);
        }
        let methods: Vec<String> = r
            .methods
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|m| m.trim().to_ascii_uppercase())
            .collect();
        if r.methods.as_ref().is_some_and(Vec::is_empty) {
            p.hint(
                format!("{base}.methods"),
                "an empty list matches nothing",
                "omit methods to accept any method",
            );
        }
        let spec = RouteSpec {
            name: if r.name.is_empty() {
                format!("#{i}")
            } else {
                r.name.clone()
            },
            host: r.host.clone(),
            methods: methods.clone(),
            path: r.path.clone(),
            case_insensitive: r.paths.unwrap_or(ctx.paths) == PathCase::CaseInsensitive,
        };
        // Syntax of this route alone, so each route reports its own errors.
        if let Err(e) = RouteTable::compile(vec![spec]) {
            route_error(p, &base, &e);
        }

        let ln_price = lightning_price(p, &base, r, ctx.lightning_block, ctx.lightning);
        let sells_lightning = r.price_sats.is_some() || r.price_msat.is_some();
        let price = match (&r.price, r.free) {
            (Some(_), true) => {
                p.hint(
                    format!("{base}.price"),
                    "a free route has no price",
                    "remove price, or remove free: true",
                );
                None
            }
            (None, false) if sells_lightning => None,
            (None, false) => {
                p.hint(
                    format!("{base}.price"),
                    "missing: a route is paid (price: \"0.001\" and/or price_sats: 10) or free (free: true)",
                    "price: \"0.001\"",
                );
                None
            }
            (None, true) => None,
            (Some(v), false) => price(p, &format!("{base}.price"), v),
        };
        let paid = r.price.is_some() && !r.free;
        if r.free && r.rails.is_some() {
            p.hint(
                format!("{base}.rails"),
                "a free route takes no rails",
                "remove rails, or free: true",
            );
        } else if !r.free && r.price.is_none() && r.rails.is_some() {
            p.hint(
                format!("{base}.rails"),
                "rails are x402 offers of the USD price, and this route has none",
                "add price: \"0.001\", or remove rails",
            );
        }

        // Rails of a paid route: listed, or every rail.
        let mut route_rails: Vec<&Rail> = Vec::new();
        if paid {
            match &r.rails {
                Some(list) => {
                    if list.is_empty() {
                        p.hint(
                            format!("{base}.rails"),
                            "a paid route needs at least one rail",
                            format!(
                                "omit rails to accept every rail, or list some ({})",
                                defined("rails", ctx.rail_names)
                            ),
                        );
                    }
                    for (k, rail_name) in list.iter().enumerate() {
                        if !ctx.rail_names.contains(rail_name) {
                            p.hint(
                                format!("{base}.rails[{k}]"),
                                format!("unknown rail {rail_name:?}"),
                                defined("rails", ctx.rail_names),
                            );
                        } else if list[..k].contains(rail_name) {
                            p.add(
                                format!("{base}.rails[{k}]"),
                                format!("rail {rail_name:?} is listed twice"),
                            );
                        } else if let Some(rail) = ctx.rails.iter().find(|x| x.name == *rail_name) {
                            route_rails.push(rail);
                        }
                    }
                }
                None => {
                    if ctx.rail_names.is_empty() {
                        p.hint(
                            base.clone(),
                            "paid route but no rail is defined",
                            "define a rail under rails: (network, asset, pay_to, facilitator)",
                        );
                    }
                    route_rails.extend(ctx.rails.iter());
                }
            }
        }

        // Offers: the price in each rail's token units.
        let mut offers = Vec::new();
        if let Some(price) = price {
            for rail in &route_rails {
                match price.to_atomic(rail.decimals) {
                    Ok(amount) => offers.push(Offer {
                        network: rail.network.clone(),
                        asset: rail.asset,
                        pay_to: rail.pay_to,
                        amount,
                        max_timeout_seconds: rail.max_timeout_seconds,
                        eip712_name: rail.eip712_name.clone(),
                        eip712_version: rail.eip712_version.clone(),
                        v1_name: rail.v1_name.clone(),
                    }),
                    Err(AmountError::NotRepresentable { .. }) => p.hint(
                        format!("{base}.price"),
                        format!(
                            "{price} USD is not a whole number of units of rail {} ({} decimals)",
                            rail.name, rail.decimals
                        ),
                        format!("use at most {} decimal places", rail.decimals),
                    ),
                    Err(e) => p.add(
                        format!("{base}.price"),
                        format!("{price} USD on rail {}: {e}", rail.name),
                    ),
                }
            }
        }

        let shape = route_shape(p, &base, r, ctx, methods.len());

        if p.0.len() != before {
            continue;
        }
        let Some((kind, lease)) = shape else {
            continue;
        };
        routes.push(Route {
            name: r.name.clone(),
            price,
            lightning: ln_price,
            rails: route_rails.iter().map(|x| x.name.clone()).collect(),
            facilitators: route_rails.iter().map(|x| x.facilitator.clone()).collect(),
        });
        let rc = RouteConfig {
            name: r.name.clone(),
            host: r.host.clone(),
            methods,
            path: r.path.clone(),
            paid: (price.is_some() || ln_price.is_some()).then(|| PaidRoute {
                offers,
                on_unknown_settlement: r.on_unknown_settlement.unwrap_or_default(),
                lightning: ln_price,
                description: r.description.clone(),
                mime_type: r.mime_type.clone(),
            }),
            kind,
            lease,
            upstream_path: r.upstream_path.as_ref().map(|u| u.trim().to_owned()),
            request_headers: r.request_headers.clone(),
            response_headers: r.response_headers.clone().unwrap_or_default(),
            disabled: r.disabled,
            paths: r.paths,
        };
        // What only the filter's compile knows (path templates, header names), per route so
        // each route reports its own problem.
        if probe_route(p, &base, &rc) {
            route_configs.push(rc);
        } else {
            routes.pop();
        }
    }
    (routes, route_configs)
}

fn validate(raw: RawConfig, secrets: Secrets, p: &mut Problems) -> Option<Config> {
    // verifier
    let grpc = socket_addr(p, "verifier.grpc", &raw.verifier.grpc);
    let http = socket_addr(p, "verifier.http", &raw.verifier.http);
    let ledger = ledger_location(p, raw.verifier.ledger.trim());
    if let (Some(g), Some(h)) = (grpc, http) {
        if g == h {
            p.add(
                "verifier.http",
                format!("same address as verifier.grpc ({g})"),
            );
        }
    }
    let admin_listener = raw.verifier.admin.as_deref().and_then(|a| {
        let a = socket_addr(p, "verifier.admin", a.trim())?;
        for (name, other) in [("verifier.grpc", grpc), ("verifier.http", http)] {
            if other == Some(a) {
                p.add("verifier.admin", format!("same address as {name} ({a})"));
            }
        }
        if raw.admin.is_none() {
            p.hint(
                "verifier.admin",
                "the admin API needs its bearer token",
                "admin: { token: env:TOLLWAY_ADMIN_TOKEN } (at least 32 bytes)",
            );
        }
        Some(a)
    });
    let verifier_tls = raw
        .verifier
        .tls
        .as_ref()
        .and_then(|t| tls::verifier_tls(p, t, secrets));

    // envoy
    let envoy = raw.envoy.as_ref().and_then(|e| {
        let listen = socket_addr(p, "envoy.listen", &e.listen);
        let admin = socket_addr(p, "envoy.admin", &e.admin);
        let upstream = host_port(p, "envoy.upstream", &e.upstream);
        let verifier_tls = tls::envoy_verifier_tls(
            p,
            verifier_tls.as_ref(),
            raw.verifier.tls.is_some(),
            e.verifier_ca.as_deref(),
            e.verifier_client_cert.as_deref(),
            e.verifier_client_key.as_deref(),
        );
        Some(EnvoySettings {
            listen: listen?,
            admin: admin?,
            upstream: upstream?,
            wasm: e.wasm.as_ref().map(PathBuf::from),
            verifier_tls: verifier_tls.ok()?,
        })
    });

    // public_url
    let public_url = raw.public_url.as_ref().and_then(|u| {
        let u = u.trim();
        let parsed = reqwest::Url::parse(u).ok();
        let ok = parsed.as_ref().is_some_and(|x| {
            matches!(x.scheme(), "http" | "https")
                && x.host_str().is_some()
                && x.path() == "/"
                && x.query().is_none()
                && x.fragment().is_none()
                && x.username().is_empty()
        });
        if ok {
            Some(u.trim_end_matches('/').to_owned())
        } else {
            p.hint(
                "public_url",
                format!("{u:?} must be an absolute http(s) URL without path, query or fragment"),
                "e.g. https://api.example.com",
            );
            None
        }
    });

    // facilitators
    let facilitator_names: Vec<String> =
        raw.facilitators.0.iter().map(|(n, _)| n.clone()).collect();
    let mut facilitators = Vec::new();
    for (name, f) in &raw.facilitators.0 {
        if let Some(s) = facilitator(p, name, f, secrets) {
            facilitators.push((name.clone(), s));
        }
    }

    // rails
    let rail_names: Vec<String> = raw.rails.0.iter().map(|(n, _)| n.clone()).collect();
    let rails: Vec<Rail> = raw
        .rails
        .0
        .iter()
        .filter_map(|(name, r)| rail(p, name, r, &facilitator_names))
        .collect();

    // lightning + l402
    let lightning_settings = raw
        .lightning
        .as_ref()
        .and_then(|l| lightning(p, l, secrets));
    let l402_settings = raw.l402.as_ref().and_then(|l| l402(p, l));
    match (&raw.lightning, &raw.l402) {
        (Some(_), None) => p.hint(
            "l402",
            "missing: the Lightning rail mints L402 tokens and needs their root secret",
            "l402: { root_secret: env:TOLLWAY_L402_SECRET } (at least 32 bytes, e.g. `openssl rand -hex 32`)",
        ),
        (None, Some(_)) => p.hint(
            "l402",
            "has no effect without a lightning: section",
            "add lightning: { backend: ..., network: ... }, or remove l402",
        ),
        _ => {}
    }

    // leases + admin
    let leases = raw.leases.as_ref().and_then(|l| lease_settings(p, l));
    let admin = raw
        .admin
        .as_ref()
        .and_then(|a| admin_settings(p, a, secrets));

    // stores
    let stores = raw
        .stores
        .as_ref()
        .and_then(|s| stores(p, s, secrets))
        .unwrap_or_default();

    // routes
    let ctx = RouteCtx {
        rails: &rails,
        rail_names: &rail_names,
        lightning_block: raw.lightning.is_some(),
        lightning: lightning_settings.as_ref(),
        leases_block: raw.leases.is_some(),
        paths: raw.paths.unwrap_or_default(),
    };
    let (routes, route_configs) = validate_routes(p, &ctx, &raw.routes);

    if !p.0.is_empty() {
        return None;
    }

    // Cross-route checks (shadowing) and the filter's own validation, on a clean config.
    // A Lightning payment check waits on the node instead of a facilitator.
    let node_ms = u64::try_from(NODE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
    let max_timeout = facilitators
        .iter()
        .map(|(_, f)| u64::try_from(f.timeout.as_millis()).unwrap_or(u64::MAX))
        .chain(lightning_settings.as_ref().map(|_| node_ms))
        .max()
        .unwrap_or(DEFAULT_FACILITATOR_TIMEOUT_MS);
    let l402_filter = match (&lightning_settings, &l402_settings) {
        (Some(_), Some(l)) => Some(L402Filter {
            service: l.service.clone(),
        }),
        _ => None,
    };
    let keys = filter_keys(
        l402_filter.as_ref().and(l402_settings.as_ref()),
        leases.as_ref(),
    );
    let filter = FilterConfig {
        verifier_cluster: VERIFIER_CLUSTER.to_owned(),
        verifier_timeout_ms: max_timeout + VERIFIER_TIMEOUT_MARGIN_MS,
        settle_timeout_ms: max_timeout + VERIFIER_TIMEOUT_MARGIN_MS,
        public_url,
        routes: route_configs,
        l402: l402_filter,
        keys,
        sync_interval_ms: None,
        envoy_strips_context: false,
        paths: raw.paths.unwrap_or_default(),
        unmatched: unmatched_rules(raw.unmatched.as_ref()),
    };
    compile_filter(p, &filter, &raw.routes)?;

    Some(Config {
        verifier: VerifierSettings {
            grpc: grpc?,
            http: http?,
            ledger: ledger?,
            admin: admin_listener,
            tls: verifier_tls,
        },
        envoy,
        facilitators,
        rails,
        routes,
        lightning: lightning_settings,
        l402: l402_settings,
        leases,
        admin,
        stores,
        filter,
        file_routes: raw.routes,
        static_sections: serde_yaml::Value::Null,
    })
}

/// `leases:`: the secret is always read (the filter config carries the key derived from it).
fn lease_settings(p: &mut Problems, raw: &RawLeases) -> Option<LeaseSettings> {
    let secret = secret_ref(p, "leases.secret", raw.secret.trim())
        .and_then(|r| resolve(p, "leases.secret", &r, MIN_SECRET_BYTES));
    let previous = raw
        .previous
        .as_ref()
        .and_then(|prev| previous_secret(p, "leases.previous", prev));
    Some(LeaseSettings {
        key: LeaseKey::derive(secret?.expose().as_bytes()),
        previous: previous.map(|(s, until)| (LeaseKey::derive(s.expose().as_bytes()), until)),
    })
}

/// A rotation's previous secret and the end of its window.
fn previous_secret(p: &mut Problems, base: &str, raw: &RawPreviousSecret) -> Option<(Secret, u64)> {
    let secret = secret_ref(p, &format!("{base}.secret"), raw.secret.trim())
        .and_then(|r| resolve(p, &format!("{base}.secret"), &r, MIN_SECRET_BYTES))?;
    if raw.until < 1_000_000_000 {
        p.hint(
            format!("{base}.until"),
            format!("{} is not a unix time", raw.until),
            "when tokens minted with the previous secret stop working, in unix seconds: at least the longest token lifetime after the rotation",
        );
        return None;
    }
    Some((secret, raw.until))
}

/// `admin:`: the token is read only when secrets are resolved (`check`, `serve`).
fn admin_settings(p: &mut Problems, raw: &RawAdmin, secrets: Secrets) -> Option<AdminSettings> {
    let r = secret_ref(p, "admin.token", raw.token.trim())?;
    let token = match secrets {
        Secrets::Skip => None,
        Secrets::Resolve => Some(resolve(p, "admin.token", &r, MIN_SECRET_BYTES)?),
    };
    Some(AdminSettings { token })
}

const REDIS_EXAMPLE: &str =
    "replay: redis://127.0.0.1:6379/0, or replay: { url: rediss://redis.internal:6380/0, password: env:REDIS_PASSWORD }";

/// `stores:`. Only the replay store so far; absent or `ledger`: the ledger database; `memory`:
/// this process only.
fn stores(p: &mut Problems, raw: &RawStores, secrets: Secrets) -> Option<Stores> {
    let replay = match &raw.replay {
        None | Some(serde_yaml::Value::Null) => ReplayStoreSettings::Ledger,
        Some(v) => replay_store(p, "stores.replay", v, secrets)?,
    };
    Some(Stores {
        replay,
        allow_volatile_replay: raw.allow_volatile_replay,
    })
}

fn replay_store(
    p: &mut Problems,
    path: &str,
    value: &serde_yaml::Value,
    secrets: Secrets,
) -> Option<ReplayStoreSettings> {
    use serde_yaml::Value;
    let (url, password) = match value {
        Value::String(s) if s.trim() == "memory" => return Some(ReplayStoreSettings::Memory),
        Value::String(s) if s.trim() == "ledger" => return Some(ReplayStoreSettings::Ledger),
        Value::String(s) => (s.as_str(), None),
        Value::Mapping(m) => {
            let mut url = None;
            let mut password = None;
            let mut ok = true;
            for (k, v) in m {
                match (k.as_str(), v) {
                    (Some("url"), Value::String(s)) => url = Some(s.as_str()),
                    (Some("password"), Value::String(s)) => password = Some(s.as_str()),
                    (Some(name @ ("url" | "password")), other) => {
                        p.add(
                            format!("{path}.{name}"),
                            format!("expected a string, found {}", yaml_kind(other)),
                        );
                        ok = false;
                    }
                    (name, _) => {
                        p.hint(
                            format!("{path}.{}", name.unwrap_or("?")),
                            "unknown field, expected `url` or `password`",
                            REDIS_EXAMPLE,
                        );
                        ok = false;
                    }
                }
            }
            let Some(url) = url else {
                if ok {
                    p.hint(format!("{path}.url"), "missing", REDIS_EXAMPLE);
                }
                return None;
            };
            if !ok {
                return None;
            }
            (url, password)
        }
        other => {
            p.hint(
                path,
                format!("expected a URL or a mapping, found {}", yaml_kind(other)),
                REDIS_EXAMPLE,
            );
            return None;
        }
    };
    let url_path = if matches!(value, Value::Mapping(_)) {
        format!("{path}.url")
    } else {
        path.to_owned()
    };
    let url = redis_url(p, &url_path, url.trim());
    let password = match password {
        None => Some(None),
        Some(text) => {
            let pw_path = format!("{path}.password");
            match (secret_ref(p, &pw_path, text.trim()), secrets) {
                (None, _) => None,
                (Some(_), Secrets::Skip) => Some(None),
                (Some(r), Secrets::Resolve) => resolve(p, &pw_path, &r, 0).map(Some),
            }
        }
    };
    Some(ReplayStoreSettings::Redis(RedisSettings {
        url: url?,
        password: password?,
    }))
}

/// `redis://[user@]host[:port][/db]` or `rediss://...`: no password (it comes by reference),
/// no query or fragment.
fn redis_url(p: &mut Problems, path: &str, text: &str) -> Option<reqwest::Url> {
    use ::redis::IntoConnectionInfo;
    if !text.contains("://") {
        p.hint(
            path,
            "not a URL (no scheme)",
            "redis://host:port/db, e.g. redis://127.0.0.1:6379/0; with TLS rediss://",
        );
        return None;
    }
    let parsed = match reqwest::Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            // The text may hold a password: never echo it.
            p.hint(path, format!("not a URL: {e}"), REDIS_EXAMPLE);
            return None;
        }
    };
    if parsed.password().is_some() {
        p.hint(
            path,
            "a password in the URL is not allowed",
            "give it by reference: replay: { url: redis://host:6379, password: env:REDIS_PASSWORD }",
        );
        return None;
    }
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        p.hint(
            path,
            format!("scheme {:?} is not redis or rediss", parsed.scheme()),
            REDIS_EXAMPLE,
        );
        return None;
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        p.hint(path, "the URL has no host", REDIS_EXAMPLE);
        return None;
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        p.hint(
            path,
            "must not have a query or fragment",
            "redis://host:port/db; TLS: rediss:// (certificates checked against the system roots)",
        );
        return None;
    }
    let db = parsed.path().trim_start_matches('/');
    if !db.is_empty() && (db.len() > 5 || !db.bytes().all(|b| b.is_ascii_digit())) {
        p.hint(
            path,
            format!("{db:?} is not a database number"),
            "redis://host:port/0 (the path is the database number, default 0)",
        );
        return None;
    }
    if let Err(e) = parsed.as_str().into_connection_info() {
        p.hint(path, format!("not a usable Redis URL: {e}"), REDIS_EXAMPLE);
        return None;
    }
    Some(parsed)
}

const KIND_HINT: &str = "http (pay per request), http-stream or websocket (sold as a lease)";
const LEASE_EXAMPLE: &str =
    "lease: { path: /lease/ticker/[symbol], seconds: 60 } (the same [name]s as path)";

/// The route's kind and lease (what `tollway.yaml` says about them), with the rules that have
/// a precise field and hint; the path templates are the filter compile's ([`probe_route`]).
fn route_shape(
    p: &mut Problems,
    base: &str,
    r: &RawRoute,
    ctx: &RouteCtx<'_>,
    methods: usize,
) -> Option<(ResourceKind, Option<LeaseConfig>)> {
    let before = p.0.len();
    let kind = match r.kind.as_deref().map(str::trim) {
        None | Some("http") => ResourceKind::Http,
        Some("http-stream") => ResourceKind::HttpStream,
        Some("websocket") => ResourceKind::Websocket,
        Some(other) => {
            p.hint(
                format!("{base}.kind"),
                format!("unknown kind {other:?}"),
                KIND_HINT,
            );
            return None;
        }
    };
    let free = r.free || (r.price.is_none() && r.price_sats.is_none() && r.price_msat.is_none());
    let lease = match (kind, &r.lease) {
        (ResourceKind::Http, None) => None,
        (ResourceKind::Http, Some(_)) => {
            p.hint(
                format!("{base}.lease"),
                "an http route is paid per request and has no lease",
                "kind: http-stream or kind: websocket, or remove lease",
            );
            return None;
        }
        (kind, None) => {
            p.hint(
                format!("{base}.lease"),
                format!("missing: kind {} is sold as a lease", kind.as_str()),
                LEASE_EXAMPLE,
            );
            return None;
        }
        (_, Some(lease)) => Some(lease),
    };
    let Some(lease) = lease else {
        return Some((kind, None));
    };
    if free {
        p.hint(
            format!("{base}.lease"),
            "a leased route is paid: the price is the lease's",
            "add price: \"0.01\" and/or price_sats: 20, or remove lease",
        );
    }
    if !ctx.leases_block {
        p.hint(
            format!("{base}.lease"),
            "the route is sold as a lease but there is no leases: section",
            "add leases: { secret: env:TOLLWAY_LEASE_SECRET } (at least 32 bytes, e.g. `openssl rand -hex 32`)",
        );
    }
    if methods > 1 {
        p.hint(
            format!("{base}.methods"),
            "a leased route has one method: the one its lease grants",
            "e.g. methods: [GET] (the default)",
        );
    }
    if kind == ResourceKind::Websocket
        && r.methods
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| !m.trim().eq_ignore_ascii_case("GET")))
    {
        p.hint(
            format!("{base}.methods"),
            "a WebSocket is opened with GET",
            "methods: [GET], or omit methods",
        );
    }
    if lease.seconds == 0 || lease.seconds > MAX_LEASE_SECONDS {
        p.hint(
            format!("{base}.lease.seconds"),
            format!("{} is out of range 1..={MAX_LEASE_SECONDS}", lease.seconds),
            "how long a lease lasts; 60 is common",
        );
    }
    let same_path = |a: &str| a.trim().trim_end_matches('/').to_owned();
    if same_path(&lease.path) == same_path(&r.path) {
        p.hint(
            format!("{base}.lease.path"),
            "the lease is bought on a path of its own, not on the resource's",
            "e.g. path: /stream/ticker/[symbol] and lease.path: /lease/ticker/[symbol]",
        );
    }
    let window = lease.renewal.map(|w| w.window_seconds);
    if let Some(w) = window {
        if lease.single_use {
            p.hint(
                format!("{base}.lease.renewal"),
                "a single-use lease cannot be renewed",
                "remove renewal, or single_use",
            );
        } else if w == 0 || w > lease.seconds {
            p.hint(
                format!("{base}.lease.renewal.window_seconds"),
                format!("{w} is out of range 1..={} (lease.seconds)", lease.seconds),
                "renewal is open in the last window_seconds before expiry, e.g. half the lease",
            );
        }
    }
    if p.0.len() != before {
        return None;
    }
    Some((
        kind,
        Some(LeaseConfig {
            path: lease.path.trim().to_owned(),
            seconds: lease.seconds,
            single_use: lease.single_use,
            renew_window_seconds: window,
        }),
    ))
}

/// The filter's token keys (current and, during a rotation, previous), derived from the secrets.
fn filter_keys(l402: Option<&L402Settings>, leases: Option<&LeaseSettings>) -> FilterKeys {
    FilterKeys {
        l402: l402.map(|l| key_set(&l.filter_key, l.previous.as_ref())),
        lease: leases.map(|l| key_set(&l.key, l.previous.as_ref())),
    }
}

/// The current key, and the previous one with the end of its window during a rotation.
pub fn key_set<K: TokenKey>(current: &K, previous: Option<&(K, u64)>) -> KeySet<K> {
    let set = KeySet::new(current.clone());
    match previous {
        Some((key, until)) => set.with_previous(key.clone(), *until),
        None => set,
    }
}

/// The `unmatched` rules as the filter reads them (checked when the filter config compiles).
fn unmatched_rules(raw: Option<&RawUnmatched>) -> Vec<UnmatchedRule> {
    match raw {
        None => Vec::new(),
        Some(RawUnmatched::All(action)) => vec![UnmatchedRule {
            host: None,
            path: "/**".into(),
            action: action.trim().to_owned(),
        }],
        Some(RawUnmatched::Rules(rules)) => rules
            .iter()
            .map(|r| UnmatchedRule {
                host: r.host.clone(),
                path: r.path.clone().unwrap_or_else(|| "/**".into()),
                action: r.action.trim().to_owned(),
            })
            .collect(),
    }
}

/// Compiles `rc` alone (with stand-in keys: the sections are checked elsewhere) and reports
/// what the filter refuses at the route's field. True when it compiles.
fn probe_route(p: &mut Problems, base: &str, rc: &RouteConfig) -> bool {
    let probe = FilterConfig {
        verifier_cluster: VERIFIER_CLUSTER.to_owned(),
        verifier_timeout_ms: 1,
        settle_timeout_ms: 1,
        public_url: None,
        routes: vec![rc.clone()],
        l402: Some(L402Filter {
            service: DEFAULT_L402_SERVICE.to_owned(),
        }),
        // Stand-ins: the sections are checked elsewhere.
        keys: FilterKeys {
            l402: Some(KeySet::new(FilterKey::from_bytes([0; 32]))),
            lease: Some(KeySet::new(LeaseKey::from_bytes([0; 32]))),
        },
        sync_interval_ms: None,
        envoy_strips_context: false,
        paths: PathCase::default(),
        unmatched: Vec::new(),
    };
    match probe.compile() {
        Ok(_) => true,
        Err(e) => {
            filter_error(p, base, &e);
            false
        }
    }
}

/// Maps one of the filter compile's errors to the route field it is about, with a hint.
fn filter_error(p: &mut Problems, base: &str, e: &tollway_protocol::filter_config::ConfigError) {
    use tollway_protocol::filter_config::ConfigError as E;
    use tollway_protocol::headers::HeaderPolicyError as H;
    const TEMPLATE_HINT: &str =
        "literal segments and whole [name] segments, every [name] captured by path";
    match e {
        E::Route(re) => route_error(p, base, re),
        E::Lease { message, .. } => {
            let (field, message, hint) = if let Some(rest) = message.strip_prefix("lease.path: ") {
                ("lease.path", rest.to_owned(), TEMPLATE_HINT)
            } else if message.starts_with("lease.path") {
                ("lease.path", message.clone(), TEMPLATE_HINT)
            } else if message.starts_with("a leased path") {
                (
                    "path",
                    message.clone(),
                    "a leased path names one resource: no `*` or `**`",
                )
            } else if message.contains("method") {
                ("methods", message.clone(), "e.g. methods: [GET]")
            } else if message.contains("price") {
                (
                    "price",
                    message.clone(),
                    "price: \"0.01\" and/or price_sats: 20",
                )
            } else {
                ("lease", message.clone(), LEASE_EXAMPLE)
            };
            p.hint(format!("{base}.{field}"), message, hint);
        }
        E::UpstreamPath { error, .. } => p.hint(
            format!("{base}.upstream_path"),
            error.to_string(),
            format!("{TEMPLATE_HINT}, e.g. /v1/ticker/[symbol]"),
        ),
        E::Headers {
            error: error @ H::BadRequestHeader(_),
            ..
        } => p.hint(
            format!("{base}.request_headers"),
            error.to_string(),
            "header names like x-client-id, or presets api-auth, browser-auth",
        ),
        E::Headers {
            error: error @ H::BadResponsePreset(_),
            ..
        } => p.hint(
            format!("{base}.response_headers"),
            error.to_string(),
            "streaming (cache-control: no-cache, x-accel-buffering: no)",
        ),
        other => {
            // `route "name": message`: the path already says which route.
            let text = other.to_string();
            let message = text
                .strip_prefix("route \"")
                .and_then(|rest| rest.split_once("\": "))
                .map_or(text.clone(), |(_, m)| m.to_owned());
            p.add(base.to_owned(), message);
        }
    }
}

/// Compiles the whole table (cross-route rules: shadowing, lease paths against every other
/// route) and maps a refusal to the route it names.
fn compile_filter(
    p: &mut Problems,
    filter: &FilterConfig,
    raw_routes: &[RawRoute],
) -> Option<CompiledConfig> {
    use tollway_protocol::filter_config::ConfigError as E;
    let e = match filter.compile() {
        Ok(c) => return Some(c),
        Err(e) => e,
    };
    let index_of = |name: &str| raw_routes.iter().rposition(|r| r.name == name);
    let route_name = |e: &E| -> Option<String> {
        match e {
            E::Route(RouteError::Shadowed { route, .. } | RouteError::DuplicateName(route)) => {
                Some(route.clone())
            }
            E::NoOffers { route }
            | E::LightningWithoutL402 { route }
            | E::ZeroLightningAmount { route }
            | E::NotEvm { route, .. }
            | E::ZeroAmount { route, .. }
            | E::ZeroTimeoutSeconds { route, .. }
            | E::NoEip712Domain { route, .. }
            | E::Lease { route, .. }
            | E::UpstreamPath { route, .. }
            | E::Headers { route, .. } => Some(route.clone()),
            _ => None,
        }
    };
    match (&e, route_name(&e)) {
        // A lease path (table entry `<route>~lease`) that collides with a route.
        (E::Route(RouteError::Shadowed { route, other }), _) if route.ends_with(SALE_SUFFIX) => {
            let owner = route.trim_end_matches(SALE_SUFFIX);
            let base =
                index_of(owner).map_or_else(|| "routes".to_owned(), |i| format!("routes[{i}]"));
            let other = match other.strip_suffix(SALE_SUFFIX) {
                Some(o) => format!("the lease path of route {o:?}"),
                None => format!("route {other:?}"),
            };
            p.hint(
                format!("{base}.lease.path"),
                format!("matches exactly the same requests as {other}"),
                "give the lease path a prefix of its own, e.g. /lease/...",
            );
        }
        (E::Route(RouteError::Shadowed { .. }), Some(name)) => {
            let base =
                index_of(&name).map_or_else(|| "routes".to_owned(), |i| format!("routes[{i}]"));
            if let E::Route(re) = &e {
                route_error(p, &base, re);
            }
        }
        (_, Some(name)) => {
            let base =
                index_of(&name).map_or_else(|| "routes".to_owned(), |i| format!("routes[{i}]"));
            filter_error(p, &base, &e);
        }
        (E::Unmatched { rule, message }, _) => p.hint(
            format!("unmatched[{rule}]"),
            message.clone(),
            "action is pass, deny or the name of a plain (not leased) route",
        ),
        (_, None) => p.add("routes", e.to_string()),
    }
    None
}

/// Suffix of a leased route's sale entry in the compiled table (see protocol's `compile`).
const SALE_SUFFIX: &str = "~lease";

#[cfg(test)]
mod tests {
    use super::*;

    const ASSET: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
    const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

    fn good() -> String {
        format!(
            r#"
verifier:
  grpc: 127.0.0.1:50051
  http: 127.0.0.1:9090
  ledger: ledger.db
envoy:
  listen: 0.0.0.0:10000
  admin: 127.0.0.1:9901
  upstream: 127.0.0.1:18080
facilitators:
  local:
    url: http://127.0.0.1:4020
    timeout_ms: 5000
rails:
  usdc:
    network: eip155:84532
    asset: "{ASSET}"
    decimals: 6
    eip712: {{ name: USDC, version: "2" }}
    pay_to: "{PAY_TO}"
    facilitator: local
routes:
  - name: quote
    path: /api/quote
    methods: [GET]
    price: "0.001"
    description: A quote
    mime_type: application/json
  - name: echo
    path: /api/echo
    methods: [post]
    price: "0.002"
    rails: [usdc]
  - name: free
    path: /free/**
    free: true
"#
        )
    }

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text, Secrets::Resolve) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_ledger_is_a_sqlite_file_or_a_postgres_url_without_a_password() {
        let at = |ledger: &str| good().replace("ledger: ledger.db", &format!("ledger: {ledger}"));
        let c = Config::parse(&at("postgres://tollway@db:5432/tollway"), Secrets::Resolve)
            .expect("valid");
        assert_eq!(
            c.verifier.ledger,
            LedgerLocation::Postgres("postgres://tollway@db:5432/tollway".into())
        );
        let c = Config::parse(&at("/var/lib/tollway/ledger.db"), Secrets::Resolve).expect("valid");
        assert_eq!(
            c.verifier.ledger,
            LedgerLocation::Sqlite(PathBuf::from("/var/lib/tollway/ledger.db"))
        );
        let ps = problems(&at("postgres://tollway:hunter2@db/tollway"));
        assert_eq!(ps.len(), 1, "{ps:?}");
        assert!(
            ps[0].starts_with("verifier.ledger: a password in the URL"),
            "{ps:?}"
        );
        assert!(!ps[0].contains("hunter2"), "the password is never echoed");
        let ps = problems(&at("postgres://db"));
        assert!(ps[0].contains("needs a host and a database"), "{ps:?}");
    }

    fn assert_problem(text: &str, expected: &str) {
        let ps = problems(text);
        assert!(
            ps.iter().any(|p| p == expected),
            "expected {expected:?} in {ps:#?}"
        );
    }

    #[test]
    fn good_config_compiles() {
        let c = Config::parse(&good(), Secrets::Resolve).expect("valid");
        assert_eq!(c.routes.len(), 3);
        assert_eq!(c.paid_routes(), 2);
        assert_eq!(c.verifier.grpc, "127.0.0.1:50051".parse().expect("addr"));
        let quote = &c.filter.routes[0];
        let paid = quote.paid.as_ref().expect("paid");
        assert_eq!(paid.offers[0].amount.get(), 1000);
        assert_eq!(
            paid.offers[0].max_timeout_seconds,
            DEFAULT_MAX_TIMEOUT_SECONDS
        );
        assert_eq!(c.filter.routes[1].methods, vec!["POST"]);
        assert_eq!(
            c.filter.routes[1].paid.as_ref().expect("paid").offers[0]
                .amount
                .get(),
            2000
        );
        assert!(c.filter.routes[2].paid.is_none());
        assert_eq!(c.filter.verifier_cluster, VERIFIER_CLUSTER);
        assert_eq!(c.filter.verifier_timeout_ms, 6000);
        assert_eq!(c.route("echo").expect("echo").facilitators, vec!["local"]);
        assert!(c.filter.compile().is_ok());
    }

    #[test]
    fn float_price_gets_quote_hint() {
        let text = good().replace("price: \"0.001\"", "price: 0.001");
        assert_problem(
            &text,
            "routes[0].price: 0.001 is a YAML number; prices must be quoted decimal strings so they stay exact (hint: quote it: price: \"0.001\")",
        );
    }

    #[test]
    fn price_not_representable() {
        let text = good().replace("price: \"0.001\"", "price: \"0.0000001\"");
        assert_problem(
            &text,
            "routes[0].price: 0.0000001 USD is not a whole number of units of rail usdc (6 decimals) (hint: use at most 6 decimal places)",
        );
    }

    #[test]
    fn bad_price_text_and_zero_and_missing() {
        let text = good().replace("price: \"0.001\"", "price: \"1e-3\"");
        assert_problem(
            &text,
            "routes[0].price: \"1e-3\" is not a price: exponent notation is not allowed; write the number out (hint: write the number out, e.g. \"0.001\")",
        );
        let text = good().replace("price: \"0.001\"", "price: \"0\"");
        assert_problem(
            &text,
            "routes[0].price: price must be greater than 0 (hint: use free: true for a free route)",
        );
        let text = good().replace("    price: \"0.001\"\n", "");
        assert_problem(
            &text,
            "routes[0].price: missing: a route is paid (price: \"0.001\" and/or price_sats: 10) or free (free: true) (hint: price: \"0.001\")",
        );
    }

    #[test]
    fn unknown_rail_and_facilitator() {
        let text = good().replace("rails: [usdc]", "rails: [usdt]");
        assert_problem(
            &text,
            "routes[1].rails[0]: unknown rail \"usdt\" (hint: defined rails: usdc)",
        );
        let text = good().replace("facilitator: local", "facilitator: cdp");
        assert_problem(
            &text,
            "rails.usdc.facilitator: unknown facilitator \"cdp\" (hint: defined facilitators: local)",
        );
    }

    #[test]
    fn bad_network() {
        let text = good().replace("network: eip155:84532", "network: base-sepolia");
        assert_problem(
            &text,
            "rails.usdc.network: \"base-sepolia\" is not a CAIP-2 network: network \"base-sepolia\" is not CAIP-2 `namespace:reference` (hint: base-sepolia is a v1 name; write the CAIP-2 id: network: eip155:84532)",
        );
        let text = good().replace(
            "network: eip155:84532",
            "network: solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
        );
        let ps = problems(&text);
        assert!(
            ps.iter().any(|p| p.starts_with(
                "rails.usdc.network: solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp is not an EVM chain"
            )),
            "{ps:#?}"
        );
    }

    #[test]
    fn bad_addresses() {
        let text = good().replace(PAY_TO, "0x1234");
        assert_problem(
            &text,
            "rails.usdc.pay_to: \"0x1234\" is not an EVM address: EVM address must have 40 hex digits after 0x, got 4 characters (hint: 0x followed by 40 hex digits, quoted)",
        );
        // One flipped case letter: checksum error, with the right form as hint.
        let typo = ASSET.replace("CbD", "cbD");
        let text = good().replace(ASSET, &typo);
        assert_problem(
            &text,
            &format!("rails.usdc.asset: {typo} fails its EIP-55 checksum (hint: a typo? the checksummed form of these bytes is {ASSET})"),
        );
        // All lower-case is fine.
        let text = good().replace(ASSET, &ASSET.to_lowercase());
        assert!(problems(&text).is_empty());
    }

    #[test]
    fn bad_route_path_and_duplicate_name() {
        let text = good().replace("path: /api/quote", "path: api/quote");
        assert_problem(
            &text,
            "routes[0].path: path \"api/quote\" must start with '/' (hint: path: /api/quote)",
        );
        let text = good().replace("path: /free/**", "path: /free/**/x");
        assert_problem(
            &text,
            "routes[2].path: `**` is only allowed as the last segment (hint: segments are literals, `*` (one segment), `[name]` (one captured segment) or a final `**` (any depth))",
        );
        let text = good().replace("name: echo", "name: quote");
        assert_problem(
            &text,
            "routes[1].name: duplicate route name \"quote\" (also routes[0]) (hint: route names must be unique)",
        );
    }

    #[test]
    fn shadowed_route() {
        let text = good().replace(
            "path: /api/echo\n    methods: [post]",
            "path: /api/quote\n    methods: [GET]",
        );
        let ps = problems(&text);
        assert!(
            ps.iter().any(|p| p
                .starts_with("routes[1]: matches exactly the same requests as route \"quote\"")),
            "{ps:#?}"
        );
    }

    #[test]
    fn paid_route_without_rails() {
        let text = good().replace("rails: [usdc]", "rails: []");
        assert_problem(
            &text,
            "routes[1].rails: a paid route needs at least one rail (hint: omit rails to accept every rail, or list some (defined rails: usdc))",
        );
        let start = good().find("rails:\n  usdc:").expect("rails");
        let end = good().find("routes:").expect("routes");
        let mut text = good();
        text.replace_range(start..end, "");
        let text = text.replace("    rails: [usdc]\n", "");
        let ps = problems(&text);
        assert!(ps.contains(&"routes[0]: paid route but no rail is defined (hint: define a rail under rails: (network, asset, pay_to, facilitator))".to_owned()), "{ps:#?}");
    }

    #[test]
    fn secrets() {
        let with_auth = |auth: &str| {
            good().replace(
                "    timeout_ms: 5000\n",
                &format!("    timeout_ms: 5000\n    auth: {auth}\n"),
            )
        };
        assert_problem(
            &with_auth("{ bearer: env:TOLLWAY_TEST_UNSET_TOKEN }"),
            "facilitators.local.auth.bearer: environment variable TOLLWAY_TEST_UNSET_TOKEN is not set (hint: export TOLLWAY_TEST_UNSET_TOKEN=...)",
        );
        assert_problem(
            &with_auth("{ bearer: sk_live_inline }"),
            "facilitators.local.auth.bearer: not a secret reference (hint: write env:NAME or file:PATH; secrets are never inline)",
        );
        let dir = tempfile::tempdir().expect("tmp");
        let short = dir.path().join("short");
        std::fs::write(&short, "tooshort").expect("write");
        let id = dir.path().join("id");
        std::fs::write(&id, "key-id").expect("write");
        let text = with_auth(&format!(
            "{{ cdp: {{ key_id: \"file:{}\", key_secret: \"file:{}\" }} }}",
            id.display(),
            short.display()
        ));
        assert_problem(
            &text,
            &format!(
                "facilitators.local.auth.cdp.key_secret: secret from file:{} is 8 bytes, need at least 32 (hint: generate one with `openssl rand -hex 32`)",
                short.display()
            ),
        );
        // A good bearer file resolves; Skip mode does not read it at all.
        let tok = dir.path().join("tok");
        std::fs::write(&tok, "t0ken\n").expect("write");
        let text = with_auth(&format!("{{ bearer: \"file:{}\" }}", tok.display()));
        let c = Config::parse(&text, Secrets::Resolve).expect("valid");
        assert!(
            matches!(c.facilitators[0].1.auth, FacilitatorAuth::Bearer(ref s) if s.expose() == "t0ken")
        );
        let text = with_auth("{ bearer: env:TOLLWAY_TEST_UNSET_TOKEN }");
        assert!(Config::parse(&text, Secrets::Skip).is_ok());
        assert_problem(
            &with_auth("{ }"),
            "facilitators.local.auth: give exactly one of bearer or cdp (hint: auth: { bearer: env:FACILITATOR_TOKEN } or auth: { cdp: { key_id: env:CDP_API_KEY_ID, key_secret: env:CDP_API_KEY_SECRET } })",
        );
    }

    #[test]
    fn facilitator_url() {
        let text = good().replace("url: http://127.0.0.1:4020", "url: ftp://127.0.0.1:4020");
        assert_problem(
            &text,
            "facilitators.local.url: scheme \"ftp\" is not http or https (hint: e.g. https://x402.org/facilitator or http://127.0.0.1:4020)",
        );
        let text = good().replace(
            "url: http://127.0.0.1:4020",
            "url: https://user:pw@f.example",
        );
        assert_problem(
            &text,
            "facilitators.local.url: credentials in the URL are not allowed (hint: auth: { bearer: env:FACILITATOR_TOKEN })",
        );
        let text = good().replace("url: http://127.0.0.1:4020", "url: localhost");
        let ps = problems(&text);
        assert!(
            ps.iter()
                .any(|p| p.starts_with("facilitators.local.url: \"localhost\" is not a URL")),
            "{ps:#?}"
        );
    }

    #[test]
    fn unknown_field_has_path() {
        let text = good().replace("    decimals: 6\n", "    decimals: 6\n    decimal: 6\n");
        let ps = problems(&text);
        assert_eq!(ps.len(), 1, "{ps:#?}");
        assert!(
            ps[0].starts_with("rails.usdc.decimal: unknown field `decimal`, expected one of"),
            "{ps:#?}"
        );
    }

    #[test]
    fn all_problems_collected() {
        let text = good()
            .replace("price: \"0.001\"", "price: 0.001")
            .replace("rails: [usdc]", "rails: [nope]")
            .replace("path: /free/**", "path: free")
            .replace("grpc: 127.0.0.1:50051", "grpc: localhost");
        let ps = problems(&text);
        assert_eq!(ps.len(), 4, "{ps:#?}");
        assert!(ps[0].starts_with("verifier.grpc: \"localhost\" is not an ip:port address"));
    }

    #[test]
    fn bad_host_and_public_url() {
        let text = good().replace(
            "path: /api/quote\n",
            "path: /api/quote\n    host: \"a b\"\n",
        );
        let ps = problems(&text);
        assert!(
            ps.iter()
                .any(|p| p.starts_with("routes[0].host: host \"a b\" must be a host name")),
            "{ps:#?}"
        );
        let text = format!("public_url: https://api.example.com/v1\n{}", good());
        assert_problem(
            &text,
            "public_url: \"https://api.example.com/v1\" must be an absolute http(s) URL without path, query or fragment (hint: e.g. https://api.example.com)",
        );
        let text = format!("public_url: https://api.example.com/\n{}", good());
        let c = Config::parse(&text, Secrets::Resolve).expect("valid");
        assert_eq!(
            c.filter.public_url.as_deref(),
            Some("https://api.example.com")
        );
    }

    #[test]
    fn upstream_hostname() {
        let text = good().replace("upstream: 127.0.0.1:18080", "upstream: api.internal:8080");
        let c = Config::parse(&text, Secrets::Resolve).expect("valid");
        let up = &c.envoy.expect("envoy").upstream;
        assert_eq!(
            (up.host.as_str(), up.port, up.is_ip()),
            ("api.internal", 8080, false)
        );
        let text = good().replace("upstream: 127.0.0.1:18080", "upstream: api.internal");
        assert_problem(
            &text,
            "envoy.upstream: \"api.internal\" is not host:port (hint: e.g. 127.0.0.1:8080 or api.internal:80)",
        );
    }

    // ---- Lightning -------------------------------------------------------------------------

    struct Ln {
        dir: tempfile::TempDir,
    }

    impl Ln {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tmp"),
            }
        }

        fn secret(&self) -> String {
            crate::testkit::l402_secret_ref(self.dir.path())
        }

        /// `good()` selling Lightning: quote in USD and sats, a sats-only route.
        fn text(&self, lightning: &str) -> String {
            good()
                .replace(
                    "    price: \"0.001\"\n    description: A quote",
                    "    price: \"0.001\"\n    price_sats: 10\n    description: A quote",
                )
                .replace(
                    "  - name: free\n",
                    "  - name: sats\n    path: /api/sats\n    price_msat: 2500\n    single_use: true\n  - name: free\n",
                )
                + lightning
                + &format!(
                    "l402:\n  root_secret: \"{}\"\n  service: svc\n  valid_seconds: 600\n",
                    self.secret()
                )
        }

        fn file(&self, name: &str, bytes: &[u8]) -> String {
            let path = self.dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            format!("file:{}", path.display())
        }
    }

    const DEV: &str = "lightning:\n  backend: dev\n  network: regtest\n  dev: {}\n";

    #[test]
    fn lightning_dev_compiles_into_the_filter_config() {
        let ln = Ln::new();
        let c = Config::parse(&ln.text(DEV), Secrets::Resolve).expect("valid");
        let l = c.lightning.as_ref().expect("lightning");
        assert_eq!(l.network, LightningNetwork::Regtest);
        assert_eq!(l.invoice_expiry_seconds, DEFAULT_INVOICE_EXPIRY_SECONDS);
        assert!(matches!(l.node, NodeSettings::Dev));
        let k = c.l402.as_ref().expect("l402");
        assert_eq!(k.service, "svc");
        assert_eq!(k.valid_seconds, 600);
        // The filter gets the derived key (in its environment, never in its JSON), never the
        // root secret.
        let expected = filter_key(crate::testkit::L402_SECRET.as_bytes());
        let f = c.filter.l402.as_ref().expect("filter l402");
        let keys = c.filter.keys.l402.as_ref().expect("l402 keys");
        assert_eq!(keys.current().1, &expected);
        assert!(!serde_json::to_string(&c.filter)
            .expect("json")
            .contains(&expected.to_hex()));
        assert_eq!(f.service, "svc");
        let json = serde_json::to_string(&c.filter).expect("json");
        assert!(!json.contains(crate::testkit::L402_SECRET));
        assert_eq!(
            c.filter.routes[0].paid.as_ref().expect("paid").lightning,
            Some(LightningPrice {
                amount_msat: 10_000,
                single_use: false
            })
        );
        let sats = &c.filter.routes[2];
        assert_eq!(sats.name, "sats");
        let paid = sats.paid.as_ref().expect("paid");
        assert!(paid.offers.is_empty());
        assert_eq!(
            paid.lightning,
            Some(LightningPrice {
                amount_msat: 2500,
                single_use: true
            })
        );
        assert_eq!(c.paid_routes(), 3);
        assert_eq!(c.route("sats").expect("sats").price, None);
        // echo sells no Lightning.
        assert!(c.filter.routes[1]
            .paid
            .as_ref()
            .expect("paid")
            .lightning
            .is_none());
        assert!(c.filter.compile().is_ok());
        // `tollway envoy` (no secrets) still renders the key.
        let skip = Config::parse(&ln.text(DEV), Secrets::Skip).expect("valid");
        assert_eq!(skip.filter, c.filter);
    }

    #[test]
    fn lightning_section_problems() {
        let ln = Ln::new();
        let with = |l: &str| ln.text(l);
        assert_problem(
            &with("lightning:\n  backend: eclair\n  network: regtest\n"),
            "lightning.backend: unknown backend \"eclair\" (hint: dev, lnd, cln or lnbits)",
        );
        assert_problem(
            &with("lightning:\n  backend: dev\n  network: liquid\n"),
            "lightning.network: \"liquid\" is not a Bitcoin network (hint: mainnet, testnet, signet or regtest)",
        );
        assert_problem(
            &with("lightning:\n  backend: dev\n  network: mainnet\n"),
            "lightning.backend: the dev backend cannot run on mainnet: it hands out preimages for free (hint: network: regtest, or a real node (lnd, cln, lnbits))",
        );
        assert_problem(
            &with("lightning:\n  backend: dev\n  network: regtest\n  invoice_expiry_seconds: 5\n"),
            "lightning.invoice_expiry_seconds: 5 is out of range 60..=86400 (hint: the time a client has to pay a 402's invoice; 600 is common)",
        );
        assert_problem(
            &with("lightning:\n  backend: lnd\n  network: regtest\n"),
            "lightning.lnd: missing: backend lnd needs its settings (hint: lnd: { grpc: \"127.0.0.1:10009\", tls_cert: file:/path/tls.cert, macaroon: file:/path/invoice.macaroon })",
        );
        assert_problem(
            &with("lightning:\n  backend: cln\n  network: regtest\n"),
            "lightning.cln: missing: backend cln needs its settings (hint: cln: { url: \"https://127.0.0.1:3010\", rune: env:CLN_RUNE, tls_cert: file:/path/ca.pem })",
        );
        assert_problem(
            &with("lightning:\n  backend: lnbits\n  network: regtest\n"),
            "lightning.lnbits: missing: backend lnbits needs its settings (hint: lnbits: { url: \"https://lnbits.example\", invoice_key: env:LNBITS_INVOICE_KEY })",
        );
        let ps = problems(&with(
            "lightning:\n  backend: dev\n  network: regtest\n  dev: { x: 1 }\n",
        ));
        assert!(
            ps[0].starts_with("lightning.dev.x: unknown field `x`"),
            "{ps:#?}"
        );
    }

    #[test]
    fn l402_section_problems() {
        let ln = Ln::new();
        // lightning without l402, and l402 without lightning.
        let text = ln.text(DEV);
        let no_l402 = &text[..text.find("l402:").expect("l402")];
        assert_problem(
            no_l402,
            "l402: missing: the Lightning rail mints L402 tokens and needs their root secret (hint: l402: { root_secret: env:TOLLWAY_L402_SECRET } (at least 32 bytes, e.g. `openssl rand -hex 32`))",
        );
        let short = ln.file("short", b"tooshort");
        let text = ln.text(DEV).replace(&ln.secret(), &short);
        let ps = problems(&text);
        assert!(
            ps.iter()
                .any(|p| p.starts_with("l402.root_secret: secret from file:")
                    && p.contains("is 8 bytes, need at least 32")),
            "{ps:#?}"
        );
        let text = ln.text(DEV).replace(
            &format!("\"{}\"", ln.secret()),
            "s3cr3t-inline-value-that-is-long-enough",
        );
        assert_problem(
            &text,
            "l402.root_secret: not a secret reference (hint: write env:NAME or file:PATH; secrets are never inline)",
        );
        // The inline value is never echoed.
        assert!(problems(&text).iter().all(|p| !p.contains("s3cr3t")));
        let text = ln.text(DEV).replace("service: svc", "service: \"a:b\"");
        assert_problem(
            &text,
            "l402.service: \"a:b\" is not a service name (hint: 1-64 letters, digits, '-', '_' or '.': it is written into every token's caveats)",
        );
        let text = ln
            .text(DEV)
            .replace("valid_seconds: 600", "valid_seconds: 0");
        assert_problem(
            &text,
            "l402.valid_seconds: 0 is out of range 1..=31622400 (hint: how long a paid token stays valid; 3600 is common)",
        );
        // Unset env secret: even `tollway envoy` (Skip) needs it.
        let text = ln.text(DEV).replace(
            &format!("\"{}\"", ln.secret()),
            "env:TOLLWAY_TEST_UNSET_L402",
        );
        let e = Config::parse(&text, Secrets::Skip).expect_err("needs the secret");
        assert_eq!(
            e.0[0].to_string(),
            "l402.root_secret: environment variable TOLLWAY_TEST_UNSET_L402 is not set (hint: export TOLLWAY_TEST_UNSET_L402=...)"
        );
        // l402 alone.
        let text = format!("{}l402:\n  root_secret: \"{}\"\n", good(), ln.secret());
        assert_problem(
            &text,
            "l402: has no effect without a lightning: section (hint: add lightning: { backend: ..., network: ... }, or remove l402)",
        );
    }

    #[test]
    fn lightning_route_problems() {
        let ln = Ln::new();
        // A sats price but no lightning section.
        let text = good().replace(
            "    price: \"0.001\"\n    description: A quote",
            "    price: \"0.001\"\n    price_sats: 10\n    description: A quote",
        );
        assert_problem(
            &text,
            "routes[0].price_sats: the route sells Lightning but there is no lightning: section (hint: add lightning: { backend: dev, network: regtest } and l402: { root_secret: env:TOLLWAY_L402_SECRET })",
        );
        let base = ln.text(DEV);
        assert_problem(
            &base.replace("price_sats: 10", "price_sats: 10\n    price_msat: 10000"),
            "routes[0].price_msat: give price_sats or price_msat, not both (hint: price_sats: 10 is the same as price_msat: 10000)",
        );
        assert_problem(
            &base.replace("price_sats: 10", "price_sats: 0"),
            "routes[0].price_sats: must be greater than 0 (hint: use free: true for a free route)",
        );
        assert_problem(
            &base.replace("price_sats: 10", "price_sats: 1.5"),
            "routes[0].price_sats: expected a whole number of satoshis, got a number (hint: e.g. price_sats: 10)",
        );
        assert_problem(
            &base.replace("price_sats: 10", "price_sats: 99999999999999999"),
            "routes[0].price_sats: 99999999999999999 sats is more than all bitcoin",
        );
        // A quoted whole number is fine.
        assert!(problems(&base.replace("price_sats: 10", "price_sats: \"10\"")).is_empty());
        assert_problem(
            &base.replace("    path: /free/**\n    free: true", "    path: /free/**\n    free: true\n    price_sats: 1"),
            "routes[3].free: a free route has no Lightning price (hint: remove price_sats/price_msat, or remove free: true)",
        );
        assert_problem(
            &base.replace("    path: /api/echo\n    methods: [post]\n", "    path: /api/echo\n    methods: [post]\n    single_use: true\n"),
            "routes[1].single_use: single_use applies to L402 tokens, and this route has no Lightning price (hint: add price_sats: 10, or remove single_use)",
        );
        assert_problem(
            &base.replace("    price_msat: 2500\n", "    price_msat: 2500\n    rails: [usdc]\n"),
            "routes[2].rails: rails are x402 offers of the USD price, and this route has none (hint: add price: \"0.001\", or remove rails)",
        );
    }

    #[test]
    fn lnd_backend() {
        let ln = Ln::new();
        let (pem, _) = crate::rails::lightning::tls::tests::lnd_like_cert();
        let cert = ln.file("tls.cert", pem.as_bytes());
        let macaroon = ln.file("invoice.macaroon", &[0x02, 0x01, 0x04, 0x6c, 0x6e, 0x64]);
        let block = |grpc: &str, cert: &str, mac: &str| {
            format!("lightning:\n  backend: lnd\n  network: regtest\n  lnd: {{ grpc: \"{grpc}\", tls_cert: \"{cert}\", macaroon: \"{mac}\" }}\n")
        };
        let c = Config::parse(
            &ln.text(&block("127.0.0.1:10009", &cert, &macaroon)),
            Secrets::Resolve,
        )
        .expect("valid");
        match &c.lightning.as_ref().expect("ln").node {
            NodeSettings::Lnd {
                host,
                port,
                tls_cert,
                macaroon,
            } => {
                assert_eq!((host.as_str(), *port), ("127.0.0.1", 10009));
                assert_eq!(tls_cert.as_ref().map(Vec::len), Some(1));
                assert_eq!(
                    macaroon.as_deref(),
                    Some(&[0x02, 0x01, 0x04, 0x6c, 0x6e, 0x64][..])
                );
            }
            other => panic!("{other:?}"),
        }
        // Debug never shows credentials.
        assert_eq!(
            format!("{:?}", c.lightning.as_ref().expect("ln").node),
            "Lnd(127.0.0.1:10009)"
        );
        // The hex form of the macaroon works too.
        let hex_mac = ln.file("mac.hex", b"0201046c6e64\n");
        let c = Config::parse(
            &ln.text(&block("localhost:10009", &cert, &hex_mac)),
            Secrets::Resolve,
        )
        .expect("valid");
        assert!(
            matches!(&c.lightning.as_ref().expect("ln").node, NodeSettings::Lnd { macaroon: Some(m), .. } if m[0] == 2)
        );
        // Problems.
        assert_problem(
            &ln.text(&block("127.0.0.1", &cert, &macaroon)),
            "lightning.lnd.grpc: \"127.0.0.1\" is not host:port (hint: e.g. 127.0.0.1:8080 or api.internal:80)",
        );
        let not_cert = ln.file("not.cert", b"hello");
        let ps = problems(&ln.text(&block("127.0.0.1:10009", &not_cert, &macaroon)));
        assert!(
            ps.iter()
                .any(|p| p.starts_with("lightning.lnd.tls_cert: file:")
                    && p.contains("no certificate found")),
            "{ps:#?}"
        );
        let not_mac = ln.file("not.mac", b"hello world");
        let ps = problems(&ln.text(&block("127.0.0.1:10009", &cert, &not_mac)));
        assert!(
            ps.iter()
                .any(|p| p.starts_with("lightning.lnd.macaroon: file:")
                    && p.contains("does not hold a macaroon")),
            "{ps:#?}"
        );
        let ps = problems(&ln.text(&block("127.0.0.1:10009", &cert, "0201abcd")));
        assert!(
            ps.iter()
                .any(|p| p.starts_with("lightning.lnd.macaroon: not a secret reference")),
            "{ps:#?}"
        );
        // Skip mode reads no file.
        let text = ln.text(&block(
            "127.0.0.1:10009",
            "file:/nonexistent/tls.cert",
            "file:/nonexistent/m",
        ));
        let c = Config::parse(&text, Secrets::Skip).expect("valid without reading");
        assert!(matches!(
            &c.lightning.as_ref().expect("ln").node,
            NodeSettings::Lnd {
                tls_cert: None,
                macaroon: None,
                ..
            }
        ));
        assert!(Config::parse(&text, Secrets::Resolve).is_err());
    }

    #[test]
    fn cln_and_lnbits_backends() {
        let ln = Ln::new();
        let rune = ln.file("rune", b"rune-value\n");
        let (pem, _) = crate::rails::lightning::tls::tests::lnd_like_cert();
        let ca = ln.file("ca.pem", pem.as_bytes());
        let c = Config::parse(
            &ln.text(&format!("lightning:\n  backend: cln\n  network: signet\n  cln: {{ url: \"https://127.0.0.1:3010\", rune: \"{rune}\", tls_cert: \"{ca}\" }}\n")),
            Secrets::Resolve,
        )
        .expect("valid");
        match &c.lightning.as_ref().expect("ln").node {
            NodeSettings::Cln {
                url,
                rune,
                tls_cert,
            } => {
                assert_eq!(url.as_str(), "https://127.0.0.1:3010/");
                assert_eq!(rune.as_ref().map(Secret::expose), Some("rune-value"));
                assert!(tls_cert.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert_problem(
            &ln.text(&format!("lightning:\n  backend: cln\n  network: regtest\n  cln: {{ url: \"http://127.0.0.1:3010\", rune: \"{rune}\", tls_cert: \"{ca}\" }}\n")),
            "lightning.cln.tls_cert: a certificate needs an https url (hint: url: https://... or remove tls_cert)",
        );
        assert_problem(
            &ln.text(&format!("lightning:\n  backend: cln\n  network: regtest\n  cln: {{ url: \"https://u:p@127.0.0.1:3010\", rune: \"{rune}\" }}\n")),
            "lightning.cln.url: credentials in the URL are not allowed",
        );
        assert_problem(
            &ln.text("lightning:\n  backend: cln\n  network: regtest\n  cln: { url: \"https://127.0.0.1:3010\", rune: env:TOLLWAY_TEST_UNSET_RUNE }\n"),
            "lightning.cln.rune: environment variable TOLLWAY_TEST_UNSET_RUNE is not set (hint: export TOLLWAY_TEST_UNSET_RUNE=...)",
        );

        let key = ln.file("key", b"lnbits-invoice-key");
        let lnbits = format!("lightning:\n  backend: lnbits\n  network: mainnet\n  lnbits: {{ url: \"https://lnbits.example/\", invoice_key: \"{key}\" }}\n");
        let whole = ln
            .text(&lnbits)
            .replace("price_msat: 2500", "price_msat: 3000");
        let c = Config::parse(&whole, Secrets::Resolve).expect("valid");
        assert!(
            matches!(&c.lightning.as_ref().expect("ln").node, NodeSettings::Lnbits { invoice_key: Some(k), .. } if k.expose() == "lnbits-invoice-key")
        );
        // Whole sats only on LNbits.
        assert_problem(
            &ln.text(&lnbits),
            "routes[2].price_msat: 2500 msat is not a whole number of satoshis, which LNbits needs (hint: price_sats: 3 or price_msat: 3000)",
        );
    }

    // ---- Leases, header policy, admin -----------------------------------------------------

    const TICKER: &str = "  - name: ticker
    kind: http-stream
    path: /stream/ticker/[symbol]
    methods: [GET]
    price: \"0.01\"
    lease:
      path: /lease/ticker/[symbol]
      seconds: 60
      single_use: false
      renewal: { window_seconds: 30 }
    upstream_path: /v1/ticker/[symbol]
    request_headers: [api-auth, x-client-id]
    response_headers: [streaming]
";

    /// `good()` with `ticker` (routes[2]) sold as a lease, and `leases:` and `admin:` with
    /// their secrets in files in `dir`.
    fn leased(dir: &Path) -> String {
        let lease = crate::testkit::secret_file(dir, "lease", crate::testkit::LEASE_SECRET);
        let admin = crate::testkit::secret_file(dir, "admin", crate::testkit::ADMIN_TOKEN);
        good().replace("  - name: free\n", &format!("{TICKER}  - name: free\n"))
            + &format!("leases:\n  secret: \"{lease}\"\nadmin:\n  token: \"{admin}\"\n")
    }

    #[test]
    fn leased_route_compiles_into_the_filter_config() {
        let dir = tempfile::tempdir().expect("tmp");
        let text = leased(dir.path()).replace(
            "    rails: [usdc]\n",
            "    rails: [usdc]\n    disabled: true\n",
        );
        let c = Config::parse(&text, Secrets::Resolve).expect("valid");
        let t = &c.filter.routes[2];
        assert_eq!(t.name, "ticker");
        assert_eq!(t.kind, ResourceKind::HttpStream);
        assert_eq!(
            t.lease,
            Some(LeaseConfig {
                path: "/lease/ticker/[symbol]".into(),
                seconds: 60,
                single_use: false,
                renew_window_seconds: Some(30),
            })
        );
        assert_eq!(t.upstream_path.as_deref(), Some("/v1/ticker/[symbol]"));
        assert_eq!(
            t.request_headers,
            Some(vec!["api-auth".to_owned(), "x-client-id".to_owned()])
        );
        assert_eq!(t.response_headers, vec!["streaming".to_owned()]);
        assert!(!t.disabled);
        assert!(c.filter.routes[1].disabled, "echo is disabled");
        // The filter gets the derived lease key, never the secret.
        let key = LeaseKey::derive(crate::testkit::LEASE_SECRET.as_bytes());
        assert_eq!(
            c.filter.keys.lease.as_ref().map(|l| l.current().1),
            Some(&key)
        );
        let json = serde_json::to_string(&c.filter).expect("json");
        assert!(!json.contains(crate::testkit::LEASE_SECRET));
        assert!(!json.contains(crate::testkit::ADMIN_TOKEN));
        assert_eq!(
            c.admin
                .as_ref()
                .and_then(|a| a.token.as_ref())
                .map(Secret::expose),
            Some(crate::testkit::ADMIN_TOKEN)
        );
        let compiled = c.filter.compile().expect("compiles");
        // The resource, its lease sale and its (internal) upstream path.
        assert_eq!(compiled.routes.len(), 6);
        assert_eq!(compiled.routes.iter().filter(|r| r.internal).count(), 1);
        assert!(compiled
            .table
            .find("x", "POST", "/lease/ticker/BTC")
            .is_some());
        // The store validates the same routes to the same result.
        let again = c.validate_routes(&c.file_routes).expect("valid");
        assert_eq!(again.filter, c.filter);
        assert_eq!(again.compiled, compiled);
        // `tollway envoy` (Skip) needs the lease secret, not the admin token.
        let skip = text.replace(
            &format!("file:{}", dir.path().join("admin").display()),
            "env:TOLLWAY_TEST_UNSET_ADMIN",
        );
        let c2 = Config::parse(&skip, Secrets::Skip).expect("valid without the admin token");
        assert_eq!(c2.filter, c.filter);
        assert!(c2.admin.as_ref().is_some_and(|a| a.token.is_none()));
        assert_problem(
            &skip,
            "admin.token: environment variable TOLLWAY_TEST_UNSET_ADMIN is not set (hint: export TOLLWAY_TEST_UNSET_ADMIN=...)",
        );
        // The file's routes, kept in tollway.yaml shape for the store and the admin API.
        assert_eq!(c.file_routes.len(), 4);
        assert_eq!(
            c.file_routes[2].to_json()["lease"]["renewal"]["window_seconds"],
            30
        );
    }

    #[test]
    fn lease_and_header_problems() {
        let dir = tempfile::tempdir().expect("tmp");
        let base = leased(dir.path());
        let cases: &[(&str, &str, &str)] = &[
            (
                "kind: http-stream",
                "kind: stream",
                "routes[2].kind: unknown kind \"stream\" (hint: http (pay per request), http-stream or websocket (sold as a lease))",
            ),
            (
                "kind: http-stream",
                "kind: http",
                "routes[2].lease: an http route is paid per request and has no lease (hint: kind: http-stream or kind: websocket, or remove lease)",
            ),
            (
                "    lease:\n      path: /lease/ticker/[symbol]\n      seconds: 60\n      single_use: false\n      renewal: { window_seconds: 30 }\n",
                "",
                "routes[2].lease: missing: kind http-stream is sold as a lease (hint: lease: { path: /lease/ticker/[symbol], seconds: 60 } (the same [name]s as path))",
            ),
            (
                "    price: \"0.01\"\n    lease:",
                "    free: true\n    lease:",
                "routes[2].lease: a leased route is paid: the price is the lease's (hint: add price: \"0.01\" and/or price_sats: 20, or remove lease)",
            ),
            (
                "    methods: [GET]\n    price: \"0.01\"",
                "    methods: [GET, POST]\n    price: \"0.01\"",
                "routes[2].methods: a leased route has one method: the one its lease grants (hint: e.g. methods: [GET] (the default))",
            ),
            (
                "kind: http-stream\n    path: /stream/ticker/[symbol]\n    methods: [GET]",
                "kind: websocket\n    path: /stream/ticker/[symbol]\n    methods: [POST]",
                "routes[2].methods: a WebSocket is opened with GET (hint: methods: [GET], or omit methods)",
            ),
            (
                "seconds: 60",
                "seconds: 0",
                "routes[2].lease.seconds: 0 is out of range 1..=31622400 (hint: how long a lease lasts; 60 is common)",
            ),
            (
                "window_seconds: 30",
                "window_seconds: 61",
                "routes[2].lease.renewal.window_seconds: 61 is out of range 1..=60 (lease.seconds) (hint: renewal is open in the last window_seconds before expiry, e.g. half the lease)",
            ),
            (
                "single_use: false",
                "single_use: true",
                "routes[2].lease.renewal: a single-use lease cannot be renewed (hint: remove renewal, or single_use)",
            ),
            (
                "path: /lease/ticker/[symbol]",
                "path: /lease/ticker/[coin]",
                "routes[2].lease.path: \"/lease/ticker/[coin]\": `[coin]` is not captured by the route's path (hint: literal segments and whole [name] segments, every [name] captured by path)",
            ),
            (
                "path: /lease/ticker/[symbol]",
                "path: /lease/ticker",
                "routes[2].lease.path: lease.path \"/lease/ticker\" must capture the same [name]s as path \"/stream/ticker/[symbol]\" (hint: literal segments and whole [name] segments, every [name] captured by path)",
            ),
            (
                "path: /stream/ticker/[symbol]",
                "path: /stream/*/[symbol]",
                "routes[2].path: a leased path may only have literal and [name] segments: \"/stream/*/[symbol]\": segment \"*\" must be literal text or a whole `[name]` (hint: a leased path names one resource: no `*` or `**`)",
            ),
            (
                "upstream_path: /v1/ticker/[symbol]",
                "upstream_path: /v1/[coin]",
                "routes[2].upstream_path: \"/v1/[coin]\": `[coin]` is not captured by the route's path (hint: literal segments and whole [name] segments, every [name] captured by path, e.g. /v1/ticker/[symbol])",
            ),
            (
                "[api-auth, x-client-id]",
                "[api-auth, \"x client\"]",
                "routes[2].request_headers: \"x client\" is not a header name or a preset (presets: api-auth, browser-auth) (hint: header names like x-client-id, or presets api-auth, browser-auth)",
            ),
            (
                "[streaming]",
                "[sse]",
                "routes[2].response_headers: \"sse\" is not a response preset (presets: streaming) (hint: streaming (cache-control: no-cache, x-accel-buffering: no))",
            ),
            (
                "path: /lease/ticker/[symbol]",
                "path: /stream/ticker/[symbol]/",
                "routes[2].lease.path: the lease is bought on a path of its own, not on the resource's (hint: e.g. path: /stream/ticker/[symbol] and lease.path: /lease/ticker/[symbol])",
            ),
            (
                "path: /lease/ticker/[symbol]",
                "path: /api/quote",
                "routes[2].lease.path: lease.path \"/api/quote\" must capture the same [name]s as path \"/stream/ticker/[symbol]\" (hint: literal segments and whole [name] segments, every [name] captured by path)",
            ),
            (
                "    path: /free/**",
                "    path: /lease/ticker/[symbol]\n    methods: [POST, GET]",
                "routes[2].lease.path: matches exactly the same requests as route \"free\" (hint: give the lease path a prefix of its own, e.g. /lease/...)",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(base.contains(from), "{from:?}");
            assert_problem(&base.replacen(from, to, 1), expected);
        }
        // Shape errors have their path too.
        let ps = problems(&base.replace("seconds: 60", "seconds: 60\n      secondz: 1"));
        assert!(
            ps[0].starts_with("routes[2].lease.secondz: unknown field `secondz`"),
            "{ps:#?}"
        );
        let ps = problems(&base.replace("seconds: 60", "seconds: soon"));
        assert!(
            ps[0].starts_with("routes[2].lease.seconds: invalid type"),
            "{ps:#?}"
        );
        // `[` in a flow mapping: a hint to quote it.
        let ps = problems(&base.replace(
            "    lease:\n      path: /lease/ticker/[symbol]\n      seconds: 60\n",
            "    lease: { path: /lease/ticker/[symbol], seconds: 60 }\n    x:\n",
        ));
        assert!(
            ps[0].contains("(hint: inside { } or [ ], quote values"),
            "{ps:#?}"
        );
    }

    #[test]
    fn leases_and_admin_sections() {
        let dir = tempfile::tempdir().expect("tmp");
        let base = leased(dir.path());
        let lease_ref = format!("\"file:{}\"", dir.path().join("lease").display());
        let admin_ref = format!("\"file:{}\"", dir.path().join("admin").display());
        // A leased route without a leases: section.
        let cut = base.find("leases:").expect("leases");
        let no_leases = format!("{}admin:\n  token: {admin_ref}\n", &base[..cut]);
        assert_problem(
            &no_leases,
            "routes[2].lease: the route is sold as a lease but there is no leases: section (hint: add leases: { secret: env:TOLLWAY_LEASE_SECRET } (at least 32 bytes, e.g. `openssl rand -hex 32`))",
        );
        let short = crate::testkit::secret_file(dir.path(), "short", "tooshort");
        let ps = problems(&base.replace(&lease_ref, &format!("\"{short}\"")));
        assert!(
            ps.iter()
                .any(|p| p.starts_with("leases.secret: secret from file:")
                    && p.contains("is 8 bytes, need at least 32")),
            "{ps:#?}"
        );
        let ps = problems(&base.replace(&admin_ref, &format!("\"{short}\"")));
        assert!(
            ps.iter()
                .any(|p| p.starts_with("admin.token: secret from file:")
                    && p.contains("is 8 bytes, need at least 32")),
            "{ps:#?}"
        );
        // Never inline, and never echoed.
        for (r, path) in [(&lease_ref, "leases.secret"), (&admin_ref, "admin.token")] {
            let text = base.replace(r.as_str(), "s3cr3t-inline-value-that-is-long-enough-1234");
            let ps = problems(&text);
            assert!(
                ps.contains(&format!("{path}: not a secret reference (hint: write env:NAME or file:PATH; secrets are never inline)")),
                "{ps:#?}"
            );
            assert!(ps.iter().all(|p| !p.contains("s3cr3t")));
            // Refused even when secrets are not read.
            assert!(Config::parse(&text, Secrets::Skip).is_err());
        }
        // The lease secret is read even by `tollway envoy`.
        let unset = base.replace(&lease_ref, "env:TOLLWAY_TEST_UNSET_LEASE");
        let e = Config::parse(&unset, Secrets::Skip).expect_err("needs the lease secret");
        assert_eq!(
            e.0[0].to_string(),
            "leases.secret: environment variable TOLLWAY_TEST_UNSET_LEASE is not set (hint: export TOLLWAY_TEST_UNSET_LEASE=...)"
        );
        // Unknown keys in the new sections.
        let ps = problems(&base.replace("leases:\n  secret:", "leases:\n  key: x\n  secret:"));
        assert!(
            ps[0].starts_with("leases.key: unknown field `key`"),
            "{ps:#?}"
        );
        // A leases: section without a leased route is fine (the admin API may add one).
        let text = good() + &format!("leases:\n  secret: {lease_ref}\n");
        assert!(problems(&text).is_empty());
    }

    #[test]
    fn stores_section() {
        let replay = |c: &Config| match &c.stores.replay {
            ReplayStoreSettings::Memory => ("memory".to_owned(), false),
            ReplayStoreSettings::Ledger => ("ledger".to_owned(), false),
            ReplayStoreSettings::Redis(r) => (r.url.to_string(), r.password.is_some()),
        };
        // Absent, empty or `ledger`: the ledger database (durable).
        for extra in ["", "stores: {}\n", "stores:\n  replay: ledger\n"] {
            let c = Config::parse(&(good() + extra), Secrets::Resolve).expect("valid");
            assert_eq!(replay(&c), ("ledger".to_owned(), false), "{extra:?}");
        }
        // `memory`: this process only, forgotten on restart.
        let c = Config::parse(&(good() + "stores:\n  replay: memory\n"), Secrets::Resolve)
            .expect("valid");
        assert_eq!(replay(&c), ("memory".to_owned(), false));
        for url in [
            "redis://127.0.0.1:6379",
            "redis://redis.internal:6379/2",
            "rediss://redis.internal:6380/0",
            "redis://tollway@[::1]:6379/",
        ] {
            let c = Config::parse(
                &format!("{}stores:\n  replay: {url}\n", good()),
                Secrets::Resolve,
            )
            .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(replay(&c).0, url);
        }
        // The password by reference: read by check and serve, only syntax-checked by envoy.
        let dir = tempfile::tempdir().expect("tmp");
        let pw = crate::testkit::secret_file(dir.path(), "redis-pw", "hunter2-redis-password");
        let text = format!(
            "{}stores:\n  replay:\n    url: rediss://redis.internal:6380/1\n    password: {pw}\n",
            good()
        );
        let c = Config::parse(&text, Secrets::Resolve).expect("valid");
        assert_eq!(
            replay(&c),
            ("rediss://redis.internal:6380/1".to_owned(), true)
        );
        assert!(!format!("{:?}", c.stores).contains("hunter2"));
        let c = Config::parse(&text, Secrets::Skip).expect("valid");
        assert!(!replay(&c).1);
        let unset = format!(
            "{}stores:\n  replay: {{ url: redis://r:6379, password: env:TOLLWAY_TEST_UNSET_REDIS }}\n",
            good()
        );
        assert_problem(
            &unset,
            "stores.replay.password: environment variable TOLLWAY_TEST_UNSET_REDIS is not set (hint: export TOLLWAY_TEST_UNSET_REDIS=...)",
        );
        assert!(Config::parse(&unset, Secrets::Skip).is_ok());

        // Problems, each at its field, never echoing a password.
        let example = "replay: redis://127.0.0.1:6379/0, or replay: { url: rediss://redis.internal:6380/0, password: env:REDIS_PASSWORD }";
        for (yaml, expected) in [
            (
                "replay: redis://:s3cr3t-pw@127.0.0.1:6379",
                "stores.replay: a password in the URL is not allowed (hint: give it by reference: replay: { url: redis://host:6379, password: env:REDIS_PASSWORD })".to_owned(),
            ),
            (
                "replay: { url: \"redis://app:s3cr3t-pw@127.0.0.1:6379\" }",
                "stores.replay.url: a password in the URL is not allowed (hint: give it by reference: replay: { url: redis://host:6379, password: env:REDIS_PASSWORD })".to_owned(),
            ),
            (
                "replay: http://127.0.0.1:6379",
                format!("stores.replay: scheme \"http\" is not redis or rediss (hint: {example})"),
            ),
            (
                "replay: 127.0.0.1:6379",
                "stores.replay: not a URL (no scheme) (hint: redis://host:port/db, e.g. redis://127.0.0.1:6379/0; with TLS rediss://)".to_owned(),
            ),
            (
                "replay: \"redis://x y\"",
                format!("stores.replay: not a URL: invalid domain character (hint: {example})"),
            ),
            (
                "replay: redis://127.0.0.1:6379/cache",
                "stores.replay: \"cache\" is not a database number (hint: redis://host:port/0 (the path is the database number, default 0))".to_owned(),
            ),
            (
                "replay: redis://127.0.0.1:6379/0?protocol=resp3",
                "stores.replay: must not have a query or fragment (hint: redis://host:port/db; TLS: rediss:// (certificates checked against the system roots))".to_owned(),
            ),
            (
                "replay: 6379",
                format!("stores.replay: expected a URL or a mapping, found a number (hint: {example})"),
            ),
            (
                "replay: { url: redis://r:6379, password: s3cr3t-pw }",
                "stores.replay.password: not a secret reference (hint: write env:NAME or file:PATH; secrets are never inline)".to_owned(),
            ),
            (
                "replay: { password: env:REDIS_PASSWORD }",
                format!("stores.replay.url: missing (hint: {example})"),
            ),
            (
                "replay: { url: redis://r:6379, db: 2 }",
                format!("stores.replay.db: unknown field, expected `url` or `password` (hint: {example})"),
            ),
            (
                "replay: { url: [redis://r:6379] }",
                "stores.replay.url: expected a string, found a list".to_owned(),
            ),
        ] {
            let ps = problems(&format!("{}stores:\n  {yaml}\n", good()));
            assert_eq!(ps, vec![expected], "{yaml}");
            assert!(ps.iter().all(|p| !p.contains("s3cr3t")), "{ps:#?}");
        }
        let ps = problems(&format!("{}stores:\n  ledger: postgres://x\n", good()));
        assert!(
            ps[0].starts_with("stores.ledger: unknown field `ledger`, expected `replay`"),
            "{ps:#?}"
        );
    }

    #[test]
    fn example_file_is_valid() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = crate::testkit::example_config(dir.path(), Secrets::Resolve);
        assert_eq!(c.routes.len(), 5);
        assert_eq!(c.paid_routes(), 4);
        let ticker = c
            .filter
            .routes
            .iter()
            .find(|r| r.name == "ticker")
            .expect("ticker");
        assert_eq!(ticker.kind, ResourceKind::HttpStream);
        assert_eq!(
            ticker.lease.as_ref().map(|l| l.renew_window_seconds),
            Some(Some(30))
        );
        assert!(c.admin.as_ref().is_some_and(|a| a.token.is_some()));
        assert!(c.filter.keys.lease.is_some());
        assert!(matches!(
            c.lightning.as_ref().map(|l| &l.node),
            Some(NodeSettings::Dev)
        ));
        // The example refers to its secret by environment variable: never inline.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/tollway.example.yaml");
        let text = std::fs::read_to_string(path).expect("read");
        assert!(text.contains("root_secret: env:TOLLWAY_L402_SECRET"));
        assert!(text.contains("secret: env:TOLLWAY_LEASE_SECRET"));
        assert!(text.contains("token: env:TOLLWAY_ADMIN_TOKEN"));
    }
}
