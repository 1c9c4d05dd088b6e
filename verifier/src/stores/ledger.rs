//! Payment ledger: an append-only SQLite table `payment_events` (audit log and reconciliation),
//! and in the same database the admin API's changes to the route table (`route_changes`).
//!
//! The same database holds the settlement journal (table `payments`, see [`crate::payments::journal`]).
//!
//! Writes never block the async runtime: rows go through a channel to one writer thread that
//! owns the connection (WAL mode) and commits in small batches; a caller that must know its row
//! is durable (Verify, before answering VALID) waits for the commit. A write that fails (full
//! disk) is counted in `tollway_ledger_write_errors_total`, logged with its rows, held and
//! retried until the database takes it again; meanwhile the ledger is not writable, `/readyz`
//! says so and paid routes answer 503.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::clock::unix_now_millis;
use crate::metrics::Metrics;
use crate::payments::journal::{self, JournalEntry, JournalRow, JournalUpdate};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Verified,
    Settled,
    /// A settle whose outcome is not known yet (timeout, transport error, restart): the
    /// reconciler resolves it into `settled` or `settlement_failed`.
    SettlementUnknown,
    SettlementFailed,
    /// The client's answer was withheld (route `on_unknown_settlement: withhold`) while its
    /// settlement was under way: if it settles, it was charged for nothing, and this says why.
    DeliveryWithheld,
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
            Self::SettlementUnknown => "settlement_unknown",
            Self::SettlementFailed => "settlement_failed",
            Self::DeliveryWithheld => "delivery_withheld",
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
            "settlement_unknown" => Self::SettlementUnknown,
            "settlement_failed" => Self::SettlementFailed,
            "delivery_withheld" => Self::DeliveryWithheld,
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    #[error("ledger write failed: {0}")]
    Write(String),
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
CREATE TABLE IF NOT EXISTS ledger_probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);
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
/// A flush, shutdown or a caller waiting for its write cuts it short.
const LINGER: Duration = Duration::from_millis(2);
/// How often writes that failed (full disk, I/O error) are tried again.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Failed writes kept for retry at most; past it the oldest are logged and dropped (paid routes
/// answer 503 meanwhile, so only rejections and invoices can pile up).
const MAX_BACKLOG: usize = 100_000;

/// One row to write.
#[derive(Debug)]
pub enum Op {
    Event(LedgerEvent),
    Insert(JournalEntry),
    Update(JournalUpdate),
    /// The answer of payment `id`, whose settlement had started, was withheld: notes it on
    /// the journal row and appends a `delivery_withheld` event with the row's details.
    Withheld(String),
    /// A write that only tells whether the database takes writes again.
    Probe,
}

/// Rows committed together. `keep`: retried until written if the database refuses them now
/// (a caller that can still say no, Verify, passes `false` and answers 503 instead).
struct Group {
    ops: Vec<Op>,
    keep: bool,
    done: Option<oneshot::Sender<Result<(), LedgerError>>>,
}

enum Msg {
    Write(Box<Group>),
    #[cfg(test)]
    Recent(
        usize,
        oneshot::Sender<Result<Vec<LedgerEvent>, LedgerError>>,
    ),
    #[cfg(test)]
    Payment(
        String,
        oneshot::Sender<Result<Option<JournalRow>, LedgerError>>,
    ),
    Flush(oneshot::Sender<()>),
    Shutdown,
}

/// Whether the database takes writes, shared with `/readyz` and the payment core.
#[derive(Default)]
pub struct Health {
    unwritable: AtomicBool,
    backlog: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

pub struct Ledger {
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Payments not in a final state when the ledger was opened (taken once by the core).
    open_payments: Mutex<Vec<JournalRow>>,
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
        // A commit survives the process being killed (WAL, no fsync per commit): what a crash of
        // the verifier needs. A power cut may lose the last commits.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)
            .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        conn.execute_batch(journal::SCHEMA).map_err(open_err)?;
        let open_payments = journal::open_rows(&conn).map_err(open_err)?;
        let (tx, rx) = mpsc::channel();
        let m = metrics.clone();
        let health = Arc::new(Health::default());
        let h = health.clone();
        let writer = std::thread::Builder::new()
            .name("tollway-ledger".into())
            .spawn(move || writer_loop(conn, rx, m, h))
            .map_err(|e| LedgerError::Open {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_owned(),
            tx,
            writer: Mutex::new(Some(writer)),
            metrics,
            health,
            open_payments: Mutex::new(open_payments),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues an event; never blocks. Kept and retried if the database refuses it.
    pub fn record(&self, event: LedgerEvent) {
        self.queue(vec![Op::Event(event)]);
    }

    /// Queues rows committed together; never blocks. Kept and retried if the database refuses
    /// them.
    pub fn queue(&self, ops: Vec<Op>) {
        let group = Box::new(Group {
            ops,
            keep: true,
            done: None,
        });
        if let Err(mpsc::SendError(Msg::Write(g))) = self.tx.send(Msg::Write(group)) {
            self.metrics.ledger_write_error();
            tracing::error!(rows = %ops_json(&g.ops), "ledger writer stopped; rows not written");
        }
    }

    /// Writes rows together and waits until they are committed. `keep: false`: if the database
    /// refuses them they are dropped and the caller must act on the error (answer 503);
    /// `keep: true`: they are also kept and retried.
    pub async fn write(&self, ops: Vec<Op>, keep: bool) -> Result<(), LedgerError> {
        let (done, rx) = oneshot::channel();
        let group = Box::new(Group {
            ops,
            keep,
            done: Some(done),
        });
        self.tx
            .send(Msg::Write(group))
            .map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    /// False while writes fail (full disk, I/O errors); paid routes answer 503 meanwhile.
    pub fn writable(&self) -> bool {
        !self.health.unwritable.load(Ordering::Acquire)
    }

    /// Rows waiting to be written again.
    pub fn backlog(&self) -> usize {
        self.health.backlog.load(Ordering::Acquire)
    }

    /// The last write error, while the ledger is not writable.
    pub fn last_error(&self) -> Option<String> {
        if self.writable() {
            return None;
        }
        self.health.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// The payments that were not in a final state when the ledger was opened (once).
    pub fn take_open_payments(&self) -> Vec<JournalRow> {
        self.open_payments
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
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

    /// One journal row, after what was queued before is written.
    #[cfg(test)]
    pub async fn payment(&self, id: &str) -> Result<Option<JournalRow>, LedgerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Payment(id.to_owned(), tx))
            .map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Waits until every event queued so far is committed (or failed and kept for retry).
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

fn ops_json(ops: &[Op]) -> String {
    let parts: Vec<String> = ops
        .iter()
        .map(|op| match op {
            Op::Event(ev) => serde_json::to_string(ev).unwrap_or_else(|_| format!("{ev:?}")),
            other => format!("{other:?}"),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn insert_event(conn: &Connection, ev: &LedgerEvent) -> rusqlite::Result<()> {
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

fn apply(conn: &Connection, op: &Op, now_ms: i64) -> rusqlite::Result<()> {
    match op {
        Op::Event(ev) => insert_event(conn, ev),
        Op::Insert(e) => journal::insert(conn, e, now_ms),
        Op::Update(u) => journal::update(conn, u, now_ms),
        Op::Withheld(id) => journal::withheld(conn, id, now_ms),
        Op::Probe => conn
            .prepare_cached("INSERT OR REPLACE INTO ledger_probe (id, at) VALUES (1, ?1)")?
            .execute(params![now_ms])
            .map(|_| ()),
    }
}

fn commit<'a>(
    conn: &mut Connection,
    groups: impl IntoIterator<Item = &'a Group>,
) -> rusqlite::Result<()> {
    let now = unix_now_millis();
    let tx = conn.transaction()?;
    for g in groups {
        for op in &g.ops {
            apply(&tx, op, now)?;
        }
    }
    tx.commit()
}

fn reply(group: &mut Group, result: Result<(), LedgerError>) {
    if let Some(done) = group.done.take() {
        let _ = done.send(result);
    }
}

/// Writes the backlog (first, in order) and `new` in one transaction; if that fails, group by
/// group. A group the database refuses while it takes others is bad in itself: logged and
/// dropped. Otherwise the database is down (full disk): kept groups wait in the backlog.
fn write_round(
    conn: &mut Connection,
    backlog: &mut VecDeque<Group>,
    new: Vec<Group>,
    metrics: &Metrics,
    health: &Health,
) {
    if backlog.is_empty() && new.is_empty() {
        return;
    }
    let retried = backlog.len();
    let mut all: Vec<Group> = backlog.drain(..).chain(new).collect();
    // Health is published before anyone is answered: a caller told "refused" sees it.
    let error = match commit(conn, all.iter()) {
        Ok(()) => {
            health.unwritable.store(false, Ordering::Release);
            health.backlog.store(0, Ordering::Release);
            metrics.set_ledger_health(true, 0);
            if retried > 0 {
                tracing::info!(groups = retried, "ledger writable again: held rows written");
            }
            for g in &mut all {
                reply(g, Ok(()));
            }
            return;
        }
        Err(e) => e,
    };
    let mut any_ok = false;
    let mut written = Vec::new();
    let mut failed = Vec::new();
    for (i, g) in all.into_iter().enumerate() {
        match commit(conn, std::iter::once(&g)) {
            Ok(()) => {
                any_ok = true;
                written.push(g);
            }
            Err(e) => failed.push((i < retried, g, e)),
        }
    }
    let mut refused = Vec::new();
    for (was_held, mut g, e) in failed {
        let message = e.to_string();
        if !g.keep {
            refused.push((g, message));
            continue;
        }
        if any_ok || backlog.len() >= MAX_BACKLOG {
            metrics.ledger_write_error();
            tracing::error!(error = %e, rows = %ops_json(&g.ops), "ledger rows refused; dropped");
            refused.push((g, message));
            continue;
        }
        if !was_held {
            metrics.ledger_write_error();
            tracing::error!(error = %e, rows = %ops_json(&g.ops), "ledger write failed; held and retried");
        }
        reply(&mut g, Err(LedgerError::Write(message)));
        backlog.push_back(g);
    }
    let down = !backlog.is_empty() || !any_ok;
    if down {
        if let Ok(mut last) = health.last_error.lock() {
            *last = Some(error.to_string());
        }
    }
    health.unwritable.store(down, Ordering::Release);
    health.backlog.store(backlog.len(), Ordering::Release);
    metrics.set_ledger_health(!down, backlog.len());
    for mut g in written {
        reply(&mut g, Ok(()));
    }
    for (mut g, message) in refused {
        reply(&mut g, Err(LedgerError::Write(message)));
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Msg>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) {
    let mut batch: Vec<Group> = Vec::with_capacity(BATCH);
    let mut backlog: VecDeque<Group> = VecDeque::new();
    let mut waiting: Vec<Msg> = Vec::new();
    loop {
        let down = !backlog.is_empty() || health.unwritable.load(Ordering::Acquire);
        let first = if down {
            match rx.recv_timeout(RETRY_EVERY) {
                Ok(m) => Some(m),
                // Nothing held to retry: probe, so the ledger is seen writable again.
                Err(mpsc::RecvTimeoutError::Timeout) if backlog.is_empty() => {
                    Some(Msg::Write(Box::new(Group {
                        ops: vec![Op::Probe],
                        keep: false,
                        done: None,
                    })))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            }
        };
        let mut shutdown = false;
        let mut next = first;
        let mut lingered = false;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(g) => {
                    // Someone waits for this commit: do not linger.
                    lingered |= g.done.is_some();
                    batch.push(*g);
                }
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
        write_round(
            &mut conn,
            &mut backlog,
            std::mem::take(&mut batch),
            &metrics,
            &health,
        );
        for msg in waiting.drain(..) {
            match msg {
                Msg::Flush(done) => {
                    let _ = done.send(());
                }
                #[cfg(test)]
                Msg::Recent(limit, reply) => {
                    let _ = reply.send(query_recent(&conn, limit));
                }
                #[cfg(test)]
                Msg::Payment(id, reply) => {
                    let _ = reply.send(
                        journal::by_id(&conn, &id).map_err(|e| LedgerError::Query(e.to_string())),
                    );
                }
                Msg::Write(_) | Msg::Shutdown => {}
            }
        }
        if shutdown {
            // Anything sent after Shutdown (racing senders) is still written.
            while let Ok(msg) = rx.try_recv() {
                if let Msg::Write(g) = msg {
                    batch.push(*g);
                }
            }
            write_round(
                &mut conn,
                &mut backlog,
                std::mem::take(&mut batch),
                &metrics,
                &health,
            );
            for g in &backlog {
                tracing::error!(rows = %ops_json(&g.ops), "ledger closed with rows it could not write");
            }
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

    async fn until_writable(ledger: &Ledger) -> bool {
        for _ in 0..50 {
            if ledger.writable() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    #[tokio::test]
    async fn refused_rows_are_held_and_written_once_the_database_takes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        let metrics = Arc::new(Metrics::new());
        let ledger = Ledger::open(&path, metrics.clone()).expect("open");
        // The database refuses every event (as with a full disk).
        Connection::open(&path)
            .expect("conn")
            .execute_batch("DROP TABLE payment_events;")
            .expect("drop");
        ledger.record(event(EventKind::Settled, "0x03"));
        ledger.flush().await.expect("flush");
        assert!(!ledger.writable());
        assert_eq!(ledger.backlog(), 1);
        assert!(ledger
            .last_error()
            .is_some_and(|e| e.contains("payment_events")));
        // Space is back: the held row is written, counted as one error, not one per retry.
        Connection::open(&path)
            .expect("conn")
            .execute_batch(SCHEMA)
            .expect("schema");
        assert!(until_writable(&ledger).await);
        assert_eq!(ledger.backlog(), 0);
        let rows = ledger.recent(10).await.expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].nonce.as_deref(), Some("0x03"));
        assert_eq!(metrics.ledger_write_errors(), 1);
    }

    #[tokio::test]
    async fn a_write_its_caller_can_refuse_is_not_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        let ledger = Ledger::open(&path, Arc::new(Metrics::new())).expect("open");
        let entry = JournalEntry {
            id: "p1".into(),
            state: crate::payments::journal::PaymentState::Verified,
            event: event(EventKind::Verified, "0x04"),
            expires_at: 1,
            settlement: "{}".into(),
        };
        Connection::open(&path)
            .expect("conn")
            .execute_batch("DROP TABLE payments;")
            .expect("drop");
        let refused = ledger.write(vec![Op::Insert(entry.clone())], false).await;
        assert!(matches!(refused, Err(LedgerError::Write(_))), "{refused:?}");
        assert_eq!(ledger.backlog(), 0);
        assert!(!ledger.writable());
        Connection::open(&path)
            .expect("conn")
            .execute_batch(journal::SCHEMA)
            .expect("schema");
        // Nothing held: the writer's probe finds the database writable again.
        assert!(until_writable(&ledger).await);
        assert_eq!(ledger.payment("p1").await.expect("query"), None);
        ledger
            .write(vec![Op::Insert(entry)], false)
            .await
            .expect("write");
        let row = ledger.payment("p1").await.expect("query").expect("row");
        assert_eq!(row.state, crate::payments::journal::PaymentState::Verified);
        assert_eq!(row.event.nonce.as_deref(), Some("0x04"));
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
