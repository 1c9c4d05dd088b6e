//! The shared ledger: PostgreSQL, for many verifier replicas. Same tables and columns as the
//! SQLite ledger. The connection is remade when it breaks (server restarted): until then writes
//! fail, are held and retried, and paid routes answer 503.

use std::time::Duration;

use postgres::{Client, NoTls};

use super::{EventKind, Group, LedgerEvent, Op, Store, StoreError};
use crate::payments::journal::{JournalEntry, JournalRow, JournalUpdate, PaymentState};

/// Serialises schema creation between replicas starting at once (`pg_advisory_lock`).
const SCHEMA_LOCK: i64 = 0x746f_6c6c_7761_7901;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payment_events (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT  NOT NULL,
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
CREATE TABLE IF NOT EXISTS ledger_probe (id INTEGER PRIMARY KEY, at BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, until BIGINT NOT NULL);
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
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    settlement  TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_open ON payments (state)
    WHERE state IN ('verified', 'settling', 'unknown');
CREATE TABLE IF NOT EXISTS route_changes (
    seq        BIGSERIAL PRIMARY KEY,
    op         TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    body_json  TEXT,
    at         BIGINT  NOT NULL
);
CREATE INDEX IF NOT EXISTS route_changes_name ON route_changes (name);
";

const INSERT_EVENT: &str = "INSERT INTO payment_events
    (at, event, route, network, asset, payer, amount, nonce, reason, \"transaction\")
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

const SELECT_PAYMENT: &str = "SELECT id, state, route, network, asset, payer, amount, nonce,
    \"transaction\", reason, attempts::BIGINT, created_at, expires_at, settlement FROM payments";

fn err(e: postgres::Error) -> StoreError {
    StoreError(e.to_string())
}

/// Connection settings: the URL (no password in it) and timeouts that keep a dead server from
/// hanging the writer.
pub(crate) fn config(url: &str) -> Result<postgres::Config, StoreError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| StoreError(e.to_string()))?;
    config.connect_timeout(Duration::from_secs(3));
    config.options("-c statement_timeout=5000");
    // A server that stops answering (stalled, network cut) must not hang the writer: unacked
    // data for 5 s drops the connection, and it is remade.
    config.keepalives_idle(Duration::from_secs(10));
    config.tcp_user_timeout(Duration::from_secs(5));
    config.application_name("tollway-verifier");
    Ok(config)
}

pub(crate) fn connect(config: &postgres::Config) -> Result<Client, StoreError> {
    config.connect(NoTls).map_err(err)
}

pub(super) struct Postgres {
    config: postgres::Config,
    client: Option<Client>,
}

impl Postgres {
    pub(super) fn open(url: &str) -> Result<Self, StoreError> {
        let config = config(url)?;
        let client = Self::schema(&config)?;
        Ok(Self {
            config,
            client: Some(client),
        })
    }

    /// A connection, with the schema created if needed.
    pub(super) fn schema(config: &postgres::Config) -> Result<Client, StoreError> {
        let mut client = connect(config)?;
        let mut tx = client.transaction().map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .map_err(err)?;
        tx.batch_execute(SCHEMA).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(client)
    }

    /// The connection, remade if it broke.
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.client = Some(connect(&self.config)?);
            tracing::info!("ledger: connected to PostgreSQL again");
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError("no connection".into()))
    }

    /// Runs `f`; a broken connection is dropped so the next call reconnects.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let client = self.client()?;
        let out = f(client);
        if let Err(e) = &out {
            if e.is_closed() || self.client.as_ref().is_some_and(Client::is_closed) {
                self.client = None;
            }
        }
        out.map_err(err)
    }
}

fn insert_event(
    tx: &mut postgres::Transaction<'_>,
    ev: &LedgerEvent,
) -> Result<(), postgres::Error> {
    tx.execute(
        INSERT_EVENT,
        &[
            &ev.at,
            &ev.event.as_str(),
            &ev.route,
            &ev.network,
            &ev.asset,
            &ev.payer,
            &ev.amount,
            &ev.nonce,
            &ev.reason,
            &ev.transaction,
        ],
    )
    .map(|_| ())
}

fn insert_payment(
    tx: &mut postgres::Transaction<'_>,
    e: &JournalEntry,
    now_ms: i64,
) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO payments (id, state, route, network, asset, payer, amount, nonce,
             created_at, updated_at, expires_at, settlement)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)",
        &[
            &e.id,
            &e.state.as_str(),
            &e.event.route,
            &e.event.network,
            &e.event.asset,
            &e.event.payer,
            &e.event.amount,
            &e.event.nonce,
            &now_ms,
            &i64::try_from(e.expires_at).unwrap_or(i64::MAX),
            &e.settlement,
        ],
    )
    .map(|_| ())
}

fn transition(
    tx: &mut postgres::Transaction<'_>,
    u: &JournalUpdate,
    now_ms: i64,
) -> Result<bool, postgres::Error> {
    let changed = tx.execute(
        &format!(
            "UPDATE payments SET state = $2, \"transaction\" = COALESCE($3, \"transaction\"),
                 reason = COALESCE($4, reason), attempts = attempts + $5, updated_at = $6
             WHERE id = $1 AND state IN ({})",
            u.state.sources_sql()
        ),
        &[
            &u.id,
            &u.state.as_str(),
            &u.transaction,
            &u.reason,
            &i32::from(u.attempt),
            &now_ms,
        ],
    )?;
    Ok(changed == 1)
}

fn withheld(
    tx: &mut postgres::Transaction<'_>,
    id: &str,
    now_ms: i64,
) -> Result<(), postgres::Error> {
    let started = PaymentState::STARTED_SQL;
    let reason = crate::payments::journal::REASON_WITHHELD;
    tx.execute(
        &format!(
            "INSERT INTO payment_events
                 (at, event, route, network, asset, payer, amount, nonce, reason, \"transaction\")
             SELECT $2, $4, route, network, asset, payer, amount, nonce, $3, \"transaction\"
             FROM payments WHERE id = $1 AND state IN ({started})"
        ),
        &[&id, &now_ms, &reason, &EventKind::DeliveryWithheld.as_str()],
    )?;
    tx.execute(
        &format!(
            "UPDATE payments SET reason = $2, updated_at = $3 WHERE id = $1 AND state IN ({started})"
        ),
        &[&id, &reason, &now_ms],
    )?;
    Ok(())
}

fn apply(
    tx: &mut postgres::Transaction<'_>,
    op: &Op,
    now_ms: i64,
) -> Result<bool, postgres::Error> {
    match op {
        Op::Event(ev) => insert_event(tx, ev).map(|()| true),
        Op::Insert(e) => insert_payment(tx, e, now_ms).map(|()| true),
        Op::Transition(u, event) => {
            let applied = transition(tx, u, now_ms)?;
            if let (true, Some(ev)) = (applied, event) {
                insert_event(tx, ev)?;
            }
            Ok(applied)
        }
        Op::Withheld(id) => withheld(tx, id, now_ms).map(|()| true),
        Op::Claim { key, until, now } => tx
            .execute(
                "INSERT INTO claims (key, until) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET until = EXCLUDED.until WHERE claims.until <= $3",
                &[key, until, now],
            )
            .map(|n| n == 1),
        Op::Unclaim(key) => tx
            .execute("DELETE FROM claims WHERE key = $1", &[key])
            .map(|_| true),
        Op::PruneClaims(before) => tx
            .execute("DELETE FROM claims WHERE until < $1", &[before])
            .map(|_| true),
        Op::Probe => tx
            .execute(
                "INSERT INTO ledger_probe (id, at) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
                &[&now_ms],
            )
            .map(|_| true),
    }
}

fn payment_row(r: &postgres::Row) -> Result<JournalRow, StoreError> {
    let state: String = r.try_get(1).map_err(err)?;
    let route: String = r.try_get(2).map_err(err)?;
    let mut text: [Option<String>; 7] = Default::default();
    for (i, slot) in text.iter_mut().enumerate() {
        *slot = r.try_get(3 + i).map_err(err)?;
    }
    JournalRow::from_columns(
        r.try_get(0).map_err(err)?,
        &state,
        &route,
        text,
        r.try_get(10).map_err(err)?,
        r.try_get(11).map_err(err)?,
        r.try_get(12).map_err(err)?,
        r.try_get(13).map_err(err)?,
    )
    .map_err(StoreError)
}

impl Store for Postgres {
    fn commit(&mut self, groups: &[&Group], now_ms: i64) -> Result<Vec<bool>, StoreError> {
        self.with(|client| {
            let mut tx = client.transaction()?;
            let mut applied = Vec::with_capacity(groups.len());
            for g in groups {
                let mut all = true;
                for op in &g.ops {
                    all &= apply(&mut tx, op, now_ms)?;
                }
                applied.push(all);
            }
            tx.commit()?;
            Ok(applied)
        })
    }

    fn open_rows(&mut self) -> Result<Vec<JournalRow>, StoreError> {
        let rows = self.with(|client| {
            client.query(
                &format!(
                    "{SELECT_PAYMENT} WHERE state IN ({}) ORDER BY created_at",
                    PaymentState::OPEN_SQL
                ),
                &[],
            )
        })?;
        rows.iter().map(payment_row).collect()
    }

    /// Rows nobody has touched lately, locked against the other replicas while they are
    /// claimed (`FOR UPDATE SKIP LOCKED`): one reconciler per row at a time.
    fn adopt(&mut self, stale_before_ms: i64, now_ms: i64) -> Result<Vec<JournalRow>, StoreError> {
        let rows = self.with(|client| {
            let mut tx = client.transaction()?;
            let rows = tx.query(
                &format!(
                    "{SELECT_PAYMENT} WHERE (state IN ('settling', 'unknown') AND updated_at < $1)
                        OR (state = 'verified' AND expires_at * 1000 < $1)
                     ORDER BY created_at LIMIT 100 FOR UPDATE SKIP LOCKED"
                ),
                &[&stale_before_ms],
            )?;
            for row in &rows {
                let id: String = row.try_get(0)?;
                tx.execute(
                    "UPDATE payments SET updated_at = $2 WHERE id = $1",
                    &[&id, &now_ms],
                )?;
            }
            tx.commit()?;
            Ok(rows)
        })?;
        rows.iter().map(payment_row).collect()
    }

    fn claim_held(&mut self, key: &str, now: i64) -> Result<bool, StoreError> {
        let row = self.with(|client| {
            client.query_one(
                "SELECT EXISTS (SELECT 1 FROM claims WHERE key = $1 AND until > $2)",
                &[&key, &now],
            )
        })?;
        row.try_get(0).map_err(err)
    }

    fn probed_when_idle(&self) -> bool {
        true
    }

    #[cfg(test)]
    fn recent(&mut self, _limit: usize) -> Result<Vec<LedgerEvent>, StoreError> {
        Err(StoreError("not used in tests".into()))
    }

    #[cfg(test)]
    fn payment(&mut self, _id: &str) -> Result<Option<JournalRow>, StoreError> {
        Err(StoreError("not used in tests".into()))
    }
}

#[cfg(test)]
pub(crate) mod server {
    //! A real PostgreSQL for tests: a throwaway cluster (Debian's `postgresql` package, found
    //! under /usr/lib/postgresql/*/bin, or `PG_BIN`) on its own port and temp dir, trust auth
    //! on loopback, run as the `postgres` user when we are root; stopped on drop.

    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct PostgresServer {
        child: Option<Child>,
        pub port: u16,
        dir: tempfile::TempDir,
        bin: PathBuf,
    }

    fn bin_dir() -> PathBuf {
        if let Ok(dir) = std::env::var("PG_BIN") {
            return PathBuf::from(dir);
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join("bin"))
                    .filter(|p| p.join("initdb").exists())
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found.pop().unwrap_or_else(|| {
            panic!("no PostgreSQL under /usr/lib/postgresql: install it (`make deps` does: apt-get install postgresql) or set PG_BIN")
        })
    }

    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    }

    /// `program` as the `postgres` user when we are root (PostgreSQL refuses to run as root).
    fn command(program: PathBuf) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    impl PostgresServer {
        pub fn start() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            if is_root() {
                let ok = Command::new("chown")
                    .args(["-R", "postgres"])
                    .arg(dir.path())
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "cannot chown the cluster dir to postgres");
            }
            let bin = bin_dir();
            let status = command(bin.join("initdb"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .args(["--auth=trust", "-U", "tollway", "--no-sync"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("initdb");
            assert!(status.success(), "initdb failed");
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("port")
                .port();
            let mut s = Self {
                child: None,
                port,
                dir,
                bin,
            };
            s.spawn();
            s
        }

        pub fn url(&self) -> String {
            format!("postgres://tollway@127.0.0.1:{}/postgres", self.port)
        }

        pub fn spawn(&mut self) {
            use std::os::unix::process::CommandExt;
            let child = command(self.bin.join("postgres"))
                // Its own process group: a kill reaches the postmaster and every backend.
                .process_group(0)
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                ])
                .arg("-k")
                .arg(self.dir.path())
                .args(["-c", "fsync=off"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(self.dir.path().join("postgres.log"))
                        .map(Stdio::from)
                        .unwrap_or_else(|_| Stdio::null()),
                )
                .spawn()
                .expect("postgres");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    // Accepting connections a moment after the port opens.
                    std::thread::sleep(Duration::from_millis(300));
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let log =
                std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
            panic!("postgres on port {} did not come up:\n{log}", self.port);
        }

        /// Kills the server at once (as a crash would).
        pub fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = Command::new("kill")
                    .args(["-9", "--", &format!("-{}", c.id())])
                    .status();
                let _ = c.kill();
                let _ = c.wait();
                std::thread::sleep(Duration::from_millis(200));
            }
            // Its pid and socket lock files would stop the next start (a killed postmaster may
            // linger as a zombie until it is reaped, so the pid in them can look alive).
            let _ = std::fs::remove_file(self.dir.path().join("data/postmaster.pid"));
            let _ =
                std::fs::remove_file(self.dir.path().join(format!(".s.PGSQL.{}.lock", self.port)));
        }
    }

    impl Drop for PostgresServer {
        fn drop(&mut self) {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::server::PostgresServer;
    use crate::metrics::Metrics;
    use crate::payments::journal::{JournalEntry, JournalUpdate, PaymentState};
    use crate::stores::ledger::{
        EventKind, Ledger, LedgerEvent, LedgerLocation, Op, RouteChangeLog,
    };

    fn entry(id: &str, state: PaymentState) -> JournalEntry {
        JournalEntry {
            id: id.to_owned(),
            state,
            event: LedgerEvent {
                nonce: Some(format!("0x{id}")),
                amount: Some("1000".into()),
                ..LedgerEvent::new(EventKind::Verified, "quote")
            },
            expires_at: u64::MAX / 4,
            settlement: "{}".into(),
        }
    }

    fn to(id: &str, state: PaymentState) -> JournalUpdate {
        JournalUpdate {
            id: id.to_owned(),
            state,
            transaction: None,
            reason: None,
            attempt: false,
        }
    }

    fn event(kind: EventKind, id: &str) -> Option<LedgerEvent> {
        Some(LedgerEvent {
            nonce: Some(format!("0x{id}")),
            ..LedgerEvent::new(kind, "quote")
        })
    }

    /// One number from the database (on a plain thread: the synchronous client must not run
    /// on the test's runtime).
    fn count(url: &str, sql: &str) -> i64 {
        let (url, sql) = (url.to_owned(), sql.to_owned());
        std::thread::spawn(move || {
            let mut c = super::connect(&super::config(&url).expect("config")).expect("connect");
            c.query_one(sql.as_str(), &[]).expect("query").get(0)
        })
        .join()
        .expect("query thread")
    }

    #[tokio::test]
    async fn replicas_share_one_journal_and_a_decision_cannot_be_undone() {
        let pg = PostgresServer::start();
        let at = LedgerLocation::Postgres(pg.url());
        let a = Ledger::open(&at, Arc::new(Metrics::new())).expect("a");
        a.write(
            vec![
                Op::Insert(entry("p1", PaymentState::Verified)),
                Op::Event(event(EventKind::Verified, "p1").expect("event")),
            ],
            false,
        )
        .await
        .expect("insert");
        // A replica that starts now sees the unfinished payment.
        let b = Ledger::open(&at, Arc::new(Metrics::new())).expect("b");
        let open = b.take_open_payments();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].state, PaymentState::Verified);

        let settling = Op::Transition(to("p1", PaymentState::Settling), None);
        assert!(a.write(vec![settling], true).await.expect("settling"));
        // B, late, tries to release it at expiry: refused, and no `released` row.
        let release = Op::Transition(
            to("p1", PaymentState::Released),
            event(EventKind::Released, "p1"),
        );
        assert!(!b.write(vec![release], true).await.expect("release"));
        // Both decide it settled: one `settled` row.
        for l in [&a, &b] {
            let settled = Op::Transition(
                to("p1", PaymentState::Settled),
                event(EventKind::Settled, "p1"),
            );
            l.write(vec![settled], true).await.expect("settled");
        }
        let events = |kind: &str| {
            count(
                &pg.url(),
                &format!("SELECT count(*) FROM payment_events WHERE event = '{kind}'"),
            )
        };
        assert_eq!(events("settled"), 1);
        assert_eq!(events("released"), 0);
        assert_eq!(
            count(
                &pg.url(),
                "SELECT count(*) FROM payments WHERE id = 'p1' AND state = 'settled'"
            ),
            1
        );
    }

    #[tokio::test]
    async fn an_orphaned_settlement_is_adopted_by_one_replica() {
        let pg = PostgresServer::start();
        let at = LedgerLocation::Postgres(pg.url());
        let a = Ledger::open(&at, Arc::new(Metrics::new())).expect("a");
        let b = Ledger::open(&at, Arc::new(Metrics::new())).expect("b");
        a.write(vec![Op::Insert(entry("p2", PaymentState::Settling))], false)
            .await
            .expect("insert");
        let stale_before = crate::clock::unix_now_millis() - 60_000;
        // Fresh: its owner is alive.
        assert!(b.adopt(stale_before).await.expect("fresh").is_empty());
        // Its owner died a while ago.
        count(
            &pg.url(),
            "WITH t AS (UPDATE payments SET updated_at = 0 RETURNING 1) SELECT count(*) FROM t",
        );
        let (x, y) = tokio::join!(a.adopt(stale_before), b.adopt(stale_before));
        let adopted = x.expect("a").len() + y.expect("b").len();
        assert_eq!(adopted, 1, "exactly one replica takes the row");
        // Touched by its new owner: not stale any more.
        assert!(a.adopt(stale_before).await.expect("again").is_empty());
    }

    #[tokio::test]
    async fn a_ledger_down_holds_its_rows_and_reconnects() {
        let mut pg = PostgresServer::start();
        let at = LedgerLocation::Postgres(pg.url());
        let ledger = Ledger::open(&at, Arc::new(Metrics::new())).expect("open");
        // A replica that writes nothing meanwhile must still see it (and answer 503).
        let idle = Ledger::open(&at, Arc::new(Metrics::new())).expect("idle replica");
        pg.kill();
        let refused = ledger
            .write(vec![Op::Insert(entry("p3", PaymentState::Verified))], false)
            .await;
        assert!(refused.is_err(), "a dead server takes no payment");
        ledger.record(event(EventKind::Settled, "p4").expect("event"));
        ledger.flush().await.expect("flush");
        assert!(!ledger.writable());
        assert_eq!(ledger.backlog(), 1);
        for _ in 0..60 {
            if !idle.writable() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !idle.writable(),
            "the idle replica's probe saw the server go"
        );
        pg.spawn();
        for _ in 0..100 {
            if ledger.writable() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ledger.writable(), "reconnected");
        for _ in 0..60 {
            if idle.writable() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(idle.writable(), "the idle replica reconnected too");
        assert_eq!(
            count(
                &pg.url(),
                "SELECT count(*) FROM payment_events WHERE nonce = '0xp4'"
            ),
            1,
            "the held row was written"
        );
        assert_eq!(count(&pg.url(), "SELECT count(*) FROM payments"), 0);
    }

    #[tokio::test]
    async fn claims_in_the_shared_ledger_hold_across_replicas() {
        use crate::stores::replay::{Claim, LedgerReplayGuard, ReplayGuard};
        let pg = PostgresServer::start();
        let at = LedgerLocation::Postgres(pg.url());
        let a = LedgerReplayGuard::new(Arc::new(
            Ledger::open(&at, Arc::new(Metrics::new())).expect("a"),
        ));
        let b = LedgerReplayGuard::new(Arc::new(
            Ledger::open(&at, Arc::new(Metrics::new())).expect("b"),
        ));
        let now = crate::clock::unix_now();
        let (x, y) = tokio::join!(
            a.claim("l402:ab", now + 60, now),
            b.claim("l402:ab", now + 60, now)
        );
        let claimed = [x.expect("a"), y.expect("b")]
            .iter()
            .filter(|c| **c == Claim::Claimed)
            .count();
        assert_eq!(claimed, 1, "one replica wins the claim");
        a.release("l402:ab").await.expect("release");
        assert_eq!(
            b.claim("l402:ab", now + 60, now).await.expect("b"),
            Claim::Claimed
        );
    }

    #[test]
    fn route_changes_live_in_the_shared_ledger() {
        let pg = PostgresServer::start();
        let at = LedgerLocation::Postgres(pg.url());
        let log = RouteChangeLog::open(&at).expect("open");
        let first = log.append("put", "a", Some("{}")).expect("append");
        let second = log.append("patch", "a", Some("{\"x\":1}")).expect("append");
        assert!(second > first);
        assert_eq!(log.forget_before("a", second).expect("forget"), 1);
        let other = RouteChangeLog::open(&at).expect("another replica");
        let all = other.all().expect("all");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].op, "patch");
        log.remove(second).expect("remove");
        assert!(other.all().expect("all").is_empty());
    }
}
