//! The invoices a Lightning rail has minted, and how many it mints. Every unpaid request on a
//! Lightning route used to mint a fresh invoice: anyone could fill the node's invoice database
//! (and our memory and ledger) for free. Now:
//!
//! - a client asking again for the same thing (route, path, method) while its invoice is open
//!   gets that invoice again;
//! - each client (its address as Envoy sees it; IPv6 by /64) has at most `per_client` open
//!   invoices, and all clients together at most `total`. Beyond that nothing is minted: the 402
//!   offers x402 alone, or, on a Lightning-only route, 429 with `Retry-After` (when the oldest
//!   open invoice in the way expires).
//!
//! An invoice stops counting when it is paid and used (claimed) or when it expires.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;

use super::l402::MintedChallenge;

/// The limits (`lightning.invoice_limits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvoiceLimits {
    pub per_client: usize,
    pub total: usize,
}

impl Default for InvoiceLimits {
    fn default() -> Self {
        Self {
            per_client: 10,
            total: 10_000,
        }
    }
}

/// An invoice is handed out again only while this share of its lifetime is left (so a client
/// has time to pay it), and at least [`REUSE_MIN_LEFT_SECS`].
const REUSE_MIN_LEFT_SHARE: u64 = 4;
const REUSE_MIN_LEFT_SECS: u64 = 30;

/// Who asks, for the limits: an IPv4 address, an IPv6 /64, or what Envoy gave when it is not an
/// address (bounded).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(String);

impl ClientId {
    /// From Envoy's `source.address` (`ip:port`, `[v6]:port`, or a bare address).
    pub fn from_source(source: &str) -> ClientId {
        let host = match source.parse::<std::net::SocketAddr>() {
            Ok(sa) => Some(sa.ip()),
            Err(_) => source.parse::<IpAddr>().ok(),
        };
        ClientId(match host {
            Some(IpAddr::V4(v4)) => v4.to_string(),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => {
                    let s = v6.segments();
                    format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
            None => source.chars().take(64).collect(),
        })
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Minting would pass a limit: nothing minted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invoice limit reached ({scope}); retry in {retry_after} s")]
pub struct Limited {
    /// `client` or `total`.
    pub scope: &'static str,
    /// Seconds until the oldest open invoice in the way expires.
    pub retry_after: u64,
}

/// What a request asks an invoice for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ask {
    pub client: ClientId,
    pub route: String,
    pub path: Option<String>,
    pub method: Option<String>,
}

struct Open {
    ask: Ask,
    challenge: MintedChallenge,
    minted_at: u64,
    expires_at: u64,
}

#[derive(Default)]
struct Book {
    /// Open invoices by payment hash.
    open: HashMap<[u8; 32], Open>,
    /// The open invoice for each ask (the one handed out again).
    by_ask: HashMap<Ask, [u8; 32]>,
    /// Each client's open invoices, oldest first.
    by_client: HashMap<ClientId, VecDeque<[u8; 32]>>,
    /// All open invoices, oldest first (expiry order: one lifetime for all).
    order: VecDeque<[u8; 32]>,
}

/// Open invoices and their limits.
pub struct InvoiceBook {
    limits: InvoiceLimits,
    book: Mutex<Book>,
}

impl InvoiceBook {
    pub fn new(limits: InvoiceLimits) -> Self {
        Self {
            limits,
            book: Mutex::new(Book::default()),
        }
    }

    /// The open invoice already minted for `ask`, while enough of its life is left.
    pub fn reuse(&self, ask: &Ask, now: u64) -> Option<MintedChallenge> {
        let mut book = self.book.lock().ok()?;
        book.sweep(now);
        let hash = *book.by_ask.get(ask)?;
        let open = book.open.get(&hash)?;
        let lifetime = open.expires_at.saturating_sub(open.minted_at);
        let need = (lifetime / REUSE_MIN_LEFT_SHARE).max(REUSE_MIN_LEFT_SECS);
        (open.expires_at.saturating_sub(now) > need).then(|| open.challenge.clone())
    }

    /// Whether one more invoice may be minted for `client` now.
    pub fn admit(&self, client: &ClientId, now: u64) -> Result<(), Limited> {
        let Ok(mut book) = self.book.lock() else {
            return Err(Limited {
                scope: "total",
                retry_after: 1,
            });
        };
        book.sweep(now);
        let retry = |book: &Book, oldest: Option<&[u8; 32]>| {
            oldest
                .and_then(|h| book.open.get(h))
                .map_or(1, |o| o.expires_at.saturating_sub(now).max(1))
        };
        if let Some(mine) = book.by_client.get(client) {
            if mine.len() >= self.limits.per_client {
                return Err(Limited {
                    scope: "client",
                    retry_after: retry(&book, mine.front()),
                });
            }
        }
        if book.open.len() >= self.limits.total {
            return Err(Limited {
                scope: "total",
                retry_after: retry(&book, book.order.front()),
            });
        }
        Ok(())
    }

    /// Records a newly minted invoice for `ask` (admitted just before).
    pub fn record(&self, ask: Ask, challenge: &MintedChallenge, now: u64) {
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        let hash = challenge.invoice.payment_hash;
        // An earlier invoice for the same ask (too close to expiry to hand out) still counts
        // until it expires or is paid; this one is handed out from now on.
        book.by_ask.insert(ask.clone(), hash);
        book.by_client
            .entry(ask.client.clone())
            .or_default()
            .push_back(hash);
        book.order.push_back(hash);
        book.open.insert(
            hash,
            Open {
                ask,
                challenge: challenge.clone(),
                minted_at: now,
                expires_at: challenge.invoice.expires_at,
            },
        );
    }

    /// The invoice was paid and used: it no longer counts, and is not handed out again.
    pub fn spent(&self, payment_hash: &[u8; 32]) {
        if let Ok(mut book) = self.book.lock() {
            book.remove(payment_hash);
        }
    }

    /// Forgets expired invoices; answers how many are open.
    pub fn sweep_count(&self, now: u64) -> usize {
        self.book
            .lock()
            .map(|mut b| {
                b.sweep(now);
                b.open.len()
            })
            .unwrap_or(0)
    }
}

impl Book {
    fn remove(&mut self, hash: &[u8; 32]) {
        if self.forget(hash) {
            self.order.retain(|h| h != hash);
        }
    }

    /// Forgets expired invoices (oldest first: every invoice lives as long, so they expire in
    /// the order they were minted).
    fn sweep(&mut self, now: u64) {
        while let Some(hash) = self.order.front().copied() {
            if self.open.get(&hash).is_some_and(|o| o.expires_at > now) {
                break;
            }
            self.order.pop_front();
            self.forget(&hash);
        }
    }

    /// Drops `hash` from every index but `order`; whether it was open.
    fn forget(&mut self, hash: &[u8; 32]) -> bool {
        let Some(open) = self.open.remove(hash) else {
            return false;
        };
        if self.by_ask.get(&open.ask) == Some(hash) {
            self.by_ask.remove(&open.ask);
        }
        if let Some(mine) = self.by_client.get_mut(&open.ask.client) {
            mine.retain(|h| h != hash);
            if mine.is_empty() {
                self.by_client.remove(&open.ask.client);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rails::lightning::Invoice;

    fn challenge(n: u8, expires_at: u64) -> MintedChallenge {
        MintedChallenge {
            invoice: Invoice {
                bolt11: format!("lnbcrt{n}"),
                payment_hash: [n; 32],
                amount_msat: 21_000,
                expires_at,
            },
            macaroon: format!("mac{n}"),
            x402_offer: String::new(),
        }
    }

    fn ask(client: &str, path: &str) -> Ask {
        Ask {
            client: ClientId::from_source(client),
            route: "sats".into(),
            path: Some(path.into()),
            method: Some("GET".into()),
        }
    }

    #[test]
    fn clients_are_addresses_and_v6_prefixes() {
        let id = |s| ClientId::from_source(s).to_string();
        assert_eq!(id("10.0.0.7:51234"), "10.0.0.7");
        assert_eq!(id("10.0.0.7"), "10.0.0.7");
        assert_eq!(id("[2001:db8:1:2:3:4:5:6]:443"), "2001:db8:1:2::/64");
        assert_eq!(id("[2001:db8:1:2:ffff::1]:1"), "2001:db8:1:2::/64");
        assert_eq!(id("[::ffff:192.0.2.1]:80"), "192.0.2.1");
        assert_eq!(id(&"x".repeat(500)).len(), 64);
    }

    #[test]
    fn the_same_ask_gets_the_same_invoice_while_it_has_time() {
        let book = InvoiceBook::new(InvoiceLimits::default());
        let a = ask("10.0.0.1:1", "/api/sats");
        assert!(book.reuse(&a, 1000).is_none());
        book.admit(&a.client, 1000).expect("admitted");
        book.record(a.clone(), &challenge(1, 1600), 1000);
        assert_eq!(
            book.reuse(&a, 1100).map(|c| c.macaroon),
            Some("mac1".into())
        );
        // Another path, method or client is another ask.
        assert!(book.reuse(&ask("10.0.0.1:1", "/api/other"), 1100).is_none());
        assert!(book.reuse(&ask("10.0.0.2:1", "/api/sats"), 1100).is_none());
        // Too little time left to pay (under a quarter of its life): not handed out.
        assert!(book.reuse(&a, 1460).is_none());
        // Paid and used: never again.
        book.spent(&[1; 32]);
        assert!(book.reuse(&a, 1100).is_none());
        assert_eq!(book.sweep_count(0), 0);
    }

    #[test]
    fn limits_per_client_and_in_total() {
        let book = InvoiceBook::new(InvoiceLimits {
            per_client: 2,
            total: 3,
        });
        let a = ask("10.0.0.1:1", "/a");
        for n in 0..2u8 {
            book.admit(&a.client, 1000).expect("admitted");
            book.record(
                ask("10.0.0.1:1", &format!("/a{n}")),
                &challenge(n, 1600 + u64::from(n)),
                1000,
            );
        }
        assert_eq!(
            book.admit(&a.client, 1010),
            Err(Limited {
                scope: "client",
                retry_after: 590
            })
        );
        // Another client may still mint, up to the total.
        let b = ask("10.0.0.2:1", "/b");
        book.admit(&b.client, 1010).expect("admitted");
        book.record(b.clone(), &challenge(9, 1700), 1010);
        assert_eq!(
            book.admit(&ask("10.0.0.3:1", "/c").client, 1010),
            Err(Limited {
                scope: "total",
                retry_after: 590
            })
        );
        // A paid invoice frees its slot; expiry frees the rest.
        book.spent(&[0; 32]);
        book.admit(&a.client, 1010).expect("a slot again");
        assert_eq!(book.sweep_count(0), 2);
        book.admit(&ask("10.0.0.3:1", "/c").client, 1601)
            .expect("expired");
        assert_eq!(book.sweep_count(0), 1);
        book.admit(&a.client, 1700).expect("all expired");
        assert_eq!(book.sweep_count(0), 0);
    }
}
