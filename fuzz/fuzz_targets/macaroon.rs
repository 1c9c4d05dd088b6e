//! Macaroons: the v2 binary decoder, the lenient base64 decoder, the signature chain, and (on
//! a copy re-signed with our key, so a fuzzed token gets past the signature) the L402
//! identifier, caveat evaluation and restrictions a verified token goes through.
//!
//! Input: one mode byte (which request path/method and clock to check against), then the
//! binary macaroon (also tried as base64 text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollway_fuzz::{l402_key, l402_keys, NOW, PREIMAGE, SERVICE};
use tollway_protocol::l402::caveats::evaluate;
use tollway_protocol::l402::{
    token_root_key, verify_credential, Credential, Identifier, L402Error, Macaroon, PaymentHash,
    TokenId,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(m) = Macaroon::decode_lenient(text) {
            assert_eq!(Macaroon::decode_lenient(&m.encode_std()).as_ref(), Ok(&m));
        }
    }
    let Ok(m) = Macaroon::from_bytes(bytes) else {
        return;
    };
    assert_eq!(Macaroon::from_bytes(&m.to_bytes()).as_ref(), Ok(&m));
    let _ = m.verify_signature(&[0; 32]);
    let _ = evaluate(&m.caveats, SERVICE);

    // Re-signed as ours, for a token paid with PREIMAGE: only the caveats can refuse it now.
    let token_id = Identifier::from_bytes(&m.identifier).map_or(TokenId([0; 32]), |i| i.token_id);
    let identifier = Identifier::new(PaymentHash::of_preimage(&PREIMAGE), token_id);
    let root = token_root_key(l402_key(), &identifier);
    let mut signed = Macaroon::new(&root.0, identifier.to_bytes().to_vec(), m.location.clone());
    for caveat in m.caveats.iter().filter(|c| !c.is_third_party()) {
        signed.add_first_party_caveat(caveat.id.clone());
    }
    let credential = Credential {
        macaroon: signed,
        preimage: PREIMAGE,
    };
    let (path, method) = match mode & 3 {
        0 => ("/api/quote", "GET"),
        1 => ("/api/quote", "POST"),
        2 => ("/", "GET"),
        _ => ("/stream/ticker/BTC", "HEAD"),
    };
    let now = if mode & 4 == 0 { NOW } else { u64::MAX };
    match verify_credential(l402_keys(), &credential, SERVICE, now, path, method) {
        Ok(token) => {
            assert_eq!(token.payment_hash, identifier.payment_hash);
            assert_eq!(token.token_id, token_id);
            assert!(token.valid_until > now);
        }
        Err(e) => assert!(
            !matches!(
                e,
                L402Error::WrongPreimage
                    | L402Error::BadSignature
                    | L402Error::ThirdPartyCaveat
                    | L402Error::BadIdentifier(_)
            ),
            "{e:?}"
        ),
    }
});
