//! Why an L402 credential was refused, with a stable machine-readable code per case (the
//! filter puts it in the 402 body as `{"error": "<code>"}`, the verifier in its ledger).

use super::macaroon::MacaroonError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L402Error {
    #[error("malformed L402 Authorization header: {0}")]
    BadHeader(&'static str),
    #[error("L402 Authorization header larger than {max} bytes")]
    HeaderTooLarge { max: usize },
    #[error("Authorization carries differing L402/LSAT credentials")]
    ConflictingCredentials,
    #[error("malformed macaroon: {0}")]
    BadMacaroon(#[from] MacaroonError),
    #[error("macaroon identifier is not a version 0 L402 identifier: {0}")]
    BadIdentifier(&'static str),
    #[error("sha256(preimage) does not match the payment hash")]
    WrongPreimage,
    #[error("third-party caveats are not accepted")]
    ThirdPartyCaveat,
    #[error("macaroon signature does not verify")]
    BadSignature,
    #[error("unknown caveat condition {0:?}")]
    UnknownCaveat(String),
    #[error("malformed caveat {0:?}")]
    BadCaveat(String),
    #[error("caveat {0:?} widens an earlier caveat of the same condition")]
    WideningCaveat(String),
    #[error("macaroon lacks the {0} caveat")]
    MissingCaveat(&'static str),
    #[error("token expired")]
    Expired,
    #[error("token is not valid for this service")]
    WrongService,
    #[error("token is bound to another path")]
    WrongPath,
    #[error("token is bound to another method")]
    WrongMethod,
    #[error("challenge parameter is not safe to put in a header")]
    BadChallengeParam,
}

impl L402Error {
    /// Stable code for logs, ledgers and 402 bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            L402Error::BadHeader(_) => "l402_bad_header",
            L402Error::HeaderTooLarge { .. } => "l402_header_too_large",
            L402Error::ConflictingCredentials => "l402_conflicting_credentials",
            L402Error::BadMacaroon(_) => "l402_bad_macaroon",
            L402Error::BadIdentifier(_) => "l402_bad_identifier",
            L402Error::WrongPreimage => "l402_wrong_preimage",
            L402Error::ThirdPartyCaveat => "l402_third_party_caveat",
            L402Error::BadSignature => "l402_bad_signature",
            L402Error::UnknownCaveat(_) => "l402_unknown_caveat",
            L402Error::BadCaveat(_) => "l402_bad_caveat",
            L402Error::WideningCaveat(_) => "l402_widening_caveat",
            L402Error::MissingCaveat(_) => "l402_missing_caveat",
            L402Error::Expired => "l402_expired",
            L402Error::WrongService => "l402_wrong_service",
            L402Error::WrongPath => "l402_wrong_path",
            L402Error::WrongMethod => "l402_wrong_method",
            L402Error::BadChallengeParam => "l402_bad_challenge",
        }
    }

    /// The header itself is unusable (as opposed to a well-formed credential that fails
    /// verification).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            L402Error::BadHeader(_)
                | L402Error::HeaderTooLarge { .. }
                | L402Error::ConflictingCredentials
                | L402Error::BadMacaroon(_)
        )
    }
}

/// Reason the filter answers when a single-use token was already claimed.
pub const REASON_TOKEN_ALREADY_USED: &str = "l402_token_already_used";
