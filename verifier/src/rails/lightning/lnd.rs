//! LND over gRPC: `lnrpc.Lightning/AddInvoice` and `LookupInvoice`, called through
//! `tonic::client::Grpc` with the hand-written messages of [`super::lnrpc`]. Authentication is
//! the `macaroon` metadata (hex of the macaroon file; `invoice.macaroon` is enough); TLS pins
//! the node's `tls.cert` (see [`super::tls`]), through our own connector so tonic needs no TLS
//! feature of its own.

use std::fmt;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use super::lnrpc::{self, AddInvoiceResponse, Invoice, PaymentHash};
use super::tls::{client_config, PinnedVerifier};
use super::{InvoiceState, LightningNode, NewInvoice, NodeError, NODE_TIMEOUT};

/// Metadata key LND reads the macaroon from.
pub const MACAROON_METADATA: &str = "macaroon";
/// Longest node error message kept (logs).
const MAX_MESSAGE: usize = 200;

pub struct LndNode {
    channel: Channel,
    macaroon: MetadataValue<Ascii>,
    target: String,
}

impl fmt::Debug for LndNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LndNode")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl LndNode {
    /// A client for the node at `host:port` presenting `tls_cert`, authenticated with the raw
    /// bytes of `macaroon`. Connects lazily (and reconnects) on first use.
    pub fn new(
        host: &str,
        port: u16,
        tls_cert: Vec<CertificateDer<'static>>,
        macaroon: &[u8],
    ) -> Result<Self, NodeError> {
        let config = Arc::new(
            client_config(PinnedVerifier::pinned(tls_cert), true)
                .map_err(|e| NodeError::Connect(e.to_string()))?,
        );
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| NodeError::Connect(format!("{host:?} is not a host name: {e}")))?;
        let macaroon = MetadataValue::try_from(hex::encode(macaroon))
            .map_err(|_| NodeError::Auth("macaroon is not valid metadata".into()))?;
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        // Our connector speaks TLS itself (pinned certificate): the endpoint's own URI is http,
        // or tonic (built with TLS for `verifier.tls`) would want its own TLS for https; requests
        // still name the node as https (`origin`).
        let origin = Uri::try_from(format!("https://{authority}"))
            .map_err(|e| NodeError::Connect(e.to_string()))?;
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| NodeError::Connect(e.to_string()))?
            .origin(origin)
            .connect_timeout(NODE_TIMEOUT)
            .timeout(NODE_TIMEOUT);
        let host_owned = host.to_owned();
        let connector = tower::service_fn(move |_: Uri| {
            let config = config.clone();
            let name = server_name.clone();
            let host = host_owned.clone();
            async move {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let tls = TlsConnector::from(config).connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        Ok(Self {
            channel: endpoint.connect_with_connector_lazy(connector),
            macaroon,
            target: authority,
        })
    }

    async fn unary<Req, Resp>(&self, path: &'static str, message: Req) -> Result<Resp, NodeError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| NodeError::Connect(e.to_string()))?;
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert(MACAROON_METADATA, self.macaroon.clone());
        grpc.unary(
            request,
            PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| status_error(&s))
    }
}

fn short(message: &str) -> String {
    message.chars().take(MAX_MESSAGE).collect()
}

/// LND's answer → our error. Transport failures arrive as `Unavailable` (tonic's own).
fn status_error(s: &Status) -> NodeError {
    let message = short(s.message());
    match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => NodeError::Auth(message),
        Code::Unavailable => NodeError::Connect(message),
        Code::NotFound => NodeError::NotFound,
        // Older LND answers an unknown hash with a plain error.
        _ if message.contains("unable to locate invoice") => NodeError::NotFound,
        code => NodeError::Node(format!("{code:?}: {message}")),
    }
}

fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32], NodeError> {
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| NodeError::BadAnswer(format!("{what} is {} bytes, not 32", bytes.len())))
}

#[async_trait::async_trait]
impl LightningNode for LndNode {
    async fn create_invoice(
        &self,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
    ) -> Result<NewInvoice, NodeError> {
        let request = Invoice {
            memo: memo.to_owned(),
            value_msat: i64::try_from(amount_msat)
                .map_err(|_| NodeError::Node("amount too large".into()))?,
            expiry: i64::try_from(expiry_secs)
                .map_err(|_| NodeError::Node("expiry too large".into()))?,
            ..Invoice::default()
        };
        let answer: AddInvoiceResponse = self.unary(lnrpc::PATH_ADD_INVOICE, request).await?;
        Ok(NewInvoice {
            payment_hash: hash32(&answer.r_hash, "r_hash")?,
            bolt11: answer.payment_request,
        })
    }

    async fn lookup_invoice(&self, payment_hash: &[u8; 32]) -> Result<InvoiceState, NodeError> {
        let invoice: Invoice = self
            .unary(
                lnrpc::PATH_LOOKUP_INVOICE,
                PaymentHash {
                    r_hash: payment_hash.to_vec(),
                    ..PaymentHash::default()
                },
            )
            .await?;
        if !invoice.r_hash.is_empty() && invoice.r_hash != payment_hash {
            return Err(NodeError::BadAnswer(
                "LookupInvoice answered another invoice".into(),
            ));
        }
        Ok(match lnrpc::InvoiceState::try_from(invoice.state) {
            Ok(lnrpc::InvoiceState::Settled) => InvoiceState::Settled {
                preimage: <[u8; 32]>::try_from(invoice.r_preimage.as_slice()).ok(),
            },
            Ok(lnrpc::InvoiceState::Canceled) => InvoiceState::Canceled,
            // ACCEPTED: HTLCs held (hold invoice), not settled.
            Ok(lnrpc::InvoiceState::Open | lnrpc::InvoiceState::Accepted) => InvoiceState::Open,
            Err(_) => {
                return Err(NodeError::BadAnswer(format!(
                    "unknown invoice state {}",
                    invoice.state
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
    use crate::rails::lightning::doubles::{Double, LndDouble, Mode};
    use crate::rails::lightning::tls::load_certs;
    use crate::rails::lightning::{bolt11, Backend, Node};
    use std::time::Duration;
    use tollway_protocol::lightning::LightningNetwork;

    fn client(d: &LndDouble, cert_pem: &str, macaroon: &[u8]) -> (Node, Arc<Metrics>) {
        let lnd = LndNode::new(
            "127.0.0.1",
            d.addr.port(),
            load_certs(cert_pem.as_bytes()).expect("cert"),
            macaroon,
        )
        .expect("client");
        let metrics = Arc::new(Metrics::new());
        (
            Node::new(
                Backend::Lnd,
                LightningNetwork::Regtest,
                Arc::new(lnd),
                metrics.clone(),
            )
            .with_timeout(Duration::from_millis(1500)),
            metrics,
        )
    }

    #[tokio::test]
    async fn create_lookup_settle() {
        let d = LndDouble::start(LightningNetwork::Regtest).await;
        let (node, metrics) = client(&d, &d.cert_pem, &d.macaroon);
        let now = unix_now();
        let inv = node
            .create_invoice(21_000, "quote", 600, now)
            .await
            .expect("create");
        assert!(inv.bolt11.starts_with("lnbcrt210n1"));
        assert_eq!(inv.expires_at, now + 600);
        let (bolt11, amount, memo) = d.invoice(&inv.payment_hash).expect("on the node");
        assert_eq!(
            (bolt11.as_str(), amount, memo.as_str()),
            (inv.bolt11.as_str(), 21_000, "quote")
        );
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
        assert_eq!(bolt11::sha256(&preimage), inv.payment_hash);
        assert_eq!(
            node.lookup_invoice(&[9; 32]).await,
            Err(NodeError::NotFound)
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
        assert!(metrics
            .encode()
            .contains("tollway_lightning_invoices_total{backend=\"lnd\",outcome=\"created\"} 2"));
    }

    #[tokio::test]
    async fn wrong_macaroon_is_an_auth_error() {
        let d = LndDouble::start(LightningNetwork::Regtest).await;
        let (node, metrics) = client(&d, &d.cert_pem, &[0x02, 0xde, 0xad]);
        let e = node.create_invoice(1000, "m", 600, unix_now()).await;
        assert!(matches!(e, Err(NodeError::Auth(_))), "{e:?}");
        assert!(matches!(
            node.lookup_invoice(&[1; 32]).await,
            Err(NodeError::Auth(_))
        ));
        assert_eq!(d.calls(), 0, "refused before the node did anything");
        let text = metrics.encode();
        assert!(
            text.contains(
                "tollway_lightning_node_errors_total{backend=\"lnd\",op=\"create_invoice\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("tollway_lightning_invoices_total{backend=\"lnd\",outcome=\"error\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn node_error_and_timeout() {
        let d = LndDouble::start(LightningNetwork::Regtest).await;
        let (node, _) = client(&d, &d.cert_pem, &d.macaroon);
        d.set_mode(Mode::Fail);
        let e = node.create_invoice(1000, "m", 600, unix_now()).await;
        assert!(
            matches!(e, Err(NodeError::Node(ref m)) if m.contains("db failure")),
            "{e:?}"
        );
        assert!(matches!(
            node.lookup_invoice(&[1; 32]).await,
            Err(NodeError::Node(_))
        ));
        d.set_mode(Mode::Slow(Duration::from_secs(3)));
        let started = std::time::Instant::now();
        let e = node.create_invoice(1000, "m", 600, unix_now()).await;
        assert_eq!(e, Err(NodeError::Timeout { ms: 1500 }));
        assert!(started.elapsed() < Duration::from_millis(2500));
    }

    #[tokio::test]
    async fn another_certificate_is_refused() {
        let d = LndDouble::start(LightningNetwork::Regtest).await;
        // Same host, same port, a different self-signed certificate pinned.
        let (other_pem, _, _) = crate::rails::lightning::doubles::self_signed();
        let (node, _) = client(&d, &other_pem, &d.macaroon);
        let e = node.create_invoice(1000, "m", 600, unix_now()).await;
        assert!(matches!(e, Err(NodeError::Connect(_))), "{e:?}");
        assert_eq!(d.calls(), 0, "no request reached the impostor");
    }

    #[tokio::test]
    async fn node_down_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        let (pem, _, _) = crate::rails::lightning::doubles::self_signed();
        let lnd = LndNode::new(
            "127.0.0.1",
            port,
            load_certs(pem.as_bytes()).expect("cert"),
            &[2],
        )
        .expect("client");
        let e = lnd.create_invoice(1000, "m", 600).await;
        assert!(matches!(e, Err(NodeError::Connect(_))), "{e:?}");
        // Debug shows no macaroon.
        assert!(!format!("{lnd:?}").contains("macaroon"));
    }
}
