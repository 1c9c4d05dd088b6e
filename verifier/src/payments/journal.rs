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

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::stores::ledger::LedgerEvent;

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

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    id          TEXT    PRIMARY KEY,
    state       TEXT    NOT NULL,
    route       TEXT    NOT NULL,
    network     TEXT,
    asset       TEXT,
    payer       TEXT,
    amount      TEXT,
    nonce       TEXT,
    \"transaction\" TEXT,
    reason      TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    settlement  TEXT    NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS payments_open ON payments (state)
    WHERE state IN ('verified', 'settling', 'unknown');
";

pub(crate) fn insert(conn: &Connection, e: &JournalEntry, now_ms: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO payments (id, state, route, network, asset, payer, amount, nonce,
             created_at, updated_at, expires_at, settlement)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11)",
    )?
    .execute(params![
        e.id,
        e.state.as_str(),
        e.event.route,
        e.event.network,
        e.event.asset,
        e.event.payer,
        e.event.amount,
        e.event.nonce,
        now_ms,
        i64::try_from(e.expires_at).unwrap_or(i64::MAX),
        e.settlement,
    ])?;
    Ok(())
}

pub(crate) fn update(conn: &Connection, u: &JournalUpdate, now_ms: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE payments SET state = ?2, \"transaction\" = COALESCE(?3, \"transaction\"),
             reason = COALESCE(?4, reason), attempts = attempts + ?5, updated_at = ?6
         WHERE id = ?1",
    )?
    .execute(params![
        u.id,
        u.state.as_str(),
        u.transaction,
        u.reason,
        i64::from(u.attempt),
        now_ms
    ])?;
    Ok(())
}

/// Reason noted on a payment whose answer was withheld while it was settling.
pub const REASON_WITHHELD: &str = "answer_withheld_while_settlement_unknown";

pub(crate) fn withheld(conn: &Connection, id: &str, now_ms: i64) -> rusqlite::Result<()> {
    let started = "state IN ('settling', 'unknown', 'settled')";
    conn.prepare_cached(&format!(
        "INSERT INTO payment_events
             (at, event, route, network, asset, payer, amount, nonce, reason, \"transaction\")
         SELECT ?2, 'delivery_withheld', route, network, asset, payer, amount, nonce, ?3,
             \"transaction\" FROM payments WHERE id = ?1 AND {started}"
    ))?
    .execute(params![id, now_ms, REASON_WITHHELD])?;
    conn.prepare_cached(&format!(
        "UPDATE payments SET reason = ?2, updated_at = ?3 WHERE id = ?1 AND {started}"
    ))?
    .execute(params![id, REASON_WITHHELD, now_ms])?;
    Ok(())
}

const SELECT: &str = "SELECT id, state, route, network, asset, payer, amount, nonce,
    \"transaction\", reason, attempts, created_at, expires_at, settlement FROM payments";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JournalRow> {
    let state: String = r.get(1)?;
    let state = PaymentState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Text,
            format!("unknown payment state {state:?}").into(),
        )
    })?;
    let created_at: i64 = r.get(11)?;
    let expires_at: i64 = r.get(12)?;
    let attempts: i64 = r.get(10)?;
    Ok(JournalRow {
        id: r.get(0)?,
        state,
        event: LedgerEvent {
            at: created_at,
            network: r.get(3)?,
            asset: r.get(4)?,
            payer: r.get(5)?,
            amount: r.get(6)?,
            nonce: r.get(7)?,
            transaction: r.get(8)?,
            reason: r.get(9)?,
            ..LedgerEvent::new(
                crate::stores::ledger::EventKind::Verified,
                &r.get::<_, String>(2)?,
            )
        },
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        created_at,
        expires_at: u64::try_from(expires_at).unwrap_or(0),
        settlement: r.get(13)?,
    })
}

/// Every payment not in a final state, oldest first (resumed at start-up).
pub(crate) fn open_rows(conn: &Connection) -> rusqlite::Result<Vec<JournalRow>> {
    let mut stmt = conn.prepare(&format!(
        "{SELECT} WHERE state IN ('verified', 'settling', 'unknown') ORDER BY created_at"
    ))?;
    let rows = stmt.query_map([], row)?;
    rows.collect()
}

#[cfg(test)]
pub(crate) fn by_id(conn: &Connection, id: &str) -> rusqlite::Result<Option<JournalRow>> {
    use rusqlite::OptionalExtension;
    conn.query_row(&format!("{SELECT} WHERE id = ?1"), params![id], row)
        .optional()
}
