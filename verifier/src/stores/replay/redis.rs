//! The replay guard of many replicas: claims live in one Redis that every verifier shares
//! (`stores: { replay: redis://host:port/db }`).
//!
//! - **Claim**: `SET tollway:<key> <owner> NX PX <ttl ms>`. Atomic on the server, so across
//!   every Envoy worker and verifier replica exactly one caller gets a key until it expires.
//!   `<owner>` is random per process.
//! - **Release**: a compare-and-delete script: the key goes only if it still holds our owner
//!   value (a claim that expired and was taken by another replica is left alone).
//! - **Expiry**: Redis' own clock, with the TTL `expires_at - now` computed from the caller's
//!   clock; a claim whose expiry has already passed holds nothing (as in memory).
//! - **Failure**: every operation has a deadline of [`OP_TIMEOUT`]; a dead, hung or refusing
//!   Redis is an error, which the caller turns into "unavailable" (paid routes answer 503,
//!   free routes are untouched). A claim whose answer was lost after it was sent (a timeout)
//!   may still have been written: that key then stays claimed until it expires (fail closed).
//! - **Connection**: redis' `ConnectionManager` (one multiplexed connection, reconnected when
//!   it drops), created lazily: the verifier starts whether Redis is up or not. [`watch`] pings
//!   every [`PING_INTERVAL`] to keep `/readyz` and `tollway_replay_store_up` current and to
//!   reconnect without traffic, and replaces the connection after [`REBUILD_AFTER`] failed
//!   pings in a row (a connection that hangs, or whose set-up failed in a way the manager does
//!   not retry).
//!
//! No credential is ever logged or reported: the URL has no password (config refuses one), the
//! password comes by reference and lives only in the client's connection info.
//!
//! [`watch`]: RedisReplayGuard::watch

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{IntoConnectionInfo, RedisError, Value};
use tokio::sync::watch;

use super::{check_key, BoxFuture, Claim, ReplayGuard, ReplayStoreError, StoreStatus};
use crate::config::RedisSettings;
use crate::metrics::Metrics;

/// Deadline of one operation (claim, release, ping), connection set-up included.
pub const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// How often [`RedisReplayGuard::watch`] pings.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Failed pings in a row after which the connection is replaced.
pub const REBUILD_AFTER: u32 = 3;
/// Every key is `tollway:<replay key>`.
pub const KEY_PREFIX: &str = "tollway:";
/// Longest TTL set (no legitimate claim lives longer: leases and L402 tokens are capped at
/// 366 days, x402 authorizations at the rail's `max_timeout_seconds`).
const MAX_TTL_SECS: u64 = 400 * 86_400;

/// Deletes KEYS[1] only if it holds ARGV[1] (our owner value); answers how many keys went.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    #[error("redis {op}: no answer within {ms} ms")]
    Timeout { op: &'static str, ms: u64 },
    #[error("redis {op}: {source}")]
    Redis {
        op: &'static str,
        source: RedisError,
    },
    #[error("redis {op}: unexpected reply {reply}")]
    Reply { op: &'static str, reply: String },
    #[error("redis client for {url}: {source}")]
    Client { url: String, source: RedisError },
}

#[derive(Debug)]
struct Health {
    up: bool,
    error: Option<String>,
    failed_pings: u32,
}

/// Claims in a Redis shared by every replica. Cheap to share in an `Arc`.
pub struct RedisReplayGuard {
    client: ::redis::Client,
    conn: RwLock<ConnectionManager>,
    /// The URL as configured (no password), for logs and `/readyz`.
    url: String,
    prefix: String,
    /// Random per process: a release deletes only the claims this process made.
    owner: String,
    release: ::redis::Script,
    health: Mutex<Health>,
    metrics: Arc<Metrics>,
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(OP_TIMEOUT))
        .set_response_timeout(Some(OP_TIMEOUT))
        // One quick retry per (re)connection; the next operation or ping tries again.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(250))
}

impl RedisReplayGuard {
    /// A guard for `settings`; connects on first use (needs a Tokio runtime).
    pub fn new(settings: &RedisSettings, metrics: Arc<Metrics>) -> Result<Self, RedisStoreError> {
        let url = settings.url.to_string();
        let client_error = |source| RedisStoreError::Client {
            url: url.clone(),
            source,
        };
        let mut info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(client_error)?;
        if let Some(password) = &settings.password {
            let redis = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(redis);
        }
        let client = ::redis::Client::open(info).map_err(client_error)?;
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())
            .map_err(client_error)?;
        metrics.set_replay_store_up(false);
        Ok(Self {
            client,
            conn: RwLock::new(conn),
            url,
            prefix: KEY_PREFIX.to_owned(),
            owner: hex::encode(rand::random::<[u8; 16]>()),
            release: ::redis::Script::new(RELEASE_SCRIPT),
            health: Mutex::new(Health {
                up: false,
                error: Some("not connected yet".into()),
                failed_pings: 0,
            }),
            metrics,
        })
    }

    /// The same store under another key prefix (tests share one server between cases).
    #[cfg(test)]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn connection(&self) -> ConnectionManager {
        match self.conn.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the connection (the old one finishes what it has in flight).
    fn rebuild(&self) {
        match ConnectionManager::new_lazy_with_config(self.client.clone(), manager_config()) {
            Ok(fresh) => {
                tracing::debug!(url = %self.url, "replacing the replay store connection");
                match self.conn.write() {
                    Ok(mut c) => *c = fresh,
                    Err(poisoned) => *poisoned.into_inner() = fresh,
                }
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "cannot replace the replay store connection")
            }
        }
    }

    /// Runs one operation under [`OP_TIMEOUT`] and records the outcome.
    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisStoreError> {
        let result = match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(RedisStoreError::Redis { op, source }),
            Err(_) => Err(RedisStoreError::Timeout {
                op,
                ms: u64::try_from(OP_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
            }),
        };
        match &result {
            Ok(_) => self.mark_up(),
            Err(e) => self.mark_down(op, e),
        }
        result
    }

    fn mark_up(&self) {
        let Ok(mut h) = self.health.lock() else {
            return;
        };
        h.failed_pings = 0;
        if !h.up {
            h.up = true;
            h.error = None;
            self.metrics.set_replay_store_up(true);
            tracing::info!(url = %self.url, "replay store reachable");
        }
    }

    fn mark_down(&self, op: &'static str, e: &RedisStoreError) {
        self.metrics.replay_store_error(op);
        let Ok(mut h) = self.health.lock() else {
            return;
        };
        let message = e.to_string();
        if h.up {
            tracing::error!(url = %self.url, error = %message, "replay store unreachable: paid routes fail closed (503) until it is back");
        }
        h.up = false;
        h.error = Some(message);
        self.metrics.set_replay_store_up(false);
    }

    /// One health check (PING); replaces the connection after [`REBUILD_AFTER`] failures in a
    /// row. Answers the status after it.
    pub async fn check(&self) -> StoreStatus {
        let mut conn = self.connection();
        let pinged = self
            .bounded("ping", ::redis::cmd("PING").query_async::<Value>(&mut conn))
            .await;
        if pinged.is_err() {
            let rebuild = match self.health.lock() {
                Ok(mut h) => {
                    h.failed_pings += 1;
                    if h.failed_pings >= REBUILD_AFTER {
                        h.failed_pings = 0;
                        true
                    } else {
                        false
                    }
                }
                Err(_) => false,
            };
            if rebuild {
                self.rebuild();
            }
        }
        self.status()
    }

    /// Whether Redis keeps its data across a restart (AOF on, or RDB snapshots configured):
    /// `None` when it cannot tell (unreachable, or `CONFIG` disabled as on some managed
    /// services).
    pub async fn persistent(&self) -> Option<bool> {
        let conn = self.connection();
        let get = |name: &'static str| {
            let mut cmd = ::redis::cmd("CONFIG");
            cmd.arg("GET").arg(name);
            let mut conn = conn.clone();
            async move { cmd.query_async::<Vec<String>>(&mut conn).await }
        };
        let aof = self.bounded("config", get("appendonly")).await.ok()?;
        let save = self.bounded("config", get("save")).await.ok()?;
        let value = |pair: &[String]| pair.get(1).cloned().unwrap_or_default();
        Some(value(&aof) == "yes" || !value(&save).trim().is_empty())
    }

    /// Pings every [`PING_INTERVAL`] until `stop` turns true.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => { self.check().await; }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }

    async fn claim_async(
        &self,
        key: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<Claim, RedisStoreError> {
        let mut conn = self.connection();
        let key = format!("{}{key}", self.prefix);
        if expires_at <= now {
            // Expired on arrival: it holds nothing once taken (PX 0 is not allowed anyway), but
            // it loses to a live claim, as in memory.
            let exists: Value = self
                .bounded(
                    "claim",
                    ::redis::cmd("EXISTS").arg(&key).query_async(&mut conn),
                )
                .await?;
            return Ok(if exists == Value::Int(0) {
                Claim::Claimed
            } else {
                Claim::AlreadyUsed
            });
        }
        let ttl_ms = expires_at
            .saturating_sub(now)
            .min(MAX_TTL_SECS)
            .saturating_mul(1000);
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(&key)
            .arg(&self.owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms);
        match self
            .bounded("claim", cmd.query_async::<Value>(&mut conn))
            .await?
        {
            Value::Okay => Ok(Claim::Claimed),
            Value::Nil => Ok(Claim::AlreadyUsed),
            other => {
                let e = RedisStoreError::Reply {
                    op: "claim",
                    reply: format!("{other:?}"),
                };
                self.metrics.replay_store_error("claim");
                Err(e)
            }
        }
    }

    async fn release_async(&self, key: &str) -> Result<(), RedisStoreError> {
        if check_key(key).is_err() {
            return Ok(()); // never claimed, nothing to give back
        }
        let mut conn = self.connection();
        let mut invocation = self.release.key(format!("{}{key}", self.prefix));
        invocation.arg(&self.owner);
        let deleted: Value = self
            .bounded("release", invocation.invoke_async(&mut conn))
            .await?;
        if deleted == Value::Int(0) {
            tracing::debug!(
                key_len = key.len(),
                "release: the claim was not ours any more (expired, or taken after expiry)"
            );
        }
        Ok(())
    }
}

impl ReplayGuard for RedisReplayGuard {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        expires_at: u64,
        now: u64,
    ) -> BoxFuture<'a, Result<Claim, ReplayStoreError>> {
        Box::pin(async move {
            check_key(key)?;
            self.claim_async(key, expires_at, now)
                .await
                .map_err(|e| ReplayStoreError(e.to_string()))
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ReplayStoreError>> {
        Box::pin(async move {
            self.release_async(key)
                .await
                .map_err(|e| ReplayStoreError(e.to_string()))
        })
    }

    fn status(&self) -> StoreStatus {
        let (up, error) = match self.health.lock() {
            Ok(h) => (h.up, h.error.clone()),
            Err(_) => (false, Some("health lock poisoned".into())),
        };
        StoreStatus {
            backend: "redis",
            url: Some(self.url.clone()),
            up,
            error,
        }
    }
}

#[cfg(test)]
pub(crate) mod server {
    //! A real `redis-server` for tests: its own free port and temp dir, no persistence, killed
    //! on drop. `REDIS_SERVER` overrides the binary (default: `redis-server` on the PATH;
    //! `make deps` installs the Debian package).

    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct RedisServer {
        child: Option<Child>,
        pub port: u16,
        dir: tempfile::TempDir,
        extra: Vec<String>,
    }

    fn free_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    impl RedisServer {
        pub fn start() -> Self {
            Self::start_with(&[])
        }

        /// With extra `redis-server` arguments (e.g. `--requirepass`, `x`).
        pub fn start_with(extra: &[&str]) -> Self {
            let mut s = Self {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            };
            s.spawn();
            s
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        pub fn pid(&self) -> u32 {
            self.child.as_ref().expect("running").id()
        }

        fn spawn(&mut self) {
            let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
            let port = self.port.to_string();
            let child = Command::new(&bin)
                .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .args(&self.extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {bin} ({e}): install redis-server (`make deps` does: apt-get install redis-server) or set REDIS_SERVER")
                });
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if self.answers() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("redis-server on port {} did not come up", self.port);
        }

        /// Whether the port answers a PING (`+PONG`, or `-NOAUTH` with a password).
        fn answers(&self) -> bool {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            if s.write_all(b"PING\r\n").is_err() {
                return false;
            }
            let mut buf = [0u8; 64];
            matches!(s.read(&mut buf), Ok(n) if n > 0)
        }

        pub fn stop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        /// Starts again on the same port, empty (no persistence).
        pub fn restart(&mut self) {
            self.stop();
            self.spawn();
        }

        /// SIGSTOP / SIGCONT: the port stays open but nothing answers.
        pub fn pause(&self, paused: bool) {
            let signal = if paused { "-STOP" } else { "-CONT" };
            let ok = Command::new("kill")
                .args([signal, &self.pid().to_string()])
                .status()
                .expect("kill")
                .success();
            assert!(ok, "kill {signal} failed");
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.stop(); // SIGKILL, which also ends a paused server
        }
    }
}

#[cfg(test)]
mod tests {
    use super::server::RedisServer;
    use super::*;
    use crate::config::secret::Secret;
    use crate::stores::replay::behaviour::{self, key};
    use std::time::Instant;

    fn settings(url: &str, password: Option<&str>) -> RedisSettings {
        RedisSettings {
            url: reqwest::Url::parse(url).expect("url"),
            password: password.map(Secret::new),
        }
    }

    fn guard(url: &str) -> RedisReplayGuard {
        RedisReplayGuard::new(&settings(url, None), Arc::new(Metrics::new())).expect("guard")
    }

    fn now() -> u64 {
        crate::clock::unix_now()
    }

    /// Retries `claim` of fresh keys until the store answers (reconnection), at most `secs`.
    async fn until_claims(g: &RedisReplayGuard, secs: u64) -> Duration {
        let start = Instant::now();
        loop {
            // Fresh every time: a claim that timed out may still have been written.
            let k = format!("l402:recover-{}", hex::encode(rand::random::<[u8; 8]>()));
            match g.claim(&k, now() + 60, now()).await {
                Ok(Claim::Claimed) => return start.elapsed(),
                Ok(Claim::AlreadyUsed) => panic!("fresh key {k} already used"),
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(secs),
                        "store still failing after {secs} s: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    #[tokio::test]
    async fn behaviour_table_holds_on_redis() {
        let server = RedisServer::start();
        let url = server.url();
        behaviour::run_table(
            |case| -> Arc<dyn ReplayGuard> {
                Arc::new(guard(&url).with_prefix(&format!("test:{case}:")))
            },
            true,
        )
        .await;
        // Keys are where they should be, with a TTL.
        let g = guard(&url);
        g.claim(&key(9), now() + 30, now()).await.expect("claim");
        let client = ::redis::Client::open(url.as_str()).expect("client");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(format!("{KEY_PREFIX}{}", key(9)))
            .query_async(&mut c)
            .await
            .expect("pttl");
        assert!((25_000..=30_000).contains(&ttl), "{ttl}");
    }

    #[tokio::test]
    async fn concurrent_claims_one_winner_across_replicas() {
        let server = RedisServer::start();
        let a: Arc<dyn ReplayGuard> = Arc::new(guard(&server.url()));
        let b: Arc<dyn ReplayGuard> = Arc::new(guard(&server.url()));
        behaviour::one_winner(&[a, b]).await;
    }

    #[tokio::test]
    async fn release_only_gives_back_our_own_claim() {
        let server = RedisServer::start();
        let a = guard(&server.url());
        let b = guard(&server.url());
        let k = key(7);
        assert_eq!(
            a.claim(&k, now() + 60, now()).await.ok(),
            Some(Claim::Claimed)
        );
        // Replica b never claimed it: its release leaves a's claim alone.
        b.release(&k).await.expect("release");
        assert_eq!(
            b.claim(&k, now() + 60, now()).await.ok(),
            Some(Claim::AlreadyUsed)
        );
        a.release(&k).await.expect("release");
        assert_eq!(
            b.claim(&k, now() + 60, now()).await.ok(),
            Some(Claim::Claimed)
        );
    }

    #[tokio::test]
    async fn redis_down_is_an_error_fast_then_claims_work_again() {
        let mut server = RedisServer::start();
        let metrics = Arc::new(Metrics::new());
        let g =
            RedisReplayGuard::new(&settings(&server.url(), None), metrics.clone()).expect("guard");
        assert!(!g.status().up, "not connected before first use");
        assert!(g.check().await.up);
        assert_eq!(
            g.claim(&key(1), now() + 60, now()).await.ok(),
            Some(Claim::Claimed)
        );

        server.stop();
        for i in 0..3u8 {
            let start = Instant::now();
            let r = g.claim(&key(10 + i), now() + 60, now()).await;
            assert!(r.is_err(), "claim with redis down: {r:?}");
            assert!(
                start.elapsed() < Duration::from_millis(1500),
                "{:?}",
                start.elapsed()
            );
        }
        assert!(g.release(&key(1)).await.is_err());
        let status = g.check().await;
        assert!(!status.up);
        assert!(status.error.is_some());
        let text = metrics.encode();
        assert!(text.contains("tollway_replay_store_up 0"), "{text}");
        assert!(
            text.contains("tollway_replay_store_errors_total{op=\"claim\"} 3"),
            "{text}"
        );

        server.restart();
        until_claims(&g, 10).await;
        assert!(g.status().up);
        assert!(metrics.encode().contains("tollway_replay_store_up 1"));
    }

    #[tokio::test]
    async fn hung_redis_times_out_then_recovers() {
        let server = RedisServer::start();
        let g = Arc::new(guard(&server.url()));
        assert!(g.check().await.up);
        let (stop_tx, stop_rx) = watch::channel(false);
        let watcher = tokio::spawn(g.clone().watch(stop_rx));

        server.pause(true);
        let start = Instant::now();
        let r = g.claim(&key(1), now() + 60, now()).await;
        let took = start.elapsed();
        server.pause(false);
        assert!(r.is_err(), "{r:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        assert!(!g.status().up);
        until_claims(&g, 10).await;

        // Paused long enough for the health task to replace the connection: still recovers.
        server.pause(true);
        tokio::time::sleep(PING_INTERVAL * (REBUILD_AFTER + 1)).await;
        assert!(!g.status().up);
        server.pause(false);
        until_claims(&g, 10).await;

        let _ = stop_tx.send(true);
        watcher.await.expect("watch task");
    }

    #[tokio::test]
    async fn persistence_is_read_from_redis() {
        let volatile = RedisServer::start();
        assert_eq!(guard(&volatile.url()).persistent().await, Some(false));
        let aof = RedisServer::start_with(&["--appendonly", "yes"]);
        assert_eq!(guard(&aof.url()).persistent().await, Some(true));
        let mut gone = RedisServer::start();
        gone.stop();
        assert_eq!(guard(&gone.url()).persistent().await, None);
    }

    #[tokio::test]
    async fn starts_without_redis_and_connects_when_it_appears() {
        let mut server = RedisServer::start();
        server.stop();
        let g = guard(&server.url());
        assert!(!g.check().await.up);
        assert!(g.claim(&key(1), now() + 60, now()).await.is_err());
        server.restart();
        until_claims(&g, 10).await;
    }

    #[tokio::test]
    async fn password_by_reference_is_used_and_never_shown() {
        let password = "correct horse battery staple 42";
        let server = RedisServer::start_with(&["--requirepass", password]);
        let s = settings(&server.url(), Some(password));
        assert!(!format!("{s:?}").contains(password));
        let g = RedisReplayGuard::new(&s, Arc::new(Metrics::new())).expect("guard");
        assert_eq!(
            g.claim(&key(1), now() + 60, now()).await.ok(),
            Some(Claim::Claimed)
        );
        let status = g.status();
        assert!(status.up);
        assert!(!serde_json::to_string(&status)
            .expect("json")
            .contains(password));

        // Without it: refused, and the error says so without any secret.
        let without = guard(&server.url());
        let e = without
            .claim(&key(2), now() + 60, now())
            .await
            .expect_err("no password");
        assert!(!e.to_string().contains(password));
        let status = without.status();
        assert!(!status.up);
        assert!(!format!("{status:?}").contains(password));
    }
}
