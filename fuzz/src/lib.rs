//! Fixtures shared by the fuzz targets and the seed generator (`examples/seeds.rs`): a realistic
//! route table and filter config, our offers, the keys, and the clock the checks run at. Built
//! once per process.

use std::sync::OnceLock;

use tollway_protocol::filter_config::{CompiledConfig, FilterConfig};
use tollway_protocol::hmac::hmac_sha256;
use tollway_protocol::l402::{filter_key, FilterKey};
use tollway_protocol::keys::{FilterKeys, KeySet};
use tollway_protocol::lease::LeaseKey;
use tollway_protocol::routes::{RouteSpec, RouteTable};
use tollway_protocol::x402::Offer;

/// Unix seconds every check runs at (the unit tests' `NOW`).
pub const NOW: u64 = 1_800_000_000;
/// The L402 service name in the fixtures' caveats.
pub const SERVICE: &str = "tollway";
/// The preimage of every L402 token the targets sign themselves.
pub const PREIMAGE: [u8; 32] = [0x42; 32];
/// The lease secret; [`lease_key`] derives from it.
pub const LEASE_SECRET: [u8; 32] = [7; 32];
/// The L402 root secret; [`l402_key`] derives from it.
pub const L402_SECRET: [u8; 32] = [9; 32];

/// Our offers: USDC on Base Sepolia and on Base (the unit tests' pair), one on a chain with a
/// v1 name of our own.
pub fn offers() -> &'static [Offer] {
    static OFFERS: OnceLock<Vec<Offer>> = OnceLock::new();
    OFFERS.get_or_init(|| {
        serde_json::from_str(
            r#"[
            {"network": "eip155:8453", "asset": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
             "pay_to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "amount": "10000",
             "max_timeout_seconds": 60, "eip712_name": "USD Coin", "eip712_version": "2"},
            {"network": "eip155:84532", "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
             "pay_to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "amount": "10000",
             "max_timeout_seconds": 60, "eip712_name": "USDC", "eip712_version": "2"},
            {"network": "eip155:31337", "asset": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
             "pay_to": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "amount": "1",
             "max_timeout_seconds": 300, "eip712_name": "Test USD", "eip712_version": "1",
             "v1_name": "anvil"}
        ]"#,
        )
        .expect("fixture offers")
    })
}

pub fn lease_key() -> &'static LeaseKey {
    static KEY: OnceLock<LeaseKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = LeaseKey::from_hex(&hex::encode(lease_key_bytes())).expect("32 bytes");
        // The targets sign payloads with the raw bytes: they must be the derived key's.
        assert_eq!(key, LeaseKey::derive(&LEASE_SECRET));
        key
    })
}

/// The raw lease key (`HMAC-SHA256(secret, "tollway/lease/v1/key")`), to sign fuzzed payloads.
pub fn lease_key_bytes() -> [u8; 32] {
    hmac_sha256(&LEASE_SECRET, &[b"tollway/lease/v1/key"])
}

/// `base64url(payload) "." base64url(HMAC(lease key, "tollway/lease/v1" || payload))`: a token
/// with a valid signature over any payload, so the fuzzer reaches the payload decoder.
/// A version-2 payload names its key: the current key's id is written in, so the fuzzer need
/// not guess it.
pub fn sign_lease_payload(payload: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let mut payload = payload.to_vec();
    if payload.first() == Some(&2) && payload.len() >= 5 {
        payload[1..5].copy_from_slice(&lease_keys().current().0.as_bytes());
    }
    let payload = payload.as_slice();
    let mac = hmac_sha256(&lease_key_bytes(), &[b"tollway/lease/v1", payload]);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(mac)
    )
}

pub fn l402_key() -> &'static FilterKey {
    static KEY: OnceLock<FilterKey> = OnceLock::new();
    KEY.get_or_init(|| filter_key(&L402_SECRET))
}

/// [`l402_key`] as the filter holds it (the current key of a set).
pub fn l402_keys() -> &'static KeySet<FilterKey> {
    static KEYS: OnceLock<KeySet<FilterKey>> = OnceLock::new();
    KEYS.get_or_init(|| KeySet::new(l402_key().clone()))
}

/// [`lease_key`] as the filter holds it.
pub fn lease_keys() -> &'static KeySet<LeaseKey> {
    static KEYS: OnceLock<KeySet<LeaseKey>> = OnceLock::new();
    KEYS.get_or_init(|| KeySet::new(lease_key().clone()))
}

/// The keys the filter would read from its environment.
pub fn filter_keys() -> FilterKeys {
    FilterKeys {
        l402: Some(l402_keys().clone()),
        lease: Some(lease_keys().clone()),
    }
}

/// 25 routes of the shapes a real API has: literals, `[param]`, `*`, `**`, hosts (exact and
/// wildcard), method lists, leased streams and their sale paths.
pub fn route_specs() -> Vec<RouteSpec> {
    let r = |name: &str, host: Option<&str>, methods: &[&str], path: &str| RouteSpec {
        name: name.into(),
        host: host.map(Into::into),
        methods: methods.iter().map(|m| (*m).into()).collect(),
        path: path.into(),
        case_insensitive: name.len() % 2 == 0,
    };
    vec![
        r("root", None, &[], "/"),
        r("health", None, &["GET"], "/healthz"),
        r("quote", None, &["GET"], "/api/quote"),
        r("quote-post", None, &["POST"], "/api/quote"),
        r("user", None, &[], "/api/users/[id]"),
        r("user-posts", None, &["GET"], "/api/users/[id]/posts/[post]"),
        r("user-any", None, &[], "/api/users/[id]/**"),
        r("search", None, &["GET", "HEAD"], "/api/search/*"),
        r("api", None, &[], "/api/**"),
        r("docs", None, &[], "/docs/**"),
        r("asset", None, &["GET"], "/static/*/[file]"),
        r("space", None, &[], "/a%20b/[x]"),
        r("ticker", None, &["GET"], "/stream/ticker/[symbol]"),
        r(
            "ticker~lease",
            None,
            &["GET", "POST"],
            "/lease/ticker/[symbol]",
        ),
        r("room", None, &["GET"], "/ws/[room]"),
        r("room~lease", None, &["GET", "POST"], "/lease/ws/[room]"),
        r("v1", None, &[], "/v1/[model]/completions"),
        r("v1-upstream", None, &[], "/internal/v1/[model]"),
        r("tenant", Some("*.tenants.example.com"), &[], "/api/**"),
        r(
            "admin",
            Some("admin.example.com"),
            &["GET", "POST", "DELETE"],
            "/**",
        ),
        r(
            "admin-health",
            Some("admin.example.com"),
            &["GET"],
            "/healthz",
        ),
        r("v6", Some("[::1]"), &[], "/local/[x]"),
        r("webdav", None, &["PROPFIND", "MKCOL"], "/dav/**"),
        r("deep", None, &[], "/a/b/c/d/e/f/g/h/[last]"),
        r("catch-all", None, &["OPTIONS"], "/**"),
    ]
}

pub fn route_table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| RouteTable::compile(route_specs()).expect("fixture routes compile"))
}

/// A filter config as `tollway envoy` renders it: x402 and Lightning prices, a leased stream,
/// a rewrite, header policies, a disabled route.
pub fn config_json() -> String {
    let offer = r#"{"network": "eip155:84532",
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "pay_to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "amount": "10000",
        "max_timeout_seconds": 300, "eip712_name": "USDC", "eip712_version": "2"}"#;
    format!(
        r#"{{
  "verifier_cluster": "tollway_verifier",
  "verifier_timeout_ms": 2000,
  "settle_timeout_ms": 10000,
  "public_url": "https://api.example.com",
  "l402": {{"service": "{SERVICE}"}},
  "routes": [
    {{"name": "quote", "methods": ["GET"], "path": "/api/quote",
      "paid": {{"offers": [{offer}], "lightning": {{"amount_msat": 10000}},
               "description": "A quote", "mime_type": "application/json"}}}},
    {{"name": "free", "path": "/free"}},
    {{"name": "preview", "path": "/preview/[x]", "upstream_path": "/api/[x]"}},
    {{"name": "ticker", "kind": "http-stream", "methods": ["GET"],
      "path": "/stream/ticker/[symbol]", "paid": {{"offers": [{offer}]}},
      "lease": {{"path": "/lease/ticker/[symbol]", "seconds": 60, "renew_window_seconds": 30}},
      "upstream_path": "/v1/ticker/[symbol]", "request_headers": ["api-auth", "x-client-id"],
      "response_headers": ["streaming"]}},
    {{"name": "ln", "path": "/ln", "paid": {{"lightning": {{"amount_msat": 5000, "single_use": true}},
      "on_unknown_settlement": "withhold"}}}},
    {{"name": "old", "host": "*.example.com", "path": "/old/**", "disabled": true}}
  ]
}}"#,
    )
}

pub fn config() -> &'static FilterConfig {
    static CONFIG: OnceLock<FilterConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut c: FilterConfig = serde_json::from_str(&config_json()).expect("fixture config");
        c.keys = filter_keys();
        c
    })
}

pub fn compiled() -> &'static CompiledConfig {
    static COMPILED: OnceLock<CompiledConfig> = OnceLock::new();
    COMPILED.get_or_init(|| config().compile().expect("fixture config compiles"))
}

/// Splits fuzz input into `N` fields at `\n` (the last field takes the rest; missing ones are
/// empty).
pub fn fields<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&data[..0]; N];
    let mut rest = data;
    for (i, slot) in out.iter_mut().enumerate() {
        if i + 1 == N {
            *slot = rest;
            break;
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(at) => {
                *slot = &rest[..at];
                rest = &rest[at + 1..];
            }
            None => {
                *slot = rest;
                rest = &rest[rest.len()..];
            }
        }
    }
    out
}
