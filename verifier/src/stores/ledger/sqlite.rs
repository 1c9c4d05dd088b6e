//! The embedded ledger: one SQLite file (WAL) for one verifier.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::{EventKind, Group, LedgerEvent, Op, Store, StoreError};
use crate::payments::journal::{JournalEntry, JournalRow, JournalUpdate, PaymentState};

// `id` is the rowid: append-only, so it only grows (no AUTOINCREMENT, which costs a
// `sqlite_sequence` write per insert; ledgers created with it keep it). The only index is `at`,
// which new rows append to: an index on (payer, nonce) took random pages on every insert, 12% of
// the sidecar's CPU per payment under `make bench` (ledgers created with it keep it; docs/internals
// shows how to add it back).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payment_events (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    event       TEXT    NOT NULL,
    route       TEXT    NOT NULL,
    network     TEXT,
    asset       TEXT,
    payer       TEXT,
    amount      TEXT,
    nonce       TEXT,
    reason      TEXT,
    \"transaction\" TEXT
);
CREATE INDEX IF NOT EXISTS payment_events_at ON payment_events (at);
CREATE TABLE IF NOT EXISTS ledger_probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, until INTEGER NOT NULL) WITHOUT ROWID;
";

pub(crate) const JOURNAL_SCHEMA: &str = "
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

pub(super) const ROUTE_CHANGES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS route_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    op         TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    body_json  TEXT,
    at         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS route_changes_name ON route_changes (name);
";

/// WAL pages (4 KiB) before the writer copies them into the database (SQLite's default is 1000):
/// fewer checkpoints write each hot page once instead of many times, about 8% of the sidecar's
/// CPU per payment under `make bench`, for a WAL file of up to ~40 MiB.
const CHECKPOINT_PAGES: i64 = 10_000;

const INSERT_EVENT: &str = "INSERT INTO payment_events
    (at, event, route, network, asset, payer, amount, nonce, reason, \"transaction\")
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const SELECT_PAYMENT: &str = "SELECT id, state, route, network, asset, payer, amount, nonce,
    \"transaction\", reason, attempts, created_at, expires_at, settlement FROM payments";

pub(super) struct Sqlite {
    conn: Connection,
}

fn err(e: rusqlite::Error) -> StoreError {
    StoreError(e.to_string())
}

impl Sqlite {
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // A commit survives the process being killed (WAL, no fsync per commit): what a crash of
        // the verifier needs. A power cut may lose the last commits.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)
            .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        conn.execute_batch(JOURNAL_SCHEMA).map_err(err)?;
        Ok(Self { conn })
    }
}

fn insert_event(conn: &Connection, ev: &LedgerEvent) -> rusqlite::Result<()> {
    conn.prepare_cached(INSERT_EVENT)?.execute(params![
        ev.at,
        ev.event.as_str(),
        ev.route,
        ev.network,
        ev.asset,
        ev.payer,
        ev.amount,
        ev.nonce,
        ev.reason,
        ev.transaction
    ])?;
    Ok(())
}

fn insert_payment(conn: &Connection, e: &JournalEntry, now_ms: i64) -> rusqlite::Result<()> {
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

/// The guarded state change: applied only from a state that may lead to `u.state`.
fn transition(conn: &Connection, u: &JournalUpdate, now_ms: i64) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(&format!(
            "UPDATE payments SET state = ?2, \"transaction\" = COALESCE(?3, \"transaction\"),
                 reason = COALESCE(?4, reason), attempts = attempts + ?5, updated_at = ?6
             WHERE id = ?1 AND state IN ({})",
            u.state.sources_sql()
        ))?
        .execute(params![
            u.id,
            u.state.as_str(),
            u.transaction,
            u.reason,
            i64::from(u.attempt),
            now_ms
        ])?;
    Ok(changed == 1)
}

fn withheld(conn: &Connection, id: &str, now_ms: i64) -> rusqlite::Result<()> {
    let started = PaymentState::STARTED_SQL;
    conn.prepare_cached(&format!(
        "INSERT INTO payment_events
             (at, event, route, network, asset, payer, amount, nonce, reason, \"transaction\")
         SELECT ?2, ?4, route, network, asset, payer, amount, nonce, ?3, \"transaction\"
         FROM payments WHERE id = ?1 AND state IN ({started})"
    ))?
    .execute(params![
        id,
        now_ms,
        crate::payments::journal::REASON_WITHHELD,
        EventKind::DeliveryWithheld.as_str()
    ])?;
    conn.prepare_cached(&format!(
        "UPDATE payments SET reason = ?2, updated_at = ?3 WHERE id = ?1 AND state IN ({started})"
    ))?
    .execute(params![
        id,
        crate::payments::journal::REASON_WITHHELD,
        now_ms
    ])?;
    Ok(())
}

/// Applies one op; `false` if it was a transition that did not apply.
fn apply(conn: &Connection, op: &Op, now_ms: i64) -> rusqlite::Result<bool> {
    match op {
        Op::Event(ev) => insert_event(conn, ev).map(|()| true),
        Op::Insert(e) => insert_payment(conn, e, now_ms).map(|()| true),
        Op::Transition(u, event) => {
            let applied = transition(conn, u, now_ms)?;
            if let (true, Some(ev)) = (applied, event) {
                insert_event(conn, ev)?;
            }
            Ok(applied)
        }
        Op::Withheld(id) => withheld(conn, id, now_ms).map(|()| true),
        Op::Claim { key, until, now } => conn
            .prepare_cached(
                "INSERT INTO claims (key, until) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET until = excluded.until WHERE claims.until <= ?3",
            )?
            .execute(params![key, until, now])
            .map(|n| n == 1),
        Op::Unclaim(key) => conn
            .prepare_cached("DELETE FROM claims WHERE key = ?1")?
            .execute(params![key])
            .map(|_| true),
        Op::PruneClaims(before) => conn
            .prepare_cached("DELETE FROM claims WHERE until < ?1")?
            .execute(params![before])
            .map(|_| true),
        Op::Probe => conn
            .prepare_cached("INSERT OR REPLACE INTO ledger_probe (id, at) VALUES (1, ?1)")?
            .execute(params![now_ms])
            .map(|_| true),
    }
}

fn payment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JournalRow> {
    let state: String = r.get(1)?;
    let route: String = r.get(2)?;
    JournalRow::from_columns(
        r.get(0)?,
        &state,
        &route,
        [
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
        ],
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
    )
    .map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
    })
}

impl Store for Sqlite {
    fn commit(&mut self, groups: &[&Group], now_ms: i64) -> Result<Vec<bool>, StoreError> {
        let tx = self.conn.transaction().map_err(err)?;
        let mut applied = Vec::with_capacity(groups.len());
        for g in groups {
            let mut all = true;
            for op in &g.ops {
                all &= apply(&tx, op, now_ms).map_err(err)?;
            }
            applied.push(all);
        }
        tx.commit().map_err(err)?;
        Ok(applied)
    }

    fn open_rows(&mut self) -> Result<Vec<JournalRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "{SELECT_PAYMENT} WHERE state IN ({}) ORDER BY created_at",
                PaymentState::OPEN_SQL
            ))
            .map_err(err)?;
        let rows = stmt.query_map([], payment_row).map_err(err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(err)
    }

    fn claim_held(&mut self, key: &str, now: i64) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM claims WHERE key = ?1 AND until > ?2)")
            .and_then(|mut stmt| stmt.query_row(params![key, now], |r| r.get(0)))
            .map_err(err)
    }

    fn adopt(&mut self, stale_before_ms: i64, now_ms: i64) -> Result<Vec<JournalRow>, StoreError> {
        let tx = self.conn.transaction().map_err(err)?;
        let rows: Vec<JournalRow> = {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "{SELECT_PAYMENT} WHERE (state IN ('settling', 'unknown') AND updated_at < ?1)
                        OR (state = 'verified' AND expires_at * 1000 < ?1)
                     ORDER BY created_at LIMIT 100"
                ))
                .map_err(err)?;
            let rows = stmt
                .query_map(params![stale_before_ms], payment_row)
                .map_err(err)?;
            rows.collect::<rusqlite::Result<_>>().map_err(err)?
        };
        for row in &rows {
            tx.prepare_cached("UPDATE payments SET updated_at = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![row.id, now_ms]))
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(rows)
    }

    #[cfg(test)]
    fn recent(&mut self, limit: usize) -> Result<Vec<LedgerEvent>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT at, event, route, network, asset, payer, amount, nonce, reason,
                     \"transaction\" FROM payment_events ORDER BY id DESC LIMIT ?1",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                let kind: String = r.get(1)?;
                Ok((
                    kind,
                    LedgerEvent {
                        at: r.get(0)?,
                        event: EventKind::Rejected,
                        route: r.get(2)?,
                        network: r.get(3)?,
                        asset: r.get(4)?,
                        payer: r.get(5)?,
                        amount: r.get(6)?,
                        nonce: r.get(7)?,
                        reason: r.get(8)?,
                        transaction: r.get(9)?,
                    },
                ))
            })
            .map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, mut ev) = row.map_err(err)?;
            ev.event = EventKind::parse(&kind)
                .ok_or_else(|| StoreError(format!("unknown event kind {kind:?}")))?;
            out.push(ev);
        }
        Ok(out)
    }

    #[cfg(test)]
    fn payment(&mut self, id: &str) -> Result<Option<JournalRow>, StoreError> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row(
                &format!("{SELECT_PAYMENT} WHERE id = ?1"),
                params![id],
                payment_row,
            )
            .optional()
            .map_err(err)
    }
}

/// The route change log's connection (its own: written synchronously, rarely).
pub(super) fn route_log(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(ROUTE_CHANGES_SCHEMA)?;
    Ok(conn)
}
