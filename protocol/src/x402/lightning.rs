//! x402 over Lightning (`bip122` networks, `exact` scheme), in the invoice-based form of the
//! open x402 proposals (#1311/#1873/#2262): the requirement carries a fresh BOLT11 invoice, the
//! client pays it out of band and echoes the invoice in its payload.
//!
//! The filter only tells such a payment apart and checks its shape; the verifier checks the
//! invoice is ours, for this route and amount, unexpired, paid, and not used before.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::reason::ErrorReason;
use super::types::PaymentPayload;
use super::SCHEME_EXACT;
use crate::lightning::{LightningNetwork, BIP122_NAMESPACE};

pub const ASSET_BTC: &str = "BTC";
pub const PAY_TO_ANONYMOUS: &str = "anonymous";
pub const PAYMENT_METHOD_LIGHTNING: &str = "lightning";

/// The v2 `accepts` entry offering `invoice` (amount in millisatoshis, as a string).
pub fn lightning_offer_v2(
    network: LightningNetwork,
    amount_msat: u64,
    invoice: &str,
    max_timeout_seconds: u64,
) -> Value {
    json!({
        "scheme": SCHEME_EXACT,
        "network": network.caip2(),
        "amount": amount_msat.to_string(),
        "asset": ASSET_BTC,
        "payTo": PAY_TO_ANONYMOUS,
        "maxTimeoutSeconds": max_timeout_seconds,
        "extra": {
            "paymentMethod": PAYMENT_METHOD_LIGHTNING,
            "invoice": invoice,
        },
    })
}

/// `payload` of a Lightning payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LightningPayload {
    pub invoice: String,
}

/// Which rail a payment is on: decides whether the filter checks it locally (EVM) or hands it
/// to the verifier as is (Lightning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentKind {
    Evm,
    Lightning,
}

impl PaymentKind {
    /// Lightning when a v2 payment's `accepted.network` is `bip122:*` (v1 has no such names).
    pub fn of(payment: &PaymentPayload) -> PaymentKind {
        let bip122 = match payment {
            PaymentPayload::V2(p) => p
                .accepted
                .get("network")
                .and_then(Value::as_str)
                .and_then(|n| n.split_once(':'))
                .is_some_and(|(ns, _)| ns == BIP122_NAMESPACE),
            PaymentPayload::V1(_) => false,
        };
        if bip122 {
            PaymentKind::Lightning
        } else {
            PaymentKind::Evm
        }
    }
}

/// A Lightning payment of the right shape; nothing about the invoice is known to be true yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LightningPayment<'a> {
    pub network: LightningNetwork,
    pub amount_msat: u64,
    pub invoice: &'a str,
}

/// Static checks of a Lightning payment: the requirement it echoes has our fixed fields, and
/// the payload's invoice is the one in that requirement (anti-substitution) and is for that
/// network.
pub fn check_lightning_payment(
    payment: &PaymentPayload,
) -> Result<LightningPayment<'_>, ErrorReason> {
    let PaymentPayload::V2(p) = payment else {
        return Err(ErrorReason::InvalidNetwork);
    };
    let accepted = &p.accepted;
    let field = |name: &str| accepted.get(name).and_then(Value::as_str);
    match field("scheme") {
        None => return Err(ErrorReason::InvalidScheme),
        Some(SCHEME_EXACT) => {}
        Some(_) => return Err(ErrorReason::UnsupportedScheme),
    }
    let network = field("network")
        .and_then(LightningNetwork::from_caip2)
        .ok_or(ErrorReason::InvalidNetwork)?;
    if field("asset") != Some(ASSET_BTC) || field("payTo") != Some(PAY_TO_ANONYMOUS) {
        return Err(ErrorReason::InvalidPaymentRequirements);
    }
    let amount_msat = field("amount")
        .filter(|a| !a.is_empty() && a.len() <= 20 && a.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|a| a.parse::<u64>().ok())
        .ok_or(ErrorReason::InvalidPaymentRequirements)?;
    let extra = accepted.get("extra");
    let extra_field = |name: &str| extra.and_then(|e| e.get(name)).and_then(Value::as_str);
    if extra_field("paymentMethod") != Some(PAYMENT_METHOD_LIGHTNING) {
        return Err(ErrorReason::InvalidPaymentRequirements);
    }
    let offered = extra_field("invoice")
        .filter(|i| !i.is_empty())
        .ok_or(ErrorReason::InvalidPaymentRequirements)?;
    let invoice = p
        .payload
        .get("invoice")
        .and_then(Value::as_str)
        .ok_or(ErrorReason::InvalidPayload)?;
    if invoice != offered || LightningNetwork::of_invoice(invoice) != Some(network) {
        return Err(ErrorReason::InvalidPayload);
    }
    Ok(LightningPayment {
        network,
        amount_msat,
        invoice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64;
    use crate::x402::check::decode_payment;

    const INVOICE: &str = "lnbcrt100n1pjexampleinvoice";

    fn payment(accepted: Value, payload: Value) -> PaymentPayload {
        let json = json!({"x402Version": 2, "accepted": accepted, "payload": payload});
        decode_payment(&b64::encode(json.to_string().as_bytes())).unwrap()
    }

    #[test]
    fn offer_shape() {
        let offer = lightning_offer_v2(LightningNetwork::Regtest, 10_000, INVOICE, 600);
        assert_eq!(
            offer,
            json!({
                "scheme": "exact",
                "network": "bip122:0f9188f13cb7b2c71f2a335e3a4fc328",
                "amount": "10000",
                "asset": "BTC",
                "payTo": "anonymous",
                "maxTimeoutSeconds": 600,
                "extra": {"paymentMethod": "lightning", "invoice": INVOICE}
            })
        );
        // It parses as a v2 requirement.
        let r: crate::x402::PaymentRequirementsV2 = serde_json::from_value(offer).unwrap();
        assert!(r.network.is_bip122());
    }

    #[test]
    fn kind_and_checks() {
        let offer = lightning_offer_v2(LightningNetwork::Regtest, 10_000, INVOICE, 600);
        let good = payment(offer.clone(), json!({"invoice": INVOICE}));
        assert_eq!(PaymentKind::of(&good), PaymentKind::Lightning);
        assert_eq!(
            check_lightning_payment(&good).unwrap(),
            LightningPayment {
                network: LightningNetwork::Regtest,
                amount_msat: 10_000,
                invoice: INVOICE
            }
        );

        let swapped = payment(offer.clone(), json!({"invoice": "lnbcrt100n1other"}));
        assert_eq!(
            check_lightning_payment(&swapped),
            Err(ErrorReason::InvalidPayload)
        );
        let no_payload = payment(offer.clone(), json!({}));
        assert_eq!(
            check_lightning_payment(&no_payload),
            Err(ErrorReason::InvalidPayload)
        );

        let mut wrong_net = offer.clone();
        wrong_net["network"] = json!("bip122:000000000019d6689c085ae165831e93");
        let p = payment(wrong_net, json!({"invoice": INVOICE}));
        assert_eq!(PaymentKind::of(&p), PaymentKind::Lightning);
        assert_eq!(
            check_lightning_payment(&p),
            Err(ErrorReason::InvalidPayload)
        );

        let mut unknown_net = offer.clone();
        unknown_net["network"] = json!("bip122:ffff");
        let p = payment(unknown_net, json!({"invoice": INVOICE}));
        assert_eq!(
            check_lightning_payment(&p),
            Err(ErrorReason::InvalidNetwork)
        );

        for (field, value, reason) in [
            ("scheme", json!("upto"), ErrorReason::UnsupportedScheme),
            (
                "asset",
                json!("USDC"),
                ErrorReason::InvalidPaymentRequirements,
            ),
            (
                "payTo",
                json!("me"),
                ErrorReason::InvalidPaymentRequirements,
            ),
            (
                "amount",
                json!(10000),
                ErrorReason::InvalidPaymentRequirements,
            ),
            (
                "amount",
                json!("-1"),
                ErrorReason::InvalidPaymentRequirements,
            ),
        ] {
            let mut a = offer.clone();
            a[field] = value;
            let p = payment(a, json!({"invoice": INVOICE}));
            assert_eq!(check_lightning_payment(&p), Err(reason), "{field}");
        }
        let mut a = offer.clone();
        a["extra"]["paymentMethod"] = json!("onchain");
        let p = payment(a, json!({"invoice": INVOICE}));
        assert_eq!(
            check_lightning_payment(&p),
            Err(ErrorReason::InvalidPaymentRequirements)
        );

        let mut evm = offer;
        evm["network"] = json!("eip155:84532");
        assert_eq!(PaymentKind::of(&payment(evm, json!({}))), PaymentKind::Evm);
    }
}
