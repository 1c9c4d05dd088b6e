//! LNbits (v1 API): `POST /api/v1/payments` with `out: false` creates an incoming invoice,
//! `GET /api/v1/payments/{payment_hash}` checks it; header `X-Api-Key` (the wallet's invoice
//! key). Amounts are whole satoshis (the config refuses other prices for this backend).

use std::fmt;

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::Url;
use serde::Deserialize;
use serde_json::json;

use super::rest::{self, snippet};
use super::{hash_from_hex, InvoiceState, LightningNode, NewInvoice, NodeError};
use crate::config::secret::Secret;

pub const HEADER_API_KEY: &str = "X-Api-Key";

pub struct LnbitsNode {
    http: reqwest::Client,
    base: Url,
    key: HeaderValue,
}

impl fmt::Debug for LnbitsNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LnbitsNode")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Created {
    payment_hash: String,
    #[serde(default)]
    bolt11: Option<String>,
    /// Older versions only send this one.
    #[serde(default)]
    payment_request: Option<String>,
}

#[derive(Deserialize)]
struct Check {
    #[serde(default)]
    paid: bool,
    #[serde(default)]
    preimage: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
struct Detail {
    #[serde(default)]
    detail: Option<serde_json::Value>,
}

impl LnbitsNode {
    pub fn new(url: &Url, invoice_key: &Secret) -> Result<Self, NodeError> {
        let mut key = HeaderValue::from_str(invoice_key.expose().trim())
            .map_err(|_| NodeError::Auth("the invoice key is not a valid header value".into()))?;
        key.set_sensitive(true);
        let mut base = url.clone();
        let path = base.path().trim_end_matches('/').to_owned();
        base.set_path(&format!("{path}/"));
        Ok(Self {
            http: rest::client(None)?,
            base,
            key,
        })
    }

    fn url(&self, path: &str) -> Result<Url, NodeError> {
        self.base
            .join(path)
            .map_err(|e| NodeError::Connect(e.to_string()))
    }
}

fn answer_error(what: &str, status: u16, body: &[u8]) -> NodeError {
    let detail = serde_json::from_slice::<Detail>(body)
        .ok()
        .and_then(|d| d.detail)
        .map_or_else(|| snippet(body), |d| snippet(d.to_string().as_bytes()));
    match status {
        401 | 403 => NodeError::Auth(format!("LNbits {what}: HTTP {status}: {detail}")),
        404 => NodeError::NotFound,
        _ => NodeError::Node(format!("LNbits {what}: HTTP {status}: {detail}")),
    }
}

fn parse<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T, NodeError> {
    serde_json::from_slice(body).map_err(|e| NodeError::BadAnswer(format!("LNbits {what}: {e}")))
}

#[async_trait::async_trait]
impl LightningNode for LnbitsNode {
    async fn create_invoice(
        &self,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
    ) -> Result<NewInvoice, NodeError> {
        if !amount_msat.is_multiple_of(1000) {
            return Err(NodeError::Node(format!(
                "LNbits invoices are whole satoshis; {amount_msat} msat is not"
            )));
        }
        let response = self
            .http
            .post(self.url("api/v1/payments")?)
            .header(HEADER_API_KEY, self.key.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(
                json!({
                    "out": false,
                    "amount": amount_msat / 1000,
                    "unit": "sat",
                    "memo": memo,
                    "expiry": expiry_secs,
                })
                .to_string(),
            )
            .send()
            .await
            .map_err(|e| rest::send_error(&e))?;
        let (status, body) = rest::read(response).await?;
        if !matches!(status, 200 | 201) {
            // A 404 here is a wrong URL, not an unknown invoice.
            return Err(match answer_error("create", status, &body) {
                NodeError::NotFound => NodeError::Node("LNbits create: HTTP 404".into()),
                e => e,
            });
        }
        let created: Created = parse("create", &body)?;
        let bolt11 = created
            .bolt11
            .filter(|s| !s.is_empty())
            .or(created.payment_request)
            .ok_or_else(|| NodeError::BadAnswer("LNbits create: no bolt11".into()))?;
        let payment_hash = hash_from_hex(&created.payment_hash).ok_or_else(|| {
            NodeError::BadAnswer("LNbits create: payment_hash is not 64 hex digits".into())
        })?;
        Ok(NewInvoice {
            bolt11,
            payment_hash,
        })
    }

    async fn lookup_invoice(&self, payment_hash: &[u8; 32]) -> Result<InvoiceState, NodeError> {
        let response = self
            .http
            .get(self.url(&format!("api/v1/payments/{}", hex::encode(payment_hash)))?)
            .header(HEADER_API_KEY, self.key.clone())
            .send()
            .await
            .map_err(|e| rest::send_error(&e))?;
        let (status, body) = rest::read(response).await?;
        if status != 200 {
            return Err(answer_error("check", status, &body));
        }
        let check: Check = parse("check", &body)?;
        if check.paid {
            return Ok(InvoiceState::Settled {
                preimage: check.preimage.as_deref().and_then(hash_from_hex),
            });
        }
        Ok(match check.status.as_deref() {
            Some("failed") => InvoiceState::Canceled,
            Some("expired") => InvoiceState::Expired,
            _ => InvoiceState::Open,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_now;
    use crate::metrics::Metrics;
    use crate::rails::lightning::doubles::{Double, LnbitsDouble, Mode};
    use crate::rails::lightning::{Backend, Node};
    use std::sync::Arc;
    use std::time::Duration;
    use tollway_protocol::lightning::LightningNetwork;

    fn client(d: &LnbitsDouble, key: &str) -> Node {
        let lnbits =
            LnbitsNode::new(&Url::parse(&d.url).expect("url"), &Secret::new(key)).expect("client");
        Node::new(
            Backend::Lnbits,
            LightningNetwork::Mainnet,
            Arc::new(lnbits),
            Arc::new(Metrics::new()),
        )
        .with_timeout(Duration::from_millis(1500))
    }

    #[tokio::test]
    async fn create_lookup_settle_cancel() {
        let d = LnbitsDouble::start(LightningNetwork::Mainnet).await;
        let node = client(&d, &d.key);
        let now = unix_now();
        let inv = node
            .create_invoice(10_000, "quote", 600, now)
            .await
            .expect("create");
        assert!(inv.bolt11.starts_with("lnbc100n1"));
        let (_, amount, memo) = d.invoice(&inv.payment_hash).expect("on the node");
        assert_eq!((amount, memo.as_str()), (10_000, "quote"));
        assert_eq!(
            node.lookup_invoice(&inv.payment_hash).await,
            Ok(InvoiceState::Open)
        );
        let preimage = d.pay(&inv.payment_hash);
        assert_eq!(
            node.lookup_invoice(&inv.payment_hash).await,
            Ok(InvoiceState::Settled {
                preimage: Some(preimage)
            })
        );
        let other = node
            .create_invoice(1000, "x", 600, now)
            .await
            .expect("create");
        d.cancel(&other.payment_hash);
        assert_eq!(
            node.lookup_invoice(&other.payment_hash).await,
            Ok(InvoiceState::Canceled)
        );
        assert_eq!(
            node.lookup_invoice(&[4; 32]).await,
            Err(NodeError::NotFound)
        );
    }

    #[tokio::test]
    async fn key_errors_node_errors_timeouts_and_whole_sats() {
        let d = LnbitsDouble::start(LightningNetwork::Mainnet).await;
        let node = client(&d, "wrong");
        let e = node.create_invoice(1000, "m", 600, unix_now()).await;
        assert!(
            matches!(e, Err(NodeError::Auth(ref m)) if m.contains("401")),
            "{e:?}"
        );
        assert!(matches!(
            node.lookup_invoice(&[1; 32]).await,
            Err(NodeError::Auth(_))
        ));

        let node = client(&d, &d.key);
        let e = node.create_invoice(1500, "m", 600, unix_now()).await;
        assert!(matches!(e, Err(NodeError::Node(_))), "{e:?}");
        assert_eq!(d.calls(), 0, "refused before asking LNbits");

        d.set_mode(Mode::Fail);
        let e = node.create_invoice(1000, "m", 600, unix_now()).await;
        assert!(
            matches!(e, Err(NodeError::Node(ref m)) if m.contains("HTTP 520")),
            "{e:?}"
        );
        d.set_mode(Mode::Slow(Duration::from_secs(3)));
        assert_eq!(
            node.create_invoice(1000, "m", 600, unix_now()).await,
            Err(NodeError::Timeout { ms: 1500 })
        );
    }
}
