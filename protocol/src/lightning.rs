//! Bitcoin networks as the Lightning rail names them: the `tollway.yaml` word, the BOLT11
//! human-readable prefix and the CAIP-2 `bip122` chain id x402 uses (first 32 hex digits of
//! the genesis block hash).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::network::Network;

/// CAIP-2 namespace of Bitcoin chains.
pub const BIP122_NAMESPACE: &str = "bip122";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LightningNetwork {
    Mainnet,
    Testnet,
    Signet,
    Regtest,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Lightning network {0:?} (expected mainnet, testnet, signet or regtest)")]
pub struct UnknownLightningNetwork(pub String);

impl LightningNetwork {
    pub const ALL: [LightningNetwork; 4] = [
        LightningNetwork::Mainnet,
        LightningNetwork::Testnet,
        LightningNetwork::Signet,
        LightningNetwork::Regtest,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            LightningNetwork::Mainnet => "mainnet",
            LightningNetwork::Testnet => "testnet",
            LightningNetwork::Signet => "signet",
            LightningNetwork::Regtest => "regtest",
        }
    }

    /// CAIP-2 id (x402 `network`).
    pub const fn caip2(self) -> &'static str {
        match self {
            LightningNetwork::Mainnet => "bip122:000000000019d6689c085ae165831e93",
            LightningNetwork::Testnet => "bip122:000000000933ea01ad0ee984209779ba",
            LightningNetwork::Signet => "bip122:00000008819873e925422c1ff0f99f7c",
            LightningNetwork::Regtest => "bip122:0f9188f13cb7b2c71f2a335e3a4fc328",
        }
    }

    /// BOLT11 prefix before the amount (`lnbc10n1…`). Check `lnbcrt`/`lntbs` before
    /// `lnbc`/`lntb` when matching an invoice: see [`LightningNetwork::of_invoice`].
    pub const fn bolt11_prefix(self) -> &'static str {
        match self {
            LightningNetwork::Mainnet => "lnbc",
            LightningNetwork::Testnet => "lntb",
            LightningNetwork::Signet => "lntbs",
            LightningNetwork::Regtest => "lnbcrt",
        }
    }

    pub fn from_caip2(id: &str) -> Option<LightningNetwork> {
        Self::ALL.into_iter().find(|n| n.caip2() == id)
    }

    pub fn network(self) -> Network {
        Network::bip122(self)
    }

    /// The network an invoice is for, by its prefix (case-insensitive, as bech32 allows).
    pub fn of_invoice(invoice: &str) -> Option<LightningNetwork> {
        let lower = invoice.get(..6)?.to_ascii_lowercase();
        // Longest prefixes first: `lnbcrt` also starts with `lnbc`.
        [
            LightningNetwork::Regtest,
            LightningNetwork::Signet,
            LightningNetwork::Mainnet,
            LightningNetwork::Testnet,
        ]
        .into_iter()
        .find(|n| lower.starts_with(n.bolt11_prefix()))
    }
}

impl fmt::Display for LightningNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LightningNetwork {
    type Err = UnknownLightningNetwork;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| UnknownLightningNetwork(s.to_owned()))
    }
}

impl Serialize for LightningNetwork {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for LightningNetwork {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_prefixes() {
        for n in LightningNetwork::ALL {
            assert_eq!(n.name().parse::<LightningNetwork>().unwrap(), n);
            assert_eq!(LightningNetwork::from_caip2(n.caip2()), Some(n));
            assert_eq!(n.network().as_str(), n.caip2());
            assert_eq!(n.network().namespace(), BIP122_NAMESPACE);
            let invoice = format!("{}10n1pxyz", n.bolt11_prefix());
            assert_eq!(LightningNetwork::of_invoice(&invoice), Some(n), "{invoice}");
        }
        assert_eq!(
            LightningNetwork::of_invoice("LNBCRT10N1PXYZ"),
            Some(LightningNetwork::Regtest)
        );
        assert_eq!(LightningNetwork::of_invoice("lnxy"), None);
        assert_eq!(LightningNetwork::of_invoice("bc1qxyzxyz"), None);
        assert!("bitcoin".parse::<LightningNetwork>().is_err());
        assert_eq!(
            serde_json::to_string(&LightningNetwork::Regtest).unwrap(),
            "\"regtest\""
        );
    }
}
