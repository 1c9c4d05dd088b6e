//! Verified L402 credentials, remembered per filter VM so a reusable token presented again costs
//! a hash lookup instead of the macaroon's HMAC chain. Keyed by the exact credential bytes and
//! the request's path and method (what caveats bind), so only the same request can hit; expiry
//! is re-checked on every hit.

use super::verify::VerifiedToken;
use crate::cache::Memo;

#[derive(Default)]
pub struct VerifiedCache {
    memo: Memo<Key, VerifiedToken>,
}

#[derive(PartialEq, Eq, Hash)]
struct Key {
    credential: Vec<u8>,
    path: String,
    method: String,
}

impl VerifiedCache {
    /// `authorization` is every Authorization value of the request, in order.
    pub fn get(
        &self,
        authorization: &[&[u8]],
        path: &str,
        method: &str,
        now: u64,
    ) -> Option<VerifiedToken> {
        let key = Key::new(authorization, path, method);
        self.memo.get(&key).filter(|t| now < t.valid_until).cloned()
    }

    pub fn insert(
        &mut self,
        authorization: &[&[u8]],
        path: &str,
        method: &str,
        token: VerifiedToken,
    ) {
        self.memo
            .insert(Key::new(authorization, path, method), token);
    }
}

impl Key {
    fn new(authorization: &[&[u8]], path: &str, method: &str) -> Key {
        let mut credential = Vec::with_capacity(authorization.iter().map(|v| v.len() + 1).sum());
        for value in authorization {
            credential.extend_from_slice(value);
            // A separator no header value contains, so two splits of one byte string differ.
            credential.push(b'\n');
        }
        Key {
            credential,
            path: path.to_owned(),
            method: method.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l402::identifier::{PaymentHash, TokenId};

    fn token(valid_until: u64) -> VerifiedToken {
        VerifiedToken {
            payment_hash: PaymentHash([1; 32]),
            token_id: TokenId([2; 32]),
            valid_until,
        }
    }

    #[test]
    fn hits_only_the_same_request_before_expiry() {
        let mut cache = VerifiedCache::default();
        let auth: [&[u8]; 1] = [b"L402 mac:pre"];
        cache.insert(&auth, "/a", "GET", token(100));
        assert!(cache.get(&auth, "/a", "GET", 99).is_some());
        assert!(cache.get(&auth, "/a", "GET", 100).is_none(), "expired");
        assert!(cache.get(&auth, "/b", "GET", 1).is_none());
        assert!(cache.get(&auth, "/a", "POST", 1).is_none());
        assert!(cache.get(&[b"L402 mac:prf"], "/a", "GET", 1).is_none());
        let split: [&[u8]; 2] = [b"L402 mac", b":pre"];
        assert!(cache.get(&split, "/a", "GET", 1).is_none());
    }
}
