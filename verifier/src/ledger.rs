//! Payment ledger: an append-only SQLite table `payment_events` (audit log and reconciliation),
//! and in the same database the admin API's changes to the route table (`route_changes`).
//!
//! Writes never block the async runtime: events go through a channel to one writer thread that
//! owns the connection (WAL mode) and commits in small batches. A write that fails is logged at
//! error level with the whole event (so it can be replayed from the logs) and counted in
//! `tollway_ledger_write_errors_total`; it is never silently dropped.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::clock::unix_now_millis;
use crate::metrics::Metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Verified,
    Settled,
    SettlementPending,
    SettlementFailed,
    /// The upstream failed (or the payment expired unused): nothing was charged.
    Released,
    /// The payment was refused; `reason` says why.
    Rejected,
    /// A Lightning invoice was minted for a 402 (`nonce` = payment hash, `amount` in msat).
    InvoiceCreated,
    /// A single-use L402 token was claimed (spent) for one request.
    L402Claimed,
    /// An L402 token was accepted by ext_authz (filter mode verifies tokens without us).
    L402Accepted,
    /// A single-use lease was claimed (used) for one request or WebSocket session (`nonce` =
    /// lease id).
    LeaseClaimed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Settled => "settled",
            Self::SettlementPending => "settlement_pending",
            Self::SettlementFailed => "settlement_failed",
            Self::Released => "released",
            Self::Rejected => "rejected",
            Self::InvoiceCreated => "invoice_created",
            Self::L402Claimed => "l402_claimed",
            Self::L402Accepted => "l402_accepted",
            Self::LeaseClaimed => "lease_claimed",
        }
    }

    #[cfg(test)]
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "verified" => Self::Verified,
            "settled" => Self::Settled,
            "settlement_pending" => Self::SettlementPending,
            "settlement_failed" => Self::SettlementFailed,
            "released" => Self::Released,
            "rejected" => Self::Rejected,
            "invoice_created" => Self::InvoiceCreated,
            "l402_claimed" => Self::L402Claimed,
            "l402_accepted" => Self::L402Accepted,
            "lease_claimed" => Self::LeaseClaimed,
            _ => return None,
        })
    }
}

/// One row of `payment_events`. `at` is unix milliseconds. Lightning rows: `network` is the
/// `bip122:` id, `asset` `BTC`, `amount` millisatoshis, `nonce` the payment hash (hex),
/// `payer` `anonymous`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerEvent {
    pub at: i64,
    pub event: EventKind,
    pub route: String,
    pub network: Option<String>,
    pub asset: Option<String>,
    pub payer: Option<String>,
    /// Atomic units, decimal string.
    pub amount: Option<String>,
    pub nonce: Option<String>,
    pub reason: Option<String>,
    pub transaction: Option<String>,
}

impl LedgerEvent {
    pub fn new(event: EventKind, route: &str) -> Self {
        Self {
            at: unix_now_millis(),
            event,
            route: route.to_owned(),
            network: None,
            asset: None,
            payer: None,
            amount: None,
            nonce: None,
            reason: None,
            transaction: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open ledger {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("ledger writer has stopped")]
    Stopped,
    #[cfg(test)]
    #[error("ledger query failed: {0}")]
    Query(String),
}

// `id` is the rowid: append-only, so it only grows (no AUTOINCREMENT, which costs a
// `sqlite_sequence` write per insert; ledgers created with it keep it). The only index is `at`,
// which new rows append to: an index on (payer, nonce) took random pages on every insert, 12% of
// the sidecar's CPU per payment under `make bench` (ledgers created with it keep it; docs/internals
// shows how to add it back).
const SCHEMA: &str = "
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
";

const INSERT: &str = "INSERT INTO payment_events
    (at, event, route, network, asset, payer, amount, nonce, reason, \"transaction\")
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const BATCH: usize = 256;
/// WAL pages (4 KiB) before the writer copies them into the database (SQLite's default is 1000):
/// fewer checkpoints write each hot page once instead of many times, about 8% of the sidecar's
/// CPU per payment under `make bench`, for a WAL file of up to ~40 MiB.
const CHECKPOINT_PAGES: i64 = 10_000;
/// How long the writer keeps collecting after an event arrives, so a busy gateway commits many
/// events per transaction (one commit each was a quarter of the sidecar's CPU under load).
/// A flush or shutdown cuts it short.
const LINGER: Duration = Duration::from_millis(2);

enum Msg {
    Event(Box<LedgerEvent>),
    #[cfg(test)]
    Recent(
        usize,
        oneshot::Sender<Result<Vec<LedgerEvent>, LedgerError>>,
    ),
    Flush(oneshot::Sender<()>),
    Shutdown,
}

pub struct Ledger {
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl Ledger {
    /// Opens (creating if needed) the database and starts the writer thread.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<Self, LedgerError> {
        let open_err = |e: rusqlite::Error| LedgerError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)
            .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        let (tx, rx) = mpsc::channel();
        let m = metrics.clone();
        let writer = std::thread::Builder::new()
            .name("tollway-ledger".into())
            .spawn(move || writer_loop(conn, rx, m))
            .map_err(|e| LedgerError::Open {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_owned(),
            tx,
            writer: Mutex::new(Some(writer)),
            metrics,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues an event; never blocks.
    pub fn record(&self, event: LedgerEvent) {
        if let Err(mpsc::SendError(Msg::Event(ev))) = self.tx.send(Msg::Event(Box::new(event))) {
            self.metrics.ledger_write_error();
            tracing::error!(event = %to_json(&ev), "ledger writer stopped; event not written");
        }
    }

    /// The last `limit` events, newest first.
    #[cfg(test)]
    pub async fn recent(&self, limit: usize) -> Result<Vec<LedgerEvent>, LedgerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Recent(limit, tx))
            .map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Waits until every event queued so far is committed (or failed and logged).
    pub async fn flush(&self) -> Result<(), LedgerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(tx))
            .map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)
    }

    /// Writes what is queued and stops the writer thread. Blocking: call from a blocking context.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("ledger writer thread panicked");
            }
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}

fn to_json(ev: &LedgerEvent) -> String {
    serde_json::to_string(ev).unwrap_or_else(|_| format!("{ev:?}"))
}

fn insert(conn: &Connection, ev: &LedgerEvent) -> rusqlite::Result<()> {
    conn.prepare_cached(INSERT)?.execute(params![
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

fn write_batch(conn: &mut Connection, batch: &[Box<LedgerEvent>], metrics: &Metrics) {
    if batch.is_empty() {
        return;
    }
    let all = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        for ev in batch {
            insert(&tx, ev)?;
        }
        tx.commit()
    })();
    if let Err(e) = all {
        tracing::warn!(error = %e, n = batch.len(), "ledger batch failed; writing events one by one");
        for ev in batch {
            let mut result = insert(conn, ev);
            if result.is_err() {
                std::thread::sleep(Duration::from_millis(50));
                result = insert(conn, ev);
            }
            if let Err(e) = result {
                metrics.ledger_write_error();
                tracing::error!(error = %e, event = %to_json(ev), "ledger write failed");
            }
        }
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Msg>, metrics: Arc<Metrics>) {
    let mut batch: Vec<Box<LedgerEvent>> = Vec::with_capacity(BATCH);
    let mut waiting: Vec<Msg> = Vec::new();
    loop {
        let first = match rx.recv() {
            Ok(m) => m,
            Err(_) => break,
        };
        let mut shutdown = false;
        let mut next = Some(first);
        let mut lingered = false;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(ev) => batch.push(ev),
                Msg::Shutdown => shutdown = true,
                other => waiting.push(other),
            }
            if batch.len() >= BATCH || shutdown {
                break;
            }
            next = rx.try_recv().ok();
            // Asleep, not blocked on the channel: senders need not wake this thread per event.
            // Someone waiting for this write (a flush) cuts the linger.
            if next.is_none() && !lingered && waiting.is_empty() {
                lingered = true;
                std::thread::sleep(LINGER);
                next = rx.try_recv().ok();
            }
        }
        write_batch(&mut conn, &batch, &metrics);
        batch.clear();
        for msg in waiting.drain(..) {
            match msg {
                Msg::Flush(done) => {
                    let _ = done.send(());
                }
                #[cfg(test)]
                Msg::Recent(limit, reply) => {
                    let _ = reply.send(query_recent(&conn, limit));
                }
                Msg::Event(_) | Msg::Shutdown => {}
            }
        }
        if shutdown {
            // Anything sent after Shutdown (racing senders) is still written.
            while let Ok(msg) = rx.try_recv() {
                if let Msg::Event(ev) = msg {
                    batch.push(ev);
                }
            }
            write_batch(&mut conn, &batch, &metrics);
            break;
        }
    }
}

// ------------------------------------------------------------------------------------------
// Route changes (admin API), in the same database

const ROUTE_CHANGES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS route_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    op         TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    body_json  TEXT,
    at         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS route_changes_name ON route_changes (name);
";

/// One stored admin change to the route table: `op` is `put`, `patch` or `delete`, `body_json`
/// the request's JSON body (none for `delete`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRouteChange {
    pub seq: i64,
    pub op: String,
    pub name: String,
    pub body_json: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("route change log {path}: {reason}")]
pub struct RouteLogError {
    path: String,
    reason: String,
}

/// The admin changes to the route table, in order (table `route_changes` of the ledger
/// database; its own connection, written synchronously: changes are rare and must be durable
/// before they are answered).
pub struct RouteChangeLog {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl RouteChangeLog {
    pub fn open(path: &Path) -> Result<Self, RouteLogError> {
        let err = |e: rusqlite::Error| RouteLogError {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.execute_batch(ROUTE_CHANGES_SCHEMA).map_err(err)?;
        Ok(Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    fn err(&self, reason: impl ToString) -> RouteLogError {
        RouteLogError {
            path: self.path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, RouteLogError> {
        let conn = self.conn.lock().map_err(|_| self.err("lock poisoned"))?;
        f(&conn).map_err(|e| self.err(e))
    }

    /// Appends a change; answers its sequence number.
    pub fn append(
        &self,
        op: &str,
        name: &str,
        body_json: Option<&str>,
    ) -> Result<i64, RouteLogError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO route_changes (op, name, body_json, at) VALUES (?1, ?2, ?3, ?4)",
                params![op, name, body_json, unix_now_millis()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Forgets one change (it could not be served after all).
    pub fn remove(&self, seq: i64) -> Result<(), RouteLogError> {
        self.with(|c| {
            c.execute("DELETE FROM route_changes WHERE seq = ?1", params![seq])
                .map(|_| ())
        })
    }

    /// Forgets the changes of `name` before `seq` (a replace or delete makes them moot).
    pub fn forget_before(&self, name: &str, seq: i64) -> Result<usize, RouteLogError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM route_changes WHERE name = ?1 AND seq < ?2",
                params![name, seq],
            )
        })
    }

    /// Every change, oldest first.
    pub fn all(&self) -> Result<Vec<StoredRouteChange>, RouteLogError> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT seq, op, name, body_json, at FROM route_changes ORDER BY seq")?;
            let rows = stmt.query_map([], |r| {
                Ok(StoredRouteChange {
                    seq: r.get(0)?,
                    op: r.get(1)?,
                    name: r.get(2)?,
                    body_json: r.get(3)?,
                    at: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }
}

#[cfg(test)]
fn query_recent(conn: &Connection, limit: usize) -> Result<Vec<LedgerEvent>, LedgerError> {
    let q = |e: rusqlite::Error| LedgerError::Query(e.to_string());
    let mut stmt = conn
        .prepare(
            "SELECT at, event, route, network, asset, payer, amount, nonce, reason, \"transaction\"
             FROM payment_events ORDER BY id DESC LIMIT ?1",
        )
        .map_err(q)?;
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
        .map_err(q)?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, mut ev) = row.map_err(q)?;
        ev.event = EventKind::parse(&kind)
            .ok_or_else(|| LedgerError::Query(format!("unknown event kind {kind:?}")))?;
        out.push(ev);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, nonce: &str) -> LedgerEvent {
        LedgerEvent {
            network: Some("eip155:84532".into()),
            asset: Some("0xasset".into()),
            payer: Some("0xpayer".into()),
            amount: Some("1000".into()),
            nonce: Some(nonce.into()),
            ..LedgerEvent::new(kind, "quote")
        }
    }

    #[tokio::test]
    async fn write_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        let metrics = Arc::new(Metrics::new());
        let ledger = Ledger::open(&path, metrics.clone()).expect("open");
        ledger.record(event(EventKind::Verified, "0x01"));
        ledger.record(LedgerEvent {
            transaction: Some("0xtx".into()),
            ..event(EventKind::Settled, "0x01")
        });
        ledger.record(LedgerEvent {
            reason: Some("invalid_exact_evm_signature".into()),
            ..LedgerEvent::new(EventKind::Rejected, "echo")
        });
        ledger.flush().await.expect("flush");
        let rows = ledger.recent(10).await.expect("rows");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].event, EventKind::Rejected);
        assert_eq!(
            rows[0].reason.as_deref(),
            Some("invalid_exact_evm_signature")
        );
        assert_eq!(rows[0].payer, None);
        assert_eq!(rows[1].event, EventKind::Settled);
        assert_eq!(rows[1].transaction.as_deref(), Some("0xtx"));
        assert_eq!(
            rows[2],
            event(EventKind::Verified, "0x01").tap_at(rows[2].at)
        );
        assert_eq!(metrics.ledger_write_errors(), 0);

        // Survives a reopen; the file is in WAL mode.
        drop(ledger);
        let ledger = Ledger::open(&path, metrics.clone()).expect("reopen");
        assert_eq!(ledger.recent(10).await.expect("rows").len(), 3);
        let conn = Connection::open(&path).expect("conn");
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn failed_write_is_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        let metrics = Arc::new(Metrics::new());
        let ledger = Ledger::open(&path, metrics.clone()).expect("open");
        // Break the table behind the writer's back.
        Connection::open(&path)
            .expect("conn")
            .execute_batch("DROP TABLE payment_events;")
            .expect("drop");
        ledger.record(event(EventKind::Verified, "0x02"));
        ledger.flush().await.expect("flush");
        assert_eq!(metrics.ledger_write_errors(), 1);
    }

    #[test]
    fn bad_path_is_an_open_error() {
        let metrics = Arc::new(Metrics::new());
        let err = Ledger::open(Path::new("/nonexistent-dir/x/ledger.db"), metrics)
            .err()
            .expect("error");
        assert!(matches!(err, LedgerError::Open { .. }), "{err}");
    }

    trait TapAt {
        fn tap_at(self, at: i64) -> Self;
    }
    impl TapAt for LedgerEvent {
        fn tap_at(mut self, at: i64) -> Self {
            self.at = at;
            self
        }
    }
}
