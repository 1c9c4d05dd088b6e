//! Test helpers shared by the module tests: a config pointing at a fake facilitator and a payer
//! that signs real EIP-3009 authorizations.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};
use tollway_protocol::evm::{
    keccak256, transfer_with_authorization_digest, EvmAddress, TransferAuthorization,
};
use tollway_protocol::x402::Offer;

use crate::config::{Config, Secrets};
use crate::metrics::Metrics;
use crate::payments::Payments;
use crate::rails::facilitator::FacilitatorClient;
use crate::stores::ledger::{Ledger, LedgerLocation};

/// The harness's ledger: `ledger.db` in `dir`.
pub fn sqlite_at(dir: &std::path::Path) -> LedgerLocation {
    LedgerLocation::Sqlite(dir.join("ledger.db"))
}
use crate::stores::replay::MemoryReplayGuard;

pub const ASSET: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
pub const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

pub fn config_text(facilitator_url: &str) -> String {
    format!(
        r#"
verifier: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:1, ledger: unused.db }}
facilitators:
  local: {{ url: "{facilitator_url}", timeout_ms: 1000 }}
rails:
  usdc:
    network: eip155:84532
    asset: "{ASSET}"
    decimals: 6
    eip712: {{ name: USDC, version: "2" }}
    pay_to: "{PAY_TO}"
    facilitator: local
    max_timeout_seconds: 300
routes:
  - name: quote
    path: /api/quote
    methods: [GET]
    price: "0.001"
    description: A quote
    mime_type: application/json
  - name: echo
    path: /api/echo
    methods: [POST]
    price: "0.002"
  - name: free
    path: /free
    free: true
"#
    )
}

pub fn config(facilitator_url: &str) -> Config {
    Config::parse(&config_text(facilitator_url), Secrets::Resolve).expect("test config is valid")
}

/// The root secret of the Lightning test configs (64 hex characters).
pub const L402_SECRET: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// Writes [`L402_SECRET`] to a file in `dir`; returns its `file:` reference.
pub fn l402_secret_ref(dir: &std::path::Path) -> String {
    let path = dir.join("l402.secret");
    std::fs::write(&path, format!("{L402_SECRET}\n")).expect("write secret");
    format!("file:{}", path.display())
}

/// [`config_text`] plus the Lightning rail (dev node, regtest) and three Lightning routes:
/// `quote` in USD and sats, `sats` Lightning only, `once` single-use.
pub fn lightning_config_text(facilitator_url: &str, secret_ref: &str) -> String {
    config_text(facilitator_url)
        .replace(
            "    price: \"0.001\"\n    description: A quote",
            "    price: \"0.001\"\n    price_sats: 10\n    description: A quote",
        )
        .replace(
            "  - name: free\n",
            "  - name: sats\n    path: /api/sats\n    methods: [GET]\n    price_msat: 21000\n    description: Sats only\n  - name: once\n    path: /api/once/[id]\n    price_sats: 5\n    single_use: true\n  - name: free\n",
        )
        + &format!(
            r#"lightning:
  backend: dev
  network: regtest
  invoice_expiry_seconds: 600
  dev: {{}}
l402:
  root_secret: "{secret_ref}"
  service: svc
  valid_seconds: 3600
"#
        )
}

/// The lease secret of the test configs.
pub const LEASE_SECRET: &str = "6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c";
/// The admin token of the test configs.
pub const ADMIN_TOKEN: &str = "admin-token-admin-token-admin-token-0123";

/// Writes `value` to `name` in `dir`; returns its `file:` reference.
pub fn secret_file(dir: &std::path::Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).expect("write secret");
    format!("file:{}", path.display())
}

/// The example config's text with its secrets (L402 root secret, lease secret, admin token)
/// from files in `dir` (instead of the environment, which tests must not touch).
pub fn example_text(dir: &std::path::Path) -> String {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/tollway.example.yaml");
    std::fs::read_to_string(path)
        .expect("example")
        .replace("env:TOLLWAY_L402_SECRET", &l402_secret_ref(dir))
        .replace(
            "env:TOLLWAY_LEASE_SECRET",
            &secret_file(dir, "lease.secret", LEASE_SECRET),
        )
        .replace(
            "env:TOLLWAY_ADMIN_TOKEN",
            &secret_file(dir, "admin.token", ADMIN_TOKEN),
        )
}

/// The example config, secrets from files in `dir` ([`example_text`]).
pub fn example_config(dir: &std::path::Path, secrets: Secrets) -> Config {
    Config::parse(&example_text(dir), secrets).expect("example config is valid")
}

/// [`config_text`] selling leases (secret and admin token from files in `dir`): `ticker`, a
/// renewable stream lease with a header policy, and `room`, a single-use WebSocket lease.
pub fn leased_config_text(facilitator_url: &str, dir: &std::path::Path) -> String {
    let lease = secret_file(dir, "lease.secret", LEASE_SECRET);
    let admin = secret_file(dir, "admin.token", ADMIN_TOKEN);
    config_text(facilitator_url).replace(
        "  - name: free\n",
        "  - name: ticker\n    kind: http-stream\n    path: /stream/ticker/[symbol]\n    price: \"0.01\"\n    lease:\n      path: /lease/ticker/[symbol]\n      seconds: 60\n      renewal: { window_seconds: 30 }\n    upstream_path: /v1/ticker/[symbol]\n    request_headers: [api-auth]\n    response_headers: [streaming]\n  - name: room\n    kind: websocket\n    path: /ws/[room]\n    price: \"0.02\"\n    lease:\n      path: /lease/ws/[room]\n      seconds: 30\n      single_use: true\n  - name: free\n",
    ) + &format!("leases:\n  secret: \"{lease}\"\nadmin:\n  token: \"{admin}\"\n")
}

/// A harness on [`leased_config_text`].
pub fn leased_harness(facilitator_url: &str) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = leased_config_text(facilitator_url, dir.path());
    let config = Config::parse(&text, Secrets::Resolve).expect("leased test config is valid");
    harness_from(config, dir, Arc::new(crate::clock::unix_now))
}

pub struct Harness {
    pub payments: Arc<Payments>,
    /// The live route table over `payments` (change log in the harness's ledger database).
    pub store: Arc<crate::stores::routes_store::RouteStore>,
    pub ledger: Arc<Ledger>,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    pub dir: tempfile::TempDir,
}

impl Harness {
    /// An admin merge patch of route `name` (as `PATCH /admin/routes/{name}`); the new version.
    pub fn patch_route(&self, name: &str, body: serde_json::Value) -> u64 {
        self.store
            .change(crate::stores::routes_store::Change {
                op: crate::stores::routes_store::Op::Patch,
                name: name.into(),
                body: Some(body),
            })
            .expect("route patch applies")
    }
}

pub fn harness(facilitator_url: &str) -> Harness {
    harness_with_clock(facilitator_url, Arc::new(crate::clock::unix_now))
}

pub fn harness_with_clock(facilitator_url: &str, clock: crate::payments::Clock) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(facilitator_url);
    harness_from(config, dir, clock)
}

/// A harness whose config sells Lightning too ([`lightning_config_text`], dev node).
pub fn lightning_harness(facilitator_url: &str) -> Harness {
    lightning_harness_with_clock(facilitator_url, Arc::new(crate::clock::unix_now))
}

pub fn lightning_harness_with_clock(
    facilitator_url: &str,
    clock: crate::payments::Clock,
) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = lightning_config_text(facilitator_url, &l402_secret_ref(dir.path()));
    let config = Config::parse(&text, Secrets::Resolve).expect("lightning test config is valid");
    harness_from(config, dir, clock)
}

/// [`lightning_harness`] with the rail on another node (a backend double, a dead node).
pub fn lightning_harness_on(
    facilitator_url: &str,
    rail: impl FnOnce(&Config, Arc<Metrics>) -> Arc<crate::rails::l402::LightningRail>,
) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = lightning_config_text(facilitator_url, &l402_secret_ref(dir.path()));
    let config = Config::parse(&text, Secrets::Resolve).expect("lightning test config is valid");
    let metrics = Arc::new(Metrics::new());
    let rail = rail(&config, metrics.clone());
    harness_with(
        config,
        dir,
        Arc::new(crate::clock::unix_now),
        metrics,
        Some(rail),
    )
}

/// A harness on `text` (a whole config, e.g. [`config_text`] plus sections).
pub fn harness_on(text: &str) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::parse(text, Secrets::Resolve).expect("test config is valid");
    harness_from(config, dir, Arc::new(crate::clock::unix_now))
}

fn harness_from(config: Config, dir: tempfile::TempDir, clock: crate::payments::Clock) -> Harness {
    harness_with(config, dir, clock, Arc::new(Metrics::new()), None)
}

fn harness_with(
    config: Config,
    dir: tempfile::TempDir,
    clock: crate::payments::Clock,
    metrics: Arc<Metrics>,
    rail: Option<Arc<crate::rails::l402::LightningRail>>,
) -> Harness {
    let ledger = Arc::new(Ledger::open(&sqlite_at(dir.path()), metrics.clone()).expect("ledger"));
    let mut clients = HashMap::new();
    for (name, settings) in &config.facilitators {
        clients.insert(
            name.clone(),
            Arc::new(FacilitatorClient::new(name, settings, metrics.clone()).expect("client")),
        );
    }
    let payments = Arc::new(
        Payments::new(
            &config,
            clients,
            Arc::new(MemoryReplayGuard::new()),
            ledger.clone(),
            metrics.clone(),
        )
        .expect("payments")
        .with_clock(clock),
    );
    let payments = match rail {
        Some(rail) => Arc::new(
            Arc::try_unwrap(payments)
                .unwrap_or_else(|_| panic!("payments shared"))
                .with_lightning(rail),
        ),
        None => payments,
    };
    let store = Arc::new(
        crate::stores::routes_store::RouteStore::open(
            Arc::new(config.clone()),
            payments.clone(),
            &sqlite_at(dir.path()),
        )
        .expect("route store"),
    );
    Harness {
        payments,
        store,
        ledger,
        metrics,
        config,
        dir,
    }
}

/// A wallet that signs `transferWithAuthorization` like the official clients.
pub struct Payer {
    key: k256::ecdsa::SigningKey,
}

impl Payer {
    pub fn new(seed: u8) -> Self {
        Self {
            key: k256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("key"),
        }
    }

    pub fn address(&self) -> EvmAddress {
        let point = self.key.verifying_key().to_encoded_point(false);
        let hash = keccak256(&point.as_bytes()[1..]);
        let mut a = [0u8; 20];
        a.copy_from_slice(&hash[12..]);
        EvmAddress(a)
    }

    pub fn sign(&self, offer: &Offer, auth: &TransferAuthorization) -> String {
        let domain = offer.eip712_domain().expect("evm offer");
        let digest = transfer_with_authorization_digest(&domain, auth);
        let (sig, recid) = self.key.sign_prehash_recoverable(&digest).expect("sign");
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(27 + recid.to_byte());
        format!("0x{}", hex::encode(bytes))
    }

    pub fn authorization(&self, offer: &Offer, now: u64, nonce: u8) -> TransferAuthorization {
        TransferAuthorization {
            from: self.address(),
            to: offer.pay_to,
            value: offer.amount.get(),
            valid_after: 0,
            valid_before: now + 300,
            nonce: [nonce; 32],
        }
    }

    /// The `payload` object of an exact EVM payment.
    pub fn exact_payload(&self, offer: &Offer, auth: &TransferAuthorization) -> Value {
        json!({
            "signature": self.sign(offer, auth),
            "authorization": {
                "from": auth.from.to_string(),
                "to": auth.to.to_string(),
                "value": auth.value.to_string(),
                "validAfter": auth.valid_after.to_string(),
                "validBefore": auth.valid_before.to_string(),
                "nonce": format!("0x{}", hex::encode(auth.nonce)),
            }
        })
    }

    /// A `PAYMENT-SIGNATURE` header value (v2).
    pub fn header_v2(
        &self,
        offer: &Offer,
        auth: &TransferAuthorization,
        resource_url: &str,
    ) -> String {
        let payment = json!({
            "x402Version": 2,
            "resource": {"url": resource_url, "description": "", "mimeType": ""},
            "accepted": offer.requirements_v2_value(),
            "payload": self.exact_payload(offer, auth),
        });
        tollway_protocol::b64::encode(payment.to_string().as_bytes())
    }

    /// An `X-PAYMENT` header value (v1).
    pub fn header_v1(&self, offer: &Offer, auth: &TransferAuthorization) -> String {
        let payment = json!({
            "x402Version": 1,
            "scheme": "exact",
            "network": offer.v1_network().expect("v1 name"),
            "payload": self.exact_payload(offer, auth),
        });
        tollway_protocol::b64::encode(payment.to_string().as_bytes())
    }
}

pub fn offer(config: &Config, route: &str) -> Offer {
    config
        .filter
        .routes
        .iter()
        .find(|r| r.name == route)
        .and_then(|r| r.paid.as_ref())
        .map(|p| p.offers[0].clone())
        .expect("paid route")
}

/// A client address no other call used (`source.address` of a Challenge): tests that mint
/// several invoices get fresh ones rather than the open one handed out again.
pub fn client() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}:4242", std::net::Ipv4Addr::from(0x0a00_0000 | n))
}
