//! x402 (HTTP 402 payments, protocol v1 and v2): wire types, error reasons, our offers, the
//! checks the gateway runs on a payment, and the precomputed 402 challenge.

pub mod challenge;
pub mod check;
pub mod lightning;
pub mod offer;
pub mod reason;
pub mod types;

pub use challenge::{is_json_object, Challenge, RenderedChallenge, CHALLENGE_HEADERS};
pub use check::{
    check_payment, decode_payment, decode_payment_json, CheckedPayment, ReplayKey,
    MAX_PAYMENT_BYTES,
};
pub use lightning::{
    check_lightning_payment, lightning_offer_v2, LightningPayload, LightningPayment, PaymentKind,
};
pub use offer::Offer;
pub use reason::ErrorReason;
pub use types::*;

/// Request header carrying a v2 payment.
pub const HEADER_PAYMENT_SIGNATURE: &str = "payment-signature";
/// `errorReason` of a receipt whose settlement outcome is not known yet (timed out, broadcast
/// without a receipt): not a failure; the server settles it later (`@x402/core` 2.24).
pub const SETTLEMENT_PENDING: &str = "settlement_pending";
/// Request header carrying a v1 payment.
pub const HEADER_X_PAYMENT: &str = "x-payment";
/// Response header with the base64 v2 `PaymentRequired`.
pub const HEADER_PAYMENT_REQUIRED: &str = "payment-required";
/// Response header with the base64 `SettleResponse` for v2 payments.
pub const HEADER_PAYMENT_RESPONSE: &str = "payment-response";
/// Response header with the base64 `SettleResponse` for v1 payments.
pub const HEADER_X_PAYMENT_RESPONSE: &str = "x-payment-response";
/// The only scheme offered for now.
pub const SCHEME_EXACT: &str = "exact";
