//! Chain identifiers: CAIP-2 (`eip155:8453`) for x402 v2, and the fixed v1 names (`base`)
//! legacy clients still need.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("network {0:?} is not CAIP-2 `namespace:reference`")]
    MissingColon(String),
    #[error("CAIP-2 namespace {0:?} must be 3-8 characters of [-a-z0-9]")]
    Namespace(String),
    #[error("CAIP-2 reference {0:?} must be 1-32 characters of [-_a-zA-Z0-9]")]
    Reference(String),
}

/// A CAIP-2 chain id, validated on construction so it can be put on the wire as-is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network {
    id: String,
    /// Byte offset of the ':' so the parts are slices, not re-parsed.
    colon: usize,
}

/// v1 name → CAIP-2: the `@x402/evm` 2.27 v1 map plus the SVM names. The order is the lookup
/// order; each name and each id appears once.
const V1_NAMES: &[(&str, &str)] = &[
    ("ethereum", "eip155:1"),
    ("sepolia", "eip155:11155111"),
    ("abstract", "eip155:2741"),
    ("abstract-testnet", "eip155:11124"),
    ("base-sepolia", "eip155:84532"),
    ("base", "eip155:8453"),
    ("avalanche-fuji", "eip155:43113"),
    ("avalanche", "eip155:43114"),
    ("iotex", "eip155:4689"),
    ("sei", "eip155:1329"),
    ("sei-testnet", "eip155:1328"),
    ("polygon", "eip155:137"),
    ("polygon-amoy", "eip155:80002"),
    ("peaq", "eip155:3338"),
    ("story", "eip155:1514"),
    ("educhain", "eip155:41923"),
    ("skale-base-sepolia", "eip155:324705682"),
    ("megaeth", "eip155:4326"),
    ("monad", "eip155:143"),
    ("stable", "eip155:988"),
    ("stable-testnet", "eip155:2201"),
    ("celo", "eip155:42220"),
    ("flare", "eip155:14"),
    ("solana", "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"),
    ("solana-devnet", "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"),
    ("solana-testnet", "solana:4uhcVJyU9pJkvQyS88uRDiswHXSCkY3z"),
];

impl Network {
    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn namespace(&self) -> &str {
        &self.id[..self.colon]
    }

    pub fn reference(&self) -> &str {
        &self.id[self.colon + 1..]
    }

    /// The legacy (x402 v1) name, if this chain has one.
    pub fn v1_name(&self) -> Option<&'static str> {
        V1_NAMES
            .iter()
            .find(|(_, id)| *id == self.id)
            .map(|(name, _)| *name)
    }

    pub fn from_v1_name(name: &str) -> Option<Network> {
        V1_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, id)| id.parse().ok())
    }

    /// The CAIP-2 id of a Bitcoin network (the x402 Lightning rail).
    pub fn bip122(network: crate::lightning::LightningNetwork) -> Network {
        let id = network.caip2();
        Network {
            id: id.to_owned(),
            colon: crate::lightning::BIP122_NAMESPACE.len(),
        }
    }

    /// A Bitcoin chain (`bip122:*`): paid over Lightning, never with an EVM authorization.
    pub fn is_bip122(&self) -> bool {
        self.namespace() == crate::lightning::BIP122_NAMESPACE
    }

    /// The EIP-155 chain id, for `eip155:<decimal>` networks.
    pub fn evm_chain_id(&self) -> Option<u64> {
        if self.namespace() != "eip155" {
            return None;
        }
        let reference = self.reference();
        // u64's parser accepts a leading '+'; a chain id is plain digits.
        if !reference.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        reference.parse().ok()
    }
}

impl FromStr for Network {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, reference) = s
            .split_once(':')
            .ok_or_else(|| NetworkError::MissingColon(s.to_owned()))?;
        let namespace_ok = (3..=8).contains(&namespace.len())
            && namespace
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_lowercase() || b.is_ascii_digit());
        if !namespace_ok {
            return Err(NetworkError::Namespace(namespace.to_owned()));
        }
        let reference_ok = (1..=32).contains(&reference.len())
            && reference
                .bytes()
                .all(|b| b == b'-' || b == b'_' || b.is_ascii_alphanumeric());
        if !reference_ok {
            return Err(NetworkError::Reference(reference.to_owned()));
        }
        Ok(Network {
            id: s.to_owned(),
            colon: namespace.len(),
        })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Network {
        s.parse().unwrap()
    }

    #[test]
    fn parses_caip2() {
        let n = net("eip155:84532");
        assert_eq!((n.namespace(), n.reference()), ("eip155", "84532"));
        assert_eq!(n.to_string(), "eip155:84532");
        assert_eq!(n.evm_chain_id(), Some(84532));
        let s = net("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp");
        assert_eq!(s.evm_chain_id(), None);
        assert_eq!(
            net("bip122:000000000019d6689c085ae165831e93").namespace(),
            "bip122"
        );
        assert_eq!(net("a-b:x_Y-z").reference(), "x_Y-z");
    }

    #[test]
    fn rejects_bad_caip2() {
        for bad in [
            "",
            "base",
            "eip155",
            ":1",
            "eip155:",
            "ei:1",
            "eip155eip:1",
            "EIP155:1",
            "eip155:1:2",
            "eip155:1 ",
            "eip155:a.b",
            "eip155:123456789012345678901234567890123",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad:?}");
        }
        assert!("eip155:12345678901234567890123456789012"
            .parse::<Network>()
            .is_ok());
    }

    #[test]
    fn evm_chain_id_needs_plain_digits() {
        assert_eq!(net("eip155:1").evm_chain_id(), Some(1));
        assert_eq!(net("eip155:abc").evm_chain_id(), None);
        assert_eq!(net("eip155:99999999999999999999").evm_chain_id(), None);
        assert_eq!(net("cosmos:1").evm_chain_id(), None);
    }

    #[test]
    fn v1_names_round_trip() {
        assert_eq!(net("eip155:84532").v1_name(), Some("base-sepolia"));
        assert_eq!(net("eip155:8453").v1_name(), Some("base"));
        assert_eq!(net("eip155:31337").v1_name(), None);
        assert_eq!(Network::from_v1_name("base"), Some(net("eip155:8453")));
        assert_eq!(
            Network::from_v1_name("solana-devnet"),
            Some(net("solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"))
        );
        assert_eq!(Network::from_v1_name("Base"), None);
        assert_eq!(Network::from_v1_name("arbitrum"), None);
        for (name, id) in V1_NAMES {
            let n = Network::from_v1_name(name).unwrap();
            assert_eq!(n.as_str(), *id);
            assert_eq!(n.v1_name(), Some(*name));
        }
        let mut ids: Vec<_> = V1_NAMES.iter().map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), V1_NAMES.len());
    }

    #[test]
    fn serde_as_string() {
        assert_eq!(
            serde_json::to_string(&net("eip155:1")).unwrap(),
            "\"eip155:1\""
        );
        assert_eq!(
            serde_json::from_str::<Network>("\"eip155:1\"").unwrap(),
            net("eip155:1")
        );
        assert!(serde_json::from_str::<Network>("\"base\"").is_err());
    }
}
