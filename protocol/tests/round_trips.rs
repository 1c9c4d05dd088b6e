//! Round-trip properties over random inputs: lease mint → open, base64 encode → decode, amount
//! display → parse, macaroon mint → verify, payment header encode → decode.
//!
//! A seeded generator, no extra dependency (the crate builds for wasm32-wasip1 and its lock is
//! shared with the workspace). Each property runs `TOLLWAY_PROPTEST_CASES` cases (default
//! 1000); a failure names its case seed, and `TOLLWAY_PROPTEST_CASE=<seed>` replays that case
//! alone. The run's base seed is fixed, so CI is reproducible; `TOLLWAY_PROPTEST_SEED` picks
//! another.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::{json, Value};
use tollway_protocol::amount::{AmountError, AtomicAmount, UsdPrice, PRICE_SCALE};
use tollway_protocol::b64::{self, B64Error};
use tollway_protocol::keys::KeySet;
use tollway_protocol::l402::{
    filter_key, mint, parse_authorization, verify_credential, L402Error, Macaroon, PaymentHash,
    TokenId,
};
use tollway_protocol::lease::{mintable, token_len, Lease, LeaseError, LeaseKey, MAX_TOKEN_LEN};
use tollway_protocol::x402::{decode_payment, PaymentPayload, MAX_PAYMENT_BYTES};

/// SplitMix64: small, fast, good enough to spread test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), bias irrelevant here.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    /// A length skewed towards small values, up to `max`.
    fn len(&mut self, max: usize) -> usize {
        let cap = match self.below(4) {
            0 => 4,
            1 => 32,
            2 => 256,
            _ => max,
        };
        self.below(cap.min(max) as u64 + 1) as usize
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.len(max);
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.iter_mut().for_each(|b| *b = self.next() as u8);
        out
    }

    /// Text from ASCII, controls, Latin-1, CJK and emoji, up to `max` characters.
    fn text(&mut self, max: usize) -> String {
        let n = self.len(max);
        (0..n)
            .map(|_| match self.below(8) {
                0 => char::from(self.below(0x20) as u8),
                1 => char::from_u32(0xa0 + self.below(0x60) as u32).unwrap(),
                2 => char::from_u32(0x4e00 + self.below(0x100) as u32).unwrap(),
                3 => char::from_u32(0x1f600 + self.below(0x40) as u32).unwrap(),
                _ => char::from(0x20 + self.below(0x5f) as u8),
            })
            .collect()
    }

    /// `len` characters drawn from `alphabet`.
    fn from(&mut self, alphabet: &[u8], min: usize, max: usize) -> String {
        let n = min + self.below((max - min) as u64 + 1) as usize;
        (0..n)
            .map(|_| char::from(alphabet[self.below(alphabet.len() as u64) as usize]))
            .collect()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `property` on `TOLLWAY_PROPTEST_CASES` seeded cases (or the one named by
/// `TOLLWAY_PROPTEST_CASE`).
fn check(name: &str, property: impl Fn(&mut Rng)) {
    let base = env_u64("TOLLWAY_PROPTEST_SEED").unwrap_or(0x70_11_3a_7d);
    let cases = env_u64("TOLLWAY_PROPTEST_CASES").unwrap_or(1_000);
    let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let seeds: Vec<u64> = match env_u64("TOLLWAY_PROPTEST_CASE") {
        Some(seed) => vec![seed],
        None => (0..cases)
            .map(|i| base ^ name_hash ^ i.wrapping_mul(0x9e37_79b9))
            .collect(),
    };
    for seed in seeds {
        let outcome = catch_unwind(AssertUnwindSafe(|| property(&mut Rng(seed))));
        if outcome.is_err() {
            panic!("{name}: case failed; replay with TOLLWAY_PROPTEST_CASE={seed}");
        }
    }
}

#[test]
fn lease_mint_then_open() {
    check("lease", |rng| {
        let key = KeySet::new(LeaseKey::derive(&rng.array::<32>()));
        let methods = ["GET", "POST", "HEAD", "PROPFIND"];
        let method = if rng.chance(8) {
            rng.text(12)
        } else {
            methods[rng.below(4) as usize].to_owned()
        };
        let path_len = if rng.chance(4) { 5_000 } else { 200 };
        let lease = Lease {
            id: rng.array(),
            route: rng.text(40),
            method,
            path: format!("/{}", rng.text(path_len)),
            expires_at: rng.next(),
            single_use: rng.chance(2),
        };
        let len = token_len(&lease.route, &lease.method, &lease.path);
        match lease.try_mint(&key) {
            Ok(token) => {
                assert!(len <= MAX_TOKEN_LEN);
                assert_eq!(token.len(), len);
                assert_eq!(mintable(&lease.route, &lease.method, &lease.path), Ok(()));
                assert!(token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
                assert_eq!(Lease::open(&key, &token, 0).as_ref(), Ok(&lease));
                let (route, method, path) = (&lease.route, &lease.method, &lease.path);
                if lease.expires_at > 0 {
                    let now = rng.below(lease.expires_at);
                    assert_eq!(lease.check(route, method, path, now), Ok(()));
                }
                assert_eq!(
                    lease.check(route, method, path, lease.expires_at),
                    Err(LeaseError::Expired)
                );
                assert_eq!(
                    Lease::open(&KeySet::new(LeaseKey::derive(b"another secret")), &token, 0),
                    Err(LeaseError::BadSignature)
                );
            }
            Err(e) => {
                assert!(len > MAX_TOKEN_LEN);
                assert_eq!(
                    e,
                    LeaseError::TooLong {
                        len,
                        max: MAX_TOKEN_LEN
                    }
                );
            }
        }
    });
}

#[test]
fn b64_encode_then_decode() {
    check("b64", |rng| {
        let data = rng.bytes(3_000);
        let text = b64::encode(&data);
        assert_eq!(text.len() % 4, 0);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
        assert_eq!(b64::decode_strict(&text, data.len()).as_ref(), Ok(&data));
        if !data.is_empty() {
            assert_eq!(
                b64::decode_strict(&text, data.len() - 1),
                Err(B64Error::TooLong {
                    max: data.len() - 1
                })
            );
        }
    });
}

#[test]
fn amount_display_then_parse() {
    check("amount", |rng| {
        // Scaled prices of every magnitude, written out with all 18 decimals.
        let scaled = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> rng.below(128);
        let unit = 10u128.pow(u32::from(PRICE_SCALE));
        let written = format!("{}.{:018}", scaled / unit, scaled % unit);
        let price: UsdPrice = written.parse().unwrap();
        assert_eq!(price.scaled(), scaled);
        let shown = price.to_string();
        assert_eq!(shown.parse::<UsdPrice>(), Ok(price));
        // Shortest form: no trailing fractional zero, no dangling dot, no leading zero.
        assert!(!shown.ends_with('.'));
        assert!(!shown.contains('.') || !shown.ends_with('0'));
        assert!(shown == "0" || shown.starts_with("0.") || !shown.starts_with('0'));
        for decimals in 0..=PRICE_SCALE {
            let divisor = 10u128.pow(u32::from(PRICE_SCALE - decimals));
            match price.to_atomic(decimals) {
                Ok(atomic) => assert_eq!(atomic.get().checked_mul(divisor), Some(scaled)),
                Err(e) => {
                    assert_ne!(scaled % divisor, 0);
                    assert!(matches!(e, AmountError::NotRepresentable { .. }));
                }
            }
        }
        let atomic = AtomicAmount(scaled);
        assert_eq!(atomic.to_string().parse::<AtomicAmount>(), Ok(atomic));
        let json = serde_json::to_string(&atomic).unwrap();
        assert_eq!(json, format!("\"{scaled}\""));
        assert_eq!(
            serde_json::from_str::<AtomicAmount>(&json).ok(),
            Some(atomic)
        );
    });
}

#[test]
fn macaroon_mint_then_verify() {
    check("macaroon", |rng| {
        let key = KeySet::new(filter_key(&rng.array::<32>()));
        let preimage: [u8; 32] = rng.array();
        let token_id = TokenId(rng.array());
        let service = rng.from(
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-",
            1,
            64,
        );
        let now = rng.below(i64::MAX as u64 / 2);
        let valid_until = now + 1 + rng.below(1_000_000);
        let path = rng
            .chance(2)
            .then(|| format!("/{}", rng.text(60)).replace(['?', '#'], ""));
        let method = rng
            .chance(2)
            .then(|| ["GET", "POST", "DELETE"][rng.below(3) as usize]);
        let hash = PaymentHash::of_preimage(&preimage);
        let m = mint(
            key.current(),
            &hash,
            &token_id,
            &service,
            valid_until,
            path.as_deref(),
            method,
        );

        // Every encoding decodes to the same macaroon.
        let std = m.encode_std();
        assert_eq!(Macaroon::from_bytes(&m.to_bytes()).as_ref(), Ok(&m));
        assert_eq!(Macaroon::decode_lenient(&std).as_ref(), Ok(&m));
        let url_safe = std.replace('+', "-").replace('/', "_");
        assert_eq!(
            Macaroon::decode_lenient(url_safe.trim_end_matches('=')).as_ref(),
            Ok(&m)
        );

        // The Authorization header carries it back: parsed, then verified.
        let header = format!("L402 {std}:{}", hex::encode(preimage));
        let credential = parse_authorization([header.as_bytes()]).unwrap().unwrap();
        assert_eq!(credential.macaroon, m);
        let req_path = path.as_deref().unwrap_or("/anything");
        let req_method = method.unwrap_or("PATCH");
        let token = verify_credential(&key, &credential, &service, now, req_path, req_method)
            .expect("a fresh token verifies");
        assert_eq!(token.payment_hash, hash);
        assert_eq!(token.token_id, token_id);
        assert_eq!(token.valid_until, valid_until);
        let at = |t: u64| verify_credential(&key, &credential, &service, t, req_path, req_method);
        assert_eq!(at(valid_until), Err(L402Error::Expired));
        // Another key, another preimage, another service: refused.
        let other = KeySet::new(filter_key(b"another root secret"));
        assert!(
            verify_credential(&other, &credential, &service, now, req_path, req_method).is_err()
        );
        let mut wrong = credential.clone();
        wrong.preimage[0] ^= 1;
        assert_eq!(
            verify_credential(&key, &wrong, &service, now, req_path, req_method),
            Err(L402Error::WrongPreimage)
        );
        if path.is_some() {
            assert_eq!(
                verify_credential(&key, &credential, &service, now, "/other", req_method),
                Err(L402Error::WrongPath)
            );
        }
    });
}

#[test]
fn payment_header_encode_then_decode() {
    check("payment", |rng| {
        let digits = |rng: &mut Rng| rng.next().to_string();
        let hex_of = |rng: &mut Rng, n: usize| format!("0x{}", hex::encode(rng.bytes(n)));
        let authorization = json!({
            "from": hex_of(rng, 20),
            "to": hex_of(rng, 20),
            "value": digits(rng),
            "validAfter": digits(rng),
            "validBefore": digits(rng),
            "nonce": hex_of(rng, 32),
        });
        let payload = json!({"signature": hex_of(rng, 65), "authorization": authorization});
        let mut extra = serde_json::Map::new();
        for _ in 0..rng.below(3) {
            extra.insert(rng.text(8), Value::String(rng.text(16)));
        }
        let value = if rng.chance(2) {
            json!({
                "x402Version": 2,
                "resource": {"url": rng.text(60), "description": rng.text(20), "mimeType": "application/json"},
                "accepted": {
                    "scheme": "exact",
                    "network": format!("eip155:{}", rng.below(100_000)),
                    "amount": digits(rng),
                    "asset": hex_of(rng, 20),
                    "payTo": hex_of(rng, 20),
                    "maxTimeoutSeconds": rng.below(3_600),
                    "extra": extra,
                },
                "payload": payload,
            })
        } else {
            json!({
                "x402Version": 1,
                "scheme": rng.text(10),
                "network": rng.text(20),
                "payload": payload,
            })
        };
        let payment: PaymentPayload = serde_json::from_value(value).unwrap();
        let json = serde_json::to_vec(&payment).unwrap();
        assert!(json.len() <= MAX_PAYMENT_BYTES);
        let header = b64::encode(&json);
        assert_eq!(decode_payment(&header).as_ref(), Ok(&payment));
    });
}
