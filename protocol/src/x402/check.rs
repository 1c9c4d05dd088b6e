//! Decoding a client's payment header and checking it against our offers: everything that can
//! be decided without a chain, a facilitator or a clock of our own. Cheap enough for the filter,
//! which rejects bad payments here without a sidecar round trip.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use super::offer::Offer;
use super::reason::ErrorReason;
use super::types::{ExactEvmPayload, PayloadShapeError, PaymentPayload, PaymentPayloadV1};
use super::SCHEME_EXACT;
use crate::amount::{AmountError, AtomicAmount};
use crate::b64;
use crate::evm::{
    recover_signer, transfer_with_authorization_digest, EvmAddress, TransferAuthorization,
};
use crate::network::Network;

/// Largest decoded payment header accepted. Real EOA payloads are ~600 bytes; smart-wallet
/// signatures and extensions stay well below this.
pub const MAX_PAYMENT_BYTES: usize = 8192;

/// `validBefore` must leave at least this many seconds, as the official facilitators require,
/// so a payment accepted here does not expire on its way to settlement.
pub const VALID_BEFORE_MARGIN_SECONDS: u64 = 6;
/// How far past `now + maxTimeoutSeconds` a `validBefore` may lie (the client's clock may be
/// ahead of ours). Clients sign `validBefore = now + maxTimeoutSeconds`; an authorization valid
/// for longer is not what the offer asked for (a year-long one could be settled any time).
pub const VALID_BEFORE_SKEW_SECONDS: u64 = 60;

/// Decodes a `PAYMENT-SIGNATURE` / `X-PAYMENT` value: strict base64, bounded size, JSON, and a
/// known `x402Version`.
pub fn decode_payment(header_value: &str) -> Result<PaymentPayload, ErrorReason> {
    decode_payment_json(header_value).map(|(payment, _)| payment)
}

/// [`decode_payment`], also giving the JSON the header carried (the verifier forwards it to the
/// facilitator unchanged), decoded once.
pub fn decode_payment_json(header_value: &str) -> Result<(PaymentPayload, Value), ErrorReason> {
    let json = b64::decode_strict(header_value, MAX_PAYMENT_BYTES)
        .map_err(|_| ErrorReason::InvalidPayload)?;
    // A repeated key would let two readers see two payments in one header.
    let value: Value =
        crate::json::parse_unique_keys(&json).map_err(|_| ErrorReason::InvalidPayload)?;
    let payment = PaymentPayload::from_value(&value).map_err(|e| match e {
        PayloadShapeError::Version => ErrorReason::InvalidX402Version,
        PayloadShapeError::Shape(_) => ErrorReason::InvalidPayload,
    })?;
    Ok((payment, value))
}

/// A payment that matches one of our offers and passes every static check. The signature is
/// well-formed but not yet verified: see [`CheckedPayment::verify_signature`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPayment {
    /// Index into the offers passed to [`check_payment`].
    pub offer_index: usize,
    /// 1 or 2; selects `X-PAYMENT-RESPONSE` or `PAYMENT-RESPONSE` for the receipt.
    pub x402_version: u8,
    /// Network and asset of the matched offer (what the replay key is scoped to).
    pub network: Network,
    pub asset: EvmAddress,
    pub authorization: TransferAuthorization,
    /// 65 bytes `r ‖ s ‖ v`.
    pub signature: Vec<u8>,
}

/// Identifies an EIP-3009 authorization for single use: the token contract tracks nonces per
/// (token, authorizer), so two payments with this key can never both settle.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplayKey {
    pub network: Network,
    pub asset: EvmAddress,
    pub payer: EvmAddress,
    pub nonce: [u8; 32],
}

impl fmt::Display for ReplayKey {
    /// `network/asset/payer/nonce`, addresses and nonce in lower-case hex: a stable store key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/0x{}",
            self.network,
            self.asset.to_lower_hex(),
            self.payer.to_lower_hex(),
            hex::encode(self.nonce)
        )
    }
}

impl CheckedPayment {
    pub fn payer(&self) -> EvmAddress {
        self.authorization.from
    }

    pub fn replay_key(&self) -> ReplayKey {
        ReplayKey {
            network: self.network.clone(),
            asset: self.asset,
            payer: self.authorization.from,
            nonce: self.authorization.nonce,
        }
    }

    /// Recovers the EIP-712 signer and requires it to be `authorization.from`. `offer` must be
    /// the one at `offer_index` (its token name/version and chain make the domain). Costs one
    /// secp256k1 recovery, so the verifier does it rather than the filter.
    pub fn verify_signature(&self, offer: &Offer) -> Result<EvmAddress, ErrorReason> {
        let domain = offer.eip712_domain().ok_or(ErrorReason::InvalidNetwork)?;
        let digest = transfer_with_authorization_digest(&domain, &self.authorization);
        match recover_signer(&digest, &self.signature) {
            Ok(signer) if signer == self.authorization.from => Ok(signer),
            _ => Err(ErrorReason::InvalidExactEvmPayloadSignature),
        }
    }
}

/// Matches `payment` to one of `offers` and checks it against *our* copy of that offer, never
/// against what the client echoed.
///
/// v2: the offer whose requirements are JSON-equal to `accepted` (key order irrelevant, `extra`
/// included), as the official servers do. v1: an `exact` offer advertised under the payment's
/// v1 network name, preferring one whose `payTo` and amount fit the authorization. v1 carries
/// no asset, so offers differing only in token are ambiguous: the first wins, and a payment
/// signed for another token then fails [`CheckedPayment::verify_signature`].
///
/// Checks, in the facilitators' order: recipient, `validBefore >= now + 6`, `validAfter <= now`,
/// value equal to the price (over-payment is refused too: facilitators refuse it).
pub fn check_payment(
    offers: &[Offer],
    payment: &PaymentPayload,
    now: u64,
) -> Result<CheckedPayment, ErrorReason> {
    let (offer_index, auth, signature) = match payment {
        PaymentPayload::V2(p) => {
            let index = match_v2(offers, &p.accepted)?;
            let (auth, signature) = parse_exact_evm(&p.payload)?;
            (index, auth, signature)
        }
        PaymentPayload::V1(p) => {
            check_v1_kind(offers, p)?;
            let (auth, signature) = parse_exact_evm(&p.payload)?;
            (pick_v1(offers, &p.network, &auth)?, auth, signature)
        }
    };
    let offer = offers
        .get(offer_index)
        .ok_or(ErrorReason::InvalidPaymentRequirements)?;

    if auth.to != offer.pay_to {
        return Err(ErrorReason::InvalidExactEvmPayloadRecipientMismatch);
    }
    let latest = now
        .saturating_add(u64::from(offer.max_timeout_seconds))
        .saturating_add(VALID_BEFORE_SKEW_SECONDS);
    if auth.valid_before < now.saturating_add(VALID_BEFORE_MARGIN_SECONDS)
        || auth.valid_before > latest
    {
        return Err(ErrorReason::InvalidExactEvmPayloadAuthorizationValidBefore);
    }
    if auth.valid_after > now {
        return Err(ErrorReason::InvalidExactEvmPayloadAuthorizationValidAfter);
    }
    if auth.value != offer.amount.get() {
        return Err(ErrorReason::InvalidExactEvmPayloadAuthorizationValueMismatch);
    }
    Ok(CheckedPayment {
        offer_index,
        x402_version: payment.x402_version(),
        network: offer.network.clone(),
        asset: offer.asset,
        authorization: auth,
        signature,
    })
}

fn match_v2(offers: &[Offer], accepted: &Value) -> Result<usize, ErrorReason> {
    if let Some(i) = offers
        .iter()
        .position(|o| o.requirements_v2_value() == *accepted)
    {
        return Ok(i);
    }
    Err(diagnose_v2(offers, accepted))
}

/// No offer is equal to `accepted`: name the first field that rules out every offer, so the
/// client learns more than "no match".
fn diagnose_v2(offers: &[Offer], accepted: &Value) -> ErrorReason {
    let field = |name: &str| accepted.get(name).and_then(Value::as_str);
    match field("scheme") {
        None => return ErrorReason::InvalidScheme,
        Some(SCHEME_EXACT) => {}
        Some(_) => return ErrorReason::UnsupportedScheme,
    }
    let same_network: Vec<&Offer> = offers
        .iter()
        .filter(|o| field("network") == Some(o.network.as_str()))
        .collect();
    if same_network.is_empty() {
        return ErrorReason::InvalidNetwork;
    }
    let address_is = |name: &str, want: EvmAddress| {
        field(name).and_then(|s| s.parse::<EvmAddress>().ok()) == Some(want)
    };
    if !same_network.iter().any(|o| address_is("asset", o.asset)) {
        return ErrorReason::InvalidExactEvmAssetMismatch;
    }
    if !same_network.iter().any(|o| address_is("payTo", o.pay_to)) {
        return ErrorReason::InvalidExactEvmPayloadRecipientMismatch;
    }
    let amount = field("amount").and_then(|s| s.parse::<AtomicAmount>().ok());
    if !same_network.iter().any(|o| Some(o.amount) == amount) {
        return ErrorReason::InvalidExactEvmPayloadAuthorizationValueMismatch;
    }
    ErrorReason::InvalidPaymentRequirements
}

/// Scheme and network of a v1 payment, checked before its payload is parsed so a payment for
/// another chain is told so rather than "invalid payload".
fn check_v1_kind(offers: &[Offer], payment: &PaymentPayloadV1) -> Result<(), ErrorReason> {
    if payment.scheme.is_empty() {
        return Err(ErrorReason::InvalidScheme);
    }
    if payment.scheme != SCHEME_EXACT {
        return Err(ErrorReason::UnsupportedScheme);
    }
    if !offers
        .iter()
        .any(|o| o.v1_network() == Some(payment.network.as_str()))
    {
        return Err(ErrorReason::InvalidNetwork);
    }
    Ok(())
}

/// The offer on `network` whose recipient and price fit the authorization, else the first one
/// on `network` (whose mismatch then becomes the error).
fn pick_v1(
    offers: &[Offer],
    network: &str,
    auth: &TransferAuthorization,
) -> Result<usize, ErrorReason> {
    let on_network = |o: &Offer| o.v1_network() == Some(network);
    let fits = |o: &Offer| on_network(o) && o.pay_to == auth.to && o.amount.get() == auth.value;
    offers
        .iter()
        .position(fits)
        .or_else(|| offers.iter().position(on_network))
        .ok_or(ErrorReason::InvalidNetwork)
}

fn parse_exact_evm(payload: &Value) -> Result<(TransferAuthorization, Vec<u8>), ErrorReason> {
    let evm = ExactEvmPayload::deserialize(payload).map_err(|_| ErrorReason::InvalidPayload)?;
    let a = &evm.authorization;
    let address = |s: &str| {
        s.parse::<EvmAddress>()
            .map_err(|_| ErrorReason::InvalidPayload)
    };
    let seconds = |s: &str| -> Result<u64, ErrorReason> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ErrorReason::InvalidPayload);
        }
        s.parse().map_err(|_| ErrorReason::InvalidPayload)
    };
    let value = match a.value.parse::<AtomicAmount>() {
        Ok(v) => v.get(),
        // Well-formed but beyond u128: more than we ever charge.
        Err(AmountError::Overflow) => {
            return Err(ErrorReason::InvalidExactEvmPayloadAuthorizationValueMismatch)
        }
        Err(_) => return Err(ErrorReason::InvalidPayload),
    };
    let auth = TransferAuthorization {
        from: address(&a.from)?,
        to: address(&a.to)?,
        value,
        valid_after: seconds(&a.valid_after)?,
        valid_before: seconds(&a.valid_before)?,
        nonce: parse_hex_array(&a.nonce).ok_or(ErrorReason::InvalidPayload)?,
    };
    Ok((auth, parse_signature(&evm.signature)?))
}

fn parse_signature(s: &str) -> Result<Vec<u8>, ErrorReason> {
    parse_hex_array::<65>(s)
        .map(|sig| sig.to_vec())
        .ok_or(ErrorReason::InvalidExactEvmPayloadSignature)
}

/// `0x` + exactly 2·N hex digits.
fn parse_hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits = s.strip_prefix("0x")?;
    let mut out = [0u8; N];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::offer::tests::base_sepolia_offer;
    use k256::ecdsa::SigningKey;
    use serde_json::{json, Value};

    const NOW: u64 = 1_800_000_000;
    const PAYER_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const PAYER: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

    fn other_offer() -> Offer {
        let mut o = base_sepolia_offer();
        o.network = "eip155:8453".parse().unwrap();
        o.asset = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
            .parse()
            .unwrap();
        o.eip712_name = "USD Coin".into();
        o
    }

    fn offers() -> Vec<Offer> {
        vec![other_offer(), base_sepolia_offer()]
    }

    /// The authorization an honest client signs for `offer`.
    fn authorization(offer: &Offer) -> Value {
        json!({
            "from": PAYER,
            "to": offer.pay_to.to_string(),
            "value": offer.amount.to_string(),
            "validAfter": "0",
            "validBefore": (NOW + 60).to_string(),
            "nonce": format!("0x{}", "ab".repeat(32)),
        })
    }

    /// Signs `auth` for `offer`'s domain with the dev key.
    fn signed(offer: &Offer, auth: Value) -> Value {
        let a: crate::x402::types::ExactEvmAuthorization =
            serde_json::from_value(auth.clone()).unwrap();
        let message = TransferAuthorization {
            from: a.from.parse().unwrap(),
            to: a.to.parse().unwrap(),
            // Values beyond u128 cannot be signed here; the checks reject them before recovery.
            value: a.value.parse().unwrap_or(0),
            valid_after: a.valid_after.parse().unwrap(),
            valid_before: a.valid_before.parse().unwrap(),
            nonce: parse_hex_array(&a.nonce).unwrap(),
        };
        let digest = transfer_with_authorization_digest(&offer.eip712_domain().unwrap(), &message);
        let key = SigningKey::from_slice(&hex::decode(PAYER_KEY).unwrap()).unwrap();
        let (sig, recid) = key.sign_prehash_recoverable(&digest).unwrap();
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(27 + recid.to_byte());
        json!({"signature": format!("0x{}", hex::encode(bytes)), "authorization": auth})
    }

    fn v2(accepted: Value, payload: Value) -> PaymentPayload {
        serde_json::from_value(json!({
            "x402Version": 2,
            "resource": {"url": "http://h/q", "description": "", "mimeType": ""},
            "accepted": accepted,
            "payload": payload,
        }))
        .unwrap()
    }

    fn v1(network: &str, payload: Value) -> PaymentPayload {
        serde_json::from_value(json!({
            "x402Version": 1, "scheme": "exact", "network": network, "payload": payload,
        }))
        .unwrap()
    }

    fn honest_v2() -> PaymentPayload {
        let o = base_sepolia_offer();
        v2(o.requirements_v2_value(), signed(&o, authorization(&o)))
    }

    /// A v2 payment for the base-sepolia offer with `edit` applied to the authorization.
    fn v2_with(edit: impl FnOnce(&mut Value)) -> PaymentPayload {
        let o = base_sepolia_offer();
        let mut auth = authorization(&o);
        edit(&mut auth);
        v2(o.requirements_v2_value(), signed(&o, auth))
    }

    fn header(p: &PaymentPayload) -> String {
        b64::encode(&serde_json::to_vec(p).unwrap())
    }

    /// Found by fuzzing (x402_payment): a number beyond u64 (or with a long mantissa) read as an
    /// f64 by serde_json's default, approximate parser came out one ulp off once re-encoded and
    /// read again, so the JSON the verifier forwards to the facilitator was not the JSON that
    /// was checked. Native builds now parse floats exactly (serde_json `float_roundtrip`, see
    /// Cargo.toml; the wasm filter only checks, and forwards the header as sent).
    #[test]
    fn a_decoded_payment_re_encodes_to_itself() {
        let o = base_sepolia_offer();
        for number in [
            "602222222222222222222222222222222222222222",
            "6.0222222222222225e41",
            "0.30000000000000004",
            "2.2250738585072011e-308",
            "1.7976931348623157e308",
            "1.00000000000000011102230246251565404236316680908203125",
        ] {
            let mut accepted = o.requirements_v2_value().to_string();
            accepted.insert_str(1, &format!(r#""n":{number},"#));
            let text = format!(
                r#"{{"x402Version":2,"accepted":{accepted},"payload":{{"f":[{number},-{number}]}}}}"#
            );
            let payment = decode_payment(&b64::encode(text.as_bytes())).unwrap();
            let again = decode_payment(&header(&payment)).unwrap();
            assert_eq!(again, payment, "{number}");
        }
    }

    #[test]
    fn accepts_an_honest_v2_payment() {
        let offers = offers();
        let checked = check_payment(&offers, &honest_v2(), NOW).unwrap();
        assert_eq!(checked.offer_index, 1);
        assert_eq!(checked.x402_version, 2);
        assert_eq!(checked.payer(), PAYER.parse().unwrap());
        assert_eq!(checked.authorization.value, 10_000);
        assert_eq!(checked.signature.len(), 65);
        assert_eq!(
            checked.verify_signature(&offers[1]),
            Ok(PAYER.parse().unwrap())
        );
        // Signed for base-sepolia's domain, so base's USDC domain does not recover the payer.
        assert_eq!(
            checked.verify_signature(&offers[0]),
            Err(ErrorReason::InvalidExactEvmPayloadSignature)
        );
    }

    #[test]
    fn v2_matching_ignores_key_order_but_not_content() {
        let o = base_sepolia_offer();
        // Re-serialised with keys in another order: still a match.
        let accepted_text = format!(
            r#"{{"extra":{{"version":"2","name":"USDC"}},"maxTimeoutSeconds":60,"payTo":"{}","asset":"{}","amount":"10000","network":"eip155:84532","scheme":"exact"}}"#,
            o.pay_to, o.asset
        );
        let accepted: Value = serde_json::from_str(&accepted_text).unwrap();
        let p = v2(accepted, signed(&o, authorization(&o)));
        assert_eq!(check_payment(&offers(), &p, NOW).unwrap().offer_index, 1);

        // `extra` is part of the match.
        let mut accepted = o.requirements_v2_value();
        accepted["extra"]["name"] = json!("USD Coin");
        let p = v2(accepted, signed(&o, authorization(&o)));
        assert_eq!(
            check_payment(&offers(), &p, NOW),
            Err(ErrorReason::InvalidPaymentRequirements)
        );

        // Extra fields are too.
        let mut accepted = o.requirements_v2_value();
        accepted["extra"]["assetTransferMethod"] = json!("permit2");
        let p = v2(accepted, signed(&o, authorization(&o)));
        assert_eq!(
            check_payment(&offers(), &p, NOW),
            Err(ErrorReason::InvalidPaymentRequirements)
        );
    }

    #[test]
    fn v2_mismatched_accepted_is_diagnosed() {
        let o = base_sepolia_offer();
        let payload = signed(&o, authorization(&o));
        let with = |field: &str, value: Value| {
            let mut accepted = o.requirements_v2_value();
            accepted[field] = value;
            v2(accepted, payload.clone())
        };
        let cases = [
            (
                with("scheme", json!("upto")),
                ErrorReason::UnsupportedScheme,
            ),
            (with("scheme", json!(7)), ErrorReason::InvalidScheme),
            (
                with("network", json!("eip155:1")),
                ErrorReason::InvalidNetwork,
            ),
            (
                with("asset", json!(PAYER)),
                ErrorReason::InvalidExactEvmAssetMismatch,
            ),
            (
                with("payTo", json!(PAYER)),
                ErrorReason::InvalidExactEvmPayloadRecipientMismatch,
            ),
            (
                with("amount", json!("9999")),
                ErrorReason::InvalidExactEvmPayloadAuthorizationValueMismatch,
            ),
            (
                with("maxTimeoutSeconds", json!(3600)),
                ErrorReason::InvalidPaymentRequirements,
            ),
            (
                v2(json!("garbage"), payload.clone()),
                ErrorReason::InvalidScheme,
            ),
        ];
        for (p, reason) in cases {
            assert_eq!(check_payment(&offers(), &p, NOW), Err(reason));
        }
        // Lower-case addresses are not the checksummed requirement we sent: no deep-equal match,
        // but the diagnosis still compares addresses as bytes.
        let lower = with("asset", json!(o.asset.to_lower_hex()));
        assert_eq!(
            check_payment(&offers(), &lower, NOW),
            Err(ErrorReason::InvalidPaymentRequirements)
        );
    }

    #[test]
    fn rejects_underpayment_and_overpayment() {
        for value in [
            "9999",
            "10001",
            "0",
            "340282366920938463463374607431768211456",
        ] {
            let p = v2_with(|a| a["value"] = json!(value));
            assert_eq!(
                check_payment(&offers(), &p, NOW),
                Err(ErrorReason::InvalidExactEvmPayloadAuthorizationValueMismatch),
                "{value}"
            );
        }
    }

    #[test]
    fn rejects_wrong_recipient() {
        let p = v2_with(|a| a["to"] = json!(PAYER));
        assert_eq!(
            check_payment(&offers(), &p, NOW),
            Err(ErrorReason::InvalidExactEvmPayloadRecipientMismatch)
        );
        // Case does not matter for addresses.
        let o = base_sepolia_offer();
        let p = v2_with(|a| a["to"] = json!(o.pay_to.to_lower_hex()));
        assert!(check_payment(&offers(), &p, NOW).is_ok());
    }

    #[test]
    fn enforces_the_time_window() {
        let before = |t: u64| v2_with(|a| a["validBefore"] = json!(t.to_string()));
        let after = |t: u64| v2_with(|a| a["validAfter"] = json!(t.to_string()));
        let expired = ErrorReason::InvalidExactEvmPayloadAuthorizationValidBefore;
        let early = ErrorReason::InvalidExactEvmPayloadAuthorizationValidAfter;
        assert_eq!(
            check_payment(&offers(), &before(NOW - 1), NOW),
            Err(expired)
        );
        assert_eq!(
            check_payment(&offers(), &before(NOW + 5), NOW),
            Err(expired)
        );
        assert!(check_payment(&offers(), &before(NOW + 6), NOW).is_ok());
        // At most the offer's max_timeout_seconds ahead (plus clock skew), never a year.
        let max = u64::from(base_sepolia_offer().max_timeout_seconds);
        let latest = NOW + max + VALID_BEFORE_SKEW_SECONDS;
        assert!(check_payment(&offers(), &before(latest), NOW).is_ok());
        assert_eq!(
            check_payment(&offers(), &before(latest + 1), NOW),
            Err(expired)
        );
        assert_eq!(
            check_payment(&offers(), &before(NOW + 1_000_000_000), NOW),
            Err(expired)
        );
        assert_eq!(check_payment(&offers(), &after(NOW + 1), NOW), Err(early));
        assert!(check_payment(&offers(), &after(NOW), NOW).is_ok());
        assert!(check_payment(&offers(), &after(NOW - 600), NOW).is_ok());
        // No overflow at the end of time.
        assert_eq!(
            check_payment(&offers(), &before(u64::MAX - 1), u64::MAX),
            Err(expired)
        );
    }

    #[test]
    fn rejects_garbage_payloads() {
        let o = base_sepolia_offer();
        let bad = |edit: &dyn Fn(&mut Value)| {
            let mut payload = signed(&o, authorization(&o));
            edit(&mut payload);
            check_payment(&offers(), &v2(o.requirements_v2_value(), payload), NOW)
        };
        let invalid = Err(ErrorReason::InvalidPayload);
        assert_eq!(bad(&|p| *p = json!({})), invalid);
        assert_eq!(bad(&|p| *p = json!({"transaction": "AAAA"})), invalid);
        assert_eq!(
            bad(&|p| p["authorization"]["from"] = json!("0x12")),
            invalid
        );
        assert_eq!(
            bad(&|p| p["authorization"]["to"] = json!("nobody")),
            invalid
        );
        assert_eq!(
            bad(&|p| p["authorization"]["value"] = json!(10000)),
            invalid
        );
        assert_eq!(bad(&|p| p["authorization"]["value"] = json!("-1")), invalid);
        assert_eq!(
            bad(&|p| p["authorization"]["value"] = json!("1e4")),
            invalid
        );
        assert_eq!(
            bad(&|p| p["authorization"]["validBefore"] = json!("+99")),
            invalid
        );
        assert_eq!(
            bad(&|p| p["authorization"]["validBefore"] = json!("")),
            invalid
        );
        assert_eq!(
            bad(&|p| p["authorization"]["validAfter"] = json!("99999999999999999999999")),
            invalid
        );
        assert_eq!(
            bad(&|p| p["authorization"]["nonce"] = json!("0x01")),
            invalid
        );
        assert_eq!(
            bad(&|p| p["authorization"]["nonce"] = json!("ab".repeat(32))),
            invalid
        );
        let bad_sig = Err(ErrorReason::InvalidExactEvmPayloadSignature);
        assert_eq!(bad(&|p| p["signature"] = json!("0x1234")), bad_sig);
        assert_eq!(
            bad(&|p| p["signature"] = json!(format!("0x{}", "zz".repeat(65)))),
            bad_sig
        );
        assert_eq!(bad(&|p| p["signature"] = json!("ab".repeat(65))), bad_sig);
    }

    #[test]
    fn tampering_is_caught_by_the_signature() {
        // validBefore moved after signing: static checks pass, recovery does not.
        let o = base_sepolia_offer();
        let mut payload = signed(&o, authorization(&o));
        payload["authorization"]["validBefore"] = json!((NOW + 61).to_string());
        let checked =
            check_payment(&offers(), &v2(o.requirements_v2_value(), payload), NOW).unwrap();
        assert_eq!(
            checked.verify_signature(&o),
            Err(ErrorReason::InvalidExactEvmPayloadSignature)
        );
        let mut not_evm = o.clone();
        not_evm.network = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp".parse().unwrap();
        assert_eq!(
            checked.verify_signature(&not_evm),
            Err(ErrorReason::InvalidNetwork)
        );
    }

    #[test]
    fn v1_matches_on_scheme_and_network() {
        let o = base_sepolia_offer();
        let mut auth = authorization(&o);
        auth["validAfter"] = json!((NOW - 600).to_string());
        let p = v1("base-sepolia", signed(&o, auth.clone()));
        let checked = check_payment(&offers(), &p, NOW).unwrap();
        assert_eq!((checked.offer_index, checked.x402_version), (1, 1));
        assert_eq!(
            checked.verify_signature(&offers()[1]),
            Ok(PAYER.parse().unwrap())
        );

        assert_eq!(
            check_payment(&offers(), &v1("base", signed(&o, auth.clone())), NOW)
                .unwrap()
                .offer_index,
            0
        );
        assert_eq!(
            check_payment(&offers(), &v1("polygon", signed(&o, auth.clone())), NOW),
            Err(ErrorReason::InvalidNetwork)
        );
        assert_eq!(
            check_payment(
                &offers(),
                &v1("eip155:84532", signed(&o, auth.clone())),
                NOW
            ),
            Err(ErrorReason::InvalidNetwork)
        );
        // Network is checked before the payload is parsed.
        assert_eq!(
            check_payment(&offers(), &v1("polygon", json!({})), NOW),
            Err(ErrorReason::InvalidNetwork)
        );

        let scheme = |s: &str| {
            let p: PaymentPayload = serde_json::from_value(json!({
                "x402Version": 1, "scheme": s, "network": "base-sepolia", "payload": signed(&o, auth.clone()),
            }))
            .unwrap();
            check_payment(&offers(), &p, NOW)
        };
        assert_eq!(scheme("upto"), Err(ErrorReason::UnsupportedScheme));
        assert_eq!(scheme(""), Err(ErrorReason::InvalidScheme));
    }

    #[test]
    fn v1_prefers_the_offer_that_fits() {
        let cheap = base_sepolia_offer();
        let mut dear = base_sepolia_offer();
        dear.amount = crate::amount::AtomicAmount(50_000);
        let offers = vec![cheap.clone(), dear.clone()];
        let p = v1("base-sepolia", signed(&dear, authorization(&dear)));
        assert_eq!(check_payment(&offers, &p, NOW).unwrap().offer_index, 1);
        let mut odd = authorization(&dear);
        odd["value"] = json!("1");
        let p = v1("base-sepolia", signed(&dear, odd));
        assert_eq!(
            check_payment(&offers, &p, NOW),
            Err(ErrorReason::InvalidExactEvmPayloadAuthorizationValueMismatch)
        );
        // A v1 name from the offer's override works like a table name.
        let mut anvil = base_sepolia_offer();
        anvil.network = "eip155:31337".parse().unwrap();
        anvil.v1_name = Some("anvil".into());
        let p = v1("anvil", signed(&anvil, authorization(&anvil)));
        let checked = check_payment(std::slice::from_ref(&anvil), &p, NOW).unwrap();
        assert_eq!(checked.verify_signature(&anvil), Ok(PAYER.parse().unwrap()));
    }

    #[test]
    fn decode_payment_is_strict() {
        let p = honest_v2();
        assert_eq!(decode_payment(&header(&p)), Ok(p.clone()));
        let v1p = v1("base", json!({}));
        assert_eq!(decode_payment(&header(&v1p)), Ok(v1p));

        let json_header = |v: Value| b64::encode(&serde_json::to_vec(&v).unwrap());
        assert_eq!(decode_payment(""), Err(ErrorReason::InvalidPayload));
        assert_eq!(
            decode_payment("not base64!"),
            Err(ErrorReason::InvalidPayload)
        );
        assert_eq!(
            decode_payment(&b64::encode(b"not json")),
            Err(ErrorReason::InvalidPayload)
        );
        assert_eq!(
            decode_payment(&json_header(json!([1, 2]))),
            Err(ErrorReason::InvalidX402Version)
        );
        assert_eq!(
            decode_payment(&json_header(json!({"x402Version": 3}))),
            Err(ErrorReason::InvalidX402Version)
        );
        assert_eq!(
            decode_payment(&json_header(json!({"payload": {}}))),
            Err(ErrorReason::InvalidX402Version)
        );
        assert_eq!(
            decode_payment(&json_header(json!({"x402Version": 2, "payload": {}}))),
            Err(ErrorReason::InvalidPayload)
        );
        assert_eq!(
            decode_payment(&json_header(json!({"x402Version": 1, "payload": {}}))),
            Err(ErrorReason::InvalidPayload)
        );

        let h = header(&p);
        let url_safe = h.replace('+', "-").replace('/', "_");
        if url_safe != h {
            assert_eq!(decode_payment(&url_safe), Err(ErrorReason::InvalidPayload));
        }
        assert_eq!(
            decode_payment(&format!(" {h}")),
            Err(ErrorReason::InvalidPayload)
        );
        assert_eq!(
            decode_payment(h.trim_end_matches('=')).is_err(),
            h.ends_with('=')
        );
        let huge = json_header(json!({"x402Version": 2, "pad": "x".repeat(MAX_PAYMENT_BYTES)}));
        assert_eq!(decode_payment(&huge), Err(ErrorReason::InvalidPayload));
    }

    #[test]
    fn replay_key_is_scoped_to_chain_token_payer_nonce() {
        let checked = check_payment(&offers(), &honest_v2(), NOW).unwrap();
        let key = checked.replay_key();
        assert_eq!(key.network.as_str(), "eip155:84532");
        assert_eq!(key.asset, base_sepolia_offer().asset);
        assert_eq!(key.payer, PAYER.parse().unwrap());
        assert_eq!(key.nonce, [0xab; 32]);
        assert_eq!(
            key.to_string(),
            format!(
                "eip155:84532/0x036cbd53842c5426634e7929541ec2318f3dcf7e/0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/0x{}",
                "ab".repeat(32)
            )
        );
    }
}
