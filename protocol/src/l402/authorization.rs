//! The L402 credential in `Authorization`: `L402 <macaroon>:<preimage hex>` (or `LSAT …`).
//!
//! Every value of the header is read: Aperture-style clients send the same credential twice
//! (an `LSAT` line and an `L402` line), and Envoy joins repeated `Authorization` lines into one
//! value with `,` (in the wasm filter and in ext_authz alike). Duplicates of one credential are
//! accepted; two different credentials are refused. Other schemes (say the API's own `Bearer`
//! token) are ignored here and kept by [`without_l402`].
//!
//! A credential is the scheme keyword (case-insensitive, at the start or after a blank or `,`),
//! blanks, then one token up to the next `,` or blank: base64 and hex never contain either.
//! A blank is a space or any ASCII control character ([`is_blank`]): one definition for finding
//! credentials and for trimming what [`without_l402`] leaves, so nothing an upstream trims down
//! to `L402 …` (after a form feed, CR, LF, NUL…) can slip past the scan unchecked.
//! The spec's multi-macaroon form `L402 M1,M2:R` is therefore refused (Aperture does not
//! support it either).

use std::borrow::Cow;
use std::fmt;

use super::error::L402Error;
use super::macaroon::Macaroon;

/// Sum of the lengths of the values carrying L402 credentials.
pub const MAX_AUTHORIZATION_BYTES: usize = 8192;
/// Credentials (before deduplication) in one request.
const MAX_CREDENTIALS: usize = 4;
const SCHEMES: [&[u8; 4]; 2] = [b"l402", b"lsat"];

#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub macaroon: Macaroon,
    pub preimage: [u8; 32],
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The preimage is the bearer secret of a paid token.
        f.debug_struct("Credential")
            .field("macaroon", &self.macaroon)
            .finish_non_exhaustive()
    }
}

/// Parses every `Authorization` value of a request. `Ok(None)`: no L402/LSAT credential.
pub fn parse_authorization<'a, I>(values: I) -> Result<Option<Credential>, L402Error>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut total = 0usize;
    let mut seen = 0usize;
    let mut first: Option<(&[u8], Credential)> = None;
    for value in values {
        let mut found = false;
        for text in credentials(value) {
            if !found {
                found = true;
                total = total.saturating_add(value.len());
                if total > MAX_AUTHORIZATION_BYTES {
                    return Err(L402Error::HeaderTooLarge {
                        max: MAX_AUTHORIZATION_BYTES,
                    });
                }
            }
            seen += 1;
            if seen > MAX_CREDENTIALS {
                return Err(L402Error::BadHeader("too many credentials"));
            }
            match &first {
                // The usual LSAT+L402 pair: the same text twice, parsed once.
                Some((first_text, _)) if *first_text == text => {}
                Some((_, credential)) => {
                    if parse_credential(text)? != *credential {
                        return Err(L402Error::ConflictingCredentials);
                    }
                }
                None => first = Some((text, parse_credential(text)?)),
            }
        }
    }
    Ok(first.map(|(_, c)| c))
}

/// Whether an `Authorization` value carries an L402/LSAT credential.
pub fn carries_l402(value: &[u8]) -> bool {
    spans(value).next().is_some()
}

/// `value` without its L402/LSAT credentials, for the upstream: the value itself when it has
/// none, the remaining comma-separated parts (`Bearer x` of `Bearer x,L402 …`) otherwise, and
/// `None` when nothing is left.
pub fn without_l402(value: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut spans = spans(value).peekable();
    if spans.peek().is_none() {
        return Some(Cow::Borrowed(value));
    }
    let mut rest = Vec::new();
    let mut from = 0;
    for span in spans {
        rest.extend_from_slice(&value[from..span.keyword]);
        from = span.end;
    }
    rest.extend_from_slice(&value[from..]);
    let parts: Vec<&[u8]> = rest
        .split(|&b| b == b',')
        .map(trim_blanks)
        .filter(|p| !p.is_empty())
        .collect();
    (!parts.is_empty()).then(|| Cow::Owned(parts.join(&b", "[..])))
}

/// What separates words in an `Authorization` value: a space or an ASCII control character
/// (tab, CR, LF, form feed, vertical tab, NUL, DEL…), a superset of what HTTP stacks trim
/// (`trim_ascii`, OWS). The scanner and [`without_l402`]'s trimming both use it (with `,`).
pub fn is_blank(b: u8) -> bool {
    b == b' ' || b.is_ascii_control()
}

fn trim_blanks(mut part: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = part {
        if !is_blank(*first) {
            break;
        }
        part = rest;
    }
    while let [rest @ .., last] = part {
        if !is_blank(*last) {
            break;
        }
        part = rest;
    }
    part
}

fn credentials(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    spans(value).map(move |s| &value[s.begin..s.end])
}

/// Where one credential sits in a value.
struct Span {
    /// The scheme keyword.
    keyword: usize,
    /// The `<macaroon>:<preimage>` token.
    begin: usize,
    end: usize,
}

/// The credentials of `value`, left to right. The scan resumes after each token, so spans never
/// overlap (`L402 L402 x` is one span whose token is `L402`, then plain text) and a long token
/// is read once.
fn spans(value: &[u8]) -> impl Iterator<Item = Span> + '_ {
    let blank = is_blank;
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < value.len() {
            let i = at;
            at += 1;
            let at_boundary = i == 0 || blank(value[i - 1]) || value[i - 1] == b',';
            let word = value.get(i..i + 4)?;
            if !at_boundary || !SCHEMES.iter().any(|s| word.eq_ignore_ascii_case(&s[..])) {
                continue;
            }
            let after = &value[i + 4..];
            let spaces = after.iter().take_while(|&&b| blank(b)).count();
            if spaces == 0 {
                continue;
            }
            let begin = i + 4 + spaces;
            let len = value[begin..]
                .iter()
                .take_while(|&&b| !blank(b) && b != b',')
                .count();
            at = begin + len;
            return Some(Span {
                keyword: i,
                begin,
                end: begin + len,
            });
        }
        None
    })
}

/// `<macaroon base64>:<64 hex>`.
fn parse_credential(text: &[u8]) -> Result<Credential, L402Error> {
    let text =
        std::str::from_utf8(text).map_err(|_| L402Error::BadHeader("credential is not ASCII"))?;
    let (macaroon, preimage) = text
        .rsplit_once(':')
        .ok_or(L402Error::BadHeader("expected <macaroon>:<preimage>"))?;
    let mut bytes = [0u8; 32];
    if preimage.len() != 64 || hex::decode_to_slice(preimage, &mut bytes).is_err() {
        return Err(L402Error::BadHeader("preimage must be 64 hex characters"));
    }
    if macaroon.is_empty() {
        return Err(L402Error::BadHeader("no macaroon"));
    }
    Ok(Credential {
        macaroon: Macaroon::decode_lenient(macaroon)?,
        preimage: bytes,
    })
}
