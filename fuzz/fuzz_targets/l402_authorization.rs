//! The L402 `Authorization` header: finding credentials among other schemes, stripping them for
//! the upstream, parsing `<macaroon>:<preimage>` and verifying the credential.
//!
//! Input: up to four header values separated by `\n` (Envoy hands repeated headers over one by
//! one).
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use tollway_fuzz::{l402_keys, NOW, SERVICE};
use tollway_protocol::l402::authorization::is_blank;
use tollway_protocol::l402::{
    carries_l402, parse_authorization, verify_credential, without_l402, Macaroon,
};

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').take(4).collect();
    for &value in &values {
        let stripped = without_l402(value);
        if !carries_l402(value) {
            assert!(matches!(stripped, Some(Cow::Borrowed(v)) if v == value));
        }
        // What goes upstream carries no credential, however the upstream trims its parts.
        if let Some(rest) = &stripped {
            if let Cow::Owned(rest) = rest {
                assert!(!rest.is_empty());
            }
            assert!(!carries_l402(rest));
            for part in rest.split(|&b| b == b',') {
                assert!(!carries_l402(part.trim_ascii()));
                let start = part
                    .iter()
                    .position(|&b| !is_blank(b))
                    .unwrap_or(part.len());
                assert!(!carries_l402(&part[start..]));
            }
        }
    }
    match parse_authorization(values.iter().copied()) {
        Ok(Some(credential)) => {
            assert!(values.iter().any(|v| carries_l402(v)));
            let again = Macaroon::from_bytes(&credential.macaroon.to_bytes());
            assert_eq!(again.as_ref(), Ok(&credential.macaroon));
            for (path, method) in [("/api/quote", "GET"), ("/", "POST")] {
                if let Err(e) =
                    verify_credential(l402_keys(), &credential, SERVICE, NOW, path, method)
                {
                    let _ = e.reason();
                }
            }
        }
        Ok(None) => assert!(!values.iter().any(|v| carries_l402(v))),
        Err(e) => {
            let _ = e.reason();
        }
    }
});
