//! Macaroons in the v2 binary format of libmacaroons / gopkg.in/macaroon.v2 (what Aperture and
//! every L402 client exchange), with the first-party HMAC-SHA256 signature chain.
//!
//! ```text
//! 0x02                                   version
//! [01 len location] 02 len identifier 00 header section
//! ([01 len loc] 02 len caveat [04 len vid] 00)*   caveat sections
//! 00                                     end of caveats
//! 06 20 <32-byte signature>              no trailing EOS
//! ```
//! Field types and lengths are unsigned LEB128 varints. The parser is at least as strict as Go's
//! and additionally refuses trailing bytes. Third-party caveats parse (so they can be named in
//! the error) but never verify.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::hmac::hmac_sha256;

/// Largest binary macaroon accepted (Aperture's are ~180 bytes; clients may append a few caveats).
pub const MAX_MACAROON_BYTES: usize = 4096;
/// Most caveats accepted: bounds the HMAC work an attacker can ask for.
pub const MAX_CAVEATS: usize = 32;

const VERSION_2: u8 = 0x02;
const FIELD_EOS: u64 = 0;
const FIELD_LOCATION: u64 = 1;
const FIELD_IDENTIFIER: u64 = 2;
const FIELD_VID: u64 = 4;
const FIELD_SIGNATURE: u64 = 6;
const SIGNATURE_LEN: usize = 32;
/// libmacaroons' key generator: the root key is never used directly.
const KEY_GENERATOR: &[u8] = b"macaroons-key-generator";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacaroonError {
    #[error("empty macaroon")]
    Empty,
    #[error("macaroon larger than {MAX_MACAROON_BYTES} bytes")]
    TooLarge,
    #[error("more than {MAX_CAVEATS} caveats")]
    TooManyCaveats,
    #[error("v1 (text) macaroons are not supported")]
    Version1,
    #[error("unsupported macaroon version byte 0x{0:02x}")]
    UnknownVersion(u8),
    #[error("truncated macaroon")]
    Truncated,
    #[error("varint too long")]
    BadVarint,
    #[error("field type {0} not allowed here")]
    UnexpectedField(u64),
    #[error("fields out of order")]
    FieldsOutOfOrder,
    #[error("section has no identifier")]
    NoIdentifier,
    #[error("location not allowed in a first-party caveat")]
    FirstPartyLocation,
    #[error("signature must be 32 bytes")]
    BadSignatureLength,
    #[error("bytes after the signature")]
    TrailingBytes,
    #[error("invalid base64")]
    BadBase64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caveat {
    /// The caveat's condition bytes (`services=svc:0`); what the chain signs.
    pub id: Vec<u8>,
    /// Only third-party caveats have one.
    pub location: Option<Vec<u8>>,
    /// Verification id: present only on third-party caveats.
    pub vid: Option<Vec<u8>>,
}

impl Caveat {
    /// A third-party caveat (needs a discharge macaroon, which L402 never uses).
    pub fn is_third_party(&self) -> bool {
        self.vid.is_some() || self.location.as_ref().is_some_and(|l| !l.is_empty())
    }
}

/// A well-formed v2 macaroon; `verify_signature` says whether it is genuine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Macaroon {
    /// Not covered by the signature. `Some(empty)` round-trips pymacaroons' empty packet.
    pub location: Option<Vec<u8>>,
    pub identifier: Vec<u8>,
    pub caveats: Vec<Caveat>,
    pub signature: [u8; 32],
}

impl Macaroon {
    pub fn new(root_key: &[u8], identifier: Vec<u8>, location: Option<Vec<u8>>) -> Macaroon {
        let key = hmac_sha256(KEY_GENERATOR, &[root_key]);
        let signature = hmac_sha256(&key, &[&identifier]);
        Macaroon {
            location,
            identifier,
            caveats: Vec::new(),
            signature,
        }
    }

    /// Attenuates: anyone holding the macaroon can add one, nobody can remove one.
    pub fn add_first_party_caveat(&mut self, id: impl Into<Vec<u8>>) {
        let id = id.into();
        self.signature = hmac_sha256(&self.signature, &[&id]);
        self.caveats.push(Caveat {
            id,
            location: None,
            vid: None,
        });
    }

    /// Recomputes the chain from `root_key` and compares in constant time. Third-party caveats
    /// are refused before any HMAC (there is no discharge to check them against).
    pub fn verify_signature(&self, root_key: &[u8]) -> Result<(), SignatureError> {
        if self.caveats.iter().any(Caveat::is_third_party) {
            return Err(SignatureError::ThirdPartyCaveat);
        }
        let key = hmac_sha256(KEY_GENERATOR, &[root_key]);
        let mut sig = hmac_sha256(&key, &[&self.identifier]);
        for caveat in &self.caveats {
            sig = hmac_sha256(&sig, &[&caveat.id]);
        }
        if bool::from(sig.ct_eq(&self.signature)) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let caveats_len: usize = self
            .caveats
            .iter()
            .map(|c| {
                c.id.len()
                    + c.location.as_ref().map_or(0, Vec::len)
                    + c.vid.as_ref().map_or(0, Vec::len)
                    + 16
            })
            .sum();
        let mut out = Vec::with_capacity(48 + self.identifier.len() + caveats_len);
        out.push(VERSION_2);
        if let Some(location) = &self.location {
            put_field(&mut out, FIELD_LOCATION, location);
        }
        put_field(&mut out, FIELD_IDENTIFIER, &self.identifier);
        out.push(0);
        for caveat in &self.caveats {
            if let Some(location) = &caveat.location {
                put_field(&mut out, FIELD_LOCATION, location);
            }
            put_field(&mut out, FIELD_IDENTIFIER, &caveat.id);
            if let Some(vid) = &caveat.vid {
                put_field(&mut out, FIELD_VID, vid);
            }
            out.push(0);
        }
        out.push(0);
        put_field(&mut out, FIELD_SIGNATURE, &self.signature);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Macaroon, MacaroonError> {
        if bytes.len() > MAX_MACAROON_BYTES {
            return Err(MacaroonError::TooLarge);
        }
        let (&version, rest) = bytes.split_first().ok_or(MacaroonError::Empty)?;
        match version {
            VERSION_2 => {}
            // v1 is base64/hex text, so its first byte is printable ASCII.
            b if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'-' || b == b'_' => {
                return Err(MacaroonError::Version1)
            }
            b => return Err(MacaroonError::UnknownVersion(b)),
        }
        let mut reader = Reader { rest };

        let header = reader.section()?;
        if header.vid.is_some() {
            return Err(MacaroonError::UnexpectedField(FIELD_VID));
        }
        let identifier = header.id.ok_or(MacaroonError::NoIdentifier)?;

        let mut caveats = Vec::new();
        loop {
            let section = reader.section()?;
            let Some(id) = section.id else {
                if section.location.is_some() || section.vid.is_some() {
                    return Err(MacaroonError::NoIdentifier);
                }
                break; // an empty section ends the caveats
            };
            if section.vid.is_none() && section.location.as_ref().is_some_and(|l| !l.is_empty()) {
                return Err(MacaroonError::FirstPartyLocation);
            }
            if caveats.len() == MAX_CAVEATS {
                return Err(MacaroonError::TooManyCaveats);
            }
            caveats.push(Caveat {
                id: id.to_vec(),
                location: section.location.map(<[u8]>::to_vec),
                vid: section.vid.map(<[u8]>::to_vec),
            });
        }

        let field = reader.varint()?;
        if field != FIELD_SIGNATURE {
            return Err(MacaroonError::UnexpectedField(field));
        }
        let signature: [u8; SIGNATURE_LEN] = reader
            .data()?
            .try_into()
            .map_err(|_| MacaroonError::BadSignatureLength)?;
        if !reader.rest.is_empty() {
            return Err(MacaroonError::TrailingBytes);
        }
        Ok(Macaroon {
            location: header.location.map(<[u8]>::to_vec),
            identifier: identifier.to_vec(),
            caveats,
            signature,
        })
    }

    /// Standard alphabet, padded: what Aperture emits and strictly expects back.
    pub fn encode_std(&self) -> String {
        STD.encode(self.to_bytes())
    }

    /// Standard or URL-safe alphabet, padded or not (what Go's and Rust's libraries accept).
    pub fn decode_lenient(s: &str) -> Result<Macaroon, MacaroonError> {
        Macaroon::from_bytes(&decode_base64_lenient(s)?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("third-party caveat")]
    ThirdPartyCaveat,
    #[error("signature mismatch")]
    Mismatch,
}

const fn engine(alphabet: &alphabet::Alphabet, pad: bool) -> GeneralPurpose {
    GeneralPurpose::new(
        alphabet,
        GeneralPurposeConfig::new()
            .with_encode_padding(pad)
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

const STD: GeneralPurpose = engine(&alphabet::STANDARD, true);
const URL: GeneralPurpose = engine(&alphabet::URL_SAFE, true);

/// Size-capped before decoding; mixing the two alphabets is refused.
pub(crate) fn decode_base64_lenient(s: &str) -> Result<Vec<u8>, MacaroonError> {
    if s.len() > MAX_MACAROON_BYTES.div_ceil(3) * 4 {
        return Err(MacaroonError::TooLarge);
    }
    let url = s.bytes().any(|b| b == b'-' || b == b'_');
    let std = s.bytes().any(|b| b == b'+' || b == b'/');
    let engine = match (std, url) {
        (true, true) => return Err(MacaroonError::BadBase64),
        (_, true) => &URL,
        _ => &STD,
    };
    engine.decode(s).map_err(|_| MacaroonError::BadBase64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_field(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    put_varint(out, field);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// One parsed section: the optional fields, borrowed from the input.
#[derive(Default)]
struct Section<'a> {
    location: Option<&'a [u8]>,
    id: Option<&'a [u8]>,
    vid: Option<&'a [u8]>,
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Unsigned LEB128, at most 5 bytes and 0x7fffffff (Go's cap).
    fn varint(&mut self) -> Result<u64, MacaroonError> {
        let mut value = 0u64;
        for (i, &b) in self.rest.iter().enumerate().take(5) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return if value > 0x7fff_ffff {
                    Err(MacaroonError::BadVarint)
                } else {
                    Ok(value)
                };
            }
        }
        if self.rest.len() < 5 {
            Err(MacaroonError::Truncated)
        } else {
            Err(MacaroonError::BadVarint)
        }
    }

    /// A length-prefixed payload.
    fn data(&mut self) -> Result<&'a [u8], MacaroonError> {
        let len = usize::try_from(self.varint()?).map_err(|_| MacaroonError::Truncated)?;
        if len > self.rest.len() {
            return Err(MacaroonError::Truncated);
        }
        let (data, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(data)
    }

    /// Fields up to and including the EOS, in strictly increasing type order.
    fn section(&mut self) -> Result<Section<'a>, MacaroonError> {
        let mut section = Section::default();
        let mut last = FIELD_EOS;
        loop {
            let field = self.varint()?;
            if field == FIELD_EOS {
                return Ok(section);
            }
            if field <= last {
                return Err(MacaroonError::FieldsOutOfOrder);
            }
            last = field;
            let slot = match field {
                FIELD_LOCATION => &mut section.location,
                FIELD_IDENTIFIER => &mut section.id,
                FIELD_VID => &mut section.vid,
                other => return Err(MacaroonError::UnexpectedField(other)),
            };
            // VID is the highest section field, so the order rule leaves only EOS after it.
            *slot = Some(self.data()?);
        }
    }
}
