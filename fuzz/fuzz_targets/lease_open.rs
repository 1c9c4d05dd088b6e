//! Lease tokens (`x-x402-lease` header, `t` query parameter): the size limit, base64url, the
//! MAC, the payload decoder, the binding check, and the query-parameter stripping.
//!
//! Input: one mode byte, then the token as sent (mode bit 0 clear) or a payload that is signed
//! here with the fixture key (bit 0 set), so the fuzzer reaches the payload decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollway_fuzz::{lease_keys, sign_lease_payload, NOW};
use tollway_protocol::lease::{strip_query_token, Lease, LeaseError, MAX_TOKEN_LEN, QUERY_LEASE};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(s) => s.to_owned(),
            Err(_) => return,
        }
    } else {
        sign_lease_payload(rest)
    };
    let keys = lease_keys();
    match Lease::open(keys, &token, NOW) {
        Ok(lease) => {
            // The encoding is canonical: a current token is exactly what minting the lease
            // makes (a version-1 token, from before key ids, re-mints as version 2).
            if lease_version(&token) == Some(2) {
                assert_eq!(lease.try_mint(keys).as_ref(), Ok(&token));
            }
            let (route, method, path) = (&lease.route, &lease.method, &lease.path);
            match lease.check(route, method, path, NOW) {
                Ok(()) => assert!(NOW < lease.expires_at),
                Err(e) => assert_eq!(e, LeaseError::Expired),
            }
            let other = format!("{path}/x");
            assert_eq!(
                lease.check(route, method, &other, 0),
                Err(LeaseError::WrongBinding)
            );
        }
        Err(e) => {
            assert!(!matches!(e, LeaseError::TooLong { .. }));
            if mode & 1 == 1 && token.len() <= MAX_TOKEN_LEN {
                assert_eq!(e, LeaseError::Malformed);
            }
            let _ = e.reason();
        }
    }

    if let Ok(path) = std::str::from_utf8(rest) {
        if let Some((kept, _token)) = strip_query_token(path) {
            assert!(kept.len() < path.len());
            if let Some((_, query)) = kept.split_once('?') {
                for pair in query.split('&') {
                    let name = pair.split_once('=').map_or(pair, |(n, _)| n);
                    assert_ne!(name, QUERY_LEASE);
                }
            }
        }
    }
});

/// The version byte of a token's payload, if it decodes that far.
fn lease_version(token: &str) -> Option<u8> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let payload = token.split('.').next()?;
    URL_SAFE_NO_PAD.decode(payload).ok()?.first().copied()
}
