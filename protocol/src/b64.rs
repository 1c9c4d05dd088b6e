//! Base64 as x402 uses it: standard alphabet with `=` padding. Strict on the alphabet and the
//! padding (the TS SDK rejects anything not matching `^[A-Za-z0-9+/]*={0,2}$`), so a header the
//! official clients would never send is not half-accepted here.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum B64Error {
    #[error("base64 value decodes to more than {max} bytes")]
    TooLong { max: usize },
    #[error("invalid base64 character at byte {0}")]
    InvalidChar(usize),
    #[error("base64 length must be a multiple of 4 with `=` padding")]
    BadPadding,
}

/// Like the JS and Python decoders the clients pair with, non-zero bits after the last symbol
/// are tolerated; everything else about the encoding is checked.
const STRICT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Decodes `s`, refusing (before doing any work) anything that would exceed `max_decoded` bytes.
pub fn decode_strict(s: &str, max_decoded: usize) -> Result<Vec<u8>, B64Error> {
    let bytes = s.as_bytes();
    // Checked first so an oversized header costs nothing but its length.
    if bytes.len() / 4 * 3 > max_decoded.saturating_add(2) {
        return Err(B64Error::TooLong { max: max_decoded });
    }
    let body_len = bytes.len()
        - bytes
            .iter()
            .rev()
            .take(2)
            .take_while(|&&b| b == b'=')
            .count();
    if let Some(pos) = bytes[..body_len]
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'+' || b == b'/'))
    {
        return Err(B64Error::InvalidChar(pos));
    }
    if bytes.len() % 4 != 0 {
        return Err(B64Error::BadPadding);
    }
    let decoded = STRICT.decode(bytes).map_err(|_| B64Error::BadPadding)?;
    if decoded.len() > max_decoded {
        return Err(B64Error::TooLong { max: max_decoded });
    }
    Ok(decoded)
}

pub fn encode(data: &[u8]) -> String {
    STRICT.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for data in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"{\"x402Version\":2}",
            &[0xfb, 0xff, 0xfe],
        ] {
            let s = encode(data);
            assert_eq!(decode_strict(&s, 64).unwrap(), data);
        }
        assert_eq!(encode(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn rejects_url_safe_alphabet() {
        assert_eq!(decode_strict("-_8=", 64), Err(B64Error::InvalidChar(0)));
        assert_eq!(decode_strict("+_8=", 64), Err(B64Error::InvalidChar(1)));
    }

    #[test]
    fn rejects_whitespace() {
        assert_eq!(
            decode_strict("Zm9v YmFy", 64),
            Err(B64Error::InvalidChar(4))
        );
        assert_eq!(decode_strict(" Zm9v", 64), Err(B64Error::InvalidChar(0)));
        assert_eq!(decode_strict("Zm9v\n", 64), Err(B64Error::InvalidChar(4)));
        assert_eq!(
            decode_strict("Zm9v\r\nYmFy", 64),
            Err(B64Error::InvalidChar(4))
        );
    }

    #[test]
    fn rejects_bad_padding() {
        assert_eq!(decode_strict("Zm8", 64), Err(B64Error::BadPadding)); // unpadded
        assert_eq!(decode_strict("Zg=", 64), Err(B64Error::BadPadding));
        assert_eq!(decode_strict("Zg===", 64), Err(B64Error::InvalidChar(2)));
        assert_eq!(decode_strict("Zm9v=", 64), Err(B64Error::BadPadding));
        assert_eq!(decode_strict("Zm=9", 64), Err(B64Error::InvalidChar(2)));
        assert_eq!(decode_strict("Zm8=Zm8=", 64), Err(B64Error::InvalidChar(3)));
        assert_eq!(decode_strict("Zm9v====", 64), Err(B64Error::InvalidChar(4)));
        assert_eq!(decode_strict("====", 64), Err(B64Error::InvalidChar(0)));
        assert_eq!(decode_strict("Z===", 64), Err(B64Error::InvalidChar(1)));
    }

    #[test]
    fn tolerates_trailing_bits_like_the_clients() {
        // "Zh==" has non-zero bits after the byte; atob and Python both return "f".
        assert_eq!(decode_strict("Zh==", 64).unwrap(), b"f");
    }

    #[test]
    fn enforces_the_size_limit() {
        let s = encode(&[7u8; 100]);
        assert_eq!(decode_strict(&s, 100).unwrap().len(), 100);
        assert_eq!(decode_strict(&s, 99), Err(B64Error::TooLong { max: 99 }));
        assert_eq!(
            decode_strict(&"A".repeat(1 << 20), 8192),
            Err(B64Error::TooLong { max: 8192 })
        );
    }
}
