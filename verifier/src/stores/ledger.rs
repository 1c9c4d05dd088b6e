//! Payment ledger: an append-only table `payment_events` (audit log), the settlement journal
//! (table `payments`, see [`crate::payments::journal`]) and the admin API's changes to the route
//! table (`route_changes`), in one database: a SQLite file for one verifier (`sqlite.rs`) or
//! PostgreSQL shared by many replicas (`postgres.rs`).
//!
//! Writes never block the async runtime: rows go through a channel to one writer thread that
//! owns the connection and commits in small batches; a caller that must know its row is durable
//! (Verify, before answering VALID) waits for the commit. Journal changes are guarded by the
//! state they come from, so a late retry or another replica cannot undo a decision, and their
//! event row is written only with them. A write that fails (full
//! disk) is counted in `tollway_ledger_write_errors_total`, logged with its rows, held and
//! retried until the database takes it again; meanwhile the ledger is not writable, `/readyz`
//! says so and paid routes answer 503.

mod postgres;
mod sqlite;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

#[cfg(test)]
pub(crate) use self::sqlite::JOURNAL_SCHEMA;
use tokio::sync::oneshot;

use crate::clock::unix_now_millis;
use crate::metrics::Metrics;
use crate::payments::journal::{JournalEntry, JournalRow, JournalUpdate};

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

/// Where the ledger lives (`verifier.ledger`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerLocation {
    /// A SQLite file: one verifier.
    Sqlite(PathBuf),
    /// `postgres://user@host:port/db`: shared by every replica (no password in it).
    Postgres(String),
}

impl std::fmt::Display for LedgerLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "{}", p.display()),
            Self::Postgres(url) => f.write_str(url),
        }
    }
}

/// A database error, as text (the writer logs it and reports it on `/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreError(pub String);

/// What the writer thread needs of a database.
trait Store: Send {
    /// Applies every group in one transaction; per group, whether all its journal transitions
    /// applied.
    fn commit(&mut self, groups: &[&Group], now_ms: i64) -> Result<Vec<bool>, StoreError>;
    /// Payments not in a final state.
    fn open_rows(&mut self) -> Result<Vec<JournalRow>, StoreError>;
    /// Unfinished payments nobody has touched since `stale_before_ms` (a replica that died, or
    /// verified ones past expiry), touched now so other replicas leave them.
    fn adopt(&mut self, stale_before_ms: i64, now_ms: i64) -> Result<Vec<JournalRow>, StoreError>;
    /// Whether a live claim (one ending after `now`, unix seconds) holds `key`: a read.
    fn claim_held(&mut self, key: &str, now: i64) -> Result<bool, StoreError>;
    /// A server that can go away while this replica is idle: probed when nothing is written,
    /// so every replica reports it down (and answers 503) at once.
    fn probed_when_idle(&self) -> bool {
        false
    }
    #[cfg(test)]
    fn recent(&mut self, limit: usize) -> Result<Vec<LedgerEvent>, StoreError>;
    #[cfg(test)]
    fn payment(&mut self, id: &str) -> Result<Option<JournalRow>, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open ledger {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("ledger writer has stopped")]
    Stopped,
    #[error("ledger write failed: {0}")]
    Write(String),
}

const BATCH: usize = 256;
/// How long the writer keeps collecting after an event arrives, so a busy gateway commits many
/// events per transaction (one commit each was a quarter of the sidecar's CPU under load).
/// A flush, shutdown or a caller waiting for its write cuts it short.
const LINGER: Duration = Duration::from_millis(2);
/// How often writes that failed (full disk, database down) are tried again.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How often an idle writer probes a database server (see [`Store::probed_when_idle`]).
const IDLE_PROBE_EVERY: Duration = Duration::from_secs(2);
/// Failed writes kept for retry at most; past it the oldest are logged and dropped (paid routes
/// answer 503 meanwhile, so only rejections and invoices can pile up).
const MAX_BACKLOG: usize = 100_000;

/// One row to write.
#[derive(Debug)]
pub enum Op {
    Event(LedgerEvent),
    Insert(JournalEntry),
    /// A journal state change, applied only from a state that leads to it; its event row is
    /// written only if it applied.
    Transition(JournalUpdate, Option<LedgerEvent>),
    /// The answer of payment `id`, whose settlement had started, was withheld: notes it on
    /// the journal row and appends a `delivery_withheld` event with the row's details.
    Withheld(String),
    /// A claim (x402 nonce, single-use token or lease): applied when `key` is free or its
    /// previous claim ended before `now`; not applied when someone holds it.
    Claim {
        key: String,
        until: i64,
        now: i64,
    },
    /// Gives a claim back.
    Unclaim(String),
    /// Forgets claims that ended before this time (unix seconds).
    PruneClaims(i64),
    /// A write that only tells whether the database takes writes again.
    Probe,
}

/// Rows committed together. `keep`: retried until written if the database refuses them now
/// (a caller that can still say no, Verify, passes `false` and answers 503 instead).
struct Group {
    ops: Vec<Op>,
    keep: bool,
    /// Answered with whether every transition in the group applied.
    done: Option<oneshot::Sender<Result<bool, LedgerError>>>,
}

enum Msg {
    Write(Box<Group>),
    Adopt(i64, oneshot::Sender<Result<Vec<JournalRow>, LedgerError>>),
    Held(String, i64, oneshot::Sender<Result<bool, LedgerError>>),
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
    location: LedgerLocation,
    tx: mpsc::Sender<Msg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Payments not in a final state when the ledger was opened (taken once by the core).
    open_payments: Mutex<Vec<JournalRow>>,
}

impl Ledger {
    /// Opens (creating if needed) the database and starts the writer thread.
    pub fn open(location: &LedgerLocation, metrics: Arc<Metrics>) -> Result<Self, LedgerError> {
        let open_err = |e: StoreError| LedgerError::Open {
            path: location.to_string(),
            reason: e.0,
        };
        // The store is opened on the writer thread: PostgreSQL's synchronous client runs its
        // own runtime, which must not start on an async worker. Open waits for it (start-up).
        let (opened_tx, opened) = mpsc::channel();
        let (tx, rx) = mpsc::channel();
        let m = metrics.clone();
        let health = Arc::new(Health::default());
        let h = health.clone();
        let at = location.clone();
        let writer = std::thread::Builder::new()
            .name("tollway-ledger".into())
            .spawn(move || {
                let store: Result<Box<dyn Store>, StoreError> = match &at {
                    LedgerLocation::Sqlite(path) => {
                        sqlite::Sqlite::open(path).map(|s| Box::new(s) as Box<dyn Store>)
                    }
                    LedgerLocation::Postgres(url) => {
                        postgres::Postgres::open(url).map(|s| Box::new(s) as Box<dyn Store>)
                    }
                };
                let mut store = match store {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                match store.open_rows() {
                    Ok(rows) => {
                        let _ = opened_tx.send(Ok(rows));
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                }
                writer_loop(store, rx, m, h)
            })
            .map_err(|e| LedgerError::Open {
                path: location.to_string(),
                reason: e.to_string(),
            })?;
        let open_payments = opened
            .recv()
            .map_err(|_| open_err(StoreError("ledger writer stopped".into())))?
            .map_err(open_err)?;
        Ok(Self {
            location: location.clone(),
            tx,
            writer: Mutex::new(Some(writer)),
            metrics,
            health,
            open_payments: Mutex::new(open_payments),
        })
    }

    pub fn location(&self) -> &LedgerLocation {
        &self.location
    }

    /// Whether other replicas may share this ledger.
    pub fn shared(&self) -> bool {
        matches!(self.location, LedgerLocation::Postgres(_))
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

    /// Writes rows together and waits until they are committed; answers whether every journal
    /// transition among them applied. `keep: false`: if the database refuses them they are
    /// dropped and the caller must act on the error (answer 503); `keep: true`: they are also
    /// kept and retried.
    pub async fn write(&self, ops: Vec<Op>, keep: bool) -> Result<bool, LedgerError> {
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

    /// Unfinished payments nobody touched since `stale_before_ms` (see [`Store::adopt`]).
    pub async fn adopt(&self, stale_before_ms: i64) -> Result<Vec<JournalRow>, LedgerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Adopt(stale_before_ms, tx))
            .map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    /// False while writes fail (full disk, database down); paid routes answer 503 meanwhile.
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

    /// Whether a live claim holds `key` at `now` (unix seconds), after what was queued before
    /// is written. A read: nothing is written.
    pub async fn claim_held(&self, key: &str, now: i64) -> Result<bool, LedgerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Held(key.to_owned(), now, tx))
            .map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)?
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

fn reply(group: &mut Group, result: Result<bool, LedgerError>) {
    if let Some(done) = group.done.take() {
        let _ = done.send(result);
    }
}

/// Writes the backlog (first, in order) and `new` in one transaction; if that fails, group by
/// group. A group the database refuses while it takes others is bad in itself: logged and
/// dropped. Otherwise the database is down (full disk, unreachable): kept groups wait in the
/// backlog.
fn write_round(
    store: &mut dyn Store,
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
    let now = unix_now_millis();
    // Health is published before anyone is answered: a caller told "refused" sees it.
    let error = match store.commit(&all.iter().collect::<Vec<_>>(), now) {
        Ok(applied) => {
            health.unwritable.store(false, Ordering::Release);
            health.backlog.store(0, Ordering::Release);
            metrics.set_ledger_health(true, 0);
            if retried > 0 {
                tracing::info!(groups = retried, "ledger writable again: held rows written");
            }
            for (g, ok) in all.iter_mut().zip(applied) {
                reply(g, Ok(ok));
            }
            return;
        }
        Err(e) => e,
    };
    let mut any_ok = false;
    let mut written = Vec::new();
    let mut failed = Vec::new();
    for (i, g) in all.into_iter().enumerate() {
        match store.commit(&[&g], now) {
            Ok(applied) => {
                any_ok = true;
                written.push((g, applied.first().copied().unwrap_or(true)));
            }
            Err(e) => failed.push((i < retried, g, e)),
        }
    }
    let mut refused = Vec::new();
    for (was_held, mut g, e) in failed {
        if !g.keep {
            refused.push((g, e.0));
            continue;
        }
        if any_ok || backlog.len() >= MAX_BACKLOG {
            metrics.ledger_write_error();
            tracing::error!(error = %e.0, rows = %ops_json(&g.ops), "ledger rows refused; dropped");
            refused.push((g, e.0));
            continue;
        }
        if !was_held {
            metrics.ledger_write_error();
            tracing::error!(error = %e.0, rows = %ops_json(&g.ops), "ledger write failed; held and retried");
        }
        refused.push((
            Group {
                ops: Vec::new(),
                keep: false,
                done: g.done.take(),
            },
            e.0,
        ));
        backlog.push_back(g);
    }
    let down = !backlog.is_empty() || !any_ok;
    if down {
        if !health.unwritable.load(Ordering::Acquire) {
            tracing::error!(error = %error.0, "ledger not writable: paid routes answer 503 until it is");
        }
        if let Ok(mut last) = health.last_error.lock() {
            *last = Some(error.0.clone());
        }
    }
    health.unwritable.store(down, Ordering::Release);
    health.backlog.store(backlog.len(), Ordering::Release);
    metrics.set_ledger_health(!down, backlog.len());
    for (mut g, applied) in written {
        reply(&mut g, Ok(applied));
    }
    for (mut g, message) in refused {
        reply(&mut g, Err(LedgerError::Write(message)));
    }
}

fn writer_loop(
    mut store: Box<dyn Store>,
    rx: mpsc::Receiver<Msg>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) {
    let mut batch: Vec<Group> = Vec::with_capacity(BATCH);
    let mut backlog: VecDeque<Group> = VecDeque::new();
    let mut waiting: Vec<Msg> = Vec::new();
    let probe = || {
        Some(Msg::Write(Box::new(Group {
            ops: vec![Op::Probe],
            keep: false,
            done: None,
        })))
    };
    loop {
        let down = !backlog.is_empty() || health.unwritable.load(Ordering::Acquire);
        let first = if !down && store.probed_when_idle() {
            match rx.recv_timeout(IDLE_PROBE_EVERY) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => probe(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else if down {
            match rx.recv_timeout(RETRY_EVERY) {
                Ok(m) => Some(m),
                // Nothing held to retry: probe, so the ledger is seen writable again.
                Err(mpsc::RecvTimeoutError::Timeout) if backlog.is_empty() => probe(),
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
            store.as_mut(),
            &mut backlog,
            std::mem::take(&mut batch),
            &metrics,
            &health,
        );
        for msg in waiting.drain(..) {
            let read_err = |e: StoreError| LedgerError::Write(e.0);
            match msg {
                Msg::Flush(done) => {
                    let _ = done.send(());
                }
                Msg::Adopt(stale_before, reply) => {
                    let now = unix_now_millis();
                    let _ = reply.send(store.adopt(stale_before, now).map_err(read_err));
                }
                Msg::Held(key, now, reply) => {
                    let _ = reply.send(store.claim_held(&key, now).map_err(read_err));
                }
                #[cfg(test)]
                Msg::Recent(limit, reply) => {
                    let _ = reply.send(store.recent(limit).map_err(read_err));
                }
                #[cfg(test)]
                Msg::Payment(id, reply) => {
                    let _ = reply.send(store.payment(&id).map_err(read_err));
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
                store.as_mut(),
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

enum LogConnection {
    Sqlite(Connection),
    /// A connection per change (changes are rare), made and dropped in the blocking context
    /// the log is used from: the synchronous client must never run, or drop, on an async worker.
    Postgres(::postgres::Config),
}

/// The admin changes to the route table, in order (table `route_changes` of the ledger
/// database; its own connection, written synchronously: changes are rare and must be durable
/// before they are answered).
pub struct RouteChangeLog {
    location: LedgerLocation,
    conn: Mutex<LogConnection>,
}

impl RouteChangeLog {
    pub fn open(location: &LedgerLocation) -> Result<Self, RouteLogError> {
        let err = |reason: String| RouteLogError {
            path: location.to_string(),
            reason,
        };
        let conn = match location {
            LedgerLocation::Sqlite(path) => {
                LogConnection::Sqlite(sqlite::route_log(path).map_err(|e| err(e.to_string()))?)
            }
            LedgerLocation::Postgres(url) => {
                let config = postgres::config(url).map_err(|e| err(e.0))?;
                // Creates the tables (as the ledger does) and checks the server answers.
                postgres::Postgres::schema(&config).map_err(|e| err(e.0))?;
                LogConnection::Postgres(config)
            }
        };
        Ok(Self {
            location: location.clone(),
            conn: Mutex::new(conn),
        })
    }

    fn err(&self, reason: impl ToString) -> RouteLogError {
        RouteLogError {
            path: self.location.to_string(),
            reason: reason.to_string(),
        }
    }

    fn with<T>(
        &self,
        sqlite: impl FnOnce(&Connection) -> rusqlite::Result<T>,
        pg: impl FnOnce(&mut ::postgres::Client) -> Result<T, ::postgres::Error>,
    ) -> Result<T, RouteLogError> {
        let mut conn = self.conn.lock().map_err(|_| self.err("lock poisoned"))?;
        match &mut *conn {
            LogConnection::Sqlite(c) => sqlite(c).map_err(|e| self.err(e)),
            LogConnection::Postgres(config) => {
                let mut client = postgres::connect(config).map_err(|e| self.err(e.0))?;
                pg(&mut client).map_err(|e| self.err(e))
            }
        }
    }

    /// Appends a change; answers its sequence number.
    pub fn append(
        &self,
        op: &str,
        name: &str,
        body_json: Option<&str>,
    ) -> Result<i64, RouteLogError> {
        let at = unix_now_millis();
        self.with(
            |c| {
                c.execute(
                    "INSERT INTO route_changes (op, name, body_json, at) VALUES (?1, ?2, ?3, ?4)",
                    params![op, name, body_json, at],
                )?;
                Ok(c.last_insert_rowid())
            },
            |c| {
                c.query_one(
                    "INSERT INTO route_changes (op, name, body_json, at) VALUES ($1, $2, $3, $4)
                     RETURNING seq",
                    &[&op, &name, &body_json, &at],
                )?
                .try_get(0)
            },
        )
    }

    /// Forgets one change (it could not be served after all).
    pub fn remove(&self, seq: i64) -> Result<(), RouteLogError> {
        self.with(
            |c| {
                c.execute("DELETE FROM route_changes WHERE seq = ?1", params![seq])
                    .map(|_| ())
            },
            |c| {
                c.execute("DELETE FROM route_changes WHERE seq = $1", &[&seq])
                    .map(|_| ())
            },
        )
    }

    /// Forgets the changes of `name` before `seq` (a replace or delete makes them moot).
    pub fn forget_before(&self, name: &str, seq: i64) -> Result<usize, RouteLogError> {
        self.with(
            |c| {
                c.execute(
                    "DELETE FROM route_changes WHERE name = ?1 AND seq < ?2",
                    params![name, seq],
                )
            },
            |c| {
                c.execute(
                    "DELETE FROM route_changes WHERE name = $1 AND seq < $2",
                    &[&name, &seq],
                )
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            },
        )
    }

    /// Every change, oldest first.
    pub fn all(&self) -> Result<Vec<StoredRouteChange>, RouteLogError> {
        const ALL: &str = "SELECT seq, op, name, body_json, at FROM route_changes ORDER BY seq";
        self.with(
            |c| {
                let mut stmt = c.prepare(ALL)?;
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
            },
            |c| {
                c.query(ALL, &[])?
                    .iter()
                    .map(|r| {
                        Ok(StoredRouteChange {
                            seq: r.try_get(0)?,
                            op: r.try_get(1)?,
                            name: r.try_get(2)?,
                            body_json: r.try_get(3)?,
                            at: r.try_get(4)?,
                        })
                    })
                    .collect()
            },
        )
    }
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
        let ledger =
            Ledger::open(&LedgerLocation::Sqlite(path.clone()), metrics.clone()).expect("open");
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
        let ledger =
            Ledger::open(&LedgerLocation::Sqlite(path.clone()), metrics.clone()).expect("reopen");
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
        let ledger =
            Ledger::open(&LedgerLocation::Sqlite(path.clone()), metrics.clone()).expect("open");
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
        let ledger =
            Ledger::open(&LedgerLocation::Sqlite(path.clone()), metrics.clone()).expect("open");
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
            .execute_batch(sqlite::SCHEMA)
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
        let ledger = Ledger::open(
            &LedgerLocation::Sqlite(path.clone()),
            Arc::new(Metrics::new()),
        )
        .expect("open");
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
            .execute_batch(JOURNAL_SCHEMA)
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
        let err = Ledger::open(
            &LedgerLocation::Sqlite(PathBuf::from("/nonexistent-dir/x/ledger.db")),
            metrics,
        )
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
