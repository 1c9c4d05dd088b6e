//! 20-byte EVM addresses. Equality is on bytes, so `0xabc…` and `0xABC…` are the same address
//! (facilitators compare case-insensitively too); display is always EIP-55 checksummed because
//! that is what the SDKs emit and some clients compare strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::keccak256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("EVM address must start with 0x")]
    MissingPrefix,
    #[error("EVM address must have 40 hex digits after 0x, got {0} characters")]
    Length(usize),
    #[error("EVM address contains a non-hex character")]
    NotHex,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EvmAddress(pub [u8; 20]);

impl EvmAddress {
    pub const fn from_bytes(bytes: [u8; 20]) -> Self {
        EvmAddress(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// Lower-case `0x…` form, for storage keys where a canonical spelling matters.
    pub fn to_lower_hex(&self) -> String {
        format!("0x{}", hex::encode(self.0))
    }

    /// ABI encoding: left-padded to a 32-byte word.
    pub fn to_word(&self) -> [u8; 32] {
        let mut word = [0u8; 32];
        word[12..].copy_from_slice(&self.0);
        word
    }

    /// EIP-55: a hex letter is upper-case when the matching nibble of
    /// keccak256(lower-case hex) is >= 8.
    fn checksummed(&self) -> [u8; 42] {
        let mut out = [0u8; 42];
        out[0] = b'0';
        out[1] = b'x';
        let lower = &mut out[2..];
        for (i, byte) in self.0.iter().enumerate() {
            lower[2 * i] = HEX[usize::from(byte >> 4)];
            lower[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
        }
        let hash = keccak256(lower);
        for (i, c) in lower.iter_mut().enumerate() {
            let nibble = if i % 2 == 0 {
                hash[i / 2] >> 4
            } else {
                hash[i / 2] & 0x0f
            };
            if c.is_ascii_alphabetic() && nibble >= 8 {
                c.make_ascii_uppercase();
            }
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl FromStr for EvmAddress {
    type Err = AddressError;

    /// Any case is accepted: the checksum is a typo guard for humans, and clients do send
    /// lower-case addresses.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or(AddressError::MissingPrefix)?;
        if digits.len() != 40 {
            return Err(AddressError::Length(digits.len()));
        }
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| AddressError::NotHex)?;
        Ok(EvmAddress(bytes))
    }
}

impl fmt::Display for EvmAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.checksummed();
        // Only ASCII was written above.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for EvmAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for EvmAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EvmAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eip55_checksums() {
        // Vectors from EIP-55 and the x402 fact sheet.
        for s in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
            "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
            "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
        ] {
            let a: EvmAddress = s.to_lowercase().parse().unwrap();
            assert_eq!(a.to_string(), s);
            assert_eq!(format!("{a:?}"), s);
        }
    }

    #[test]
    fn equality_ignores_case() {
        let a: EvmAddress = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
            .parse()
            .unwrap();
        let b: EvmAddress = "0xF39FD6E51AAD88F6F4CE6AB8827279CFFFB92266"
            .parse()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.to_lower_hex(),
            "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
        );
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            "f39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse::<EvmAddress>(),
            Err(AddressError::MissingPrefix)
        );
        assert_eq!("0xf39f".parse::<EvmAddress>(), Err(AddressError::Length(4)));
        assert_eq!("0x".parse::<EvmAddress>(), Err(AddressError::Length(0)));
        assert_eq!(
            "0xg39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse::<EvmAddress>(),
            Err(AddressError::NotHex)
        );
        assert!(" 0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
            .parse::<EvmAddress>()
            .is_err());
        // A multi-byte char must not slip through a byte-length check.
        assert!("0xé39fd6e51aad88f6f4ce6ab8827279cfffb9226"
            .parse::<EvmAddress>()
            .is_err());
    }

    #[test]
    fn serde_checksums() {
        let a: EvmAddress =
            serde_json::from_str("\"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266\"").unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            "\"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266\""
        );
        assert!(serde_json::from_str::<EvmAddress>("42").is_err());
    }

    #[test]
    fn abi_word() {
        let a: EvmAddress = "0x00000000000000000000000000000000000000ff"
            .parse()
            .unwrap();
        let w = a.to_word();
        assert_eq!(&w[..31], &[0u8; 31]);
        assert_eq!(w[31], 0xff);
    }
}
