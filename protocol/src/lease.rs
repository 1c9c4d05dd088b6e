//! Lease tokens: what a client holds after paying once for a stream or a WebSocket.
//!
//! `base64url(payload) "." base64url(HMAC-SHA256(lease_key, "tollway/lease/v1" || payload))`,
//! no padding, so the token is safe in a header and in a query parameter. The payload binds the
//! lease id, the route, the method, the concrete path and the expiry; it is checked with no
//! store (single-use leases are claimed at the verifier by id).
//!
//! payload = version (2) | key id (4) | id (16) | expires_at (u64 BE) | flags (1) | route |
//! method | path, the last three each as u16 BE length + bytes. The key id names the key that
//! signed it (see `keys`: a token minted before a rotation keeps working through the rotation
//! window). Version 1 (no key id) is still read, checked with the current key.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::hmac::hmac_sha256;
use crate::keys::{KeyId, KeySet};

/// Request header carrying a lease (preferred).
pub const HEADER_LEASE: &str = "x-x402-lease";
/// Query parameter carrying a lease where headers cannot be set (`EventSource`, browsers'
/// `WebSocket`).
pub const QUERY_LEASE: &str = "t";
/// Longest token accepted, checked before any decoding; [`Lease::try_mint`] refuses to make a
/// longer one. The one limit both sides share: see [`token_len`] and [`mintable`].
pub const MAX_TOKEN_LEN: usize = 4096;

/// Bytes of a payload besides its three strings: version, key id, id, expiry, flags, three
/// lengths.
const PAYLOAD_FIXED_LEN: usize = 1 + 4 + 16 + 8 + 1 + 3 * 2;
/// `"." base64url(32-byte MAC)`.
const MAC_PART_LEN: usize = 1 + 43;

const VERSION: u8 = 2;
/// Tokens minted before key ids.
const VERSION_NO_KEY_ID: u8 = 1;
const KEY_LABEL: &[u8] = b"tollway/lease/v1/key";
const MAC_LABEL: &[u8] = b"tollway/lease/v1";
const FLAG_SINGLE_USE: u8 = 1;

pub const REASON_REQUIRED: &str = "lease_required";
pub const REASON_INVALID: &str = "lease_invalid";
pub const REASON_EXPIRED: &str = "lease_expired";
pub const REASON_ALREADY_USED: &str = "lease_already_used";
pub const REASON_NOT_RENEWABLE: &str = "lease_not_renewable";
pub const REASON_OUTSIDE_WINDOW: &str = "lease_renewal_outside_window";
/// A lease on this path cannot be sold: its token would exceed [`MAX_TOKEN_LEN`].
pub const REASON_TOO_LONG: &str = "lease_path_too_long";

/// One renewal of one lease: the extension of lease `id` from `from` (its expiry when renewed).
/// It is sold once: a second payment for it is refused before it is taken, and asking again
/// returns the lease already bought (the filter mints the same token again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    pub id: [u8; 16],
    pub from: u64,
}

impl Renewal {
    const PREFIX: &'static str = "renewal:";

    /// The renewal a token's holder asks for.
    pub fn of(lease: &Lease) -> Renewal {
        Renewal {
            id: lease.id,
            from: lease.expires_at,
        }
    }

    /// `renewal:<lease id hex>:<from>`: the purchase key the filter sends and the claims store
    /// holds.
    pub fn key(&self) -> String {
        format!("{}{}:{}", Self::PREFIX, hex::encode(self.id), self.from)
    }

    /// The inverse of [`Renewal::key`]; `None` for anything it would not produce.
    pub fn parse(key: &str) -> Option<Renewal> {
        let (id, from) = key.strip_prefix(Self::PREFIX)?.split_once(':')?;
        let mut out = [0u8; 16];
        if id.len() != 32 || id.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        hex::decode_to_slice(id, &mut out).ok()?;
        let canonical = !from.is_empty()
            && from.bytes().all(|b| b.is_ascii_digit())
            && (from == "0" || !from.starts_with('0'));
        if !canonical {
            return None;
        }
        Some(Renewal {
            id: out,
            from: from.parse().ok()?,
        })
    }
}

/// `HMAC-SHA256(secret, "tollway/lease/v1/key")`: mints and checks every lease; never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaseKey([u8; 32]);

impl LeaseKey {
    pub fn derive(secret: &[u8]) -> LeaseKey {
        LeaseKey(hmac_sha256(secret, &[KEY_LABEL]))
    }

    pub fn from_hex(s: &str) -> Option<LeaseKey> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(LeaseKey(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> LeaseKey {
        LeaseKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseKey(..)")
    }
}

/// What a lease grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Stable across renewals; the single-use claim key.
    pub id: [u8; 16],
    pub route: String,
    pub method: String,
    /// Canonical concrete path (see [`crate::routes::canonical_path`]).
    pub path: String,
    pub expires_at: u64,
    pub single_use: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("the lease token is malformed")]
    Malformed,
    #[error("the lease token's signature does not match")]
    BadSignature,
    #[error("the lease was issued for another route, method or path")]
    WrongBinding,
    #[error("the lease has expired")]
    Expired,
    /// Refused when minting: its token would be longer than [`MAX_TOKEN_LEN`], which
    /// [`Lease::open`] refuses. Ask [`mintable`] before selling such a lease.
    #[error("the lease token would be {len} bytes, more than {max}")]
    TooLong { len: usize, max: usize },
}

impl LeaseError {
    /// The `error` of the 402 that refuses it.
    pub fn reason(self) -> &'static str {
        match self {
            LeaseError::Expired => REASON_EXPIRED,
            LeaseError::TooLong { .. } => REASON_TOO_LONG,
            _ => REASON_INVALID,
        }
    }
}

impl Lease {
    /// The lease id as the verifier's claim key sees it.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// The token, or [`LeaseError::TooLong`] when [`Lease::open`] would refuse it (the route,
    /// method and path are too long together: see [`mintable`], which says so before a sale).
    /// Minted with the set's current key, named in the token.
    pub fn try_mint(&self, keys: &KeySet<LeaseKey>) -> Result<String, LeaseError> {
        mintable(&self.route, &self.method, &self.path)?;
        let (id, key) = keys.current();
        Ok(self.mint_unchecked(id, key))
    }

    fn mint_unchecked(&self, key_id: KeyId, key: &LeaseKey) -> String {
        let payload = self.payload(key_id);
        let mac = hmac_sha256(&key.0, &[MAC_LABEL, &payload]);
        let mut token = URL_SAFE_NO_PAD.encode(&payload);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(mac));
        token
    }

    fn payload(&self, key_id: KeyId) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            PAYLOAD_FIXED_LEN + self.route.len() + self.method.len() + self.path.len(),
        );
        out.push(VERSION);
        out.extend_from_slice(&key_id.as_bytes());
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.push(if self.single_use { FLAG_SINGLE_USE } else { 0 });
        for field in [&self.route, &self.method, &self.path] {
            // Fields are bounded by MAX_TOKEN_LEN at use; a longer one would not verify anyway.
            let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&field.as_bytes()[..usize::from(len)]);
        }
        out
    }

    /// Checks the signature (with the key the token names, if `keys` accepts it at `now`) and
    /// decodes; says nothing about binding or expiry (see [`Lease::check`]).
    pub fn open(keys: &KeySet<LeaseKey>, token: &str, now: u64) -> Result<Lease, LeaseError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(LeaseError::Malformed);
        }
        let (payload, mac) = token.split_once('.').ok_or(LeaseError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| LeaseError::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| LeaseError::Malformed)?;
        // Which key: named by the (not yet authenticated) payload; the MAC then decides.
        let key_id = match payload.first() {
            Some(&VERSION) => Some(KeyId::from_bytes(
                payload
                    .get(1..5)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(LeaseError::Malformed)?,
            )),
            Some(&VERSION_NO_KEY_ID) => None,
            _ => return Err(LeaseError::Malformed),
        };
        let (key, key_until) = keys.get(key_id, now).ok_or(LeaseError::BadSignature)?;
        let expected = hmac_sha256(&key.0, &[MAC_LABEL, &payload]);
        if mac.len() != expected.len() || !bool::from(expected.ct_eq(&mac[..])) {
            return Err(LeaseError::BadSignature);
        }
        let mut lease = Lease::decode(&payload).ok_or(LeaseError::Malformed)?;
        // A lease signed with a retiring key ends with it (what is cached ends with it too).
        lease.expires_at = lease.expires_at.min(key_until);
        Ok(lease)
    }

    fn decode(payload: &[u8]) -> Option<Lease> {
        let mut r = Reader(payload);
        match r.take(1)? {
            [VERSION] => {
                r.take(4)?;
            }
            [VERSION_NO_KEY_ID] => {}
            _ => return None,
        }
        let id: [u8; 16] = r.take(16)?.try_into().ok()?;
        let expires_at = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let flags = r.take(1)?[0];
        let route = r.string()?;
        let method = r.string()?;
        let path = r.string()?;
        if !r.0.is_empty() || flags & !FLAG_SINGLE_USE != 0 {
            return None;
        }
        Some(Lease {
            id,
            route,
            method,
            path,
            expires_at,
            single_use: flags & FLAG_SINGLE_USE != 0,
        })
    }

    /// The lease grants `method path` on `route` at `now`. `path` is canonical.
    pub fn check(&self, route: &str, method: &str, path: &str, now: u64) -> Result<(), LeaseError> {
        let method_ok = self.method.eq_ignore_ascii_case(method)
            || (self.method == "GET" && method.eq_ignore_ascii_case("HEAD"));
        if self.route != route || !method_ok || self.path != path {
            return Err(LeaseError::WrongBinding);
        }
        if now >= self.expires_at {
            return Err(LeaseError::Expired);
        }
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()
    }
}

/// Length of the token of a lease on `route`, `method`, `path` (expiry, id and flags do not
/// change it).
pub fn token_len(route: &str, method: &str, path: &str) -> usize {
    let payload = PAYLOAD_FIXED_LEN
        .saturating_add(route.len())
        .saturating_add(method.len())
        .saturating_add(path.len());
    // Unpadded base64: 4 characters per 3 bytes, 2 or 3 for a final 1 or 2.
    (payload / 3)
        .saturating_mul(4)
        .saturating_add([0, 2, 3][payload % 3])
        .saturating_add(MAC_PART_LEN)
}

/// Whether a lease on `route`, `method`, `path` (canonical) can be minted: ask before selling
/// it, so nobody pays for a token [`Lease::open`] would refuse. `Err` is
/// [`LeaseError::TooLong`]; answer it with 414 (the path is what grows).
pub fn mintable(route: &str, method: &str, path: &str) -> Result<(), LeaseError> {
    let len = token_len(route, method, path);
    if len > MAX_TOKEN_LEN {
        return Err(LeaseError::TooLong {
            len,
            max: MAX_TOKEN_LEN,
        });
    }
    Ok(())
}

/// The JSON answer to a lease purchase (see `docs/leases.md`).
pub fn grant_json(lease: &Lease, token: &str, url: &str, renewable: bool, now: u64) -> String {
    serde_json::json!({
        "lease": token,
        "expires_at": lease.expires_at,
        "expires_in": lease.expires_at.saturating_sub(now),
        "resource": lease.route,
        "method": lease.method,
        "path": lease.path,
        "url": url,
        "single_use": lease.single_use,
        "renewable": renewable,
    })
    .to_string()
}

/// Where renewal stands for a lease expiring at `expires_at`, renewable in its last `window`
/// seconds.
pub fn renewal_open(expires_at: u64, window: u64, now: u64) -> Result<(), &'static str> {
    if now >= expires_at {
        return Err(REASON_EXPIRED);
    }
    if expires_at - now > window {
        return Err(REASON_OUTSIDE_WINDOW);
    }
    Ok(())
}

/// Removes the `t` query parameter from a `:path`; `None` when it has none. Other parameters
/// keep their order and spelling.
pub fn strip_query_token(path: &str) -> Option<(String, &str)> {
    let (base, query) = path.split_once('?')?;
    let mut token = None;
    let mut kept = String::with_capacity(path.len());
    kept.push_str(base);
    let mut first = true;
    for pair in query.split('&') {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        if name == QUERY_LEASE {
            // A second `t` is dropped too: it must not reach the upstream either.
            token.get_or_insert(pair.split_once('=').map_or("", |(_, v)| v));
            continue;
        }
        kept.push(if first { '?' } else { '&' });
        kept.push_str(pair);
        first = false;
    }
    token.map(|t| (kept, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LeaseKey {
        LeaseKey::derive(&[7u8; 32])
    }

    fn keys() -> KeySet<LeaseKey> {
        KeySet::new(key())
    }

    fn lease() -> Lease {
        Lease {
            id: [9; 16],
            route: "ticker".into(),
            method: "GET".into(),
            path: "/stream/ticker/BTC".into(),
            expires_at: 1_000,
            single_use: false,
        }
    }

    #[test]
    fn round_trips_and_binds() {
        let token = lease().try_mint(&keys()).unwrap();
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        let opened = Lease::open(&keys(), &token, 0).unwrap();
        assert_eq!(opened, lease());
        assert_eq!(
            opened.check("ticker", "GET", "/stream/ticker/BTC", 999),
            Ok(())
        );
        assert_eq!(
            opened.check("ticker", "HEAD", "/stream/ticker/BTC", 999),
            Ok(())
        );
        for (route, method, path) in [
            ("chat", "GET", "/stream/ticker/BTC"),
            ("ticker", "POST", "/stream/ticker/BTC"),
            ("ticker", "GET", "/stream/ticker/ETH"),
        ] {
            assert_eq!(
                opened.check(route, method, path, 1),
                Err(LeaseError::WrongBinding)
            );
        }
        assert_eq!(
            opened.check("ticker", "GET", "/stream/ticker/BTC", 1_000),
            Err(LeaseError::Expired)
        );
        let mut once = lease();
        once.single_use = true;
        assert!(
            Lease::open(&keys(), &once.try_mint(&keys()).unwrap(), 0)
                .unwrap()
                .single_use
        );
    }

    #[test]
    fn refuses_forgeries() {
        let token = lease().try_mint(&keys()).unwrap();
        assert_eq!(
            Lease::open(&KeySet::new(LeaseKey::derive(&[8u8; 32])), &token, 0),
            Err(LeaseError::BadSignature)
        );
        // Flip one bit in the payload's expiry: the signature no longer matches.
        let (payload, mac) = token.split_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        bytes[20] ^= 1;
        let forged = format!("{}.{mac}", URL_SAFE_NO_PAD.encode(&bytes));
        assert_eq!(
            Lease::open(&keys(), &forged, 0),
            Err(LeaseError::BadSignature)
        );
        for bad in [
            "",
            ".",
            "abc",
            "a.b",
            &"x".repeat(MAX_TOKEN_LEN + 1),
            &format!("{payload}."),
        ] {
            assert!(Lease::open(&keys(), bad, 0).is_err(), "{bad}");
        }
        // A validly signed but structurally wrong payload is malformed, not accepted.
        let mut junk = vec![VERSION];
        junk.extend_from_slice(&keys().current().0.as_bytes());
        junk.extend_from_slice(b"junk");
        let mac = hmac_sha256(&key().0, &[MAC_LABEL, &junk]);
        let token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&junk),
            URL_SAFE_NO_PAD.encode(mac)
        );
        assert_eq!(Lease::open(&keys(), &token, 0), Err(LeaseError::Malformed));
        assert_eq!(LeaseError::Expired.reason(), REASON_EXPIRED);
        assert_eq!(LeaseError::BadSignature.reason(), REASON_INVALID);
        assert_eq!(format!("{:?}", key()), "LeaseKey(..)");
        assert_eq!(LeaseKey::from_hex(&key().to_hex()), Some(key()));
        assert_eq!(LeaseKey::from_hex("zz"), None);
    }

    /// `open` refuses tokens over MAX_TOKEN_LEN but `mint` made them: a lease sold on a ~3 KB
    /// path was paid for, then refused as `lease_invalid`.
    #[test]
    fn mint_refuses_what_open_would_refuse() {
        let mut fits = 0;
        for len in 2_900..3_100 {
            let mut l = lease();
            l.path = format!("/{}", "p".repeat(len));
            let expected = token_len(&l.route, &l.method, &l.path);
            match l.try_mint(&keys()) {
                Ok(token) => {
                    fits = len;
                    assert_eq!(token.len(), expected);
                    assert!(token.len() <= MAX_TOKEN_LEN);
                    assert_eq!(mintable(&l.route, &l.method, &l.path), Ok(()));
                    assert_eq!(Lease::open(&keys(), &token, 0), Ok(l));
                }
                Err(e) => {
                    let too_long = LeaseError::TooLong {
                        len: expected,
                        max: MAX_TOKEN_LEN,
                    };
                    assert_eq!(e, too_long);
                    assert_eq!(mintable(&l.route, &l.method, &l.path), Err(too_long));
                    assert!(expected > MAX_TOKEN_LEN);
                    // What minting it anyway makes: a token `open` refuses.
                    let token = l.mint_unchecked(keys().current().0, &key());
                    assert_eq!(token.len(), expected);
                    assert_eq!(Lease::open(&keys(), &token, 0), Err(LeaseError::Malformed));
                }
            }
        }
        // The limit falls inside the range and is exact: the longest path that fits makes a
        // token within 2 bytes of MAX_TOKEN_LEN (base64 grows by 1 or 2 characters a byte).
        assert!((2_900..3_099).contains(&fits), "{fits}");
        let last = format!("/{}", "p".repeat(fits));
        assert!(token_len("ticker", "GET", &last) > MAX_TOKEN_LEN - 2);
        assert_eq!(
            LeaseError::TooLong { len: 1, max: 0 }.reason(),
            REASON_TOO_LONG
        );
        // Route and method count too.
        let mut l = lease();
        l.route = "r".repeat(MAX_TOKEN_LEN);
        assert!(matches!(
            l.try_mint(&keys()),
            Err(LeaseError::TooLong { .. })
        ));
    }

    #[test]
    fn grant_names_everything_a_client_needs() {
        let v: serde_json::Value = serde_json::from_str(&grant_json(
            &lease(),
            "tok",
            "http://h/stream/ticker/BTC",
            true,
            940,
        ))
        .unwrap();
        assert_eq!(v["lease"], "tok");
        assert_eq!(v["expires_at"], 1_000);
        assert_eq!(v["expires_in"], 60);
        assert_eq!(v["path"], "/stream/ticker/BTC");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["renewable"], true);
        assert_eq!(v["single_use"], false);
    }

    #[test]
    fn tokens_name_their_key_and_open_with_a_previous_key_until_its_window_ends() {
        let old = LeaseKey::derive(&[1u8; 32]);
        let token = lease().try_mint(&KeySet::new(old.clone())).unwrap();
        let rotated = KeySet::new(LeaseKey::derive(&[2u8; 32])).with_previous(old, 500);
        let opened = Lease::open(&rotated, &token, 499).unwrap();
        assert_eq!(opened.expires_at, 500, "ends with its key");
        assert_eq!(
            Lease {
                expires_at: lease().expires_at,
                ..opened
            },
            lease()
        );
        assert_eq!(
            Lease::open(&rotated, &token, 500),
            Err(LeaseError::BadSignature)
        );
        // A token from before key ids (version 1) opens with the current key only.
        let mut v1 = lease().payload(KeyId::of(key().as_bytes()));
        v1.drain(1..5);
        v1[0] = VERSION_NO_KEY_ID;
        let mac = hmac_sha256(&key().0, &[MAC_LABEL, &v1]);
        let token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&v1),
            URL_SAFE_NO_PAD.encode(mac)
        );
        assert_eq!(Lease::open(&keys(), &token, 0), Ok(lease()));
        assert_eq!(
            Lease::open(&rotated, &token, 0),
            Err(LeaseError::BadSignature)
        );
    }

    #[test]
    fn renewal_keys_round_trip_and_refuse_other_spellings() {
        let r = Renewal {
            id: [0xab; 16],
            from: 1_795_000_000,
        };
        let key = r.key();
        assert_eq!(key, format!("renewal:{}:1795000000", "ab".repeat(16)));
        assert_eq!(Renewal::parse(&key), Some(r));
        let id = "ab".repeat(16);
        for bad in [
            String::new(),
            format!("renewal:{id}"),
            format!("renewal:{id}:"),
            format!("renewal:{id}:01"),
            format!("renewal:{id}:-1"),
            format!("renewal:{id}:1 "),
            format!("renewal:{id}:99999999999999999999999"),
            format!("renewal:{}:1", "AB".repeat(16)),
            format!("renewal:{}:1", "ab".repeat(15)),
            format!("lease:{id}:1"),
        ] {
            assert_eq!(Renewal::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn renewal_window() {
        assert_eq!(renewal_open(100, 30, 70), Ok(()));
        assert_eq!(renewal_open(100, 30, 99), Ok(()));
        assert_eq!(renewal_open(100, 30, 69), Err(REASON_OUTSIDE_WINDOW));
        assert_eq!(renewal_open(100, 30, 100), Err(REASON_EXPIRED));
    }

    #[test]
    fn strips_the_query_token() {
        assert_eq!(strip_query_token("/a"), None);
        assert_eq!(strip_query_token("/a?x=1"), None);
        assert_eq!(
            strip_query_token("/a?t=abc"),
            Some(("/a".to_owned(), "abc"))
        );
        assert_eq!(
            strip_query_token("/a?x=1&t=abc&y=2&t=zz"),
            Some(("/a?x=1&y=2".to_owned(), "abc"))
        );
        assert_eq!(
            strip_query_token("/a?tt=1&t"),
            Some(("/a?tt=1".to_owned(), ""))
        );
    }
}
