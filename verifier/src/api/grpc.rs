//! The gRPC server on `verifier.grpc`: the filter's API (`tollway.v1.Payments`, generated in
//! build.rs from the prost messages in `tollway_protocol::rpc`), Envoy's
//! `envoy.service.auth.v3.Authorization` for ext_authz-only mode and Envoy's route discovery
//! (`rds.rs`) for filter mode, on one HTTP/2 port.

use std::future::Future;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tollway_protocol::rpc;
use tonic::transport::server::TcpIncoming;

use crate::api::ext_authz::ExtAuthz;
use crate::api::rds::{Rds, RouteDiscoveryServiceServer};
use crate::payments::{
    ClaimResult, NotMinted, Payments, Purchase, Reservation, SettleOutcome, Verified,
    REASON_CALLER_GONE,
};
use crate::stores::routes_store::RouteStore;
use tollway_protocol::lease::Renewal;

/// Generated server and client for `tollway.v1.Payments`.
#[allow(clippy::all, clippy::pedantic)]
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/tollway.v1.Payments.rs"));
}

pub use generated::payments_server::PaymentsServer;

/// A caller's deadline (unix ms, 0: none): past it the caller has answered its client already.
struct Deadline(u64);

impl Deadline {
    fn passed(&self) -> bool {
        self.0 != 0 && u64::try_from(crate::clock::unix_now_millis()).unwrap_or(0) >= self.0
    }
}

fn gone() -> Verified {
    Verified::Unavailable {
        reason: REASON_CALLER_GONE.into(),
    }
}

/// Longest payment header accepted over gRPC (base64 of protocol's MAX_PAYMENT_BYTES, rounded up).
const MAX_PAYMENT_HEADER: usize = 16 * 1024;

pub struct PaymentsService {
    payments: Arc<Payments>,
    routes: Arc<RouteStore>,
}

impl PaymentsService {
    pub fn new(payments: Arc<Payments>, routes: Arc<RouteStore>) -> Self {
        Self { payments, routes }
    }
}

fn verify_response(v: Verified) -> rpc::VerifyResponse {
    match v {
        // The filter derives the amount context itself (from the offer it checked).
        Verified::Valid {
            payment_id,
            payer,
            x402_version,
            ..
        } => rpc::VerifyResponse {
            outcome: rpc::VerifyOutcome::Valid as i32,
            reason: String::new(),
            payer,
            payment_id,
            x402_version: u32::from(x402_version),
        },
        Verified::Invalid { reason, payer } => rpc::VerifyResponse {
            outcome: rpc::VerifyOutcome::Invalid as i32,
            reason,
            payer: payer.unwrap_or_default(),
            ..rpc::VerifyResponse::default()
        },
        Verified::Unavailable { reason } => rpc::VerifyResponse {
            outcome: rpc::VerifyOutcome::Unavailable as i32,
            reason,
            ..rpc::VerifyResponse::default()
        },
    }
}

/// The purchase a request names (`None`: an ordinary one). The filter only sends keys it made,
/// so a malformed one is refused (fail closed) and logged.
fn purchase_of(key: &str, call: &str) -> Result<Option<Renewal>, ()> {
    if key.is_empty() {
        return Ok(None);
    }
    match Renewal::parse(key) {
        Some(p) => Ok(Some(p)),
        None => {
            tracing::error!(key_len = key.len(), call, "malformed purchase key");
            Err(())
        }
    }
}

/// The answer to a Verify for a purchase that takes no payment (see `payments::purchase`).
fn purchase_response(outcome: rpc::VerifyOutcome) -> rpc::VerifyResponse {
    rpc::VerifyResponse {
        outcome: outcome as i32,
        ..rpc::VerifyResponse::default()
    }
}

#[tonic::async_trait]
impl generated::payments_server::Payments for PaymentsService {
    async fn verify(
        &self,
        request: tonic::Request<rpc::VerifyRequest>,
    ) -> Result<tonic::Response<rpc::VerifyResponse>, tonic::Status> {
        let r = request.into_inner();
        if r.payment.len() > MAX_PAYMENT_HEADER {
            return Ok(tonic::Response::new(verify_response(Verified::Invalid {
                reason: tollway_protocol::x402::ErrorReason::InvalidPayload
                    .as_str()
                    .into(),
                payer: None,
            })));
        }
        let deadline = Deadline(r.deadline_ms);
        if deadline.passed() {
            return Ok(tonic::Response::new(verify_response(gone())));
        }
        // Detached: a Verify whose caller has gone (the call was reset) still runs to its end,
        // so whatever it claimed is given back rather than held by a dropped future.
        let payments = self.payments.clone();
        let Ok(purchase) = purchase_of(&r.purchase, "verify") else {
            return Ok(tonic::Response::new(verify_response(
                Verified::Unavailable {
                    reason: crate::payments::REASON_UNAVAILABLE.into(),
                },
            )));
        };
        let task = tokio::spawn(async move {
            let v = match &purchase {
                None => {
                    payments
                        .verify(&r.route, &r.header, &r.payment, &r.resource_url)
                        .await
                }
                Some(p) => {
                    let bought = payments
                        .verify_purchase(&r.route, &r.header, &r.payment, &r.resource_url, p)
                        .await;
                    match bought {
                        Purchase::Taken(v) => v,
                        Purchase::Bought => {
                            return purchase_response(rpc::VerifyOutcome::Purchased)
                        }
                        Purchase::InFlight => {
                            return purchase_response(rpc::VerifyOutcome::PurchaseInProgress)
                        }
                    }
                }
            };
            if deadline.passed() {
                // The filter answered 503 already: give back what this payment took.
                if let Verified::Valid { payment_id, .. } = &v {
                    payments.abandon(payment_id).await;
                }
                return verify_response(gone());
            }
            verify_response(v)
        });
        let v = task.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "verify task failed");
            verify_response(Verified::Unavailable {
                reason: crate::payments::REASON_UNAVAILABLE.into(),
            })
        });
        Ok(tonic::Response::new(v))
    }

    async fn settle(
        &self,
        request: tonic::Request<rpc::SettleRequest>,
    ) -> Result<tonic::Response<rpc::SettleResponse>, tonic::Status> {
        let r = request.into_inner();
        let s = self.payments.settle(&r.payment_id, r.upstream_status).await;
        let outcome = match s.outcome {
            SettleOutcome::Settled => rpc::SettleOutcome::Settled,
            SettleOutcome::Pending => rpc::SettleOutcome::Pending,
            SettleOutcome::Failed => rpc::SettleOutcome::Failed,
        };
        Ok(tonic::Response::new(rpc::SettleResponse {
            outcome: outcome as i32,
            reason: s.reason,
            payment_response: s.payment_response,
            transaction: s.transaction,
        }))
    }

    async fn release(
        &self,
        request: tonic::Request<rpc::ReleaseRequest>,
    ) -> Result<tonic::Response<rpc::ReleaseResponse>, tonic::Status> {
        let r = request.into_inner();
        self.payments
            .release(&r.payment_id, r.upstream_status)
            .await;
        Ok(tonic::Response::new(rpc::ReleaseResponse {}))
    }

    async fn challenge(
        &self,
        request: tonic::Request<rpc::ChallengeRequest>,
    ) -> Result<tonic::Response<rpc::ChallengeResponse>, tonic::Status> {
        let r = request.into_inner();
        if let Some(purchase) = Renewal::parse(&r.purchase) {
            let outcome = match self.payments.purchase_state(&purchase).await {
                Ok(Reservation::Bought) => Some(rpc::ChallengeOutcome::Purchased),
                Ok(Reservation::InFlight) => Some(rpc::ChallengeOutcome::PurchaseInProgress),
                // A store error is found again when the payment comes: mint as usual.
                Ok(Reservation::Open) | Err(_) => None,
            };
            if let Some(outcome) = outcome {
                return Ok(tonic::Response::new(rpc::ChallengeResponse {
                    outcome: outcome as i32,
                    ..rpc::ChallengeResponse::default()
                }));
            }
        }
        let minted = self
            .payments
            .challenge(&r.route, &r.path, &r.method, &r.client)
            .await;
        let response = match minted {
            Ok(c) => rpc::ChallengeResponse {
                outcome: rpc::ChallengeOutcome::Minted as i32,
                invoice: c.invoice.bolt11,
                macaroon: c.macaroon,
                x402_offer: c.x402_offer,
                retry_after: 0,
            },
            Err(NotMinted::Limited { retry_after }) => rpc::ChallengeResponse {
                outcome: rpc::ChallengeOutcome::Limited as i32,
                retry_after,
                ..rpc::ChallengeResponse::default()
            },
            Err(NotMinted::Unavailable) => rpc::ChallengeResponse {
                outcome: rpc::ChallengeOutcome::Unavailable as i32,
                ..rpc::ChallengeResponse::default()
            },
        };
        Ok(tonic::Response::new(response))
    }

    async fn claim(
        &self,
        request: tonic::Request<rpc::ClaimRequest>,
    ) -> Result<tonic::Response<rpc::ClaimResponse>, tonic::Status> {
        let r = request.into_inner();
        let deadline = Deadline(r.deadline_ms);
        let unavailable = || {
            tonic::Response::new(rpc::ClaimResponse {
                outcome: rpc::ClaimOutcome::Unavailable as i32,
            })
        };
        if deadline.passed() {
            return Ok(unavailable());
        }
        // Detached, like Verify: a claim taken for a caller that is gone is given back.
        let payments = self.payments.clone();
        let Ok(purchase) = purchase_of(&r.purchase, "claim") else {
            return Ok(unavailable());
        };
        let task = tokio::spawn(async move {
            let result = match &purchase {
                None => {
                    payments
                        .claim(&r.key, &r.route, r.expires_at, r.reusable)
                        .await
                }
                Some(p) => match payments
                    .claim_purchase(&r.key, &r.route, r.expires_at, p)
                    .await
                {
                    Purchase::Taken(result) => result,
                    Purchase::Bought => return Some(rpc::ClaimOutcome::Purchased),
                    Purchase::InFlight => return Some(rpc::ClaimOutcome::PurchaseInProgress),
                },
            };
            if deadline.passed() {
                // Used up for a caller that is gone: give it back (a reusable token's hold is
                // harmless and may be another worker's), with the purchase it paid for.
                if result == ClaimResult::Claimed && !r.reusable {
                    payments.unclaim(&r.key).await;
                    if let Some(p) = &purchase {
                        payments.unreserve(p).await;
                    }
                }
                return None;
            }
            Some(match result {
                ClaimResult::Claimed => rpc::ClaimOutcome::Claimed,
                ClaimResult::AlreadyUsed => rpc::ClaimOutcome::AlreadyUsed,
                ClaimResult::Unavailable => rpc::ClaimOutcome::Unavailable,
            })
        });
        let Ok(Some(outcome)) = task.await else {
            return Ok(unavailable());
        };
        Ok(tonic::Response::new(rpc::ClaimResponse {
            outcome: outcome as i32,
        }))
    }

    /// Whether a renewal was bought: asked by a filter whose open stream's lease expires.
    async fn purchased(
        &self,
        request: tonic::Request<rpc::PurchasedRequest>,
    ) -> Result<tonic::Response<rpc::PurchasedResponse>, tonic::Status> {
        let outcome = match Renewal::parse(&request.get_ref().purchase) {
            None => rpc::PurchaseOutcome::Unavailable,
            Some(p) => match self.payments.purchase_state(&p).await {
                Ok(Reservation::Open) => rpc::PurchaseOutcome::Open,
                Ok(Reservation::Bought) => rpc::PurchaseOutcome::Bought,
                Ok(Reservation::InFlight) => rpc::PurchaseOutcome::InFlight,
                Err(e) => {
                    tracing::warn!(error = %e, "purchased: replay store unavailable");
                    rpc::PurchaseOutcome::Unavailable
                }
            },
        };
        Ok(tonic::Response::new(rpc::PurchasedResponse {
            outcome: outcome as i32,
        }))
    }

    /// The route table for the filters' sync: nothing but the version when it is the one the
    /// filter holds (every Envoy worker polls this every `sync_interval_ms`).
    async fn routes(
        &self,
        request: tonic::Request<rpc::RoutesRequest>,
    ) -> Result<tonic::Response<rpc::RoutesResponse>, tonic::Status> {
        let known = request.get_ref().known_version;
        Ok(tonic::Response::new(self.routes.routes_response(known)))
    }
}

/// Serves both services on `listener` until `shutdown` resolves.
/// Payments, ext_authz and RDS on one port; TLS only when `tls` is set (a plaintext client then
/// fails its handshake: nothing is served in the clear).
pub async fn serve(
    listener: TcpListener,
    payments: PaymentsService,
    ext_authz: ExtAuthz,
    rds: Rds,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    server
        .add_service(PaymentsServer::new(payments))
        .add_service(AuthorizationServer::new(ext_authz))
        .add_service(RouteDiscoveryServiceServer::new(rds))
        // Nagle + delayed ACK would stall small gRPC answers ~40 ms: Envoy is on loopback.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::generated::payments_client::PaymentsClient;
    use super::*;
    use crate::api::ext_authz::tests::check_request;
    use crate::clock::unix_now;
    use crate::rails::facilitator::fake::FakeFacilitator;
    use crate::testkit::{harness, offer, Payer};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

    /// Both services of a harness on a loopback port, as `tollway serve` runs them.
    struct Server {
        addr: std::net::SocketAddr,
        stop: tokio::sync::watch::Sender<bool>,
        task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    }

    impl Server {
        async fn start(h: &crate::testkit::Harness) -> Server {
            Self::start_with(h, None).await
        }

        async fn start_with(
            h: &crate::testkit::Harness,
            tls: Option<tonic::transport::ServerTlsConfig>,
        ) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(serve(
                listener,
                PaymentsService::new(h.payments.clone(), h.store.clone()),
                ExtAuthz::new(h.payments.clone(), h.metrics.clone()),
                Rds::new(h.store.clone(), stopped.clone()),
                tls,
                crate::serve::wait_for(stopped),
            ));
            Server { addr, stop, task }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        async fn stop(self) {
            let _ = self.stop.send(true);
            self.task.await.expect("join").expect("server");
        }
    }

    /// What Envoy's RDS stream carries: the routes that skip the filter, pushed again when a
    /// change makes one of them paid.
    #[tokio::test]
    async fn route_discovery_over_the_wire() {
        use envoy_types::pb::envoy::config::route::v3::{
            route_match::PathSpecifier, RouteConfiguration,
        };
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
        use envoy_types::pb::envoy::service::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient;
        use prost::Message;

        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let server = Server::start(&h).await;
        let mut client = RouteDiscoveryServiceClient::connect(server.url())
            .await
            .expect("connect");
        let (ask, asks) = tokio::sync::mpsc::channel(4);
        let request = |version: &str, nonce: &str| DiscoveryRequest {
            version_info: version.into(),
            response_nonce: nonce.into(),
            resource_names: vec![crate::config::envoy::ROUTE_CONFIG_NAME.into()],
            type_url: crate::api::rds::ROUTE_TYPE_URL.into(),
            ..DiscoveryRequest::default()
        };
        ask.send(request("", "")).await.expect("ask");
        let mut answers = client
            .stream_routes(tokio_stream::wrappers::ReceiverStream::new(asks))
            .await
            .expect("stream")
            .into_inner();
        let bypassed =
            |answer: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse| {
                let config = RouteConfiguration::decode(answer.resources[0].value.as_slice())
                    .expect("decode");
                assert_eq!(config.name, "tollway");
                let routes = &config.virtual_hosts[0].routes;
                let last = routes.last().expect("catch-all");
                assert_eq!(last.name, "upstream");
                assert!(
                    last.typed_per_filter_config.is_empty(),
                    "the catch-all keeps the filter"
                );
                routes[..routes.len() - 1]
                    .iter()
                    .map(|r| {
                        assert!(r
                            .typed_per_filter_config
                            .contains_key("envoy.filters.http.wasm"));
                        let m = r.r#match.as_ref().expect("match");
                        let Some(PathSpecifier::Path(path)) = &m.path_specifier else {
                            panic!("a bypass matches one exact path");
                        };
                        path.clone()
                    })
                    .collect::<Vec<_>>()
            };

        let first = answers.message().await.expect("answer").expect("open");
        assert_eq!(first.version_info, h.store.current().version.to_string());
        let paths = bypassed(&first);
        assert!(
            !paths.is_empty() && paths.iter().all(|p| p == "/free"),
            "{paths:?}"
        );
        // The ACK gets no answer; pricing `free` pushes a table where nothing skips the filter.
        ask.send(request(&first.version_info, &first.nonce))
            .await
            .expect("ack");
        h.patch_route("free", serde_json::json!({"free": null, "price": "0.5"}));
        let pushed = answers.message().await.expect("answer").expect("open");
        assert_ne!(pushed.version_info, first.version_info);
        assert_eq!(pushed.version_info, h.store.current().version.to_string());
        assert!(bypassed(&pushed).is_empty());
        // Made free again: the bypass waits until every filter has polled the new table (a
        // request Envoy stops sending to a filter must not meet one that does not know it).
        ask.send(request(&pushed.version_info, &pushed.nonce))
            .await
            .expect("ack");
        h.patch_route("free", serde_json::json!({"price": null, "free": true}));
        let early = tokio::time::timeout(std::time::Duration::from_millis(1500), answers.message());
        assert!(
            early.await.is_err(),
            "the bypass came back before the filters could know"
        );
        let settled = answers.message().await.expect("answer").expect("open");
        assert_eq!(settled.version_info, h.store.current().version.to_string());
        assert!(!bypassed(&settled).is_empty());
        // An Envoy that had another table (this verifier restarted): everything through the
        // filter until the filters have polled, then the table.
        let (ask2, asks2) = tokio::sync::mpsc::channel(4);
        ask2.send(request("4242", "7")).await.expect("ask");
        let mut reconnected = client
            .stream_routes(tokio_stream::wrappers::ReceiverStream::new(asks2))
            .await
            .expect("stream")
            .into_inner();
        let first = reconnected.message().await.expect("answer").expect("open");
        assert!(
            first.version_info.ends_with("-settling"),
            "{}",
            first.version_info
        );
        assert!(bypassed(&first).is_empty());
        let full = reconnected.message().await.expect("answer").expect("open");
        assert_eq!(full.version_info, settled.version_info);
        assert_eq!(bypassed(&full), bypassed(&settled));
        // A stream Envoy keeps open does not hold the server's shutdown.
        server.stop().await;
        assert!(answers.message().await.map_or(true, |m| m.is_none()));
    }

    #[tokio::test]
    async fn both_services_over_the_wire() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let server = Server::start(&h).await;
        let url = server.url();
        let mut client = PaymentsClient::connect(url.clone()).await.expect("connect");

        let offer = offer(&h.config, "quote");
        let payer = Payer::new(31);
        let auth = payer.authorization(&offer, unix_now(), 1);
        let resource = "http://api.test/api/quote";
        let v = client
            .verify(rpc::VerifyRequest {
                route: "quote".into(),
                payment: payer.header_v2(&offer, &auth, resource),
                header: "payment-signature".into(),
                resource_url: resource.into(),
                deadline_ms: 0,
                purchase: String::new(),
            })
            .await
            .expect("verify")
            .into_inner();
        assert_eq!(v.outcome, rpc::VerifyOutcome::Valid as i32, "{v:?}");
        assert_eq!(v.x402_version, 2);
        assert_eq!(v.payer, payer.address().to_string());
        let s = client
            .settle(rpc::SettleRequest {
                payment_id: v.payment_id,
                upstream_status: 200,
            })
            .await
            .expect("settle")
            .into_inner();
        assert_eq!(s.outcome, rpc::SettleOutcome::Settled as i32);
        assert!(!s.payment_response.is_empty());
        assert!(s.transaction.starts_with("0x"));

        // Release of a fresh payment.
        let auth = payer.authorization(&offer, unix_now(), 2);
        let v = client
            .verify(rpc::VerifyRequest {
                route: "quote".into(),
                payment: payer.header_v2(&offer, &auth, resource),
                header: "payment-signature".into(),
                resource_url: resource.into(),
                deadline_ms: 0,
                purchase: String::new(),
            })
            .await
            .expect("verify")
            .into_inner();
        client
            .release(rpc::ReleaseRequest {
                payment_id: v.payment_id,
                upstream_status: 500,
            })
            .await
            .expect("release");
        assert_eq!(h.payments.pending_count(), 0);

        // Invalid.
        let v = client
            .verify(rpc::VerifyRequest {
                route: "quote".into(),
                payment: "e30=".into(),
                header: "payment-signature".into(),
                resource_url: resource.into(),
                deadline_ms: 0,
                purchase: String::new(),
            })
            .await
            .expect("verify")
            .into_inner();
        assert_eq!(v.outcome, rpc::VerifyOutcome::Invalid as i32);
        assert_eq!(v.reason, "invalid_x402_version");

        // A caller whose deadline passed (it answered 503 already): no work, nothing kept; the
        // same payment goes through for a caller still waiting.
        let auth = payer.authorization(&offer, unix_now(), 3);
        let late = rpc::VerifyRequest {
            route: "quote".into(),
            payment: payer.header_v2(&offer, &auth, resource),
            header: "payment-signature".into(),
            resource_url: resource.into(),
            deadline_ms: 1,
            purchase: String::new(),
        };
        let v = client
            .verify(late.clone())
            .await
            .expect("verify")
            .into_inner();
        assert_eq!(v.outcome, rpc::VerifyOutcome::Unavailable as i32);
        assert_eq!(v.reason, crate::payments::REASON_CALLER_GONE);
        let in_time = rpc::VerifyRequest {
            deadline_ms: u64::try_from(crate::clock::unix_now_millis()).unwrap_or(0) + 60_000,
            ..late
        };
        let v = client.verify(in_time).await.expect("verify").into_inner();
        assert_eq!(v.outcome, rpc::VerifyOutcome::Valid as i32, "{v:?}");

        // ext_authz on the same port.
        let mut authz = AuthorizationClient::connect(url).await.expect("connect");
        let r = authz
            .check(check_request("GET", "/free", &[]))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(r.status.map(|s| s.code), Some(0));

        server.stop().await;
    }

    #[tokio::test]
    async fn challenge_and_claim_over_the_wire() {
        let fake = FakeFacilitator::start().await;
        let h = crate::testkit::lightning_harness(&fake.url);
        let server = Server::start(&h).await;
        let mut client = PaymentsClient::connect(server.url())
            .await
            .expect("connect");

        let c = client
            .challenge(rpc::ChallengeRequest {
                route: "quote".into(),
                path: "/api/quote".into(),
                method: "GET".into(),
                purchase: String::new(),
                client: String::new(),
            })
            .await
            .expect("challenge")
            .into_inner();
        assert_eq!(c.outcome, rpc::ChallengeOutcome::Minted as i32);
        assert!(c.invoice.starts_with("lnbcrt100n1"));
        assert!(tollway_protocol::x402::is_json_object(&c.x402_offer));
        // The filter's own check of what it splices into headers.
        tollway_protocol::l402::www_authenticate(&c.macaroon, &c.invoice).expect("header-safe");

        // Pay, then the filter verifies the token itself and claims it (single-use routes).
        let dev = h
            .payments
            .lightning()
            .and_then(|l| l.dev_node())
            .expect("dev");
        let paid = dev.pay(&c.invoice, unix_now()).expect("pay");
        let header = format!("L402 {}:{}", c.macaroon, hex::encode(paid.preimage));
        let credential = tollway_protocol::l402::parse_authorization([header.as_bytes()])
            .expect("parse")
            .expect("credential");
        let rail = h.payments.lightning().expect("rail");
        let token = tollway_protocol::l402::verify_credential(
            rail.keys(),
            &credential,
            rail.service(),
            unix_now(),
            "/api/quote",
            "GET",
        )
        .expect("valid token");
        let claim = |key: String| rpc::ClaimRequest {
            key,
            route: "quote".into(),
            expires_at: token.valid_until,
            reusable: false,
            deadline_ms: 0,
            purchase: String::new(),
        };
        let key = format!("l402:{}", token.payment_hash.to_hex());
        let first = client
            .claim(claim(key.clone()))
            .await
            .expect("claim")
            .into_inner();
        assert_eq!(first.outcome, rpc::ClaimOutcome::Claimed as i32);
        let second = client.claim(claim(key)).await.expect("claim").into_inner();
        assert_eq!(second.outcome, rpc::ClaimOutcome::AlreadyUsed as i32);

        // A route without Lightning: UNAVAILABLE, nothing minted.
        let c = client
            .challenge(rpc::ChallengeRequest {
                route: "echo".into(),
                path: "/api/echo".into(),
                method: "POST".into(),
                purchase: String::new(),
                client: String::new(),
            })
            .await
            .expect("challenge")
            .into_inner();
        assert_eq!(c.outcome, rpc::ChallengeOutcome::Unavailable as i32);
        assert!(c.invoice.is_empty() && c.macaroon.is_empty() && c.x402_offer.is_empty());

        server.stop().await;
    }

    #[tokio::test]
    async fn a_renewal_is_sold_once_over_the_wire() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let server = Server::start(&h).await;
        let mut client = PaymentsClient::connect(server.url())
            .await
            .expect("connect");
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(32);
        let resource = "http://api.test/api/quote";
        let renewal = |id: u8| Renewal {
            id: [id; 16],
            from: unix_now() + 20,
        };
        let request = |n: u8, purchase: Option<Renewal>| {
            let auth = payer.authorization(&offer, unix_now(), n);
            rpc::VerifyRequest {
                route: "quote".into(),
                payment: payer.header_v2(&offer, &auth, resource),
                header: "payment-signature".into(),
                resource_url: resource.into(),
                deadline_ms: 0,
                purchase: purchase.map(|p| p.key()).unwrap_or_default(),
            }
        };
        let outcome = |v: &rpc::VerifyResponse| rpc::VerifyOutcome::try_from(v.outcome).ok();
        let verifier = client.clone();
        let verify = |r: rpc::VerifyRequest| {
            let mut c = verifier.clone();
            async move { c.verify(r).await.expect("verify").into_inner() }
        };

        let first = verify(request(1, Some(renewal(7)))).await;
        assert_eq!(
            outcome(&first),
            Some(rpc::VerifyOutcome::Valid),
            "{first:?}"
        );
        // A second payment while the first is being settled: not taken (its nonce stays free).
        let second = verify(request(2, Some(renewal(7)))).await;
        assert_eq!(
            outcome(&second),
            Some(rpc::VerifyOutcome::PurchaseInProgress)
        );
        let s = client
            .settle(rpc::SettleRequest {
                payment_id: first.payment_id,
                upstream_status: 200,
            })
            .await
            .expect("settle")
            .into_inner();
        assert_eq!(s.outcome, rpc::SettleOutcome::Settled as i32);
        // Paid: asking again gets the purchase, and this payment is not taken either.
        let mut again = verify(request(3, Some(renewal(7)))).await;
        for _ in 0..50 {
            if outcome(&again) == Some(rpc::VerifyOutcome::Purchased) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            again = verify(request(3, Some(renewal(7)))).await;
        }
        assert_eq!(outcome(&again), Some(rpc::VerifyOutcome::Purchased));
        let settles = fake
            .calls()
            .iter()
            .filter(|c| c.0.ends_with("settle"))
            .count();
        assert_eq!(settles, 1);
        for n in [2, 3] {
            let unused = verify(request(n, None)).await;
            assert_eq!(
                outcome(&unused),
                Some(rpc::VerifyOutcome::Valid),
                "{unused:?}"
            );
        }
        // A payment that is released (or refused) gives the purchase back.
        let released = verify(request(4, Some(renewal(8)))).await;
        assert_eq!(outcome(&released), Some(rpc::VerifyOutcome::Valid));
        client
            .release(rpc::ReleaseRequest {
                payment_id: released.payment_id,
                upstream_status: 0,
            })
            .await
            .expect("release");
        let mut bad = request(5, Some(renewal(8)));
        bad.payment = "e30=".into();
        assert_eq!(
            outcome(&verify(bad).await),
            Some(rpc::VerifyOutcome::Invalid)
        );
        let mut retry = verify(request(6, Some(renewal(8)))).await;
        for _ in 0..50 {
            if outcome(&retry) == Some(rpc::VerifyOutcome::Valid) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            retry = verify(request(6, Some(renewal(8)))).await;
        }
        assert_eq!(
            outcome(&retry),
            Some(rpc::VerifyOutcome::Valid),
            "{retry:?}"
        );
        // Keys the filter would not make fail closed.
        let mut forged = request(7, None);
        forged.purchase = "renewal:zz:1".into();
        assert_eq!(
            outcome(&verify(forged).await),
            Some(rpc::VerifyOutcome::Unavailable)
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn routes_and_lease_claims_over_the_wire() {
        let h = crate::testkit::leased_harness(&crate::rails::facilitator::fake::dead_url().await);
        let server = Server::start(&h).await;
        let mut client = PaymentsClient::connect(server.url())
            .await
            .expect("connect");
        let routes = |known_version| rpc::RoutesRequest { known_version };

        // First poll: the table.
        let first = client.routes(routes(0)).await.expect("routes").into_inner();
        assert_eq!(first.version, h.store.current().version);
        let table: Vec<tollway_protocol::filter_config::RouteConfig> =
            serde_json::from_str(&first.routes_json).expect("json");
        assert_eq!(table.len(), 5);
        assert!(table
            .iter()
            .any(|r| r.name == "ticker" && r.lease.is_some()));
        // Unchanged: the version alone.
        let same = client
            .routes(routes(first.version))
            .await
            .expect("routes")
            .into_inner();
        assert_eq!(same.version, first.version);
        assert!(same.routes_json.is_empty());
        // Changed: the new table.
        h.patch_route("quote", serde_json::json!({"price": "0.5"}));
        let changed = client
            .routes(routes(first.version))
            .await
            .expect("routes")
            .into_inner();
        assert_ne!(changed.version, first.version);
        assert!(changed.routes_json.contains("\"amount\":\"500000\""));

        // A single-use lease is claimed once; a malformed lease key fails closed.
        let claim = |key: &str| rpc::ClaimRequest {
            key: key.into(),
            route: "room".into(),
            expires_at: unix_now() + 30,
            reusable: false,
            deadline_ms: 0,
            purchase: String::new(),
        };
        let key = format!("lease:{}", "ab".repeat(16));
        let first = client.claim(claim(&key)).await.expect("claim").into_inner();
        assert_eq!(first.outcome, rpc::ClaimOutcome::Claimed as i32);
        let again = client.claim(claim(&key)).await.expect("claim").into_inner();
        assert_eq!(again.outcome, rpc::ClaimOutcome::AlreadyUsed as i32);
        let bad = client
            .claim(claim("lease:xyz"))
            .await
            .expect("claim")
            .into_inner();
        assert_eq!(bad.outcome, rpc::ClaimOutcome::Unavailable as i32);

        server.stop().await;
    }

    /// The gRPC port with `verifier.tls`: a plaintext client is refused; with `client_ca`, so is
    /// a client without a certificate or with one another CA signed; Envoy's certificate works.
    #[tokio::test]
    async fn tls_and_mtls_on_the_grpc_port() {
        use crate::config::tls::test_pki::{with_lines, Pki};
        use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

        let dir = tempfile::tempdir().expect("tmp");
        let pki = Pki::new(dir.path());
        let read = |p: &std::path::Path| std::fs::read(p).expect("read");
        let routes = || rpc::RoutesRequest { known_version: 0 };
        let h = harness(&crate::rails::facilitator::fake::dead_url().await);

        for mtls in [false, true] {
            let text = with_lines(
                &crate::testkit::example_text(dir.path()),
                &pki.verifier_yaml(mtls),
                &pki.envoy_yaml(mtls),
            );
            let config = crate::config::Config::parse(&text, crate::config::Secrets::Resolve)
                .expect("valid");
            let tls = config.verifier.tls.as_ref().and_then(|t| t.grpc_config());
            let server = Server::start_with(&h, tls).await;
            let https = format!("https://localhost:{}", server.addr.port());

            // Plaintext: no answer, whatever the client tries.
            let plain = async {
                let mut c = PaymentsClient::connect(server.url()).await?;
                c.routes(routes()).await.map_err(|e| e.into())
            };
            let r: Result<_, Box<dyn std::error::Error>> =
                tokio::time::timeout(std::time::Duration::from_secs(5), plain)
                    .await
                    .expect("refused in time");
            assert!(r.is_err(), "plaintext client served (mtls {mtls})");

            let call = |identity: Option<(std::path::PathBuf, std::path::PathBuf)>| {
                let https = https.clone();
                let ca = read(&pki.ca);
                async move {
                    let mut tls = ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(ca))
                        .domain_name("localhost");
                    if let Some((cert, key)) = identity {
                        tls = tls.identity(Identity::from_pem(
                            std::fs::read(cert).expect("cert"),
                            std::fs::read(key).expect("key"),
                        ));
                    }
                    let channel = Channel::from_shared(https)
                        .expect("uri")
                        .tls_config(tls)
                        .expect("tls")
                        .connect()
                        .await?;
                    let answer = PaymentsClient::new(channel).routes(routes()).await?;
                    Ok::<_, Box<dyn std::error::Error>>(answer.into_inner())
                }
            };
            let envoy = Some((pki.client_cert.clone(), pki.client_key.clone()));
            let stranger = Some((pki.stranger_cert.clone(), pki.stranger_key.clone()));
            let answer = call(envoy).await.expect("Envoy's certificate is accepted");
            assert_ne!(answer.version, 0);
            let anonymous = call(None).await;
            let foreign = call(stranger).await;
            if mtls {
                assert!(
                    anonymous.is_err(),
                    "a client without a certificate was served"
                );
                assert!(
                    foreign.is_err(),
                    "another CA's client certificate was accepted"
                );
            } else {
                anonymous.expect("TLS without client certificates");
            }
            server.stop().await;
        }
    }
}
