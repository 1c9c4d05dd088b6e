//! One way we accept payment for a route: a token on a chain, a price and a recipient. Built by
//! the verifier from `tollway.yaml` and handed to the filter inside its config.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::types::{PaymentRequirementsV1, PaymentRequirementsV2};
use super::SCHEME_EXACT;
use crate::amount::AtomicAmount;
use crate::evm::{Eip712Domain, EvmAddress};
use crate::network::Network;

/// An `exact`-scheme EIP-3009 offer. Addresses are bytes here and checksummed on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub network: Network,
    pub asset: EvmAddress,
    pub pay_to: EvmAddress,
    pub amount: AtomicAmount,
    pub max_timeout_seconds: u32,
    /// The token's EIP-712 `name()`; becomes `extra.name`.
    pub eip712_name: String,
    /// The token's EIP-712 `version()`; becomes `extra.version`.
    pub eip712_version: String,
    /// v1 network name to advertise when the network is not in the built-in table
    /// (`tollway.yaml` `v1_name:`); `None` uses the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v1_name: Option<String>,
}

impl Offer {
    /// The v1 network name legacy clients see, or `None` if this offer is v2-only.
    pub fn v1_network(&self) -> Option<&str> {
        self.v1_name.as_deref().or_else(|| self.network.v1_name())
    }

    /// The token's EIP-712 domain, `None` when the network is not an EVM chain.
    pub fn eip712_domain(&self) -> Option<Eip712Domain> {
        Some(Eip712Domain {
            name: self.eip712_name.clone(),
            version: self.eip712_version.clone(),
            chain_id: self.network.evm_chain_id()?,
            verifying_contract: self.asset,
        })
    }

    fn extra(&self) -> Map<String, Value> {
        let mut extra = Map::new();
        extra.insert("name".into(), Value::String(self.eip712_name.clone()));
        extra.insert("version".into(), Value::String(self.eip712_version.clone()));
        extra
    }

    pub fn requirements_v2(&self) -> PaymentRequirementsV2 {
        PaymentRequirementsV2 {
            scheme: SCHEME_EXACT.into(),
            network: self.network.clone(),
            amount: self.amount,
            asset: self.asset.to_string(),
            pay_to: self.pay_to.to_string(),
            max_timeout_seconds: u64::from(self.max_timeout_seconds),
            extra: Some(self.extra()),
        }
    }

    /// `requirements_v2()` as JSON, the form a client's `accepted` is compared with.
    pub fn requirements_v2_value(&self) -> Value {
        // Serialising strings and integers into a Value cannot fail.
        serde_json::to_value(self.requirements_v2()).unwrap_or(Value::Null)
    }

    pub fn requirements_v1(
        &self,
        resource_url: &str,
        description: &str,
        mime_type: &str,
    ) -> Option<PaymentRequirementsV1> {
        Some(PaymentRequirementsV1 {
            scheme: SCHEME_EXACT.into(),
            network: self.v1_network()?.to_owned(),
            max_amount_required: self.amount,
            resource: resource_url.to_owned(),
            description: description.to_owned(),
            mime_type: mime_type.to_owned(),
            output_schema: None,
            pay_to: self.pay_to.to_string(),
            max_timeout_seconds: u64::from(self.max_timeout_seconds),
            asset: self.asset.to_string(),
            extra: Some(self.extra()),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn base_sepolia_offer() -> Offer {
        Offer {
            network: "eip155:84532".parse().unwrap(),
            asset: "0x036cbd53842c5426634e7929541ec2318f3dcf7e"
                .parse()
                .unwrap(),
            pay_to: "0x209693bc6afc0c5328ba36faf03c514ef312287c"
                .parse()
                .unwrap(),
            amount: AtomicAmount(10_000),
            max_timeout_seconds: 60,
            eip712_name: "USDC".into(),
            eip712_version: "2".into(),
            v1_name: None,
        }
    }

    #[test]
    fn v2_requirements_shape() {
        assert_eq!(
            base_sepolia_offer().requirements_v2_value(),
            json!({
                "scheme": "exact",
                "network": "eip155:84532",
                "amount": "10000",
                "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                "maxTimeoutSeconds": 60,
                "extra": {"name": "USDC", "version": "2"}
            })
        );
    }

    #[test]
    fn v1_requirements_shape() {
        let r = base_sepolia_offer().requirements_v1(
            "https://api.example.com/q",
            "A quote",
            "application/json",
        );
        assert_eq!(
            serde_json::to_value(r.unwrap()).unwrap(),
            json!({
                "scheme": "exact",
                "network": "base-sepolia",
                "maxAmountRequired": "10000",
                "resource": "https://api.example.com/q",
                "description": "A quote",
                "mimeType": "application/json",
                "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                "maxTimeoutSeconds": 60,
                "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                "extra": {"name": "USDC", "version": "2"}
            })
        );
    }

    #[test]
    fn v1_only_with_a_name() {
        let mut o = base_sepolia_offer();
        o.network = "eip155:31337".parse().unwrap();
        assert!(o.requirements_v1("u", "", "").is_none());
        o.v1_name = Some("anvil".into());
        assert_eq!(o.requirements_v1("u", "", "").unwrap().network, "anvil");
    }

    #[test]
    fn domain_from_offer() {
        let d = base_sepolia_offer().eip712_domain().unwrap();
        assert_eq!(d.chain_id, 84532);
        assert_eq!(d.name, "USDC");
        let mut o = base_sepolia_offer();
        o.network = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp".parse().unwrap();
        assert!(o.eip712_domain().is_none());
    }

    #[test]
    fn serde_round_trip() {
        let o = base_sepolia_offer();
        let s = serde_json::to_string(&o).unwrap();
        assert!(!s.contains("v1_name"));
        assert_eq!(serde_json::from_str::<Offer>(&s).unwrap(), o);
    }
}
