//! The Lightning rail on the verifier side: the node, minting (per 402: an invoice, an L402
//! macaroon and the x402 `bip122` offer) and the registry of invoices we minted, which x402
//! over Lightning checks payments against.
//!
//! Macaroons are minted with protocol's [`mint`] and the filter key (never the root secret),
//! so the filter verifies them with no call to us. The registry lives in memory: after a
//! restart, x402-`bip122` payments of invoices minted before it are refused (their L402 tokens
//! keep working: they need no state).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tollway_protocol::filter_config::LightningPrice;
use tollway_protocol::keys::KeySet;
use tollway_protocol::l402::{mint, FilterKey, PaymentHash, TokenId};
use tollway_protocol::lightning::LightningNetwork;
use tollway_protocol::x402::lightning_offer_v2;

use crate::config::{L402Settings, LightningSettings, NodeSettings};
use crate::metrics::Metrics;
use crate::rails::invoices::{Ask, InvoiceBook, InvoiceLimits, Limited};
use crate::rails::lightning::cln::ClnNode;
use crate::rails::lightning::dev::DevNode;
use crate::rails::lightning::lnbits::LnbitsNode;
use crate::rails::lightning::lnd::LndNode;
use crate::rails::lightning::{Invoice, LightningNode, Node, NodeError};

/// Replay-guard key prefix of a single-use L402 token (`l402:<payment hash hex>`).
pub const CLAIM_PREFIX_L402: &str = "l402:";
/// Replay-guard key prefix of an invoice paid through x402 (`bip122:<payment hash hex>`).
/// Replay-guard key prefix marking a payment hash as held by reusable L402 tokens
/// (`l402r:<hash>`, next to its `l402:<hash>` claim).
pub const CLAIM_PREFIX_L402_REUSABLE: &str = "l402r:";
/// Minted invoices remembered at most; past that, minting is refused until some expire.
const MAX_MINTED: usize = 100_000;
/// Longest request path bound into a macaroon.
const MAX_BOUND_PATH: usize = 2048;

/// An invoice we minted for a route.
#[derive(Clone, PartialEq, Eq)]
pub struct Minted {
    pub route: String,
    /// The request path it was sold for (its macaroon carries the same binding): an x402
    /// `bip122` payment of it buys that path only.
    pub path: Option<String>,
    pub amount_msat: u64,
    pub bolt11: String,
    pub expires_at: u64,
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted")
            .field("route", &self.route)
            .field("amount_msat", &self.amount_msat)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The Lightning part of one 402.
#[derive(Clone, Debug)]
pub struct MintedChallenge {
    pub invoice: Invoice,
    /// Standard padded base64 of the v2 binary macaroon.
    pub macaroon: String,
    /// JSON of the x402 v2 `bip122` requirement carrying the invoice.
    pub x402_offer: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RailError {
    #[error("lightning backend {backend} cannot start: {source}")]
    Backend {
        backend: &'static str,
        source: NodeError,
    },
    #[error("lightning backend {0} has no credentials (config loaded without secrets)")]
    NoCredentials(&'static str),
}

pub struct LightningRail {
    node: Node,
    network: LightningNetwork,
    invoice_expiry_seconds: u64,
    /// The current filter key mints; a previous one (rotation) still verifies until its time.
    keys: KeySet<FilterKey>,
    service: String,
    valid_seconds: u64,
    minted: Mutex<HashMap<[u8; 32], Minted>>,
    /// Open invoices: handed out again, and limited per client and in total.
    invoices: InvoiceBook,
    dev: Option<Arc<DevNode>>,
}

/// Why no invoice was minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    Limited(#[from] Limited),
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl MintError {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MintError::Limited(l) if l.scope == "client" => "limited_client",
            MintError::Limited(_) => "limited_total",
            MintError::Node(e) => e.kind(),
        }
    }
}

impl fmt::Debug for LightningRail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LightningRail")
            .field("node", &self.node)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// A node client, and the dev node itself when that is the backend.
type BuiltNode = (Arc<dyn LightningNode>, Option<Arc<DevNode>>);

/// The node client for `settings`.
fn build_node(settings: &NodeSettings, network: LightningNetwork) -> Result<BuiltNode, RailError> {
    let backend = settings.backend().as_str();
    let err = |source| RailError::Backend { backend, source };
    Ok(match settings {
        NodeSettings::Dev => {
            let dev = Arc::new(DevNode::new(network));
            (dev.clone() as Arc<dyn LightningNode>, Some(dev))
        }
        NodeSettings::Lnd {
            host,
            port,
            tls_cert,
            macaroon,
        } => {
            let (Some(cert), Some(macaroon)) = (tls_cert, macaroon) else {
                return Err(RailError::NoCredentials(backend));
            };
            (
                Arc::new(LndNode::new(host, *port, cert.clone(), macaroon).map_err(err)?),
                None,
            )
        }
        NodeSettings::Cln {
            url,
            rune,
            tls_cert,
        } => {
            let Some(rune) = rune else {
                return Err(RailError::NoCredentials(backend));
            };
            (
                Arc::new(ClnNode::new(url, rune, tls_cert.clone()).map_err(err)?),
                None,
            )
        }
        NodeSettings::Lnbits { url, invoice_key } => {
            let Some(key) = invoice_key else {
                return Err(RailError::NoCredentials(backend));
            };
            (Arc::new(LnbitsNode::new(url, key).map_err(err)?), None)
        }
    })
}

impl LightningRail {
    pub fn new(
        settings: &LightningSettings,
        l402: &L402Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RailError> {
        let (inner, dev) = build_node(&settings.node, settings.network)?;
        let node = Node::new(settings.node.backend(), settings.network, inner, metrics);
        let mut rail = Self::with_node(node, dev, settings.invoice_expiry_seconds, l402);
        rail.invoices = InvoiceBook::new(settings.invoice_limits);
        Ok(rail)
    }

    /// A rail on a given node (tests use doubles).
    pub fn with_node(
        node: Node,
        dev: Option<Arc<DevNode>>,
        invoice_expiry_seconds: u64,
        l402: &L402Settings,
    ) -> Self {
        Self {
            network: node.network(),
            node,
            invoice_expiry_seconds,
            keys: crate::config::key_set(&l402.filter_key, l402.previous.as_ref()),
            service: l402.service.clone(),
            valid_seconds: l402.valid_seconds,
            minted: Mutex::new(HashMap::new()),
            invoices: InvoiceBook::new(InvoiceLimits::default()),
            dev,
        }
    }

    /// Open invoices and their limits.
    pub fn invoices(&self) -> &InvoiceBook {
        &self.invoices
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn network(&self) -> LightningNetwork {
        self.network
    }

    /// The filter keys tokens are verified with (the current one mints).
    pub fn keys(&self) -> &KeySet<FilterKey> {
        &self.keys
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn valid_seconds(&self) -> u64 {
        self.valid_seconds
    }

    /// The in-process node when the backend is `dev` (its pay endpoint).
    pub fn dev_node(&self) -> Option<&Arc<DevNode>> {
        self.dev.as_ref()
    }

    /// A fresh invoice for `price` on the route `ask` names, its macaroon (bound to the ask's
    /// path and method when given) and the x402 offer carrying it; recorded as open for the
    /// ask. Refused beyond the invoice limits (see `invoices`).
    pub async fn mint(
        &self,
        ask: Ask,
        price: LightningPrice,
        memo: &str,
        now: u64,
    ) -> Result<MintedChallenge, MintError> {
        self.invoices.admit(&ask.client, now)?;
        if self.minted_len() >= MAX_MINTED {
            self.sweep(now);
            if self.minted_len() >= MAX_MINTED {
                return Err(NodeError::Busy.into());
            }
        }
        let (route, path, method) = (
            ask.route.as_str(),
            ask.path.as_deref(),
            ask.method.as_deref(),
        );
        let invoice = self
            .node
            .create_invoice(price.amount_msat, memo, self.invoice_expiry_seconds, now)
            .await?;
        let macaroon = mint(
            self.keys.current(),
            &PaymentHash(invoice.payment_hash),
            &TokenId(rand::random()),
            &self.service,
            now.saturating_add(self.valid_seconds),
            path,
            method,
        )
        .encode_std();
        let x402_offer = lightning_offer_v2(
            self.network,
            price.amount_msat,
            &invoice.bolt11,
            self.invoice_expiry_seconds,
        )
        .to_string();
        if let Ok(mut m) = self.minted.lock() {
            m.insert(
                invoice.payment_hash,
                Minted {
                    route: route.to_owned(),
                    path: path.map(str::to_owned),
                    amount_msat: price.amount_msat,
                    bolt11: invoice.bolt11.clone(),
                    expires_at: invoice.expires_at,
                },
            );
        }
        let challenge = MintedChallenge {
            invoice,
            macaroon,
            x402_offer,
        };
        self.invoices.record(ask, &challenge, now);
        Ok(challenge)
    }

    fn minted_len(&self) -> usize {
        self.minted.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// The invoice we minted with this payment hash, if it is still remembered.
    pub fn minted(&self, payment_hash: &[u8; 32]) -> Option<Minted> {
        self.minted.lock().ok()?.get(payment_hash).cloned()
    }

    /// Forgets expired invoices; returns how many.
    pub fn sweep(&self, now: u64) -> usize {
        match self.minted.lock() {
            Ok(mut m) => {
                let before = m.len();
                m.retain(|_, v| v.expires_at > now);
                before - m.len()
            }
            Err(_) => 0,
        }
    }
}

/// A request path fit to be bound into a caveat: absolute, no query, no blanks or control
/// characters, bounded.
pub fn bindable_path(path: &str) -> Option<&str> {
    let ok = path.starts_with('/')
        && path.len() <= MAX_BOUND_PATH
        && !path.contains(['?', '#'])
        && path.chars().all(|c| !c.is_control() && !c.is_whitespace());
    ok.then_some(path)
}

/// An HTTP method fit to be bound into a caveat (upper-cased token).
pub fn bindable_method(method: &str) -> Option<String> {
    let ok =
        !method.is_empty() && method.len() <= 16 && method.bytes().all(|b| b.is_ascii_alphabetic());
    ok.then(|| method.to_ascii_uppercase())
}

/// `l402:<64 lower-case hex>`: the only claim keys the filter sends.
pub fn is_l402_claim_key(key: &str) -> bool {
    key.strip_prefix(CLAIM_PREFIX_L402).is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The claim key of a single-use token.
pub fn l402_claim_key(payment_hash: &[u8; 32]) -> String {
    format!("{CLAIM_PREFIX_L402}{}", hex::encode(payment_hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_now;
    use crate::rails::lightning::{bolt11, Backend};
    use tollway_protocol::l402::{parse_authorization, verify_credential};

    pub(crate) fn settings() -> L402Settings {
        L402Settings {
            filter_key: tollway_protocol::l402::filter_key(&[7; 32]),
            service: "svc".into(),
            valid_seconds: 3600,
            previous: None,
        }
    }

    fn dev_rail() -> (LightningRail, Arc<DevNode>) {
        let dev = Arc::new(DevNode::new(LightningNetwork::Regtest));
        let node = Node::new(
            Backend::Dev,
            LightningNetwork::Regtest,
            dev.clone(),
            Arc::new(Metrics::new()),
        );
        (
            LightningRail::with_node(node, Some(dev.clone()), 600, &settings()),
            dev,
        )
    }

    use crate::rails::invoices::ClientId;

    #[tokio::test]
    async fn minted_token_verifies_with_the_filter_key_once_paid() {
        let (rail, dev) = dev_rail();
        let now = unix_now();
        let price = LightningPrice {
            amount_msat: 10_000,
            single_use: false,
        };
        let c = rail
            .mint(
                Ask {
                    client: ClientId::from_source("127.0.0.1:1"),
                    route: "quote".into(),
                    path: Some("/api/quote".into()),
                    method: Some("GET".into()),
                },
                price,
                "A quote",
                now,
            )
            .await
            .expect("mint");
        assert_eq!(c.invoice.amount_msat, 10_000);
        assert_eq!(c.invoice.expires_at, now + 600);
        assert_eq!(
            bolt11::decode(&c.invoice.bolt11)
                .expect("bolt11")
                .payment_hash,
            c.invoice.payment_hash
        );
        let offer: serde_json::Value = serde_json::from_str(&c.x402_offer).expect("json");
        assert_eq!(offer["network"], "bip122:0f9188f13cb7b2c71f2a335e3a4fc328");
        assert_eq!(offer["amount"], "10000");
        assert_eq!(offer["extra"]["invoice"], c.invoice.bolt11.as_str());
        assert_eq!(offer["maxTimeoutSeconds"], 600);

        let minted = rail.minted(&c.invoice.payment_hash).expect("remembered");
        assert_eq!(minted.route, "quote");
        assert_eq!(minted.bolt11, c.invoice.bolt11);

        // The client pays, then presents `L402 <macaroon>:<preimage>`.
        let paid = dev.pay(&c.invoice.bolt11, now).expect("pay");
        let header = format!("L402 {}:{}", c.macaroon, hex::encode(paid.preimage));
        let credential = parse_authorization([header.as_bytes()])
            .expect("parse")
            .expect("credential");
        let token = verify_credential(
            &KeySet::new(settings().filter_key),
            &credential,
            "svc",
            now,
            "/api/quote",
            "GET",
        )
        .expect("verifies");
        assert_eq!(token.payment_hash.0, c.invoice.payment_hash);
        assert_eq!(token.valid_until, now + 3600);
        // Bound to the path and method.
        assert!(verify_credential(
            &KeySet::new(settings().filter_key),
            &credential,
            "svc",
            now,
            "/other",
            "GET"
        )
        .is_err());
        assert!(verify_credential(
            &KeySet::new(settings().filter_key),
            &credential,
            "svc",
            now,
            "/api/quote",
            "POST"
        )
        .is_err());

        assert_eq!(rail.sweep(now + 601), 1);
        assert!(rail.minted(&c.invoice.payment_hash).is_none());
    }

    #[test]
    fn binding_inputs_and_claim_keys() {
        assert_eq!(bindable_path("/api/quote"), Some("/api/quote"));
        assert_eq!(bindable_path("/café/%20"), Some("/café/%20"));
        for bad in ["", "api", "/a?b", "/a b", "/a#b", "/\u{7f}", "/a\tb"] {
            assert_eq!(bindable_path(bad), None, "{bad:?}");
        }
        assert_eq!(bindable_method("get").as_deref(), Some("GET"));
        assert_eq!(bindable_method("G E T"), None);
        let key = l402_claim_key(&[0xab; 32]);
        assert!(is_l402_claim_key(&key));
        assert!(!is_l402_claim_key(&key.to_uppercase()));
        assert!(!is_l402_claim_key("l402:abc"));
        assert!(!is_l402_claim_key(&format!("bip122:{}", "ab".repeat(32))));
    }
}
