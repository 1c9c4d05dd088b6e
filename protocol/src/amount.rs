//! Prices and amounts: a decimal USD price as configured, and the integer amount of a token's
//! smallest unit that goes on the wire. Exact decimal arithmetic only: a float would turn
//! "0.1" into 0.1000000000000000055… and the signed amount would not match.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fractional digits a [`UsdPrice`] keeps. 18 covers every ERC-20 `decimals` in use.
pub const PRICE_SCALE: u8 = 18;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("empty amount")]
    Empty,
    #[error("negative amounts are not allowed")]
    Negative,
    #[error("exponent notation is not allowed; write the number out")]
    Exponent,
    #[error("invalid character {0:?} in amount (expected digits and at most one '.')")]
    InvalidChar(char),
    #[error("a '.' must have digits on both sides")]
    MisplacedDot,
    #[error("more than {PRICE_SCALE} fractional digits")]
    TooManyDecimals,
    #[error("price {price} is not a whole number of units with {decimals} decimals")]
    NotRepresentable { price: UsdPrice, decimals: u8 },
    #[error("amount too large")]
    Overflow,
}

/// A non-negative USD price with up to 18 fractional digits, stored exactly as
/// `price * 10^18` (so 1.5 is 1_500_000_000_000_000_000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsdPrice {
    scaled: u128,
}

impl UsdPrice {
    /// The price in units of `10^-18` USD.
    pub fn scaled(self) -> u128 {
        self.scaled
    }

    pub fn is_zero(self) -> bool {
        self.scaled == 0
    }

    /// The amount in a token's smallest unit, for a USD stablecoin with `decimals` decimals.
    /// Errors instead of rounding: silently charging a different price is worse than a config
    /// error.
    pub fn to_atomic(&self, decimals: u8) -> Result<AtomicAmount, AmountError> {
        if decimals <= PRICE_SCALE {
            let divisor = pow10(PRICE_SCALE - decimals)?;
            if self.scaled % divisor != 0 {
                return Err(AmountError::NotRepresentable {
                    price: *self,
                    decimals,
                });
            }
            Ok(AtomicAmount(self.scaled / divisor))
        } else {
            let factor = pow10(decimals - PRICE_SCALE)?;
            self.scaled
                .checked_mul(factor)
                .map(AtomicAmount)
                .ok_or(AmountError::Overflow)
        }
    }
}

fn pow10(exp: u8) -> Result<u128, AmountError> {
    10u128
        .checked_pow(u32::from(exp))
        .ok_or(AmountError::Overflow)
}

impl FromStr for UsdPrice {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AmountError::Empty);
        }
        if s.starts_with('-') {
            return Err(AmountError::Negative);
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_digit() && *c != '.') {
            return Err(if matches!(c, 'e' | 'E') {
                AmountError::Exponent
            } else {
                AmountError::InvalidChar(c)
            });
        }
        let (int, frac) = match s.split_once('.') {
            Some((_, f)) if f.contains('.') => return Err(AmountError::InvalidChar('.')),
            Some((i, f)) if i.is_empty() || f.is_empty() => return Err(AmountError::MisplacedDot),
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        if frac.len() > usize::from(PRICE_SCALE) {
            return Err(AmountError::TooManyDecimals);
        }
        // Only ASCII digits remain, so the digit arithmetic below cannot see anything else.
        let mut scaled: u128 = 0;
        let padding = std::iter::repeat_n(b'0', usize::from(PRICE_SCALE) - frac.len());
        for digit in int.bytes().chain(frac.bytes()).chain(padding) {
            scaled = scaled
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(digit - b'0')))
                .ok_or(AmountError::Overflow)?;
        }
        Ok(UsdPrice { scaled })
    }
}

impl fmt::Display for UsdPrice {
    /// Shortest exact decimal form: `0.001`, `1.5`, `2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = 10u128.pow(u32::from(PRICE_SCALE));
        let int = self.scaled / unit;
        let frac = self.scaled % unit;
        if frac == 0 {
            return write!(f, "{int}");
        }
        let digits = format!("{frac:018}");
        write!(f, "{int}.{}", digits.trim_end_matches('0'))
    }
}

impl Serialize for UsdPrice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UsdPrice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An amount in a token's smallest unit (USDC: millionths), as a plain decimal integer on the
/// wire (`"10000"`), never a JSON number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AtomicAmount(pub u128);

impl AtomicAmount {
    pub fn get(self) -> u128 {
        self.0
    }
}

impl FromStr for AtomicAmount {
    type Err = AmountError;

    /// Digits only: no sign, no spaces, no `0x` (u128's own parser would accept `+5`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AmountError::Empty);
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_digit()) {
            return Err(match c {
                '-' => AmountError::Negative,
                'e' | 'E' => AmountError::Exponent,
                c => AmountError::InvalidChar(c),
            });
        }
        s.parse::<u128>()
            .map(AtomicAmount)
            .map_err(|_| AmountError::Overflow)
    }
}

impl fmt::Display for AtomicAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for AtomicAmount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AtomicAmount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(s: &str) -> UsdPrice {
        s.parse().unwrap()
    }

    #[test]
    fn usd_to_atomic_is_exact() {
        assert_eq!(price("0.001").to_atomic(6), Ok(AtomicAmount(1_000)));
        assert_eq!(price("0.01").to_atomic(6), Ok(AtomicAmount(10_000)));
        assert_eq!(price("1.50").to_atomic(6), Ok(AtomicAmount(1_500_000)));
        assert_eq!(price("1").to_atomic(6), Ok(AtomicAmount(1_000_000)));
        assert_eq!(price("0").to_atomic(6), Ok(AtomicAmount(0)));
        assert_eq!(price("0.000001").to_atomic(6), Ok(AtomicAmount(1)));
        assert_eq!(
            price("0.1").to_atomic(18),
            Ok(AtomicAmount(100_000_000_000_000_000))
        );
        assert_eq!(price("2").to_atomic(0), Ok(AtomicAmount(2)));
        assert_eq!(
            price("0.000000000000000001").to_atomic(18),
            Ok(AtomicAmount(1))
        );
        assert_eq!(
            price("1").to_atomic(20),
            Ok(AtomicAmount(100_000_000_000_000_000_000))
        );
    }

    #[test]
    fn usd_to_atomic_refuses_to_round() {
        let p = price("0.0000001");
        assert_eq!(
            p.to_atomic(6),
            Err(AmountError::NotRepresentable {
                price: p,
                decimals: 6
            })
        );
        assert!(price("0.5").to_atomic(0).is_err());
        assert_eq!(price("0.0000001").to_atomic(7), Ok(AtomicAmount(1)));
    }

    #[test]
    fn usd_to_atomic_overflow() {
        assert_eq!(price("1").to_atomic(60), Err(AmountError::Overflow));
        assert_eq!(price("1000").to_atomic(38), Err(AmountError::Overflow));
        assert_eq!(price("1").to_atomic(u8::MAX), Err(AmountError::Overflow));
    }

    #[test]
    fn usd_price_rejects_bad_input() {
        use AmountError::*;
        let cases = [
            ("", Empty),
            ("-1", Negative),
            ("-0.5", Negative),
            ("1e3", Exponent),
            ("1E-3", Exponent),
            ("+1", InvalidChar('+')),
            (" 1", InvalidChar(' ')),
            ("1 ", InvalidChar(' ')),
            ("$1", InvalidChar('$')),
            ("1,5", InvalidChar(',')),
            ("1.2.3", InvalidChar('.')),
            (".5", MisplacedDot),
            ("5.", MisplacedDot),
            (".", MisplacedDot),
            ("0.0000000000000000001", TooManyDecimals),
            ("NaN", InvalidChar('N')),
            ("999999999999999999999", Overflow),
        ];
        for (input, err) in cases {
            assert_eq!(input.parse::<UsdPrice>(), Err(err), "{input:?}");
        }
        // The largest whole-dollar price that fits `u128` once scaled by 10^18.
        assert!("340282366920938463463".parse::<UsdPrice>().is_ok());
        assert_eq!("340282366920938463464".parse::<UsdPrice>(), Err(Overflow));
    }

    #[test]
    fn usd_price_display_and_serde() {
        for (input, shown) in [
            ("0.001", "0.001"),
            ("1.50", "1.5"),
            ("007", "7"),
            ("0", "0"),
        ] {
            assert_eq!(price(input).to_string(), shown);
        }
        assert_eq!(serde_json::to_string(&price("0.25")).unwrap(), "\"0.25\"");
        assert_eq!(
            serde_json::from_str::<UsdPrice>("\"0.25\"").unwrap(),
            price("0.25")
        );
        assert!(serde_json::from_str::<UsdPrice>("0.25").is_err());
        assert_eq!(price("0.001").scaled(), 1_000_000_000_000_000);
        assert!(price("0.000").is_zero());
    }

    #[test]
    fn atomic_amount_parsing() {
        assert_eq!("10000".parse::<AtomicAmount>(), Ok(AtomicAmount(10_000)));
        assert_eq!("0".parse::<AtomicAmount>(), Ok(AtomicAmount(0)));
        assert_eq!(
            u128::MAX.to_string().parse::<AtomicAmount>(),
            Ok(AtomicAmount(u128::MAX))
        );
        assert_eq!(
            "340282366920938463463374607431768211456".parse::<AtomicAmount>(),
            Err(AmountError::Overflow)
        );
        assert_eq!("".parse::<AtomicAmount>(), Err(AmountError::Empty));
        assert_eq!(
            "+5".parse::<AtomicAmount>(),
            Err(AmountError::InvalidChar('+'))
        );
        assert_eq!("-5".parse::<AtomicAmount>(), Err(AmountError::Negative));
        assert_eq!("1e6".parse::<AtomicAmount>(), Err(AmountError::Exponent));
        assert_eq!(
            "1.0".parse::<AtomicAmount>(),
            Err(AmountError::InvalidChar('.'))
        );
        assert_eq!(
            "0x10".parse::<AtomicAmount>(),
            Err(AmountError::InvalidChar('x'))
        );
        assert_eq!(AtomicAmount(42).to_string(), "42");
    }

    #[test]
    fn atomic_amount_serde_is_a_string() {
        assert_eq!(
            serde_json::to_string(&AtomicAmount(10_000)).unwrap(),
            "\"10000\""
        );
        assert_eq!(
            serde_json::from_str::<AtomicAmount>("\"10000\"").unwrap(),
            AtomicAmount(10_000)
        );
        assert!(serde_json::from_str::<AtomicAmount>("10000").is_err());
    }
}
