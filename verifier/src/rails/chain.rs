//! Reads an EVM chain over JSON-RPC to decide settlements whose outcome is unknown (the
//! facilitator timed out, the verifier restarted mid-settle): an EIP-3009 authorization names
//! its recipient in the signed message, so `authorizationState(authorizer, nonce) == true` on
//! the token means exactly "this payment reached us". The `AuthorizationUsed` log gives the
//! transaction. Configured per rail with `rails.<name>.rpc_url`.

use std::time::Duration;

use reqwest::Url;
use serde_json::{json, Value};
use tollway_protocol::evm::keccak256;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("chain RPC {url} unreachable: {reason}")]
    Transport { url: String, reason: String },
    #[error("chain RPC {url} answered an error: {reason}")]
    Rpc { url: String, reason: String },
    #[error("bad argument: {0}")]
    Argument(&'static str),
}

/// How many blocks back the `AuthorizationUsed` log is looked for (a settlement is resolved
/// within the authorization's lifetime, minutes, so this is ample on any chain).
const LOG_LOOKBACK_BLOCKS: u64 = 50_000;

pub struct ChainReader {
    url: Url,
    client: reqwest::Client,
}

/// `0x` + 64 hex digits: `hex20` left-padded to a 32-byte word.
fn word_of_address(address: &str) -> Result<String, ChainError> {
    let hex = address.strip_prefix("0x").unwrap_or(address);
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ChainError::Argument("address"));
    }
    Ok(format!("{:0>64}", hex.to_ascii_lowercase()))
}

fn word_of_bytes32(value: &str) -> Result<String, ChainError> {
    let hex = value.strip_prefix("0x").unwrap_or(value);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ChainError::Argument("nonce"));
    }
    Ok(hex.to_ascii_lowercase())
}

fn selector(signature: &str) -> String {
    hex::encode(&keccak256(signature.as_bytes())[..4])
}

fn topic(signature: &str) -> String {
    format!("0x{}", hex::encode(keccak256(signature.as_bytes())))
}

impl ChainReader {
    pub fn new(url: Url, timeout: Duration) -> Result<Self, ChainError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .build()
            .map_err(|e| ChainError::Transport {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self { url, client })
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, ChainError> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let transport = |e: reqwest::Error| ChainError::Transport {
            url: self.url.to_string(),
            reason: e.to_string(),
        };
        let answer: Value = self
            .client
            .post(self.url.clone())
            .json(&body)
            .send()
            .await
            .map_err(transport)?
            .json()
            .await
            .map_err(transport)?;
        if let Some(err) = answer.get("error") {
            return Err(ChainError::Rpc {
                url: self.url.to_string(),
                reason: err.to_string(),
            });
        }
        answer
            .get("result")
            .cloned()
            .ok_or_else(|| ChainError::Rpc {
                url: self.url.to_string(),
                reason: "no result".into(),
            })
    }

    /// Whether `authorizer`'s EIP-3009 `nonce` was used on `token`.
    pub async fn authorization_used(
        &self,
        token: &str,
        authorizer: &str,
        nonce: &str,
    ) -> Result<bool, ChainError> {
        let data = format!(
            "0x{}{}{}",
            selector("authorizationState(address,bytes32)"),
            word_of_address(authorizer)?,
            word_of_bytes32(nonce)?
        );
        let result = self
            .call("eth_call", json!([{"to": token, "data": data}, "latest"]))
            .await?;
        let hex = result.as_str().unwrap_or_default();
        let digits = hex.strip_prefix("0x").unwrap_or(hex);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChainError::Rpc {
                url: self.url.to_string(),
                reason: format!("authorizationState answered {result}"),
            });
        }
        Ok(digits.bytes().any(|b| b != b'0'))
    }

    /// The transaction that used the authorization (from its `AuthorizationUsed` log), if seen
    /// in the last blocks.
    pub async fn authorization_transaction(
        &self,
        token: &str,
        authorizer: &str,
        nonce: &str,
    ) -> Result<Option<String>, ChainError> {
        let head = self.call("eth_blockNumber", json!([])).await?;
        let head = head
            .as_str()
            .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0);
        let from = head.saturating_sub(LOG_LOOKBACK_BLOCKS);
        let filter = json!({
            "address": token,
            "fromBlock": format!("0x{from:x}"),
            "toBlock": "latest",
            "topics": [
                topic("AuthorizationUsed(address,bytes32)"),
                format!("0x{}", word_of_address(authorizer)?),
                format!("0x{}", word_of_bytes32(nonce)?),
            ],
        });
        let logs = self.call("eth_getLogs", json!([filter])).await?;
        Ok(logs
            .as_array()
            .and_then(|l| l.first())
            .and_then(|l| l.get("transactionHash"))
            .and_then(Value::as_str)
            .map(str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_topics_are_the_eip3009_ones() {
        assert_eq!(selector("authorizationState(address,bytes32)"), "e94a0102");
        assert_eq!(
            topic("AuthorizationUsed(address,bytes32)"),
            "0x98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5"
        );
    }

    #[test]
    fn words_are_padded_and_checked() {
        assert_eq!(
            word_of_address("0x70997970C51812dc3A010C7d01b50e0d17dc79C8").unwrap(),
            "00000000000000000000000070997970c51812dc3a010c7d01b50e0d17dc79c8"
        );
        assert!(word_of_address("0x1234").is_err());
        assert!(word_of_bytes32(&format!("0x{}", "ab".repeat(32))).is_ok());
        assert!(word_of_bytes32("0xzz").is_err());
    }
}
