//! The settlement journal: one row per verified payment in table `payments` of the ledger
//! database, holding its state and what it takes to settle or reconcile it, so a payment
//! survives a restart of the verifier and reaches exactly one final state.
//!
//! ```text
//! verified ─ Settle ─► settling ─ facilitator: success ─────────────► settled
//!    │                    │      ─ facilitator: a definite no ──────► failed
//!    │                    └───── timeout, transport error, crash ─► unknown ─ reconciler ─► settled | failed
//!    └─ Release (upstream ≥ 400, client gone), expiry ─────────────────────────────────────► released
//! ```
//! The row is written (and committed) before Verify answers VALID, and `settling` before the
//! facilitator is asked: a crash at any point leaves a row that says what may have happened.

use serde::{Deserialize, Serialize};

use crate::stores::ledger::{EventKind, LedgerEvent};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    /// Verified and accepted; the upstream has it. Settle or Release comes next.
    Verified,
    /// The facilitator was asked to settle; the answer is not in yet.
    Settling,
    /// A settle whose outcome is not known (timeout, transport error, crash, restart): the
    /// reconciler resolves it.
    Unknown,
    Settled,
    /// The facilitator said no, or the authorization expired unused: nothing was charged.
    Failed,
    /// Not settled on purpose (upstream failed, client gone, expired): nothing was charged.
    Released,
}

impl PaymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Settling => "settling",
            Self::Unknown => "unknown",
            Self::Settled => "settled",
            Self::Failed => "failed",
            Self::Released => "released",
        }
    }

    /// The states a payment may come from to reach `self`: a change from any other state is
    /// not applied (a second replica, a late retry or a restart cannot undo a decision).
    pub fn sources(self) -> &'static [PaymentState] {
        use PaymentState::*;
        match self {
            Verified => &[],
            Settling => &[Verified],
            Unknown => &[Settling, Unknown],
            // A Lightning payment is paid before it is verified: it settles from `verified`.
            Settled => &[Verified, Settling, Unknown],
            Failed => &[Settling, Unknown],
            Released => &[Verified],
        }
    }

    /// `sources()` as an SQL list of literals.
    pub fn sources_sql(self) -> String {
        let names: Vec<String> = self
            .sources()
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        if names.is_empty() {
            "NULL".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// Not final: resumed at start-up.
    pub const OPEN_SQL: &'static str = "'verified', 'settling', 'unknown'";
    /// Its settlement has started (or ended in a charge).
    pub const STARTED_SQL: &'static str = "'settling', 'unknown', 'settled'";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "verified" => Self::Verified,
            "settling" => Self::Settling,
            "unknown" => Self::Unknown,
            "settled" => Self::Settled,
            "failed" => Self::Failed,
            "released" => Self::Released,
            _ => return None,
        })
    }
}

/// A new journal row (Verify).
#[derive(Clone, Debug, PartialEq)]
pub struct JournalEntry {
    pub id: String,
    pub state: PaymentState,
    /// The payment's columns (route, network, asset, payer, amount, nonce).
    pub event: LedgerEvent,
    /// Unix seconds: past this, a payment nobody settled is released.
    pub expires_at: u64,
    /// JSON: everything needed to settle it after a restart (see `payments::Stored`).
    pub settlement: String,
}

/// A change of state; `transaction` and `reason` are kept when `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalUpdate {
    pub id: String,
    pub state: PaymentState,
    pub transaction: Option<String>,
    pub reason: Option<String>,
    /// One more settle attempt was made.
    pub attempt: bool,
}

/// One row read back (start-up resume, tests).
#[derive(Clone, Debug, PartialEq)]
pub struct JournalRow {
    pub id: String,
    pub state: PaymentState,
    pub event: LedgerEvent,
    pub attempts: u32,
    pub created_at: i64,
    pub expires_at: u64,
    pub settlement: String,
}

impl JournalRow {
    /// A row from its columns: `text` is network, asset, payer, amount, nonce, transaction,
    /// reason.
    #[allow(clippy::too_many_arguments)]
    pub fn from_columns(
        id: String,
        state: &str,
        route: &str,
        text: [Option<String>; 7],
        attempts: i64,
        created_at: i64,
        expires_at: i64,
        settlement: String,
    ) -> Result<Self, String> {
        let state =
            PaymentState::parse(state).ok_or_else(|| format!("unknown payment state {state:?}"))?;
        let [network, asset, payer, amount, nonce, transaction, reason] = text;
        Ok(JournalRow {
            id,
            state,
            event: LedgerEvent {
                at: created_at,
                network,
                asset,
                payer,
                amount,
                nonce,
                transaction,
                reason,
                ..LedgerEvent::new(EventKind::Verified, route)
            },
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            created_at,
            expires_at: u64::try_from(expires_at).unwrap_or(0),
            settlement,
        })
    }
}

/// Reason noted on a payment whose answer was withheld while it was settling.
pub const REASON_WITHHELD: &str = "answer_withheld_while_settlement_unknown";
