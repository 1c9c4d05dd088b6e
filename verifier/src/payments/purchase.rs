//! Purchases sold once: a lease renewal (`lease::Renewal`), which a client that timed out may
//! ask for again with a fresh payment. The first payment reserves the purchase in the claims
//! store; once it is paid a marker says so, and asking again hands out what was bought (the
//! filter mints the same lease token) without taking another payment.
//!
//! ```text
//! reserve ─ free ─────────────────► Open: take this payment ─ settled ─► mark paid
//!                                                           ─ failed, released, refused ─► give back
//!         ─ held, marked paid ────► Bought: nothing taken, hand it out again
//!         ─ held, not marked ─────► InFlight: nothing taken, 409 + Retry-After
//! ```
//!
//! The reservation and the marker live as long as the lease being renewed could be renewed
//! (its expiry) plus a margin, in whichever store holds claims (ledger, Redis), so replicas and
//! restarts agree.

use std::sync::Arc;

use tollway_protocol::lease::Renewal;

use super::{ClaimResult, Payments, Pending};
use crate::payments::journal::PaymentState;
use crate::stores::replay::{Claim, ReplayGuard, ReplayStoreError};

/// Seconds a reservation outlives the expiry of the lease it renews (clock skew).
const MARGIN_SECS: u64 = 300;

/// The answer to a payment offered for a purchase sold once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purchase<T> {
    /// The purchase was free: the payment's own answer.
    Taken(T),
    /// Paid for before: hand it out again; this payment was not taken.
    Bought,
    /// Another payment for it is being settled: nothing taken; ask again shortly.
    InFlight,
}

/// Where a purchase stands before a payment for it is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Reserved for this payment now.
    Open,
    /// Paid for before.
    Bought,
    /// Another payment for it is under way.
    InFlight,
}

fn paid_key(key: &str) -> String {
    format!("paid:{key}")
}

fn until(key: &str) -> u64 {
    Renewal::parse(key).map_or(0, |r| r.from.saturating_add(MARGIN_SECS))
}

impl Payments {
    /// Reserves `purchase` for a payment about to be taken.
    pub(crate) async fn reserve(
        &self,
        purchase: &Renewal,
    ) -> Result<Reservation, ReplayStoreError> {
        let now = self.now();
        let key = purchase.key();
        match self.replay.claim(&key, until(&key), now).await? {
            Claim::Claimed => Ok(Reservation::Open),
            Claim::AlreadyUsed if self.replay.held(&paid_key(&key), now).await? => {
                Ok(Reservation::Bought)
            }
            Claim::AlreadyUsed => Ok(Reservation::InFlight),
        }
    }

    /// Where `purchase` stands, taking nothing (before a 402 is minted for it).
    pub async fn purchase_state(
        &self,
        purchase: &Renewal,
    ) -> Result<Reservation, ReplayStoreError> {
        let now = self.now();
        let key = purchase.key();
        if self.replay.held(&paid_key(&key), now).await? {
            return Ok(Reservation::Bought);
        }
        if self.replay.held(&key, now).await? {
            return Ok(Reservation::InFlight);
        }
        Ok(Reservation::Open)
    }

    /// The payment for `key` went through: later requests for it get it without paying.
    pub(crate) async fn purchase_paid(&self, key: &str) {
        mark_paid(self.replay.as_ref(), key, self.now()).await;
    }

    /// The payment for `key` was not taken: the purchase is free to be bought again.
    pub(crate) async fn purchase_not_paid(&self, key: &str) {
        give_back(self.replay.as_ref(), key).await;
    }

    /// A payment's outcome decides its purchase (from the journal's terminal states; an
    /// `unknown` outcome keeps the reservation until the reconciler decides).
    pub(super) fn conclude_purchase(&self, p: &Pending, state: PaymentState) {
        let Some(key) = p.purchase.clone() else {
            return;
        };
        let paid = match state {
            PaymentState::Settled => true,
            PaymentState::Failed | PaymentState::Released => false,
            _ => return,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                "purchase outcome outside the runtime; the reservation lapses at expiry"
            );
            return;
        };
        let replay: Arc<dyn ReplayGuard> = self.replay.clone();
        let now = self.now();
        runtime.spawn(async move {
            if paid {
                mark_paid(replay.as_ref(), &key, now).await;
            } else {
                give_back(replay.as_ref(), &key).await;
            }
        });
    }

    /// Claims an L402 token (`key`) that pays for `purchase`: the token is used up only when
    /// the purchase was free; asking again with the same purchase hands it out again.
    pub async fn claim_purchase(
        &self,
        key: &str,
        route: &str,
        expires_at: u64,
        purchase: &Renewal,
    ) -> Purchase<ClaimResult> {
        match self.reserve(purchase).await {
            Ok(Reservation::Open) => {}
            Ok(Reservation::Bought) => return Purchase::Bought,
            Ok(Reservation::InFlight) => return Purchase::InFlight,
            Err(e) => {
                tracing::error!(error = %e, route = %route, "replay store unavailable");
                return Purchase::Taken(ClaimResult::Unavailable);
            }
        }
        let reserved = purchase.key();
        let result = self.claim(key, route, expires_at, false).await;
        if result == ClaimResult::Claimed {
            self.purchase_paid(&reserved).await;
        } else {
            self.purchase_not_paid(&reserved).await;
        }
        Purchase::Taken(result)
    }

    /// Gives back a purchase bought for a caller that is gone (nothing was delivered).
    pub async fn unreserve(&self, purchase: &Renewal) {
        let key = purchase.key();
        give_back(self.replay.as_ref(), &paid_key(&key)).await;
        give_back(self.replay.as_ref(), &key).await;
    }
}

async fn mark_paid(replay: &dyn ReplayGuard, key: &str, now: u64) {
    if let Err(e) = replay.claim(&paid_key(key), until(key), now).await {
        // The reservation stays: later requests for it answer "in progress" until it lapses.
        tracing::error!(error = %e, "could not mark a purchase paid");
    }
}

async fn give_back(replay: &dyn ReplayGuard, key: &str) {
    if let Err(e) = replay.release(key).await {
        tracing::warn!(error = %e, "could not give back a purchase reservation");
    }
}
