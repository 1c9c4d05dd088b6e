//! Replay guard: a payment is accepted once.
//!
//! Keys are strings: an EVM authorization is `network/asset/payer/nonce` (the `Display` of
//! protocol's `ReplayKey`), a Lightning invoice paid through x402 `bip122:<payment hash>`, a
//! single-use L402 token `l402:<payment hash>`, a single-use lease `lease:<lease id>`. A claim
//! is taken *before* the facilitator or the node is asked, so two concurrent requests carrying
//! the same payment cannot both pass. The in-memory store serves one node; a shared store
//! (Redis `SET NX PX`) implements the same trait for many replicas. A store error means
//! "unavailable": the caller fails closed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

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
}

/// Single-node store: a map of claims, expired entries swept every so often.
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
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(ReplayStoreError(format!(
                "replay key of {} bytes refused",
                key.len()
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key_on(network: &str, payer: u8, n: u8) -> String {
        tollway_protocol::x402::ReplayKey {
            network: network.parse().expect("network"),
            asset: tollway_protocol::evm::EvmAddress([0xaa; 20]),
            payer: tollway_protocol::evm::EvmAddress([payer; 20]),
            nonce: [n; 32],
        }
        .to_string()
    }

    fn key(n: u8) -> String {
        key_on("eip155:84532", 1, n)
    }

    #[tokio::test]
    async fn second_claim_fails_until_expiry() {
        let g = MemoryReplayGuard::new();
        assert_eq!(g.claim(&key(1), 100, 10).await.ok(), Some(Claim::Claimed));
        assert_eq!(
            g.claim(&key(1), 100, 11).await.ok(),
            Some(Claim::AlreadyUsed)
        );
        // Different nonce, payer or network is independent.
        assert_eq!(g.claim(&key(2), 100, 12).await.ok(), Some(Claim::Claimed));
        assert_eq!(
            g.claim(&key_on("eip155:84532", 2, 1), 100, 12).await.ok(),
            Some(Claim::Claimed)
        );
        assert_eq!(
            g.claim(&key_on("eip155:8453", 1, 1), 100, 12).await.ok(),
            Some(Claim::Claimed)
        );
        // After expiry the slot is free again (the authorization is dead on chain anyway).
        assert_eq!(g.claim(&key(1), 300, 100).await.ok(), Some(Claim::Claimed));
    }

    #[tokio::test]
    async fn lightning_keys_are_independent() {
        let g = MemoryReplayGuard::new();
        let hash = "ab".repeat(32);
        let bip122 = format!("bip122:{hash}");
        let l402 = format!("l402:{hash}");
        assert_eq!(g.claim(&bip122, 100, 0).await.ok(), Some(Claim::Claimed));
        assert_eq!(g.claim(&l402, 100, 0).await.ok(), Some(Claim::Claimed));
        assert_eq!(g.claim(&l402, 100, 1).await.ok(), Some(Claim::AlreadyUsed));
        assert!(g.claim("", 100, 0).await.is_err());
        assert!(g.claim(&"x".repeat(MAX_KEY_LEN + 1), 100, 0).await.is_err());
    }

    #[tokio::test]
    async fn release_frees() {
        let g = MemoryReplayGuard::new();
        g.claim(&key(1), 100, 0).await.expect("claim");
        g.release(&key(1)).await.expect("release");
        assert_eq!(g.claim(&key(1), 100, 0).await.ok(), Some(Claim::Claimed));
    }

    #[tokio::test]
    async fn concurrent_claims_one_winner() {
        let g = Arc::new(MemoryReplayGuard::new());
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let g = g.clone();
            tasks.push(tokio::spawn(async move {
                g.claim(&key(0xff), 1000, 1).await.expect("store")
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
