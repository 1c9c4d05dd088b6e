//! x402 JSON messages with their exact camelCase field names.
//!
//! Emitted types are typed where we control the value (`Network`, `AtomicAmount`); fields a
//! client echoes back (`accepted`, `payload`) stay `serde_json::Value` so they can be compared and
//! forwarded to a facilitator without losing anything.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::amount::AtomicAmount;
use crate::network::Network;

/// The `x402Version` field, fixed per type: a v1 message cannot claim to be v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct X402Version<const N: u8>;

impl<const N: u8> Serialize for X402Version<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(N)
    }
}

impl<'de, const N: u8> Deserialize<'de> for X402Version<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v == u64::from(N) {
            Ok(X402Version)
        } else {
            Err(de::Error::custom(format_args!(
                "expected x402Version {N}, got {v}"
            )))
        }
    }
}

/// One accepted way to pay, v2 shape (entry of `PaymentRequired.accepts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirementsV2 {
    pub scheme: String,
    pub network: Network,
    pub amount: AtomicAmount,
    pub asset: String,
    pub pay_to: String,
    pub max_timeout_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Map<String, Value>>,
}

/// One accepted way to pay, v1 shape (entry of the 402 body's `accepts`). Legacy `x402-fetch`
/// validates these strictly: `outputSchema` must be an object or absent, never `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirementsV1 {
    pub scheme: String,
    /// A v1 network name (`base-sepolia`), not CAIP-2.
    pub network: String,
    pub max_amount_required: AtomicAmount,
    /// Absolute URL.
    pub resource: String,
    pub description: String,
    pub mime_type: String,
    #[serde(default, skip_serializing_if = "is_absent")]
    pub output_schema: Option<Value>,
    pub pay_to: String,
    pub max_timeout_seconds: u64,
    pub asset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Map<String, Value>>,
}

fn is_absent(v: &Option<Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    pub url: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub mime_type: String,
}

/// v2 402 answer, base64 in the `PAYMENT-REQUIRED` header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV2 {
    pub x402_version: X402Version<2>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub resource: ResourceInfo,
    pub accepts: Vec<PaymentRequirementsV2>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

/// v1 402 answer (`PaymentRequirementsResponse`), the JSON body of the 402.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV1 {
    pub x402_version: X402Version<1>,
    pub error: String,
    pub accepts: Vec<PaymentRequirementsV1>,
}

/// A payment as sent in `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (v1). Which one is decided by
/// the decoded `x402Version`, never by the header name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PaymentPayload {
    V1(PaymentPayloadV1),
    V2(PaymentPayloadV2),
}

impl PaymentPayload {
    pub fn x402_version(&self) -> u8 {
        match self {
            PaymentPayload::V1(_) => 1,
            PaymentPayload::V2(_) => 2,
        }
    }

    /// The scheme-specific part (for `exact` on EVM: an [`ExactEvmPayload`]).
    pub fn payload(&self) -> &Value {
        match self {
            PaymentPayload::V1(p) => &p.payload,
            PaymentPayload::V2(p) => &p.payload,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV2 {
    pub x402_version: X402Version<2>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    /// The requirement the client chose, echoed verbatim; compared as JSON, not as text.
    pub accepted: Value,
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV1 {
    pub x402_version: X402Version<1>,
    pub scheme: String,
    /// A v1 network name.
    pub network: String,
    pub payload: Value,
}

/// Why a JSON document is not a [`PaymentPayload`]; lets callers tell a bad version apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PayloadShapeError {
    Version,
    Shape(String),
}

impl fmt::Display for PayloadShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadShapeError::Version => f.write_str("x402Version must be 1 or 2"),
            PayloadShapeError::Shape(e) => f.write_str(e),
        }
    }
}

impl PaymentPayload {
    pub(crate) fn from_value(value: &Value) -> Result<Self, PayloadShapeError> {
        let shape = |e: serde_json::Error| PayloadShapeError::Shape(e.to_string());
        match value.get("x402Version").and_then(Value::as_u64) {
            Some(1) => Deserialize::deserialize(value)
                .map(PaymentPayload::V1)
                .map_err(shape),
            Some(2) => Deserialize::deserialize(value)
                .map(PaymentPayload::V2)
                .map_err(shape),
            _ => Err(PayloadShapeError::Version),
        }
    }
}

impl<'de> Deserialize<'de> for PaymentPayload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PaymentPayload::from_value(&Value::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// `payload` of the `exact` scheme on EVM with EIP-3009 (same in v1 and v2). Strings as on the
/// wire; `check` parses them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExactEvmPayload {
    /// `0x` + 130 hex digits for an EOA.
    pub signature: String,
    pub authorization: ExactEvmAuthorization,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExactEvmAuthorization {
    pub from: String,
    pub to: String,
    /// Decimal string.
    pub value: String,
    /// Decimal unix seconds.
    pub valid_after: String,
    /// Decimal unix seconds.
    pub valid_before: String,
    /// `0x` + 64 hex digits.
    pub nonce: String,
}

/// Either requirement shape, as sent to a facilitator (the shape matches the payment's version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PaymentRequirements {
    V1(PaymentRequirementsV1),
    V2(PaymentRequirementsV2),
}

/// Body of a facilitator's `POST /verify` and `POST /settle`. `payment_requirements` must be
/// our own requirement, never the client's `accepted` echo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest {
    pub x402_version: u8,
    pub payment_payload: PaymentPayload,
    pub payment_requirements: PaymentRequirements,
}

/// A facilitator's `/verify` answer. `null` fields read as absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    pub is_valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
}

/// A facilitator's `/settle` answer; also what goes, base64, into `PAYMENT-RESPONSE` /
/// `X-PAYMENT-RESPONSE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Transaction hash; `""` when nothing was sent.
    #[serde(default)]
    pub transaction: String,
    /// Same dialect as the payment: a v1 name or CAIP-2.
    #[serde(default)]
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Amount actually settled (reported by `upto`-style schemes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
}

impl SettleResponse {
    /// base64(JSON), the value of `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`.
    pub fn to_header_value(&self) -> String {
        // Serialising plain strings and bools into a Vec cannot fail; an empty header would be
        // the harmless fallback anyway.
        crate::b64::encode(&serde_json::to_vec(self).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn facilitator_request_shape() {
        let offer = crate::x402::offer::tests::base_sepolia_offer();
        let payment: PaymentPayload = serde_json::from_value(json!({
            "x402Version": 2, "accepted": offer.requirements_v2_value(), "payload": {"signature": "0x"},
        }))
        .unwrap();
        let request = FacilitatorRequest {
            x402_version: payment.x402_version(),
            payment_payload: payment,
            payment_requirements: PaymentRequirements::V2(offer.requirements_v2()),
        };
        let v = serde_json::to_value(&request).unwrap();
        assert_eq!(v["x402Version"], json!(2));
        assert_eq!(v["paymentRequirements"], offer.requirements_v2_value());
        assert_eq!(v["paymentPayload"]["payload"], json!({"signature": "0x"}));
        assert_eq!(
            serde_json::from_value::<FacilitatorRequest>(v).unwrap(),
            request
        );

        let v1 = PaymentRequirements::V1(offer.requirements_v1("http://h/", "", "").unwrap());
        let back: PaymentRequirements =
            serde_json::from_value(serde_json::to_value(&v1).unwrap()).unwrap();
        assert_eq!(back, v1);
    }

    #[test]
    fn version_marker_is_checked() {
        assert_eq!(serde_json::to_value(X402Version::<2>).unwrap(), json!(2));
        assert!(serde_json::from_value::<X402Version<2>>(json!(2)).is_ok());
        assert!(serde_json::from_value::<X402Version<2>>(json!(1)).is_err());
        assert!(serde_json::from_value::<X402Version<1>>(json!("1")).is_err());
    }

    #[test]
    fn v1_requirements_never_emit_null_output_schema() {
        let mut r = PaymentRequirementsV1 {
            scheme: "exact".into(),
            network: "base-sepolia".into(),
            max_amount_required: AtomicAmount(10),
            resource: "http://x/y".into(),
            description: String::new(),
            mime_type: String::new(),
            output_schema: Some(Value::Null),
            pay_to: "0x0".into(),
            max_timeout_seconds: 60,
            asset: "0x0".into(),
            extra: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("outputSchema").is_none());
        assert_eq!(v["maxAmountRequired"], json!("10"));
        assert_eq!(v["mimeType"], json!(""));
        r.output_schema = Some(json!({"input": {}}));
        assert_eq!(
            serde_json::to_value(&r).unwrap()["outputSchema"],
            json!({"input": {}})
        );
    }

    #[test]
    fn payment_payload_dispatches_on_version() {
        let v2 = json!({"x402Version": 2, "accepted": {"scheme": "exact"}, "payload": {}});
        let p: PaymentPayload = serde_json::from_value(v2.clone()).unwrap();
        assert_eq!(p.x402_version(), 2);
        assert_eq!(serde_json::to_value(&p).unwrap(), v2);

        let v1 =
            json!({"x402Version": 1, "scheme": "exact", "network": "base", "payload": {"a": 1}});
        let p: PaymentPayload = serde_json::from_value(v1.clone()).unwrap();
        assert_eq!(p.x402_version(), 1);
        assert_eq!(p.payload(), &json!({"a": 1}));
        assert_eq!(serde_json::to_value(&p).unwrap(), v1);

        assert!(serde_json::from_value::<PaymentPayload>(json!({"x402Version": 3})).is_err());
        assert!(serde_json::from_value::<PaymentPayload>(json!({"x402Version": 2})).is_err());
        assert_eq!(
            PaymentPayload::from_value(&json!({"x402Version": "2"})),
            Err(PayloadShapeError::Version)
        );
    }

    #[test]
    fn verify_response_treats_null_as_absent() {
        let r: VerifyResponse =
            serde_json::from_str(r#"{"isValid":false,"invalidReason":null,"payer":"0xabc"}"#)
                .unwrap();
        assert_eq!(r.invalid_reason, None);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"isValid": false, "payer": "0xabc"})
        );
    }

    #[test]
    fn settle_response_header_round_trips() {
        let r = SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            transaction: "0xaa".into(),
            network: "eip155:84532".into(),
            payer: Some("0x3C44".into()),
            amount: None,
        };
        let json = crate::b64::decode_strict(&r.to_header_value(), 4096).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&json).unwrap(),
            json!({"success": true, "transaction": "0xaa", "network": "eip155:84532", "payer": "0x3C44"})
        );
        let failed: SettleResponse =
            serde_json::from_str(r#"{"success":false,"errorReason":"settlement_pending"}"#)
                .unwrap();
        assert_eq!(failed.transaction, "");
    }
}
