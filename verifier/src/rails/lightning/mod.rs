//! Lightning nodes: the one trait every backend implements, and [`Node`], the wrapper the rest
//! of the verifier uses (timeout on every call, a cap on calls in flight, metrics, and a check
//! of every invoice a node hands back).
//!
//! Backends: [`dev`] (in-process, real signed regtest invoices, dev-only pay endpoint),
//! [`lnd`] (gRPC, pinned TLS certificate, macaroon), [`cln`] (clnrest, rune) and [`lnbits`]
//! (REST, invoice key). A [`NodeError`] always means "unavailable" to callers: the 402 degrades
//! to x402 only, a payment check answers 503; it never grants anything.

pub mod bolt11;
pub mod cln;
pub mod dev;
#[cfg(test)]
pub mod doubles;
pub mod lnbits;
pub mod lnd;
pub mod lnrpc;
pub mod rest;
pub mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use tollway_protocol::lightning::LightningNetwork;

use crate::metrics::Metrics;

/// Deadline of every node call: a 402 must not wait on a slow node (it degrades to x402 only).
pub const NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// Node calls in flight at once; more answer [`NodeError::Busy`] at once instead of queueing
/// (each unpaid request mints an invoice: a flood must not pile up on the node).
pub const MAX_IN_FLIGHT: usize = 64;
/// Longest memo (BOLT11 `d` field) we send; route descriptions are cut to this.
pub const MAX_MEMO_BYTES: usize = 120;

/// What a node answers to "create an invoice".
#[derive(Clone, PartialEq, Eq)]
pub struct NewInvoice {
    pub bolt11: String,
    pub payment_hash: [u8; 32],
}

impl fmt::Debug for NewInvoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewInvoice")
            .field("payment_hash", &hex::encode(self.payment_hash))
            .finish_non_exhaustive()
    }
}

/// An invoice's state according to its node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum InvoiceState {
    /// Not paid (yet). LND's ACCEPTED (a held HTLC) is still open: it is not settled.
    Open,
    /// Paid. Nodes that tell the preimage give it (it is checked against the hash).
    Settled {
        preimage: Option<[u8; 32]>,
    },
    Canceled,
    Expired,
}

impl fmt::Debug for InvoiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The preimage of a paid invoice is a bearer secret: never printed.
        match self {
            Self::Open => f.write_str("Open"),
            Self::Settled { .. } => f.write_str("Settled"),
            Self::Canceled => f.write_str("Canceled"),
            Self::Expired => f.write_str("Expired"),
        }
    }
}

/// Which node call failed (metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    CreateInvoice,
    LookupInvoice,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateInvoice => "create_invoice",
            Self::LookupInvoice => "lookup_invoice",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("node did not answer within {ms} ms")]
    Timeout { ms: u64 },
    #[error("node unreachable: {0}")]
    Connect(String),
    #[error("node refused our credentials: {0}")]
    Auth(String),
    #[error("node error: {0}")]
    Node(String),
    #[error("node sent an unusable answer: {0}")]
    BadAnswer(String),
    /// Lookup of a payment hash the node does not know.
    #[error("invoice not found on the node")]
    NotFound,
    #[error("too many node calls in flight")]
    Busy,
}

impl NodeError {
    /// Short label for logs and the ledger.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Connect(_) => "connect",
            Self::Auth(_) => "auth",
            Self::Node(_) => "node",
            Self::BadAnswer(_) => "bad_answer",
            Self::NotFound => "not_found",
            Self::Busy => "busy",
        }
    }
}

/// A Lightning node backend. Implementations do one request each; [`Node`] adds the timeout,
/// the in-flight cap, metrics and the invoice check.
#[async_trait::async_trait]
pub trait LightningNode: Send + Sync {
    /// An invoice for exactly `amount_msat`, described by `memo`, expiring after `expiry_secs`.
    async fn create_invoice(
        &self,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
    ) -> Result<NewInvoice, NodeError>;

    async fn lookup_invoice(&self, payment_hash: &[u8; 32]) -> Result<InvoiceState, NodeError>;
}

/// Which backend (metric label, logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Dev,
    Lnd,
    Cln,
    Lnbits,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Lnd => "lnd",
            Self::Cln => "cln",
            Self::Lnbits => "lnbits",
        }
    }

    pub fn parse(s: &str) -> Option<Backend> {
        Some(match s {
            "dev" => Self::Dev,
            "lnd" => Self::Lnd,
            "cln" => Self::Cln,
            "lnbits" => Self::Lnbits,
            _ => return None,
        })
    }
}

/// An invoice we created and checked: what minting and x402-over-Lightning rely on.
#[derive(Clone, PartialEq, Eq)]
pub struct Invoice {
    pub bolt11: String,
    pub payment_hash: [u8; 32],
    pub amount_msat: u64,
    /// Unix seconds (BOLT11 timestamp + expiry).
    pub expires_at: u64,
}

impl fmt::Debug for Invoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invoice")
            .field("payment_hash", &hex::encode(self.payment_hash))
            .field("amount_msat", &self.amount_msat)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The node as the verifier uses it.
pub struct Node {
    backend: Backend,
    network: LightningNetwork,
    inner: Arc<dyn LightningNode>,
    timeout: Duration,
    in_flight: Semaphore,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("backend", &self.backend)
            .field("network", &self.network)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Node {
    pub fn new(
        backend: Backend,
        network: LightningNetwork,
        inner: Arc<dyn LightningNode>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            backend,
            network,
            inner,
            timeout: NODE_TIMEOUT,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            metrics,
        }
    }

    /// Shorter deadline (tests).
    #[cfg(test)]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn network(&self) -> LightningNetwork {
        self.network
    }

    async fn call<T>(
        &self,
        op: Op,
        fut: impl std::future::Future<Output = Result<T, NodeError>>,
    ) -> Result<T, NodeError> {
        let Ok(_permit) = self.in_flight.try_acquire() else {
            self.metrics
                .lightning_node_error(self.backend.as_str(), op.as_str());
            return Err(NodeError::Busy);
        };
        let out = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(NodeError::Timeout {
                ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        };
        // Not-found is an answer, not a node failure.
        if let Err(e) = &out {
            if *e != NodeError::NotFound {
                self.metrics
                    .lightning_node_error(self.backend.as_str(), op.as_str());
                tracing::warn!(backend = self.backend.as_str(), op = op.as_str(), error = %e, "lightning node call failed");
            }
        }
        out
    }

    /// Creates an invoice for `amount_msat` and checks what came back: a BOLT11 string for our
    /// network, this amount and the payment hash the node named, not expired.
    pub async fn create_invoice(
        &self,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
        now: u64,
    ) -> Result<Invoice, NodeError> {
        let memo = truncate_memo(memo);
        let created = self
            .call(
                Op::CreateInvoice,
                self.inner.create_invoice(amount_msat, memo, expiry_secs),
            )
            .await;
        let checked = created.and_then(|n| check_new_invoice(&n, self.network, amount_msat, now));
        let outcome = match &checked {
            Ok(_) => "created",
            Err(NodeError::Timeout { .. }) => "timeout",
            Err(NodeError::Busy) => "busy",
            Err(_) => "error",
        };
        self.metrics
            .lightning_invoice(self.backend.as_str(), outcome);
        if let Err(e @ NodeError::BadAnswer(_)) = &checked {
            tracing::error!(backend = self.backend.as_str(), error = %e, "node returned an invoice we cannot offer");
        }
        checked
    }

    pub async fn lookup_invoice(&self, payment_hash: &[u8; 32]) -> Result<InvoiceState, NodeError> {
        let state = self
            .call(Op::LookupInvoice, self.inner.lookup_invoice(payment_hash))
            .await?;
        if let InvoiceState::Settled {
            preimage: Some(preimage),
        } = &state
        {
            if bolt11::sha256(preimage) != *payment_hash {
                self.metrics
                    .lightning_node_error(self.backend.as_str(), Op::LookupInvoice.as_str());
                return Err(NodeError::BadAnswer(
                    "settled invoice's preimage does not hash to its payment hash".into(),
                ));
            }
        }
        Ok(state)
    }
}

/// At most [`MAX_MEMO_BYTES`], cut on a character boundary.
pub fn truncate_memo(memo: &str) -> &str {
    if memo.len() <= MAX_MEMO_BYTES {
        return memo;
    }
    let mut end = MAX_MEMO_BYTES;
    while !memo.is_char_boundary(end) {
        end -= 1;
    }
    &memo[..end]
}

/// The checks of fact sheet §7.1 on a fresh invoice: never offer an invoice for another
/// network, amount or hash than the one we asked for.
pub fn check_new_invoice(
    new: &NewInvoice,
    network: LightningNetwork,
    amount_msat: u64,
    now: u64,
) -> Result<Invoice, NodeError> {
    let decoded = bolt11::decode(&new.bolt11)
        .map_err(|e| NodeError::BadAnswer(format!("invoice does not parse: {e}")))?;
    if decoded.network != Some(network) {
        return Err(NodeError::BadAnswer(format!(
            "invoice is for {}, we are on {}",
            decoded
                .network
                .map_or("an unknown network", LightningNetwork::name),
            network.name()
        )));
    }
    if decoded.payment_hash != new.payment_hash {
        return Err(NodeError::BadAnswer(
            "invoice's payment hash differs from the one the node named".into(),
        ));
    }
    if decoded.amount_msat != Some(amount_msat) {
        return Err(NodeError::BadAnswer(format!(
            "invoice amount {:?} msat differs from the {amount_msat} msat asked for",
            decoded.amount_msat
        )));
    }
    if decoded.expires_at <= now {
        return Err(NodeError::BadAnswer("invoice is already expired".into()));
    }
    Ok(Invoice {
        bolt11: new.bolt11.clone(),
        payment_hash: new.payment_hash,
        amount_msat,
        expires_at: decoded.expires_at,
    })
}

/// `[u8; 32]` from 64 hex digits (either case).
pub fn hash_from_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_now;

    struct Slow;

    #[async_trait::async_trait]
    impl LightningNode for Slow {
        async fn create_invoice(&self, _: u64, _: &str, _: u64) -> Result<NewInvoice, NodeError> {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Err(NodeError::Node("late".into()))
        }
        async fn lookup_invoice(&self, _: &[u8; 32]) -> Result<InvoiceState, NodeError> {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(InvoiceState::Open)
        }
    }

    /// Answers with whatever invoice it was given.
    struct Canned(NewInvoice, InvoiceState);

    #[async_trait::async_trait]
    impl LightningNode for Canned {
        async fn create_invoice(&self, _: u64, _: &str, _: u64) -> Result<NewInvoice, NodeError> {
            Ok(self.0.clone())
        }
        async fn lookup_invoice(&self, _: &[u8; 32]) -> Result<InvoiceState, NodeError> {
            Ok(self.1)
        }
    }

    fn node(inner: Arc<dyn LightningNode>) -> (Node, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        (
            Node::new(
                Backend::Lnd,
                LightningNetwork::Regtest,
                inner,
                metrics.clone(),
            )
            .with_timeout(Duration::from_millis(100)),
            metrics,
        )
    }

    #[tokio::test]
    async fn timeout_is_an_error_and_counted() {
        let (n, metrics) = node(Arc::new(Slow));
        let started = std::time::Instant::now();
        let e = n.create_invoice(1000, "m", 600, unix_now()).await;
        assert_eq!(e, Err(NodeError::Timeout { ms: 100 }));
        assert!(started.elapsed() < Duration::from_secs(1));
        let e = n.lookup_invoice(&[1; 32]).await;
        assert_eq!(e, Err(NodeError::Timeout { ms: 100 }));
        let text = metrics.encode();
        assert!(
            text.contains(
                "tollway_lightning_node_errors_total{backend=\"lnd\",op=\"create_invoice\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tollway_lightning_node_errors_total{backend=\"lnd\",op=\"lookup_invoice\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tollway_lightning_invoices_total{backend=\"lnd\",outcome=\"timeout\"} 1"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn wrong_invoices_are_refused() {
        let now = unix_now();
        let key = bolt11::random_key();
        let make = |network, amount, hash: [u8; 32], expiry: u64, ts: u64| {
            bolt11::sign(
                &key,
                network,
                &bolt11::InvoiceFields {
                    amount_msat: amount,
                    payment_hash: hash,
                    payment_secret: [7; 32],
                    description: "t",
                    expiry_secs: expiry,
                    timestamp: ts,
                },
            )
            .expect("sign")
        };
        let good = NewInvoice {
            bolt11: make(LightningNetwork::Regtest, 5000, [1; 32], 600, now),
            payment_hash: [1; 32],
        };
        let inv = check_new_invoice(&good, LightningNetwork::Regtest, 5000, now).expect("ok");
        assert_eq!(inv.expires_at, now + 600);
        assert!(inv.bolt11.starts_with("lnbcrt50n1"));

        let cases = [
            (
                make(LightningNetwork::Mainnet, 5000, [1; 32], 600, now),
                [1; 32],
            ),
            (
                make(LightningNetwork::Regtest, 4000, [1; 32], 600, now),
                [1; 32],
            ),
            (
                make(LightningNetwork::Regtest, 5000, [2; 32], 600, now),
                [1; 32],
            ),
            (
                make(LightningNetwork::Regtest, 5000, [1; 32], 60, now - 120),
                [1; 32],
            ),
            ("lnbcrt1garbage".to_owned(), [1; 32]),
        ];
        for (bolt11, hash) in cases {
            let (n, metrics) = node(Arc::new(Canned(
                NewInvoice {
                    bolt11,
                    payment_hash: hash,
                },
                InvoiceState::Open,
            )));
            let r = n.create_invoice(5000, "m", 600, now).await;
            assert!(matches!(r, Err(NodeError::BadAnswer(_))), "{r:?}");
            assert!(metrics
                .encode()
                .contains("tollway_lightning_invoices_total{backend=\"lnd\",outcome=\"error\"} 1"));
        }
    }

    #[tokio::test]
    async fn settled_preimage_must_match() {
        let hash = bolt11::sha256(&[9; 32]);
        let (n, _) = node(Arc::new(Canned(
            NewInvoice {
                bolt11: String::new(),
                payment_hash: hash,
            },
            InvoiceState::Settled {
                preimage: Some([9; 32]),
            },
        )));
        assert!(matches!(
            n.lookup_invoice(&hash).await,
            Ok(InvoiceState::Settled { .. })
        ));
        assert!(matches!(
            n.lookup_invoice(&[0; 32]).await,
            Err(NodeError::BadAnswer(_))
        ));
    }

    #[test]
    fn memo_is_cut_on_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = truncate_memo(&long);
        assert!(cut.len() <= MAX_MEMO_BYTES);
        assert_eq!(cut.len() % 2, 0);
        assert_eq!(truncate_memo("short"), "short");
    }
}
