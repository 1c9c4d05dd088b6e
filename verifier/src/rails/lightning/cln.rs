//! Core Lightning through the `clnrest` plugin: `POST /v1/invoice` and `POST /v1/listinvoices`
//! with the `Rune` header (fact sheet §5). Success is `201 Created`; errors are
//! `{"code": N, "message": ...}` (403 code 1501 missing rune, 401 code 1502 bad rune, 500 RPC
//! errors such as 900 duplicate label).

use std::fmt;

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::Url;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use serde_json::json;

use super::rest::{self, snippet};
use super::{hash_from_hex, InvoiceState, LightningNode, NewInvoice, NodeError};
use crate::config::secret::Secret;

pub const HEADER_RUNE: &str = "Rune";

pub struct ClnNode {
    http: reqwest::Client,
    base: Url,
    rune: HeaderValue,
}

impl fmt::Debug for ClnNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClnNode")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct CreatedInvoice {
    bolt11: String,
    payment_hash: String,
}

#[derive(Deserialize)]
struct InvoiceList {
    #[serde(default)]
    invoices: Vec<ListedInvoice>,
}

#[derive(Deserialize)]
struct ListedInvoice {
    payment_hash: String,
    status: String,
    #[serde(default)]
    payment_preimage: Option<String>,
}

#[derive(Deserialize)]
struct ClnError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

impl ClnNode {
    /// `url` is the clnrest base (`https://127.0.0.1:3010`); `tls_cert` the node's certificate
    /// or the CA that signed it (clnrest's `ca.pem`), else public roots.
    pub fn new(
        url: &Url,
        rune: &Secret,
        tls_cert: Option<Vec<CertificateDer<'static>>>,
    ) -> Result<Self, NodeError> {
        let mut rune = HeaderValue::from_str(rune.expose().trim())
            .map_err(|_| NodeError::Auth("the rune is not a valid header value".into()))?;
        rune.set_sensitive(true);
        let mut base = url.clone();
        let path = base.path().trim_end_matches('/').to_owned();
        base.set_path(&format!("{path}/"));
        Ok(Self {
            http: rest::client(tls_cert)?,
            base,
            rune,
        })
    }

    async fn call(&self, method: &str, body: serde_json::Value) -> Result<Vec<u8>, NodeError> {
        let url = self
            .base
            .join(&format!("v1/{method}"))
            .map_err(|e| NodeError::Connect(e.to_string()))?;
        let response = self
            .http
            .post(url)
            .header(HEADER_RUNE, self.rune.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| rest::send_error(&e))?;
        let (status, body) = rest::read(response).await?;
        match status {
            200 | 201 => Ok(body),
            _ => Err(answer_error(method, status, &body)),
        }
    }
}

fn answer_error(method: &str, status: u16, body: &[u8]) -> NodeError {
    let parsed: Option<ClnError> = serde_json::from_slice(body).ok();
    let code = parsed.as_ref().and_then(|e| e.code);
    let message = parsed
        .and_then(|e| e.message)
        .map_or_else(|| snippet(body), |m| snippet(m.as_bytes()));
    match (status, code) {
        (401 | 403, _) | (_, Some(1501 | 1502)) => NodeError::Auth(format!(
            "clnrest {method}: HTTP {status} code {code:?}: {message}"
        )),
        _ => NodeError::Node(format!(
            "clnrest {method}: HTTP {status} code {code:?}: {message}"
        )),
    }
}

fn parse<'a, T: Deserialize<'a>>(method: &str, body: &'a [u8]) -> Result<T, NodeError> {
    serde_json::from_slice(body).map_err(|e| NodeError::BadAnswer(format!("clnrest {method}: {e}")))
}

#[async_trait::async_trait]
impl LightningNode for ClnNode {
    async fn create_invoice(
        &self,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
    ) -> Result<NewInvoice, NodeError> {
        // Labels must be unique per node: 16 random bytes.
        let label = format!("tollway-{}", hex::encode(rand::random::<[u8; 16]>()));
        let body = self
            .call(
                "invoice",
                json!({
                    "amount_msat": amount_msat,
                    "label": label,
                    "description": memo,
                    "expiry": expiry_secs,
                }),
            )
            .await?;
        let created: CreatedInvoice = parse("invoice", &body)?;
        let payment_hash = hash_from_hex(&created.payment_hash).ok_or_else(|| {
            NodeError::BadAnswer("clnrest invoice: payment_hash is not 64 hex digits".into())
        })?;
        Ok(NewInvoice {
            bolt11: created.bolt11,
            payment_hash,
        })
    }

    async fn lookup_invoice(&self, payment_hash: &[u8; 32]) -> Result<InvoiceState, NodeError> {
        let wanted = hex::encode(payment_hash);
        let body = self
            .call("listinvoices", json!({ "payment_hash": wanted }))
            .await?;
        let list: InvoiceList = parse("listinvoices", &body)?;
        let Some(invoice) = list
            .invoices
            .into_iter()
            .find(|i| i.payment_hash.eq_ignore_ascii_case(&wanted))
        else {
            return Err(NodeError::NotFound);
        };
        Ok(match invoice.status.as_str() {
            "paid" => InvoiceState::Settled {
                preimage: invoice.payment_preimage.as_deref().and_then(hash_from_hex),
            },
            "unpaid" => InvoiceState::Open,
            "expired" => InvoiceState::Expired,
            other => {
                return Err(NodeError::BadAnswer(format!(
                    "clnrest listinvoices: unknown status {:?}",
                    snippet(other.as_bytes())
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_now;
    use crate::metrics::Metrics;
    use crate::rails::lightning::doubles::{ClnDouble, Double, Mode};
    use crate::rails::lightning::tls::load_certs;
    use crate::rails::lightning::{Backend, Node};
    use std::sync::Arc;
    use std::time::Duration;
    use tollway_protocol::lightning::LightningNetwork;

    fn client(d: &ClnDouble, rune: &str, cert_pem: Option<&str>) -> Node {
        let certs = cert_pem.map(|p| load_certs(p.as_bytes()).expect("cert"));
        let cln = ClnNode::new(&Url::parse(&d.url).expect("url"), &Secret::new(rune), certs)
            .expect("client");
        Node::new(
            Backend::Cln,
            LightningNetwork::Signet,
            Arc::new(cln),
            Arc::new(Metrics::new()),
        )
        .with_timeout(Duration::from_millis(1500))
    }

    async fn round_trip(d: &ClnDouble, node: &Node) {
        let now = unix_now();
        let inv = node
            .create_invoice(5000, "quote", 600, now)
            .await
            .expect("create");
        assert!(inv.bolt11.starts_with("lntbs50n1"));
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
        assert_eq!(
            node.lookup_invoice(&[3; 32]).await,
            Err(NodeError::NotFound)
        );
        // Two invoices, two labels.
        node.create_invoice(5000, "again", 600, now)
            .await
            .expect("create");
    }

    #[tokio::test]
    async fn create_lookup_settle_over_http_and_pinned_https() {
        let d = ClnDouble::start(LightningNetwork::Signet, false).await;
        round_trip(&d, &client(&d, &d.rune, None)).await;
        let d = ClnDouble::start(LightningNetwork::Signet, true).await;
        let node = client(&d, &d.rune, d.cert_pem.as_deref());
        round_trip(&d, &node).await;
    }

    #[tokio::test]
    async fn https_with_another_certificate_is_refused() {
        let d = ClnDouble::start(LightningNetwork::Signet, true).await;
        let (other, _, _) = crate::rails::lightning::doubles::self_signed();
        let node = client(&d, &d.rune, Some(&other));
        let e = node.create_invoice(1000, "m", 600, unix_now()).await;
        assert!(matches!(e, Err(NodeError::Connect(_))), "{e:?}");
        // Public roots do not know a self-signed node either.
        let node = client(&d, &d.rune, None);
        assert!(matches!(
            node.create_invoice(1000, "m", 600, unix_now()).await,
            Err(NodeError::Connect(_))
        ));
        assert_eq!(d.calls(), 0);
    }

    #[tokio::test]
    async fn rune_errors_node_errors_and_timeouts() {
        let d = ClnDouble::start(LightningNetwork::Signet, false).await;
        let node = client(&d, "wrong-rune", None);
        let e = node.create_invoice(1000, "m", 600, unix_now()).await;
        assert!(
            matches!(e, Err(NodeError::Auth(ref m)) if m.contains("1502")),
            "{e:?}"
        );
        assert!(matches!(
            node.lookup_invoice(&[1; 32]).await,
            Err(NodeError::Auth(_))
        ));

        let node = client(&d, &d.rune, None);
        d.set_mode(Mode::Fail);
        let e = node.create_invoice(1000, "m", 600, unix_now()).await;
        assert!(
            matches!(e, Err(NodeError::Node(ref m)) if m.contains("HTTP 500")),
            "{e:?}"
        );
        d.set_mode(Mode::Slow(Duration::from_secs(3)));
        assert_eq!(
            node.lookup_invoice(&[1; 32]).await,
            Err(NodeError::Timeout { ms: 1500 })
        );
    }

    #[tokio::test]
    async fn node_down() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        drop(l);
        let cln =
            ClnNode::new(&Url::parse(&url).expect("url"), &Secret::new("r"), None).expect("client");
        assert!(matches!(
            cln.create_invoice(1000, "m", 600).await,
            Err(NodeError::Connect(_))
        ));
        assert!(!format!("{cln:?}").contains("\"r\""));
    }
}
