//! The two `WWW-Authenticate` values of an L402 402, in the form every tested client parses
//! (fact sheet §1.2): the LSAT line first (old clients read only the first), then the L402
//! line with the 2026 spec's `version`/`token` appended after `invoice` (never before: regex
//! clients expect `macaroon=…, invoice=…` in that order).

use super::error::L402Error;

pub const HEADER_WWW_AUTHENTICATE: &str = "www-authenticate";
/// Body of the 429 on a Lightning-only route whose client has as many open (unpaid) invoices as
/// the verifier allows (`lightning.invoice_limits`); `Retry-After` says when one expires.
pub const INVOICE_LIMIT_BODY: &str = r#"{"error":"invoice_limit","message":"too many unpaid invoices for this client; pay one of them or retry later"}"#;
/// Longest BOLT11 invoice put in a header (real ones are well under 1 KiB).
const MAX_INVOICE_LEN: usize = 4096;
const MAX_MACAROON_B64_LEN: usize = 8192;

/// `[LSAT line, L402 line]`. The parameters come from the verifier, so they are checked before
/// being spliced into a header: `macaroon` standard base64, `invoice` bech32 characters.
pub fn www_authenticate(macaroon: &str, invoice: &str) -> Result<[String; 2], L402Error> {
    let macaroon_ok = !macaroon.is_empty()
        && macaroon.len() <= MAX_MACAROON_B64_LEN
        && macaroon
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    let invoice_ok = !invoice.is_empty()
        && invoice.len() <= MAX_INVOICE_LEN
        && invoice.bytes().all(|b| b.is_ascii_alphanumeric());
    if !macaroon_ok || !invoice_ok {
        return Err(L402Error::BadChallengeParam);
    }
    Ok([
        format!("LSAT macaroon=\"{macaroon}\", invoice=\"{invoice}\""),
        format!(
            "L402 macaroon=\"{macaroon}\", invoice=\"{invoice}\", version=\"0\", token=\"{macaroon}\""
        ),
    ])
}
