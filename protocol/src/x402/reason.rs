//! The x402 error reasons the gateway itself produces. A facilitator's `invalidReason` /
//! `errorReason` is carried elsewhere as an opaque string: its set keeps growing.

use std::fmt;

/// A machine-readable rejection reason (snake_case on the wire, in the 402's `error` field and
/// in the ledger).
///
/// "No offer matches the payment" is [`ErrorReason::InvalidPaymentRequirements`]
/// (`invalid_payment_requirements`, from the spec's reason list) rather than the SDK's prose
/// "No matching payment requirements": every `error` we emit for a rejected payment is then a
/// code a client or an operator can switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ErrorReason {
    /// Not base64, not JSON, or not the shape of the scheme's payload.
    InvalidPayload,
    /// `x402Version` missing or not 1 / 2.
    InvalidX402Version,
    /// The scheme field is missing or malformed.
    InvalidScheme,
    /// A scheme we do not offer.
    UnsupportedScheme,
    /// A network we do not offer.
    InvalidNetwork,
    /// The payment matches none of our offers.
    InvalidPaymentRequirements,
    /// `authorization.to` is not our `payTo`.
    InvalidExactEvmPayloadRecipientMismatch,
    /// `authorization.value` differs from the price (over- and under-payment alike).
    InvalidExactEvmPayloadAuthorizationValueMismatch,
    /// `validBefore` is past or too close (less than 6 s away).
    InvalidExactEvmPayloadAuthorizationValidBefore,
    /// `validAfter` is in the future.
    InvalidExactEvmPayloadAuthorizationValidAfter,
    /// Malformed signature, or it does not recover `authorization.from`.
    InvalidExactEvmPayloadSignature,
    /// This (payer, nonce) was already claimed.
    InvalidExactEvmNonceAlreadyUsed,
    /// The client chose a token we do not accept on that network.
    InvalidExactEvmAssetMismatch,
    UnexpectedVerifyError,
    UnexpectedSettleError,
}

impl ErrorReason {
    pub const ALL: [ErrorReason; 15] = [
        ErrorReason::InvalidPayload,
        ErrorReason::InvalidX402Version,
        ErrorReason::InvalidScheme,
        ErrorReason::UnsupportedScheme,
        ErrorReason::InvalidNetwork,
        ErrorReason::InvalidPaymentRequirements,
        ErrorReason::InvalidExactEvmPayloadRecipientMismatch,
        ErrorReason::InvalidExactEvmPayloadAuthorizationValueMismatch,
        ErrorReason::InvalidExactEvmPayloadAuthorizationValidBefore,
        ErrorReason::InvalidExactEvmPayloadAuthorizationValidAfter,
        ErrorReason::InvalidExactEvmPayloadSignature,
        ErrorReason::InvalidExactEvmNonceAlreadyUsed,
        ErrorReason::InvalidExactEvmAssetMismatch,
        ErrorReason::UnexpectedVerifyError,
        ErrorReason::UnexpectedSettleError,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorReason::InvalidPayload => "invalid_payload",
            ErrorReason::InvalidX402Version => "invalid_x402_version",
            ErrorReason::InvalidScheme => "invalid_scheme",
            ErrorReason::UnsupportedScheme => "unsupported_scheme",
            ErrorReason::InvalidNetwork => "invalid_network",
            ErrorReason::InvalidPaymentRequirements => "invalid_payment_requirements",
            ErrorReason::InvalidExactEvmPayloadRecipientMismatch => {
                "invalid_exact_evm_payload_recipient_mismatch"
            }
            ErrorReason::InvalidExactEvmPayloadAuthorizationValueMismatch => {
                "invalid_exact_evm_payload_authorization_value_mismatch"
            }
            ErrorReason::InvalidExactEvmPayloadAuthorizationValidBefore => {
                "invalid_exact_evm_payload_authorization_valid_before"
            }
            ErrorReason::InvalidExactEvmPayloadAuthorizationValidAfter => {
                "invalid_exact_evm_payload_authorization_valid_after"
            }
            ErrorReason::InvalidExactEvmPayloadSignature => "invalid_exact_evm_payload_signature",
            ErrorReason::InvalidExactEvmNonceAlreadyUsed => "invalid_exact_evm_nonce_already_used",
            ErrorReason::InvalidExactEvmAssetMismatch => "invalid_exact_evm_asset_mismatch",
            ErrorReason::UnexpectedVerifyError => "unexpected_verify_error",
            ErrorReason::UnexpectedSettleError => "unexpected_settle_error",
        }
    }

    /// The reverse of [`ErrorReason::as_str`], for reasons that crossed the gRPC hop as text.
    pub fn from_code(code: &str) -> Option<ErrorReason> {
        ErrorReason::ALL.into_iter().find(|r| r.as_str() == code)
    }
}

impl fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_wire_string() {
        use ErrorReason::*;
        let expected = [
            (InvalidPayload, "invalid_payload"),
            (InvalidX402Version, "invalid_x402_version"),
            (InvalidScheme, "invalid_scheme"),
            (UnsupportedScheme, "unsupported_scheme"),
            (InvalidNetwork, "invalid_network"),
            (InvalidPaymentRequirements, "invalid_payment_requirements"),
            (
                InvalidExactEvmPayloadRecipientMismatch,
                "invalid_exact_evm_payload_recipient_mismatch",
            ),
            (
                InvalidExactEvmPayloadAuthorizationValueMismatch,
                "invalid_exact_evm_payload_authorization_value_mismatch",
            ),
            (
                InvalidExactEvmPayloadAuthorizationValidBefore,
                "invalid_exact_evm_payload_authorization_valid_before",
            ),
            (
                InvalidExactEvmPayloadAuthorizationValidAfter,
                "invalid_exact_evm_payload_authorization_valid_after",
            ),
            (
                InvalidExactEvmPayloadSignature,
                "invalid_exact_evm_payload_signature",
            ),
            (
                InvalidExactEvmNonceAlreadyUsed,
                "invalid_exact_evm_nonce_already_used",
            ),
            (
                InvalidExactEvmAssetMismatch,
                "invalid_exact_evm_asset_mismatch",
            ),
            (UnexpectedVerifyError, "unexpected_verify_error"),
            (UnexpectedSettleError, "unexpected_settle_error"),
        ];
        assert_eq!(expected.len(), ErrorReason::ALL.len());
        for (reason, s) in expected {
            assert_eq!(reason.as_str(), s);
            assert_eq!(reason.to_string(), s);
            assert_eq!(ErrorReason::from_code(s), Some(reason));
        }
        assert_eq!(ErrorReason::from_code("settlement_pending"), None);
    }
}
