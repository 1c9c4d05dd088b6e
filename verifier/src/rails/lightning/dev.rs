//! The dev backend: an in-process "node" with a random secp256k1 key that issues REAL signed
//! BOLT11 invoices (any L402/x402 client parses them) and keeps their preimages in memory.
//! Nothing moves on any network: [`DevNode::pay`] — exposed as `POST /dev/lightning/pay` on the
//! ops port when this backend is configured — marks an invoice paid and hands out its preimage,
//! which is what test wallets call.

use std::collections::HashMap;
use std::sync::Mutex;

use bitcoin::secp256k1::SecretKey;

use super::bolt11::{self, InvoiceFields};
use super::{InvoiceState, LightningNode, NewInvoice, NodeError};
use crate::clock::unix_now;
use tollway_protocol::lightning::LightningNetwork;

/// Invoices kept at most (the oldest expired ones go first; a flood of 402s cannot grow the
/// map without bound).
const MAX_INVOICES: usize = 100_000;
/// Paid or expired invoices are forgotten this long after their expiry (nothing accepts an
/// expired invoice; the margin only keeps "expired" rather than "unknown" in answers).
const KEEP_AFTER_EXPIRY_SECS: u64 = 300;
/// Creating this many invoices sweeps the forgotten ones: an unpaid flood never looks an invoice
/// up, so the read path's housekeeping alone would let the map grow to [`MAX_INVOICES`].
const SWEEP_EVERY_CREATES: usize = 256;

struct DevInvoice {
    bolt11: String,
    preimage: [u8; 32],
    expires_at: u64,
    paid: bool,
}

pub struct DevNode {
    key: SecretKey,
    network: LightningNetwork,
    invoices: Mutex<HashMap<[u8; 32], DevInvoice>>,
    /// Invoices created, for the sweep every [`SWEEP_EVERY_CREATES`].
    created: std::sync::atomic::AtomicUsize,
}

/// Why the dev node refuses to pay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayError {
    #[error("{0}")]
    Malformed(String),
    #[error("amountless invoices are refused")]
    Amountless,
    #[error("invoice was not issued by this node")]
    Unknown,
    #[error("invoice expired")]
    Expired,
    #[error("dev node state unavailable")]
    Poisoned,
}

/// A payment made by the dev node.
#[derive(Clone, PartialEq, Eq)]
pub struct Paid {
    pub preimage: [u8; 32],
    pub payment_hash: [u8; 32],
}

impl std::fmt::Debug for Paid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paid")
            .field("payment_hash", &hex::encode(self.payment_hash))
            .finish_non_exhaustive()
    }
}

impl DevNode {
    pub fn new(network: LightningNetwork) -> Self {
        Self {
            key: bolt11::random_key(),
            network,
            invoices: Mutex::new(HashMap::new()),
            created: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The node's signing key (test doubles of other backends sign their invoices with it).
    #[cfg(test)]
    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    /// Creates an invoice at `now` (unix seconds).
    pub fn create_at(
        &self,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
        now: u64,
    ) -> Result<NewInvoice, NodeError> {
        let preimage: [u8; 32] = rand::random();
        let payment_hash = bolt11::sha256(&preimage);
        let bolt11 = bolt11::sign(
            &self.key,
            self.network,
            &InvoiceFields {
                amount_msat,
                payment_hash,
                payment_secret: rand::random(),
                description: memo,
                expiry_secs,
                timestamp: now,
            },
        )
        .map_err(|e| NodeError::Node(e.to_string()))?;
        let mut invoices = self
            .invoices
            .lock()
            .map_err(|_| NodeError::Node("dev node state poisoned".into()))?;
        let created = self
            .created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if created.is_multiple_of(SWEEP_EVERY_CREATES) {
            invoices.retain(|_, i| i.expires_at.saturating_add(KEEP_AFTER_EXPIRY_SECS) > now);
        }
        if invoices.len() >= MAX_INVOICES {
            invoices.retain(|_, i| i.expires_at > now);
            if invoices.len() >= MAX_INVOICES {
                return Err(NodeError::Node(
                    "dev node holds too many open invoices".into(),
                ));
            }
        }
        invoices.insert(
            payment_hash,
            DevInvoice {
                bolt11: bolt11.clone(),
                preimage,
                expires_at: now.saturating_add(expiry_secs),
                paid: false,
            },
        );
        Ok(NewInvoice {
            bolt11,
            payment_hash,
        })
    }

    /// Pays one of our invoices: marks it paid and returns its preimage. Paying a paid invoice
    /// again returns the same preimage (a wallet retrying after a lost answer).
    pub fn pay(&self, invoice: &str, now: u64) -> Result<Paid, PayError> {
        let decoded = bolt11::decode(invoice).map_err(|e| PayError::Malformed(e.to_string()))?;
        if decoded.amount_msat.is_none_or(|a| a == 0) {
            return Err(PayError::Amountless);
        }
        let mut invoices = self.invoices.lock().map_err(|_| PayError::Poisoned)?;
        let Some(ours) = invoices.get_mut(&decoded.payment_hash) else {
            return Err(PayError::Unknown);
        };
        // Same hash is not enough: the very invoice we issued (amount, network, signature).
        if ours.bolt11 != invoice.trim() {
            return Err(PayError::Unknown);
        }
        if !ours.paid && ours.expires_at <= now {
            return Err(PayError::Expired);
        }
        ours.paid = true;
        Ok(Paid {
            preimage: ours.preimage,
            payment_hash: decoded.payment_hash,
        })
    }

    pub fn state_at(&self, payment_hash: &[u8; 32], now: u64) -> Result<InvoiceState, NodeError> {
        let mut invoices = self
            .invoices
            .lock()
            .map_err(|_| NodeError::Node("dev node state poisoned".into()))?;
        let state = match invoices.get(payment_hash) {
            None => return Err(NodeError::NotFound),
            Some(i) if i.paid => InvoiceState::Settled {
                preimage: Some(i.preimage),
            },
            Some(i) if i.expires_at <= now => InvoiceState::Expired,
            Some(_) => InvoiceState::Open,
        };
        // Housekeeping on the read path: forget long-expired invoices now and then.
        if invoices.len() > 1024 && rand::random::<u8>() == 0 {
            invoices.retain(|_, i| i.expires_at.saturating_add(KEEP_AFTER_EXPIRY_SECS) > now);
        }
        Ok(state)
    }
}

#[async_trait::async_trait]
impl LightningNode for DevNode {
    async fn create_invoice(
        &self,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
    ) -> Result<NewInvoice, NodeError> {
        self.create_at(amount_msat, memo, expiry_secs, unix_now())
    }

    async fn lookup_invoice(&self, payment_hash: &[u8; 32]) -> Result<InvoiceState, NodeError> {
        self.state_at(payment_hash, unix_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_pay_lookup() {
        let node = DevNode::new(LightningNetwork::Regtest);
        let now = unix_now();
        let inv = node
            .create_invoice(10_000, "quote", 600)
            .await
            .expect("create");
        assert!(inv.bolt11.starts_with("lnbcrt100n1"));
        let d = bolt11::decode(&inv.bolt11).expect("real invoice");
        assert_eq!(d.payment_hash, inv.payment_hash);
        assert_eq!(d.amount_msat, Some(10_000));
        assert_eq!(
            node.lookup_invoice(&inv.payment_hash).await,
            Ok(InvoiceState::Open)
        );
        let paid = node.pay(&inv.bolt11, now).expect("pay");
        assert_eq!(paid.payment_hash, inv.payment_hash);
        assert_eq!(bolt11::sha256(&paid.preimage), inv.payment_hash);
        assert_eq!(
            node.lookup_invoice(&inv.payment_hash).await,
            Ok(InvoiceState::Settled {
                preimage: Some(paid.preimage)
            })
        );
        // Idempotent.
        assert_eq!(node.pay(&inv.bolt11, now), Ok(paid));
        assert_eq!(
            node.lookup_invoice(&[0; 32]).await,
            Err(NodeError::NotFound)
        );
    }

    #[test]
    fn refuses_foreign_expired_and_amountless() {
        let node = DevNode::new(LightningNetwork::Regtest);
        let other = DevNode::new(LightningNetwork::Regtest);
        let now = unix_now();
        let foreign = other.create_at(1000, "x", 600, now).expect("create");
        assert_eq!(node.pay(&foreign.bolt11, now), Err(PayError::Unknown));
        assert!(matches!(
            node.pay("lnbcrt1xyz", now),
            Err(PayError::Malformed(_))
        ));

        let inv = node.create_at(1000, "x", 60, now - 120).expect("create");
        assert_eq!(node.pay(&inv.bolt11, now), Err(PayError::Expired));
        assert_eq!(
            node.state_at(&inv.payment_hash, now),
            Ok(InvoiceState::Expired)
        );

        // An amountless invoice (built by hand: the node itself never makes one).
        let amountless =
            lightning_invoice::InvoiceBuilder::new(lightning_invoice::Currency::Regtest)
                .description("any".into())
                .payment_hash(bitcoin::hashes::Hash::from_byte_array(inv.payment_hash))
                .payment_secret(lightning_invoice::PaymentSecret([3; 32]))
                .duration_since_epoch(std::time::Duration::from_secs(now))
                .min_final_cltv_expiry_delta(18)
                .build_signed(|m| {
                    bitcoin::secp256k1::Secp256k1::new().sign_ecdsa_recoverable(m, node.key())
                })
                .expect("build")
                .to_string();
        assert_eq!(node.pay(&amountless, now), Err(PayError::Amountless));
    }
}
