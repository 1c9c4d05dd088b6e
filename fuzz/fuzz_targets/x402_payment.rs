//! x402 payment headers (`PAYMENT-SIGNATURE`, `X-PAYMENT`): strict base64, JSON, the payload's
//! shape, the checks against our offers, signer recovery and the Lightning (`bip122`) checks.
//!
//! Input: one mode byte, then the header value (mode bit 0 clear) or the JSON inside it (bit 0
//! set: base64-encoded here, so mutations work on the JSON). Bit 1 asks for signer recovery
//! (the verifier's costly step) on a payment that passed the static checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollway_fuzz::{offers, NOW};
use tollway_protocol::b64;
use tollway_protocol::x402::{
    check_lightning_payment, check_payment, decode_payment, decode_payment_json, ErrorReason,
    PaymentKind, MAX_PAYMENT_BYTES,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let header = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(s) => s.to_owned(),
            Err(_) => return,
        }
    } else {
        b64::encode(rest)
    };

    // Strict base64: what decodes re-encodes to something that decodes the same.
    if let Ok(bytes) = b64::decode_strict(&header, MAX_PAYMENT_BYTES) {
        assert!(bytes.len() <= MAX_PAYMENT_BYTES);
        assert_eq!(
            b64::decode_strict(&b64::encode(&bytes), MAX_PAYMENT_BYTES),
            Ok(bytes)
        );
    }

    let decoded = decode_payment_json(&header);
    assert_eq!(
        decode_payment(&header).ok(),
        decoded.as_ref().ok().map(|(p, _)| p.clone())
    );
    let (payment, _json) = match decoded {
        Ok(d) => d,
        Err(reason) => {
            assert!(matches!(
                reason,
                ErrorReason::InvalidPayload | ErrorReason::InvalidX402Version
            ));
            return;
        }
    };
    // What we decoded re-encodes to a header that decodes to the same payment.
    if let Ok(json) = serde_json::to_vec(&payment) {
        if json.len() <= MAX_PAYMENT_BYTES {
            assert_eq!(decode_payment(&b64::encode(&json)).as_ref(), Ok(&payment));
        }
    }

    let now = match mode >> 2 & 3 {
        0 => NOW,
        1 => 0,
        2 => u64::MAX,
        _ => NOW + 55,
    };
    match check_payment(offers(), &payment, now) {
        Ok(checked) => {
            let offer = &offers()[checked.offer_index];
            assert_eq!(checked.network, offer.network);
            assert_eq!(checked.asset, offer.asset);
            assert_eq!(checked.authorization.to, offer.pay_to);
            assert_eq!(checked.authorization.value, offer.amount.get());
            assert_eq!(checked.x402_version, payment.x402_version());
            let _ = checked.replay_key().to_string();
            if mode & 2 != 0 {
                if let Ok(signer) = checked.verify_signature(offer) {
                    assert_eq!(signer, checked.payer());
                }
            }
        }
        Err(reason) => assert_eq!(ErrorReason::from_code(reason.as_str()), Some(reason)),
    }
    let _ = PaymentKind::of(&payment);
    if let Ok(ln) = check_lightning_payment(&payment) {
        assert!(!ln.invoice.is_empty());
    }
});
