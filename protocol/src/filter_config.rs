//! The JSON the wasm filter receives as its plugin configuration (rendered by `tollway envoy`
//! from `tollway.yaml`), and its compiled form. The verifier compiles the same config for
//! ext_authz mode, so both modes match and challenge identically.

use serde::{Deserialize, Serialize};

use crate::headers::{HeaderPolicy, HeaderPolicyError, CONTEXT_RAIL};
use crate::keys::{FilterKeys, KeySet, ENV_FILTER_KEYS};
use crate::l402::caveats::is_valid_service;
use crate::l402::FilterKey;
use crate::lease::LeaseKey;
use crate::path_template::{PathTemplate, TemplateError};
use crate::resource_url;
use crate::routes::{RouteError, RouteSpec, RouteTable};
use crate::x402::{Challenge, Offer, HEADER_PAYMENT_SIGNATURE, HEADER_X_PAYMENT};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterConfig {
    /// Envoy cluster of the verifier's gRPC API.
    pub verifier_cluster: String,
    pub verifier_timeout_ms: u64,
    pub settle_timeout_ms: u64,
    /// `https://api.example.com`: base of resource URLs in challenges; `None` = the request's
    /// scheme and authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    pub routes: Vec<RouteConfig>,
    /// L402 settings; required when a route sells Lightning (with an `l402` key in `keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l402: Option<L402Filter>,
    /// The token keys. Never part of the JSON (so never in a rendered bootstrap, a config
    /// dump or a mesh manifest): the filter reads them from its environment, the verifier
    /// derives them from its secrets (see `keys`).
    #[serde(skip)]
    pub keys: FilterKeys,
    /// Poll the verifier (`Routes`) for the route table this often; `routes` above is then
    /// ignored and requests get 503 until a first table arrives. `None`: `routes` is final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval_ms: Option<u64>,
    /// Envoy removes client copies of the trusted context headers before any filter (the
    /// bootstrap `tollway envoy` renders does, with an early header mutation), so the filter need
    /// not. `false` (hand-written configs, Istio `WasmPlugin`): the filter removes them itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub envoy_strips_context: bool,
    /// How route paths compare with request paths (a route may say otherwise).
    #[serde(default, skip_serializing_if = "PathCase::is_default")]
    pub paths: PathCase,
    /// What happens to requests no route matches, first matching rule first; none matches (or
    /// none given): 404 `no_route`. So a path variant nobody priced never reaches the upstream
    /// free unless the operator opened that space with `pass`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmatched: Vec<UnmatchedRule>,
}

/// How literal route segments compare with request paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathCase {
    /// `/API/Quote` is `/api/quote` (what Express does by default, and the safe choice: a
    /// variant the upstream serves is never one the gateway does not price).
    #[default]
    CaseInsensitive,
    /// Only the exact spelling (for upstreams that route case-sensitively and serve different
    /// things on case variants).
    CaseSensitive,
}

impl PathCase {
    pub fn is_default(&self) -> bool {
        *self == PathCase::default()
    }
}

/// A rule for requests no route matches: those under `path` (a route pattern; `**` at the end
/// for a prefix) on `host` get `action`: `pass` (forwarded unpaid), `deny` (404 `no_route`), or
/// a route's name (treated as that route: priced and checked like it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmatchedRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default = "all_paths")]
    pub path: String,
    pub action: String,
}

fn all_paths() -> String {
    "/**".into()
}

/// What a rule does, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmatchedAction {
    Pass,
    Deny,
    /// As the route at this index of [`CompiledConfig::routes`].
    Route(usize),
}

/// Reason of a denied unmatched request (`{"error": "no_route"}`, 404).
pub const REASON_NO_ROUTE: &str = "no_route";

/// What the filter needs, besides its keys, to verify L402 tokens by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L402Filter {
    /// The service name in the `services=<service>:0` caveat.
    pub service: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Empty = any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    pub path: String,
    /// `None` = free route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid: Option<PaidRoute>,
    #[serde(default, skip_serializing_if = "ResourceKind::is_http")]
    pub kind: ResourceKind,
    /// Required for `http-stream` and `websocket`, refused for `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseConfig>,
    /// Rewrite of the path sent upstream; `[name]`s come from `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_path: Option<String>,
    /// Allow-list of request headers (presets `api-auth`, `browser-auth`, or names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Vec<String>>,
    /// Response presets (`streaming`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<String>,
    /// Kept in the table (so no broader route serves it) but answered 404.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Overrides [`FilterConfig::paths`] for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<PathCase>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceKind {
    /// Pay per request.
    #[default]
    Http,
    /// A response streamed for as long as it lasts (SSE, chunked), bought as a lease.
    HttpStream,
    /// A WebSocket upgrade, bought as a lease.
    Websocket,
}

impl ResourceKind {
    pub fn is_http(&self) -> bool {
        *self == ResourceKind::Http
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Http => "http",
            ResourceKind::HttpStream => "http-stream",
            ResourceKind::Websocket => "websocket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseConfig {
    /// Where the lease is bought: the same `[name]`s as the resource path.
    pub path: String,
    pub seconds: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub single_use: bool,
    /// Renewable in the last this-many seconds; `None` = not renewable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_window_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaidRoute {
    /// x402 EVM offers; may be empty when the route sells Lightning.
    #[serde(default)]
    pub offers: Vec<Offer>,
    /// What the client gets when its settlement's outcome is not known yet.
    #[serde(default, skip_serializing_if = "UnknownSettlement::is_deliver")]
    pub on_unknown_settlement: UnknownSettlement,
    /// The route also sells Lightning access (L402, x402 `bip122`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lightning: Option<LightningPrice>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub mime_type: String,
}

/// A settlement whose outcome is not known yet (facilitator or verifier timed out): the payment
/// may or may not have moved; the verifier's reconciler decides it later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSettlement {
    /// The client gets the upstream's answer with a `settlement_pending` receipt.
    #[default]
    Deliver,
    /// The client gets 503 with `Retry-After` and the pending receipt, no upstream body; if the
    /// payment settles anyway, the ledger records that its answer was withheld.
    Withhold,
}

impl UnknownSettlement {
    pub fn is_deliver(&self) -> bool {
        *self == Self::Deliver
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LightningPrice {
    pub amount_msat: u64,
    /// An L402 token pays for one request (claimed once at the verifier) instead of being
    /// reusable until it expires.
    #[serde(default)]
    pub single_use: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("verifier_cluster must not be empty")]
    NoVerifierCluster,
    #[error("{0} must be greater than 0")]
    ZeroTimeout(&'static str),
    #[error("public_url {0:?} must be an absolute http(s) URL without path, query or fragment")]
    BadPublicUrl(String),
    #[error("route {route:?}: a paid route needs at least one offer or a Lightning price")]
    NoOffers { route: String },
    #[error("route {route:?}: sells Lightning but the filter config has no `l402` section")]
    LightningWithoutL402 { route: String },
    #[error("route {route:?}: Lightning amount_msat must be greater than 0")]
    ZeroLightningAmount { route: String },
    #[error("the config has an `l402` section but no L402 key (the filter reads its keys from {ENV_FILTER_KEYS})")]
    NoL402Key,
    #[error("l402.service {0:?} must be 1-64 characters of [A-Za-z0-9_.-]")]
    BadL402Service(String),
    #[error("route {route:?}: offer {offer} is on {network}, which is not an EVM (eip155) chain")]
    NotEvm {
        route: String,
        offer: usize,
        network: String,
    },
    #[error("route {route:?}: offer {offer} has a zero amount")]
    ZeroAmount { route: String, offer: usize },
    #[error("route {route:?}: offer {offer} has max_timeout_seconds 0")]
    ZeroTimeoutSeconds { route: String, offer: usize },
    #[error("route {route:?}: offer {offer} has an empty EIP-712 name or version")]
    NoEip712Domain { route: String, offer: usize },
    #[error("route {route:?}: {message}")]
    Lease { route: String, message: String },
    #[error("route {route:?}: upstream_path {error}")]
    UpstreamPath { route: String, error: TemplateError },
    #[error("route {route:?}: {error}")]
    Headers {
        route: String,
        error: HeaderPolicyError,
    },
    #[error("route {route:?} is sold as a lease but there is no lease key (the filter reads its keys from {ENV_FILTER_KEYS})")]
    NoLeaseKey { route: String },
    #[error("sync_interval_ms must be between 100 and 60000")]
    BadSyncInterval,
    #[error("unmatched[{rule}]: {message}")]
    Unmatched { rule: usize, message: String },
}

/// The config, ready for the hot path: the route table plus, per route (same index as
/// `FilterConfig::routes` and as `RouteMatch::index`), its offers and precomputed challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledConfig {
    pub table: RouteTable,
    /// One per table entry: a leased route has two (its resource, then its lease sale).
    pub routes: Vec<CompiledRoute>,
    pub l402: Option<CompiledL402>,
    /// Lease keys: the current one mints, previous ones still open tokens until their time.
    pub lease_keys: Option<KeySet<LeaseKey>>,
    /// The `unmatched` rules as a table of their own (consulted only when no route matches),
    /// and each rule's action (same index).
    pub unmatched: (RouteTable, Vec<UnmatchedAction>),
}

impl CompiledConfig {
    /// What to do with a request no route matched. A CORS preflight (`OPTIONS`) on a path that
    /// a route prices for other methods passes: browsers ask it before they pay, and it carries
    /// no content.
    pub fn unmatched(&self, host: &str, method: &str, path: &str) -> UnmatchedAction {
        const PREFLIGHTED: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
        if method.eq_ignore_ascii_case("OPTIONS")
            && PREFLIGHTED
                .iter()
                .any(|m| self.table.find(host, m, path).is_some())
        {
            return UnmatchedAction::Pass;
        }
        let (table, actions) = &self.unmatched;
        table
            .find(host, method, path)
            .and_then(|m| actions.get(m.index).copied())
            .unwrap_or(UnmatchedAction::Deny)
    }

    /// Paid routes priced for some methods only, whose other methods on the same path reach
    /// the upstream unpaid (through a free route or an unmatched `pass` rule): `(route, method,
    /// sample path, what lets it through)`. `tollway check` warns about each.
    pub fn method_gaps(&self) -> Vec<(String, &'static str, String, String)> {
        const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
        let mut gaps = Vec::new();
        for (index, route) in self.routes.iter().enumerate() {
            if route.paid.is_none() || route.internal || route.disabled {
                continue;
            }
            let Some((host, path)) = self.table.sample(index) else {
                continue;
            };
            for method in METHODS {
                let through = match self.table.find(&host, method, &path) {
                    Some(m) if m.index == index => continue,
                    Some(m) => match self.routes.get(m.index) {
                        Some(r) if r.paid.is_none() && !r.disabled && !r.internal => {
                            format!("free route {:?}", r.name)
                        }
                        _ => continue,
                    },
                    None => match self.unmatched(&host, method, &path) {
                        UnmatchedAction::Pass => "an unmatched `pass` rule".to_owned(),
                        _ => continue,
                    },
                };
                gaps.push((route.name.clone(), method, path.clone(), through));
            }
        }
        gaps
    }

    /// Whether any request needs the authority to be matched (a route or a rule names a host).
    pub fn uses_hosts(&self) -> bool {
        self.table.uses_hosts() || self.unmatched.0.uses_hosts()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledL402 {
    pub keys: KeySet<FilterKey>,
    pub service: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRoute {
    pub name: String,
    pub paid: Option<CompiledPaid>,
    pub kind: ResourceKind,
    /// Set on both entries of a leased route.
    pub lease: Option<CompiledLease>,
    /// This entry is the lease path (sells leases) rather than the resource.
    pub sells_lease: bool,
    pub upstream_path: Option<PathTemplate>,
    pub headers: HeaderPolicy,
    pub disabled: bool,
    /// The upstream path of a rewritten route: not public, answered 404.
    pub internal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledLease {
    /// The resource path (literal and `[name]` segments only), to name the leased path.
    pub resource: PathTemplate,
    /// The lease path, to name it in a 402 on the resource.
    pub sale: PathTemplate,
    /// The one method a lease grants.
    pub method: String,
    pub seconds: u64,
    pub single_use: bool,
    pub renew_window_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPaid {
    /// x402 EVM offers (empty on a Lightning-only route).
    pub offers: Vec<Offer>,
    /// The x402 challenge of `offers` (a Lightning `bip122` entry is added per request).
    pub challenge: Challenge,
    /// Set only when the config also has `l402`.
    pub lightning: Option<LightningPrice>,
    pub on_unknown_settlement: UnknownSettlement,
}

impl CompiledConfig {
    /// What a paid route sells over Lightning: its price, with the L402 settings to sell it
    /// (`None` on an x402-only route, or when the config has no `l402`).
    pub fn lightning<'a>(
        &'a self,
        paid: &CompiledPaid,
    ) -> Option<(LightningPrice, &'a CompiledL402)> {
        paid.lightning.zip(self.l402.as_ref())
    }

    /// The route called `name` (as sent in gRPC requests); for a leased route, its resource
    /// entry (both entries have the same price).
    pub fn route(&self, name: &str) -> Option<&CompiledRoute> {
        self.routes.iter().find(|r| r.name == name)
    }
}

/// Requests Envoy may serve without entering the filter, because the filter's answer to them
/// is known in advance (see [`CompiledConfig::bypass`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bypass {
    pub route: String,
    pub method: &'static str,
    /// Exact path (no query), as Envoy matches it after normalising.
    pub path: String,
    /// `None`: sent upstream untouched. `Some`: answered by Envoy itself, for requests without
    /// any of [`NOT_ANSWERED_WITH`] (those go to the filter, or come from it).
    pub answer: Option<StaticAnswer>,
}

/// A complete answer, the same bytes the filter would send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticAnswer {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Envoy never answers a request carrying one of these: a payment must reach the filter, and
/// `x-tollway-rail` marks a request the filter has let through. (Envoy picks the route again
/// after the filter changes request headers, e.g. strips the payment; clients cannot send
/// `x-tollway-*` headers, Envoy removes them before any route or filter.)
pub const NOT_ANSWERED_WITH: [&str; 3] = [HEADER_PAYMENT_SIGNATURE, HEADER_X_PAYMENT, CONTEXT_RAIL];

/// Methods a bypass is offered for. Others (WebDAV, custom) always go through the filter.
const BYPASS_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl CompiledConfig {
    /// What Envoy can do without the filter, per (method, exact path) that this table gives
    /// one route (one literal path of unreserved characters, no host named anywhere):
    /// - a free, enabled route with no rewrite, header policy or lease is sent upstream
    ///   untouched (not when the filter must strip the context headers itself);
    /// - with `public_url` set, an unpaid request on an enabled x402-only route (no Lightning,
    ///   no lease) gets the route's 402 challenge, which then depends on nothing in the request.
    pub fn bypass(&self, envoy_strips_context: bool, public_url: Option<&str>) -> Vec<Bypass> {
        if self.table.uses_hosts() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (index, route) in self.routes.iter().enumerate() {
            if route.disabled || route.internal || route.lease.is_some() || route.sells_lease {
                continue;
            }
            let answer = match &route.paid {
                None => {
                    let untouched = envoy_strips_context
                        && route.upstream_path.is_none()
                        && !route.headers.filters_requests()
                        && route.headers.response_headers().is_empty();
                    if !untouched {
                        continue;
                    }
                    None
                }
                Some(paid) => {
                    let x402_only = self.lightning(paid).is_none();
                    let Some(base) = public_url.filter(|_| x402_only) else {
                        continue;
                    };
                    Some((paid, base))
                }
            };
            let Some(path) = self.table.exact_path(index) else {
                continue;
            };
            // A free route rewritten onto this path: after the filter rewrites it, Envoy picks
            // the route again and must not answer it with this route's 402.
            let rewritten_onto = || {
                self.routes.iter().any(|r| {
                    r.paid.is_none()
                        && r.upstream_path
                            .as_ref()
                            .is_some_and(|t| t.can_render(&path))
                })
            };
            if answer.is_some() && rewritten_onto() {
                continue;
            }
            let answer = answer.map(|(paid, base)| {
                let rendered = paid
                    .challenge
                    .render(&resource_url(Some(base), "", "", &path), None);
                StaticAnswer {
                    status: 402,
                    headers: rendered
                        .headers(paid.challenge.has_offers())
                        .into_iter()
                        .map(|(k, v)| (k, v.to_owned()))
                        .collect(),
                    body: rendered.body,
                }
            });
            for method in BYPASS_METHODS {
                if self.table.find("", method, &path).map(|m| m.index) == Some(index) {
                    out.push(Bypass {
                        route: route.name.clone(),
                        method,
                        path: path.clone(),
                        answer: answer.clone(),
                    });
                }
            }
        }
        out
    }
}

/// Table name of a leased route's sale entry (`~` cannot appear in route names).
fn sale_name(route: &str) -> String {
    format!("{route}~lease")
}

impl FilterConfig {
    pub fn compile(&self) -> Result<CompiledConfig, ConfigError> {
        if self.verifier_cluster.is_empty() {
            return Err(ConfigError::NoVerifierCluster);
        }
        if self.verifier_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout("verifier_timeout_ms"));
        }
        if self.settle_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout("settle_timeout_ms"));
        }
        if let Some(url) = &self.public_url {
            if !is_base_url(url) {
                return Err(ConfigError::BadPublicUrl(url.clone()));
            }
        }
        let l402 = self
            .l402
            .as_ref()
            .map(|l| compile_l402(l, &self.keys))
            .transpose()?;
        let lease_keys = self.keys.lease.clone();
        if let Some(ms) = self.sync_interval_ms {
            if !(100..=60_000).contains(&ms) {
                return Err(ConfigError::BadSyncInterval);
            }
        }
        let mut specs = Vec::with_capacity(self.routes.len());
        let mut routes = Vec::with_capacity(self.routes.len());
        let mut sales = Vec::new();
        for r in &self.routes {
            let paid = r
                .paid
                .as_ref()
                .map(|p| compile_paid(&r.name, p, l402.is_some()))
                .transpose()?;
            let lease = compile_lease(r, paid.is_some(), lease_keys.is_some())?;
            let captures = path_params(&r.path);
            let upstream_path = r
                .upstream_path
                .as_deref()
                .map(|t| PathTemplate::parse(t, &captures))
                .transpose()
                .map_err(|error| ConfigError::UpstreamPath {
                    route: r.name.clone(),
                    error,
                })?;
            let headers = HeaderPolicy::compile(
                r.request_headers.as_deref(),
                &r.response_headers,
                r.kind == ResourceKind::Websocket,
            )
            .map_err(|error| ConfigError::Headers {
                route: r.name.clone(),
                error,
            })?;
            let route = CompiledRoute {
                name: r.name.clone(),
                paid,
                kind: r.kind,
                lease,
                sells_lease: false,
                upstream_path,
                headers,
                disabled: r.disabled,
                internal: false,
            };
            let case_insensitive = r.paths.unwrap_or(self.paths) == PathCase::CaseInsensitive;
            specs.push(RouteSpec {
                name: r.name.clone(),
                host: r.host.clone(),
                methods: r.methods.clone(),
                path: r.path.clone(),
                case_insensitive,
            });
            if let Some(lease) = &r.lease {
                sales.push((
                    RouteSpec {
                        name: sale_name(&r.name),
                        host: r.host.clone(),
                        methods: vec!["GET".into(), "POST".into()],
                        path: lease.path.clone(),
                        case_insensitive,
                    },
                    CompiledRoute {
                        sells_lease: true,
                        upstream_path: None,
                        headers: HeaderPolicy::default(),
                        ..route.clone()
                    },
                ));
            }
            routes.push(route);
        }
        for (spec, route) in sales {
            specs.push(spec);
            routes.push(route);
        }
        // A rewritten route's upstream path is not public: requests for it are answered 404
        // rather than reaching the upstream unpaid (unless another route claims that path).
        let mut internal = Vec::new();
        for r in self.routes.iter().filter(|r| r.upstream_path.is_some()) {
            let Some(path) = r.upstream_path.as_ref() else {
                continue;
            };
            internal.push((
                RouteSpec {
                    name: format!("{}~upstream", r.name),
                    host: r.host.clone(),
                    methods: r.methods.clone(),
                    path: path.clone(),
                    case_insensitive: r.paths.unwrap_or(self.paths) == PathCase::CaseInsensitive,
                },
                CompiledRoute {
                    name: r.name.clone(),
                    paid: None,
                    kind: r.kind,
                    lease: None,
                    sells_lease: false,
                    upstream_path: None,
                    headers: HeaderPolicy::default(),
                    disabled: false,
                    internal: true,
                },
            ));
        }
        let user_specs = specs.len();
        let table = loop {
            let all: Vec<RouteSpec> = specs
                .iter()
                .cloned()
                .chain(internal.iter().map(|(s, _)| s.clone()))
                .collect();
            match RouteTable::compile(all) {
                Ok(table) => break table,
                // The upstream path is also a configured route: that route decides. Each pass
                // drops one internal entry or fails, so this ends. A configured route merely
                // named `…~upstream` (hand-written configs) is not an internal entry: its
                // shadowing is an error like any other.
                Err(RouteError::Shadowed { route, other }) => {
                    let is_internal = |name: &str| internal.iter().any(|(s, _)| s.name == name);
                    let drop = [&route, &other]
                        .into_iter()
                        .find(|name| is_internal(name))
                        .cloned();
                    let Some(drop) = drop else {
                        return Err(RouteError::Shadowed { route, other }.into());
                    };
                    internal.retain(|(s, _)| s.name != drop);
                }
                Err(e) => return Err(e.into()),
            }
        };
        debug_assert_eq!(routes.len(), user_specs);
        routes.extend(internal.into_iter().map(|(_, r)| r));
        let unmatched = self.compile_unmatched(&routes)?;
        Ok(CompiledConfig {
            table,
            routes,
            l402,
            lease_keys,
            unmatched,
        })
    }

    fn compile_unmatched(
        &self,
        routes: &[CompiledRoute],
    ) -> Result<(RouteTable, Vec<UnmatchedAction>), ConfigError> {
        let mut specs = Vec::with_capacity(self.unmatched.len());
        let mut actions = Vec::with_capacity(self.unmatched.len());
        for (i, rule) in self.unmatched.iter().enumerate() {
            let fail = |message: String| ConfigError::Unmatched { rule: i, message };
            let action = match rule.action.as_str() {
                "pass" => UnmatchedAction::Pass,
                "deny" => UnmatchedAction::Deny,
                name => {
                    let index = routes
                        .iter()
                        .position(|r| r.name == name && !r.sells_lease && !r.internal)
                        .ok_or_else(|| {
                            fail(format!("action {name:?} is neither pass, deny nor a route"))
                        })?;
                    let route = &routes[index];
                    let plain = route.lease.is_none()
                        && route
                            .upstream_path
                            .as_ref()
                            .is_none_or(|t| t.params().next().is_none());
                    if !plain {
                        return Err(fail(format!(
                            "route {name:?} is leased or rewrites with [params]: it cannot price other paths"
                        )));
                    }
                    UnmatchedAction::Route(index)
                }
            };
            specs.push(RouteSpec {
                name: format!("unmatched~{i}"),
                host: rule.host.clone(),
                methods: Vec::new(),
                path: rule.path.clone(),
                case_insensitive: self.paths == PathCase::CaseInsensitive,
            });
            actions.push(action);
        }
        let table = RouteTable::compile(specs).map_err(|e| match e {
            RouteError::Shadowed { route, other } => ConfigError::Unmatched {
                rule: route
                    .strip_prefix("unmatched~")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                message: format!(
                    "covers exactly what rule {} covers",
                    other.trim_start_matches("unmatched~")
                ),
            },
            other => other.into(),
        })?;
        Ok((table, actions))
    }
}

/// The `[name]` segments of a route path.
fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('[').and_then(|s| s.strip_suffix(']')))
        .collect()
}

fn compile_lease(
    r: &RouteConfig,
    paid: bool,
    has_key: bool,
) -> Result<Option<CompiledLease>, ConfigError> {
    let fail = |message: String| ConfigError::Lease {
        route: r.name.clone(),
        message,
    };
    let lease =
        match (r.kind, &r.lease) {
            (ResourceKind::Http, None) => return Ok(None),
            (ResourceKind::Http, Some(_)) => return Err(fail(
                "a lease needs kind http-stream or websocket (http routes are paid per request)"
                    .into(),
            )),
            (kind, None) => {
                return Err(fail(format!(
                    "kind {} is sold as a lease: add lease: {{ path, seconds }}",
                    kind.as_str()
                )))
            }
            (_, Some(lease)) => lease,
        };
    if !paid {
        return Err(fail("a leased route must have a price".into()));
    }
    if !has_key {
        return Err(ConfigError::NoLeaseKey {
            route: r.name.clone(),
        });
    }
    let params = path_params(&r.path);
    let resource = PathTemplate::parse(&r.path, &params).map_err(|e| {
        fail(format!(
            "a leased path may only have literal and [name] segments: {e}"
        ))
    })?;
    let sale =
        PathTemplate::parse(&lease.path, &params).map_err(|e| fail(format!("lease.path: {e}")))?;
    let mut sale_params: Vec<&str> = sale.params().collect();
    let mut resource_params: Vec<&str> = resource.params().collect();
    sale_params.sort_unstable();
    resource_params.sort_unstable();
    if sale_params != resource_params {
        return Err(fail(format!(
            "lease.path {:?} must capture the same [name]s as path {:?}",
            lease.path, r.path
        )));
    }
    if lease.path.trim_end_matches('/') == r.path.trim_end_matches('/') {
        return Err(fail("lease.path must differ from path".into()));
    }
    let method = match (r.kind, r.methods.as_slice()) {
        (_, []) => "GET".to_owned(),
        (ResourceKind::Websocket, [m]) if !m.eq_ignore_ascii_case("GET") => {
            return Err(fail("a websocket route is opened with GET".into()))
        }
        (_, [m]) => m.to_ascii_uppercase(),
        _ => {
            return Err(fail(
                "a leased route lists at most one method (the one its lease grants)".into(),
            ))
        }
    };
    if lease.seconds == 0 {
        return Err(fail("lease.seconds must be greater than 0".into()));
    }
    if let Some(window) = lease.renew_window_seconds {
        if lease.single_use {
            return Err(fail("a single-use lease cannot be renewed".into()));
        }
        if window == 0 || window > lease.seconds {
            return Err(fail(format!(
                "the renewal window must be 1..={} seconds (lease.seconds)",
                lease.seconds
            )));
        }
    }
    Ok(Some(CompiledLease {
        resource,
        sale,
        method,
        seconds: lease.seconds,
        single_use: lease.single_use,
        renew_window_seconds: lease.renew_window_seconds,
    }))
}

fn compile_l402(l402: &L402Filter, keys: &FilterKeys) -> Result<CompiledL402, ConfigError> {
    let keys = keys.l402.clone().ok_or(ConfigError::NoL402Key)?;
    if !is_valid_service(&l402.service) {
        return Err(ConfigError::BadL402Service(l402.service.clone()));
    }
    Ok(CompiledL402 {
        keys,
        service: l402.service.clone(),
    })
}

fn compile_paid(
    route: &str,
    paid: &PaidRoute,
    has_l402: bool,
) -> Result<CompiledPaid, ConfigError> {
    if paid.offers.is_empty() && paid.lightning.is_none() {
        return Err(ConfigError::NoOffers {
            route: route.to_owned(),
        });
    }
    if let Some(lightning) = &paid.lightning {
        if !has_l402 {
            return Err(ConfigError::LightningWithoutL402 {
                route: route.to_owned(),
            });
        }
        if lightning.amount_msat == 0 {
            return Err(ConfigError::ZeroLightningAmount {
                route: route.to_owned(),
            });
        }
    }
    for (offer, o) in paid.offers.iter().enumerate() {
        let route = route.to_owned();
        if o.network.evm_chain_id().is_none() {
            return Err(ConfigError::NotEvm {
                route,
                offer,
                network: o.network.to_string(),
            });
        }
        if o.amount.get() == 0 {
            return Err(ConfigError::ZeroAmount { route, offer });
        }
        if o.max_timeout_seconds == 0 {
            return Err(ConfigError::ZeroTimeoutSeconds { route, offer });
        }
        if o.eip712_name.is_empty() || o.eip712_version.is_empty() {
            return Err(ConfigError::NoEip712Domain { route, offer });
        }
    }
    Ok(CompiledPaid {
        offers: paid.offers.clone(),
        challenge: Challenge::new(&paid.offers, &paid.description, &paid.mime_type),
        lightning: paid.lightning,
        on_unknown_settlement: paid.on_unknown_settlement,
    })
}

/// `http(s)://authority` with an optional trailing `/` and nothing else.
fn is_base_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    !authority.is_empty()
        && !authority.contains(['/', '?', '#', ' ', '@'])
        && authority.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config_json() -> serde_json::Value {
        json!({
            "verifier_cluster": "tollway_verifier",
            "verifier_timeout_ms": 2000,
            "settle_timeout_ms": 10000,
            "public_url": "https://api.example.com",
            "routes": [
                {
                    "name": "quote",
                    "methods": ["GET"],
                    "path": "/api/quote",
                    "paid": {
                        "offers": [{
                            "network": "eip155:84532",
                            "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                            "pay_to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                            "amount": "1000",
                            "max_timeout_seconds": 300,
                            "eip712_name": "USDC",
                            "eip712_version": "2"
                        }],
                        "description": "A quote",
                        "mime_type": "application/json"
                    }
                },
                {"name": "free", "path": "/free"}
            ]
        })
    }

    fn config() -> FilterConfig {
        serde_json::from_value(config_json()).unwrap()
    }

    #[test]
    fn unmatched_requests_follow_the_first_rule_that_fits_and_are_denied_otherwise() {
        let with = |rules: serde_json::Value| {
            let mut v = config_json();
            v["unmatched"] = rules;
            serde_json::from_value::<FilterConfig>(v).unwrap().compile()
        };
        let c = with(json!([])).unwrap();
        assert_eq!(c.unmatched("h", "GET", "/nowhere"), UnmatchedAction::Deny);
        // A CORS preflight on a priced path reaches the upstream; elsewhere it is denied too.
        assert_eq!(
            c.unmatched("h", "OPTIONS", "/api/quote"),
            UnmatchedAction::Pass
        );
        assert_eq!(
            c.unmatched("h", "OPTIONS", "/nowhere"),
            UnmatchedAction::Deny
        );
        let c = with(json!([
            {"path": "/open/**", "action": "pass"},
            {"path": "/v2/**", "action": "quote"},
            {"host": "docs.example.com", "action": "pass"},
            {"action": "deny"}
        ]))
        .unwrap();
        assert_eq!(c.unmatched("h", "GET", "/open/a/b"), UnmatchedAction::Pass);
        assert_eq!(c.unmatched("h", "POST", "/OPEN"), UnmatchedAction::Pass);
        assert_eq!(c.unmatched("h", "GET", "/v2/x"), UnmatchedAction::Route(0));
        assert_eq!(
            c.unmatched("docs.example.com:443", "GET", "/x"),
            UnmatchedAction::Pass
        );
        assert_eq!(c.unmatched("h", "GET", "/x"), UnmatchedAction::Deny);
        assert!(c.uses_hosts());
        for (rules, needle) in [
            (
                json!([{"action": "maybe"}]),
                "neither pass, deny nor a route",
            ),
            (
                json!([{"action": "pass"}, {"path": "/**", "action": "deny"}]),
                "covers exactly",
            ),
            (
                json!([{"path": "nope", "action": "pass"}]),
                "must start with '/'",
            ),
        ] {
            let e = with(rules).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn method_gaps_are_found_where_a_free_route_or_a_pass_rule_takes_other_methods() {
        // quote is GET only, next to a free catch-all.
        let mut v = config_json();
        v["routes"][1]["path"] = json!("/**");
        let c = serde_json::from_value::<FilterConfig>(v)
            .unwrap()
            .compile()
            .unwrap();
        let gaps = c.method_gaps();
        let methods: Vec<&str> = gaps.iter().map(|g| g.1).collect();
        assert_eq!(methods, ["POST", "PUT", "PATCH", "DELETE"]);
        assert!(gaps
            .iter()
            .all(|g| g.0 == "quote" && g.2 == "/api/quote" && g.3.contains("\"free\"")));
        // The default (deny) leaves no gap; a pass rule does.
        assert!(config().compile().unwrap().method_gaps().is_empty());
        let mut v = config_json();
        v["unmatched"] = json!([{"action": "pass"}]);
        let c = serde_json::from_value::<FilterConfig>(v)
            .unwrap()
            .compile()
            .unwrap();
        assert_eq!(c.method_gaps().len(), 4);
    }

    #[test]
    fn parses_and_compiles() {
        let c = config();
        assert_eq!(serde_json::to_value(&c).unwrap(), config_json());
        let compiled = c.compile().unwrap();
        assert_eq!(compiled.routes.len(), 2);
        let m = compiled
            .table
            .find("api.example.com", "GET", "/api/quote")
            .unwrap();
        let route = &compiled.routes[m.index];
        assert_eq!(route.name, "quote");
        let paid = route.paid.as_ref().unwrap();
        assert_eq!(paid.offers[0].amount.get(), 1000);
        let rendered = paid
            .challenge
            .render("https://api.example.com/api/quote", None);
        assert!(rendered.body.contains("\"maxAmountRequired\":\"1000\""));
        let free = compiled.table.find("x", "POST", "/free").unwrap();
        assert!(compiled.routes[free.index].paid.is_none());
        assert_eq!(compiled.route("free").unwrap().name, "free");
        assert!(compiled.route("nope").is_none());
    }

    #[test]
    fn bypass_offers_only_what_the_filter_would_pass_untouched() {
        let mut c = config();
        let extra: Vec<RouteConfig> = serde_json::from_value(json!([
            {"name": "docs", "path": "/docs/**"},
            {"name": "user", "path": "/users/[id]"},
            {"name": "spaced", "path": "/a%20b"},
            {"name": "off", "path": "/off", "disabled": true},
            {"name": "posts", "methods": ["POST"], "path": "/free/post"},
            {"name": "headers", "path": "/h", "request_headers": ["api-auth"]}
        ]))
        .unwrap();
        c.routes.extend(extra);
        let compiled = c.compile().unwrap();
        let bypass = compiled.bypass(true, None);
        let pairs: Vec<(&str, &str)> = bypass.iter().map(|b| (b.method, b.path.as_str())).collect();
        // `free` (any method) for every listed method; `posts` only for POST; no paid,
        // wildcard, parameter, escaped, disabled or header-policy route.
        let mut expected: Vec<(&str, &str)> =
            BYPASS_METHODS.iter().map(|m| (*m, "/free")).collect();
        expected.push(("POST", "/free/post"));
        assert_eq!(pairs, expected);
        for b in &bypass {
            let m = compiled.table.find("any.host", b.method, &b.path).unwrap();
            assert_eq!(compiled.routes[m.index].name, b.route);
            assert!(compiled.routes[m.index].paid.is_none());
        }
        // The filter strips the context headers itself: nothing may skip it.
        assert!(compiled.bypass(false, None).is_empty());
    }

    #[test]
    fn bypass_answers_unpaid_x402_requests_only_under_a_public_url() {
        let compiled = config().compile().unwrap();
        let bypass = compiled.bypass(true, Some("https://api.example.com"));
        let answered: Vec<&Bypass> = bypass.iter().filter(|b| b.answer.is_some()).collect();
        let pairs: Vec<(&str, &str)> = answered
            .iter()
            .map(|b| (b.method, b.path.as_str()))
            .collect();
        // The GET route also answers HEAD.
        assert_eq!(pairs, [("GET", "/api/quote"), ("HEAD", "/api/quote")]);
        // Byte for byte the filter's answer to an unpaid request.
        let paid = compiled.route("quote").unwrap().paid.as_ref().unwrap();
        let rendered = paid
            .challenge
            .render("https://api.example.com/api/quote", None);
        let answer = answered[0].answer.as_ref().unwrap();
        assert_eq!(answer.status, 402);
        assert_eq!(answer.body, rendered.body);
        let expected: Vec<(&str, String)> = rendered
            .headers(true)
            .into_iter()
            .map(|(k, v)| (k, v.to_owned()))
            .collect();
        assert_eq!(answer.headers, expected);
        assert!(answer.headers.iter().any(|(k, _)| *k == "payment-required"));
        // A free route rewritten onto a paid path keeps that path's unpaid requests in the
        // filter (Envoy would otherwise answer the rewritten request with the 402).
        let mut c = config();
        let preview: RouteConfig = serde_json::from_value(
            json!({"name": "preview", "path": "/preview/[x]", "upstream_path": "/api/[x]"}),
        )
        .unwrap();
        c.routes.push(preview);
        let rewritten = c.compile().unwrap();
        let public = Some("https://api.example.com");
        assert!(rewritten
            .bypass(true, public)
            .iter()
            .all(|b| b.answer.is_none()));
        // Without a public URL the 402 names the request's own origin: the filter answers.
        assert!(compiled
            .bypass(true, None)
            .iter()
            .all(|b| b.answer.is_none()));
        assert!(compiled
            .bypass(true, None)
            .iter()
            .all(|b| b.path == "/free"));
    }

    #[test]
    fn bypass_never_covers_a_path_a_paid_route_wins() {
        let mut c = config();
        let extra: Vec<RouteConfig> = serde_json::from_value(json!([
            // GET /free/x is paid; other methods of /free/x are free.
            {"name": "paid-get", "methods": ["GET"], "path": "/free/x", "paid": c.routes[0].paid},
            {"name": "rest", "path": "/free/x"}
        ]))
        .unwrap();
        c.routes.extend(extra);
        let compiled = c.compile().unwrap();
        let methods: Vec<&str> = compiled
            .bypass(true, None)
            .into_iter()
            .filter(|b| b.path == "/free/x")
            .map(|b| b.method)
            .collect();
        // HEAD goes with GET (a GET route also answers HEAD), so both stay in the filter.
        assert_eq!(methods, ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);
        // Routes naming a host: no bypass at all.
        let mut hosted = config();
        hosted.routes[1].host = Some("api.example.com".into());
        assert!(hosted.compile().unwrap().bypass(true, None).is_empty());
    }

    #[test]
    fn rejects_bad_configs() {
        let mut c = config();
        c.verifier_cluster.clear();
        assert_eq!(c.compile().unwrap_err(), ConfigError::NoVerifierCluster);

        let mut c = config();
        c.settle_timeout_ms = 0;
        assert_eq!(
            c.compile().unwrap_err(),
            ConfigError::ZeroTimeout("settle_timeout_ms")
        );

        for bad in [
            "api.example.com",
            "https://",
            "https://a.com/base",
            "ftp://a.com",
            "https://a.com?x",
        ] {
            let mut c = config();
            c.public_url = Some(bad.into());
            assert!(
                matches!(c.compile().unwrap_err(), ConfigError::BadPublicUrl(_)),
                "{bad}"
            );
        }
        let mut c = config();
        c.public_url = Some("http://127.0.0.1:10000/".into());
        assert!(c.compile().is_ok());

        let paid = |c: &mut FilterConfig| c.routes[0].paid.as_mut().unwrap().offers.clone();
        let mut c = config();
        c.routes[0].paid.as_mut().unwrap().offers.clear();
        assert!(matches!(
            c.compile().unwrap_err(),
            ConfigError::NoOffers { .. }
        ));

        let mut c = config();
        let mut offers = paid(&mut c);
        offers[0].network = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp".parse().unwrap();
        c.routes[0].paid.as_mut().unwrap().offers = offers;
        assert!(matches!(
            c.compile().unwrap_err(),
            ConfigError::NotEvm { offer: 0, .. }
        ));

        let mut c = config();
        c.routes[0].paid.as_mut().unwrap().offers[0].amount = crate::amount::AtomicAmount(0);
        assert!(matches!(
            c.compile().unwrap_err(),
            ConfigError::ZeroAmount { .. }
        ));

        let mut c = config();
        c.routes[0].paid.as_mut().unwrap().offers[0].max_timeout_seconds = 0;
        assert!(matches!(
            c.compile().unwrap_err(),
            ConfigError::ZeroTimeoutSeconds { .. }
        ));

        let mut c = config();
        c.routes[0].paid.as_mut().unwrap().offers[0]
            .eip712_version
            .clear();
        assert!(matches!(
            c.compile().unwrap_err(),
            ConfigError::NoEip712Domain { .. }
        ));

        let mut c = config();
        c.routes[1].path = "free".into();
        assert!(matches!(
            c.compile().unwrap_err(),
            ConfigError::Route(RouteError::PathNotAbsolute { .. })
        ));
    }

    /// Runs `f` on another thread and gives up after 10 s: a test of something that used to hang.
    fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("did not finish within 10 s")
    }

    /// A hand-written route named like an internal entry (`<route>~upstream`) and shadowed by
    /// another route made compile drop "its" internal entry, find none, and try again forever.
    #[test]
    fn compile_terminates_when_a_route_named_like_an_internal_entry_is_shadowed() {
        for (first, second) in [("b~upstream", "other"), ("other", "b~upstream")] {
            let mut c = config();
            c.routes = serde_json::from_value(json!([
                {"name": first, "path": "/x"},
                {"name": second, "path": "/x/"}
            ]))
            .unwrap();
            let result = within_10s(move || c.compile());
            assert_eq!(
                result.unwrap_err(),
                ConfigError::Route(RouteError::Shadowed {
                    route: second.into(),
                    other: first.into()
                }),
                "{first} then {second}"
            );
        }
        // The same with real internal entries around: those are still dropped when a
        // configured route claims their path.
        let mut c = config();
        c.routes = serde_json::from_value(json!([
            {"name": "b", "path": "/b", "upstream_path": "/x"},
            {"name": "b~upstream", "path": "/y"},
            {"name": "other", "path": "/y"}
        ]))
        .unwrap();
        assert!(matches!(
            within_10s(move || c.compile()).unwrap_err(),
            ConfigError::Route(RouteError::Shadowed { .. })
        ));
        let mut c = config();
        c.routes = serde_json::from_value(json!([
            {"name": "b", "path": "/b", "upstream_path": "/x"},
            {"name": "x", "path": "/x"}
        ]))
        .unwrap();
        let compiled = within_10s(move || c.compile()).unwrap();
        assert_eq!(compiled.routes.len(), 2);
    }

    fn lightning_config() -> FilterConfig {
        let mut v = config_json();
        v["l402"] = json!({"service": "tollway"});
        v["routes"][0]["paid"]["lightning"] = json!({"amount_msat": 10000});
        v["routes"].as_array_mut().unwrap().push(json!({
            "name": "ln-only",
            "path": "/ln",
            "paid": {"lightning": {"amount_msat": 5000, "single_use": true}}
        }));
        let mut c: FilterConfig = serde_json::from_value(v).unwrap();
        c.keys.l402 = Some(KeySet::new(FilterKey::from_bytes([0x11; 32])));
        c
    }

    #[test]
    fn lightning_routes() {
        let c = lightning_config();
        let compiled = c.compile().unwrap();
        let l402 = compiled.l402.as_ref().unwrap();
        assert_eq!(l402.service, "tollway");
        assert_eq!(l402.keys.current().1.as_bytes(), &[0x11; 32]);
        let quote = compiled.route("quote").unwrap().paid.as_ref().unwrap();
        assert_eq!(
            quote.lightning,
            Some(LightningPrice {
                amount_msat: 10_000,
                single_use: false
            })
        );
        assert!(quote.challenge.has_offers());
        let ln = compiled.route("ln-only").unwrap().paid.as_ref().unwrap();
        assert!(ln.offers.is_empty());
        assert!(!ln.challenge.has_offers());
        assert!(ln.lightning.unwrap().single_use);
        // Round trip keeps the new fields but never the keys; the old JSON (no l402, no
        // lightning) still parses.
        let json = serde_json::to_value(&c).unwrap();
        assert!(!json.to_string().contains(&"11".repeat(32)), "{json}");
        let mut back: FilterConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back.keys, FilterKeys::default());
        back.keys = c.keys.clone();
        assert_eq!(back, c);
        assert!(config().l402.is_none());
        assert!(config().routes[0]
            .paid
            .as_ref()
            .unwrap()
            .lightning
            .is_none());
        assert!(config().compile().unwrap().l402.is_none());
    }

    #[test]
    fn rejects_bad_lightning_configs() {
        let mut c = lightning_config();
        c.l402 = None;
        assert!(matches!(
            c.compile().unwrap_err(),
            ConfigError::LightningWithoutL402 { .. }
        ));
        let mut c = lightning_config();
        c.routes[2].paid.as_mut().unwrap().lightning = None;
        assert!(matches!(
            c.compile().unwrap_err(),
            ConfigError::NoOffers { .. }
        ));
        let mut c = lightning_config();
        c.routes[2].paid.as_mut().unwrap().lightning = Some(LightningPrice {
            amount_msat: 0,
            single_use: false,
        });
        assert!(matches!(
            c.compile().unwrap_err(),
            ConfigError::ZeroLightningAmount { .. }
        ));
        let mut c = lightning_config();
        c.keys.l402 = None;
        assert_eq!(c.compile().unwrap_err(), ConfigError::NoL402Key);
        for bad in ["", "a b", "svc:0", "a=b", "a,b", &"s".repeat(65)] {
            let mut c = lightning_config();
            c.l402.as_mut().unwrap().service = bad.to_owned();
            assert!(
                matches!(c.compile().unwrap_err(), ConfigError::BadL402Service(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_malformed_json() {
        let mut v = config_json();
        v["routes"][0]["paid"]["offers"][0]["amount"] = json!(1000);
        assert!(serde_json::from_value::<FilterConfig>(v).is_err());
        let mut v = config_json();
        v["routes"][0]["paid"]["offers"][0]["pay_to"] = json!("0x1234");
        assert!(serde_json::from_value::<FilterConfig>(v).is_err());
    }

    // ---- leases, rewrites, header policy (more in tests/leased_routes.rs) ---------------------

    fn leased_config() -> FilterConfig {
        let mut v = config_json();
        let paid = v["routes"][0]["paid"].clone();
        v["routes"].as_array_mut().unwrap().push(json!({
            "name": "ticker",
            "path": "/stream/ticker/[symbol]",
            "kind": "http-stream",
            "paid": paid,
            "lease": {"path": "/lease/ticker/[symbol]", "seconds": 60, "renew_window_seconds": 30},
            "upstream_path": "/v1/ticker/[symbol]"
        }));
        let mut c: FilterConfig = serde_json::from_value(v).unwrap();
        c.keys.lease = Some(KeySet::new(LeaseKey::from_bytes([0x22; 32])));
        c
    }

    fn lease_message(c: &FilterConfig) -> String {
        match c.compile().unwrap_err() {
            ConfigError::Lease { route, message } => {
                assert_eq!(route, "ticker");
                message
            }
            other => panic!("expected a lease error, got {other:?}"),
        }
    }

    /// `tollway check` (verifier/src/config.rs, `filter_error`) reports these at the field their
    /// message starts with or names: keep the wording's prefixes.
    #[test]
    fn lease_messages_name_their_field() {
        let mut c = leased_config();
        c.routes[2].lease.as_mut().unwrap().path = "/lease/[coin]".into();
        assert!(lease_message(&c).starts_with("lease.path: "));
        let mut c = leased_config();
        c.routes[2].lease.as_mut().unwrap().path = "/lease/ticker".into();
        assert!(lease_message(&c).starts_with("lease.path "));
        let mut c = leased_config();
        c.routes[2].lease.as_mut().unwrap().path = c.routes[2].path.clone();
        assert!(lease_message(&c).starts_with("lease.path must differ"));
        let mut c = leased_config();
        c.routes[2].path = "/stream/**".into();
        c.routes[2].upstream_path = None;
        assert!(lease_message(&c).starts_with("a leased path"));
        let mut c = leased_config();
        c.routes[2].methods = vec!["GET".into(), "PUT".into()];
        assert!(lease_message(&c).contains("method"));
        let mut c = leased_config();
        c.routes[2].paid = None;
        assert!(lease_message(&c).contains("price"));
    }

    #[test]
    fn lease_paths_rewrites_and_header_policies() {
        // The lease path is a table entry of its own (GET and POST): it may not shadow a route.
        let mut c = leased_config();
        c.routes[1].path = "/lease/ticker/[symbol]".into();
        c.routes[1].methods = vec!["POST".into(), "GET".into()];
        assert_eq!(
            c.compile().unwrap_err(),
            ConfigError::Route(RouteError::Shadowed {
                route: "ticker~lease".into(),
                other: "free".into()
            })
        );
        let mut c = leased_config();
        c.routes[2].upstream_path = Some("v1".into());
        assert!(matches!(
            c.compile().unwrap_err(),
            ConfigError::UpstreamPath {
                error: TemplateError::NotAbsolute(_),
                ..
            }
        ));
        // A rewrite and a header policy on a plain http route; a disabled route keeps its place.
        let mut c = leased_config();
        c.routes[0].upstream_path = Some("/v2/quote".into());
        c.routes[0].request_headers = Some(vec!["browser-auth".into(), "X-Client".into()]);
        c.routes[1].disabled = true;
        c.sync_interval_ms = Some(60_000);
        let compiled = c.compile().unwrap();
        let quote = compiled.route("quote").unwrap();
        assert!(quote.headers.allows("x-client") && quote.headers.allows("cookie"));
        assert!(!quote.headers.allows("x-api-key"));
        assert!(quote.lease.is_none() && quote.upstream_path.is_some());
        let free = compiled.table.find("h", "GET", "/free").unwrap();
        assert!(compiled.routes[free.index].disabled);
        c.sync_interval_ms = Some(60_001);
        assert_eq!(c.compile().unwrap_err(), ConfigError::BadSyncInterval);
    }
}
