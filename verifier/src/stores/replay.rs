//! Replay guard: a payment is accepted once.
//!
//! Keys are strings: an EVM authorization is `network/asset/payer/nonce` (the `Display` of
//! protocol's `ReplayKey`), a Lightning invoice paid through x402 `bip122:<payment hash>`, a
//! single-use L402 token `l402:<payment hash>`, a single-use lease `lease:<lease id>`. A claim
//! is taken *before* the facilitator or the node is asked, so two concurrent requests carrying
//! the same payment cannot both pass. The in-memory store serves one node; a shared store
//! ([`RedisReplayGuard`], `SET NX PX`) implements the same trait for many replicas. A store
//! error means "unavailable": the caller fails closed.

pub mod redis;

pub use self::redis::RedisReplayGuard;

use std::sync::Arc;

use crate::stores::ledger::{Ledger, Op};

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use serde::Serialize;

/// Seconds a claim outlives the authorization's `validBefore` (clock skew between us and the
/// chain).
pub const EXPIRY_MARGIN_SECS: u64 = 120;

/// Longest key accepted (ours are under 200 bytes).
pub const MAX_KEY_LEN: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This caller owns the nonce now.
    Claimed,
    /// Someone claimed it before.
    AlreadyUsed,
}

#[derive(Debug, thiserror::Error)]
#[error("replay store unavailable: {0}")]
pub struct ReplayStoreError(pub String);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What `/readyz` says about the store (never a credential).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoreStatus {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// The Redis URL (it never holds a password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Whether the last operation or health check reached the store.
    pub up: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StoreStatus {
    pub fn memory() -> Self {
        Self {
            backend: "memory",
            url: None,
            up: true,
            error: None,
        }
    }
}

pub trait ReplayGuard: Send + Sync {
    /// Atomically claims `key` until `expires_at` (unix seconds).
    fn claim<'a>(
        &'a self,
        key: &'a str,
        expires_at: u64,
        now: u64,
    ) -> BoxFuture<'a, Result<Claim, ReplayStoreError>>;

    /// Gives a claim back (the payment was never accepted, e.g. the facilitator was down).
    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ReplayStoreError>>;

    /// Whether someone holds `key` at `now`. A claim that ends on arrival holds nothing but
    /// loses to a live one (in every store), so asking for one is a read that takes nothing.
    fn held<'a>(&'a self, key: &'a str, now: u64) -> BoxFuture<'a, Result<bool, ReplayStoreError>> {
        Box::pin(async move { Ok(self.claim(key, now, now).await? == Claim::AlreadyUsed) })
    }

    /// Reachability, for `/readyz`.
    fn status(&self) -> StoreStatus {
        StoreStatus::memory()
    }
}

/// Whether `key` may be claimed at all (the same rule for every store).
pub(crate) fn check_key(key: &str) -> Result<(), ReplayStoreError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ReplayStoreError(format!(
            "replay key of {} bytes refused",
            key.len()
        )));
    }
    Ok(())
}

/// Claims in the ledger database (table `claims`): durable, so a used credential stays used
/// across a restart; shared by every replica when the ledger is PostgreSQL. A claim is
/// committed before it is answered. The default store.
pub struct LedgerReplayGuard {
    ledger: Arc<Ledger>,
}

impl LedgerReplayGuard {
    pub fn new(ledger: Arc<Ledger>) -> Self {
        Self { ledger }
    }

    /// Forgets claims that ended before `now` (unix seconds).
    pub fn prune(&self, now: u64) {
        self.ledger.queue(vec![Op::PruneClaims(
            i64::try_from(now).unwrap_or(i64::MAX),
        )]);
    }
}

fn secs(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

impl ReplayGuard for LedgerReplayGuard {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        expires_at: u64,
        now: u64,
    ) -> BoxFuture<'a, Result<Claim, ReplayStoreError>> {
        Box::pin(async move {
            check_key(key)?;
            let op = Op::Claim {
                key: key.to_owned(),
                until: secs(expires_at),
                now: secs(now),
            };
            match self.ledger.write(vec![op], false).await {
                Ok(true) => Ok(Claim::Claimed),
                Ok(false) => Ok(Claim::AlreadyUsed),
                Err(e) => Err(ReplayStoreError(e.to_string())),
            }
        })
    }

    fn held<'a>(&'a self, key: &'a str, now: u64) -> BoxFuture<'a, Result<bool, ReplayStoreError>> {
        Box::pin(async move {
            self.ledger
                .claim_held(key, secs(now))
                .await
                .map_err(|e| ReplayStoreError(e.to_string()))
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ReplayStoreError>> {
        Box::pin(async move {
            self.ledger
                .write(vec![Op::Unclaim(key.to_owned())], true)
                .await
                .map(|_| ())
                .map_err(|e| ReplayStoreError(e.to_string()))
        })
    }

    fn status(&self) -> StoreStatus {
        StoreStatus {
            backend: "ledger",
            url: None,
            up: self.ledger.writable(),
            error: self.ledger.last_error(),
        }
    }
}

/// Single-node store: a map of claims, expired entries swept every so often. Forgets every
/// claim on restart: only for tests and throwaway setups (`stores.replay: memory`).
#[derive(Default)]
pub struct MemoryReplayGuard {
    claims: Mutex<Claims>,
}

#[derive(Default)]
struct Claims {
    map: HashMap<String, u64>,
    since_sweep: usize,
}

const SWEEP_EVERY: usize = 1024;

impl MemoryReplayGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims currently held (expired ones included until the next sweep).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.claims.lock().map(|c| c.map.len()).unwrap_or(0)
    }

    fn claim_sync(&self, key: &str, expires_at: u64, now: u64) -> Result<Claim, ReplayStoreError> {
        check_key(key)?;
        let mut c = self
            .claims
            .lock()
            .map_err(|_| ReplayStoreError("replay map lock poisoned".into()))?;
        c.since_sweep += 1;
        if c.since_sweep >= SWEEP_EVERY {
            c.since_sweep = 0;
            c.map.retain(|_, exp| *exp > now);
        }
        match c.map.get(key) {
            Some(exp) if *exp > now => Ok(Claim::AlreadyUsed),
            _ => {
                c.map.insert(key.to_owned(), expires_at);
                Ok(Claim::Claimed)
            }
        }
    }
}

impl ReplayGuard for MemoryReplayGuard {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        expires_at: u64,
        now: u64,
    ) -> BoxFuture<'a, Result<Claim, ReplayStoreError>> {
        let r = self.claim_sync(key, expires_at, now);
        Box::pin(async move { r })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ReplayStoreError>> {
        let r = self
            .claims
            .lock()
            .map(|mut c| {
                c.map.remove(key);
            })
            .map_err(|_| ReplayStoreError("replay map lock poisoned".into()));
        Box::pin(async move { r })
    }
}

/// The behaviour every [`ReplayGuard`] shows, as a table: run here on the in-memory store and in
/// [`redis`] on a real `redis-server`.
#[cfg(test)]
pub(crate) mod behaviour {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Expect {
        Claimed,
        AlreadyUsed,
        /// An error (a refused key here; the caller fails closed either way).
        Refused,
    }

    pub enum Step {
        /// `claim(key, now + ttl, now)`.
        Claim(String, u64, Expect),
        /// `release(key)`, which must succeed.
        Release(String),
        /// `held(key, now)` answers this (and takes nothing).
        Held(String, bool),
        /// `secs` seconds pass: `now` moves on; a store with its own clock (Redis) really waits.
        Advance(u64),
    }

    pub struct Case {
        pub name: &'static str,
        pub steps: Vec<Step>,
    }

    pub fn key_on(network: &str, payer: u8, n: u8) -> String {
        tollway_protocol::x402::ReplayKey {
            network: network.parse().expect("network"),
            asset: tollway_protocol::evm::EvmAddress([0xaa; 20]),
            payer: tollway_protocol::evm::EvmAddress([payer; 20]),
            nonce: [n; 32],
        }
        .to_string()
    }

    pub fn key(n: u8) -> String {
        key_on("eip155:84532", 1, n)
    }

    pub fn cases() -> Vec<Case> {
        use Expect::*;
        use Step::*;
        let hash = "ab".repeat(32);
        let (bip122, l402, lease) = (
            format!("bip122:{hash}"),
            format!("l402:{hash}"),
            format!("lease:{}", "0f".repeat(16)),
        );
        vec![
            Case {
                name: "second_claim_fails_until_expiry",
                steps: vec![
                    Claim(key(1), 2, Claimed),
                    Advance(1),
                    // Still held; a refused claim does not extend the holder's expiry.
                    Claim(key(1), 600, AlreadyUsed),
                    // Different nonce, payer or network is independent.
                    Claim(key(2), 2, Claimed),
                    Claim(key_on("eip155:84532", 2, 1), 2, Claimed),
                    Claim(key_on("eip155:8453", 1, 1), 2, Claimed),
                    Advance(1),
                    // After expiry the slot is free again (the authorization is dead anyway).
                    Claim(key(1), 2, Claimed),
                    Claim(key(1), 2, AlreadyUsed),
                ],
            },
            Case {
                name: "lightning_and_lease_keys_are_independent",
                steps: vec![
                    Claim(bip122.clone(), 100, Claimed),
                    Claim(l402.clone(), 100, Claimed),
                    Claim(l402, 100, AlreadyUsed),
                    Claim(bip122, 100, AlreadyUsed),
                    Claim(lease.clone(), 100, Claimed),
                    Claim(lease, 100, AlreadyUsed),
                ],
            },
            Case {
                name: "keys_are_checked",
                steps: vec![
                    Claim(String::new(), 100, Refused),
                    Claim("x".repeat(MAX_KEY_LEN + 1), 100, Refused),
                    Claim("x".repeat(MAX_KEY_LEN), 100, Claimed),
                    Claim("x".repeat(MAX_KEY_LEN), 100, AlreadyUsed),
                    // Releasing a key that can never be claimed is a no-op.
                    Release(String::new()),
                ],
            },
            Case {
                name: "release_frees",
                steps: vec![
                    Claim(key(1), 100, Claimed),
                    Release(key(1)),
                    Claim(key(1), 100, Claimed),
                    Claim(key(1), 100, AlreadyUsed),
                    // Releasing what was never claimed is fine and changes nothing.
                    Release(key(3)),
                    Claim(key(3), 100, Claimed),
                ],
            },
            Case {
                name: "a_claim_expired_on_arrival_holds_nothing",
                steps: vec![
                    Claim(key(4), 0, Claimed),
                    Claim(key(4), 0, Claimed),
                    Claim(key(4), 100, Claimed),
                    Claim(key(4), 0, AlreadyUsed),
                ],
            },
            Case {
                name: "held_reads_without_taking",
                steps: vec![
                    Held(key(5), false),
                    Held(key(5), false),
                    Claim(key(5), 2, Claimed),
                    Held(key(5), true),
                    Claim(key(5), 2, AlreadyUsed),
                    Release(key(5)),
                    Held(key(5), false),
                    Claim(key(5), 2, Claimed),
                    Advance(2),
                    Held(key(5), false),
                ],
            },
        ]
    }

    /// Runs every case on a fresh guard from `fresh(case name)`. `real_time`: `Advance` sleeps
    /// (for a store that keeps its own clock).
    pub async fn run_table(fresh: impl Fn(&str) -> Arc<dyn ReplayGuard>, real_time: bool) {
        for case in cases() {
            let g = fresh(case.name);
            let mut now = crate::clock::unix_now();
            for (i, step) in case.steps.iter().enumerate() {
                match step {
                    Step::Claim(k, ttl, expect) => {
                        let got = match g.claim(k, now + ttl, now).await {
                            Ok(Claim::Claimed) => Expect::Claimed,
                            Ok(Claim::AlreadyUsed) => Expect::AlreadyUsed,
                            Err(_) => Expect::Refused,
                        };
                        assert_eq!(
                            got,
                            *expect,
                            "{}: step {i}: claim of a {}-byte key",
                            case.name,
                            k.len()
                        );
                    }
                    Step::Held(k, expect) => {
                        let held = g.held(k, now).await;
                        assert_eq!(held.ok(), Some(*expect), "{}: step {i}: held", case.name);
                    }
                    Step::Release(k) => {
                        if let Err(e) = g.release(k).await {
                            panic!("{}: step {i}: release: {e}", case.name);
                        }
                    }
                    Step::Advance(secs) => {
                        now += secs;
                        if real_time {
                            tokio::time::sleep(
                                Duration::from_secs(*secs) + Duration::from_millis(150),
                            )
                            .await;
                        }
                    }
                }
            }
        }
    }

    /// 64 concurrent claims of one key, spread over `guards` (replicas): exactly one wins.
    pub async fn one_winner(guards: &[Arc<dyn ReplayGuard>]) {
        let now = crate::clock::unix_now();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let g = guards[i % guards.len()].clone();
            tasks.push(tokio::spawn(async move {
                g.claim(&key(0xff), now + 1000, now).await.expect("store")
            }));
        }
        let mut won = 0;
        for t in tasks {
            if t.await.expect("join") == Claim::Claimed {
                won += 1;
            }
        }
        assert_eq!(won, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::behaviour::{self, key};
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn behaviour_table_holds_in_memory() {
        behaviour::run_table(|_| Arc::new(MemoryReplayGuard::new()), false).await;
    }

    #[tokio::test]
    async fn concurrent_claims_one_winner() {
        behaviour::one_winner(&[Arc::new(MemoryReplayGuard::new())]).await;
    }

    #[tokio::test]
    async fn sweep_drops_expired() {
        let g = MemoryReplayGuard::new();
        for i in 0..SWEEP_EVERY - 1 {
            g.claim(&format!("l402:{i}"), 5, 0).await.expect("claim");
        }
        // The SWEEP_EVERY-th call sweeps what expired by then.
        g.claim(&key(0xee), 500, 10).await.expect("claim");
        assert_eq!(g.len(), 1);
    }
}

#[cfg(test)]
mod ledger_tests {
    use super::behaviour::{key, run_table};
    use super::*;
    use crate::metrics::Metrics;
    use crate::stores::ledger::LedgerLocation;

    fn guard_at(path: &std::path::Path) -> LedgerReplayGuard {
        let ledger = Ledger::open(
            &LedgerLocation::Sqlite(path.to_owned()),
            Arc::new(Metrics::new()),
        )
        .expect("ledger");
        LedgerReplayGuard::new(Arc::new(ledger))
    }

    #[tokio::test]
    async fn the_behaviour_table_holds_on_the_ledger() {
        let dirs = std::sync::Mutex::new(Vec::new());
        run_table(
            |_| {
                let dir = tempfile::tempdir().expect("tempdir");
                let g: Arc<dyn ReplayGuard> = Arc::new(guard_at(&dir.path().join("ledger.db")));
                if let Ok(mut d) = dirs.lock() {
                    d.push(dir);
                }
                g
            },
            false,
        )
        .await;
    }

    #[tokio::test]
    async fn a_used_credential_stays_used_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        let now = crate::clock::unix_now();
        let first = guard_at(&path);
        assert_eq!(
            first.claim(&key(1), now + 600, now).await.expect("claim"),
            Claim::Claimed
        );
        drop(first);
        // The verifier was killed and started again on the same ledger.
        let again = guard_at(&path);
        assert_eq!(
            again.claim(&key(1), now + 600, now).await.expect("claim"),
            Claim::AlreadyUsed
        );
        // Pruned only once it has ended.
        again.prune(now);
        assert_eq!(
            again.claim(&key(1), now + 600, now).await.expect("claim"),
            Claim::AlreadyUsed
        );
        again.prune(now + 601);
        assert_eq!(
            again
                .claim(&key(1), now + 1200, now + 601)
                .await
                .expect("claim"),
            Claim::Claimed
        );
        assert_eq!(again.status().backend, "ledger");
    }
}
