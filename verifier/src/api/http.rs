//! Operations HTTP on `verifier.http` (plaintext, for Prometheus and probes): `/healthz` (alive),
//! `/readyz` (config loaded and ledger open; facilitator and replay store reachability reported,
//! not required: free routes work without them and paid routes fail closed), `/metrics`
//! (Prometheus) and, with the `dev` Lightning backend only, `POST /dev/lightning/pay`: the test
//! wallet. The admin API is not here: it has its own listener, `verifier.admin`
//! ([`crate::api::admin`]); `/admin/...` answers 404 here.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::clock::unix_now;
use crate::metrics::Metrics;
use crate::payments::Payments;
use crate::rails::facilitator::FacilitatorClient;
use crate::rails::lightning::dev::PayError;
use crate::stores::replay::ReplayGuard;
use crate::stores::routes_store::RouteStore;

pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
    pub facilitators: Vec<Arc<FacilitatorClient>>,
    pub payments: Arc<Payments>,
    pub store: Arc<RouteStore>,
    pub ledger: String,
    /// The replay store, for its status.
    pub replay: Arc<dyn ReplayGuard>,
}

pub fn router(state: Arc<OpsState>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin", any(no_admin))
        .route("/admin/{*rest}", any(no_admin));
    // The dev wallet exists only next to the dev node (otherwise 404, like any unknown path).
    if state
        .payments
        .lightning()
        .is_some_and(|l| l.dev_node().is_some())
    {
        router = router.route(DEV_PAY_PATH, post(dev_pay));
    }
    router.with_state(state)
}

/// The admin API is served on `verifier.admin` only (with TLS when `verifier.tls` is set).
async fn no_admin() -> (StatusCode, Json<serde_json::Value>) {
    json_error(
        StatusCode::NOT_FOUND,
        "the admin API is not served here (see verifier.admin)",
    )
}

/// The dev node's pay endpoint (only with `lightning.backend: dev`).
pub const DEV_PAY_PATH: &str = "/dev/lightning/pay";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevPayRequest {
    invoice: String,
}

fn json_error(code: StatusCode, message: &str) -> (StatusCode, Json<serde_json::Value>) {
    (code, Json(json!({ "error": message })))
}

/// `{"invoice": "<bolt11>"}` → `{"preimage": hex, "payment_hash": hex}`: marks one of the dev
/// node's invoices paid, like a wallet paying it would.
async fn dev_pay(
    State(s): State<Arc<OpsState>>,
    body: Bytes,
) -> (StatusCode, Json<serde_json::Value>) {
    let Some(dev) = s.payments.lightning().and_then(|l| l.dev_node()) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "no dev Lightning node here (lightning.backend is not dev)",
        );
    };
    let Ok(request) = serde_json::from_slice::<DevPayRequest>(&body) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "expected a JSON body {\"invoice\": \"<bolt11>\"}",
        );
    };
    match dev.pay(&request.invoice, unix_now()) {
        Ok(paid) => {
            let hash = hex::encode(paid.payment_hash);
            tracing::info!(payment_hash = %hash, "dev node paid an invoice");
            (
                StatusCode::OK,
                Json(json!({
                    "preimage": hex::encode(paid.preimage),
                    "payment_hash": hash,
                })),
            )
        }
        Err(PayError::Poisoned) => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "dev node unavailable")
        }
        Err(e) => json_error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<Arc<OpsState>>) -> impl IntoResponse {
    let started = s.ready.load(Ordering::Acquire);
    let ledger = s.payments.ledger();
    let writable = ledger.writable();
    // A ledger that cannot be written takes no payment: not ready (paid routes answer 503).
    let ready = started && writable;
    let facilitators: BTreeMap<&str, _> = s
        .facilitators
        .iter()
        .map(|f| (f.name(), f.status()))
        .collect();
    let table = s.store.current();
    let body = json!({
        "status": if ready { "ready" } else if started { "ledger_unwritable" } else { "starting" },
        "routes": table.routes.len(),
        "paid_routes": table.paid_routes(),
        "routes_version": table.version,
        "ledger": {
            "path": s.ledger,
            "writable": writable,
            "error": ledger.last_error(),
            "backlog": ledger.backlog(),
        },
        "pending_payments": s.payments.pending_count(),
        "settlement_backlog": {
            "unresolved": s.payments.unresolved_count(),
            "oldest_age_seconds": s.payments.unresolved_age_seconds(),
        },
        "facilitators": facilitators,
        "stores": { "replay": s.replay.status() },
        "lightning": s.payments.lightning().map(|l| json!({
            "backend": l.node().backend().as_str(),
            "network": l.network().name(),
        })),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn metrics(State(s): State<Arc<OpsState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Plaintext, with the listener's read deadlines and body limit ([`crate::api::listener`]).
pub async fn serve(
    listener: TcpListener,
    state: Arc<OpsState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::api::listener::serve(listener, router(state), None, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rails::facilitator::fake::dead_url;
    use crate::testkit::{harness, Harness};

    /// The ops server over a harness, on a loopback port; `ready` as after start-up checks.
    async fn start(h: &Harness, ready: bool) -> (Arc<OpsState>, std::net::SocketAddr) {
        let state = Arc::new(OpsState {
            metrics: h.metrics.clone(),
            ready: AtomicBool::new(ready),
            facilitators: Vec::new(),
            payments: h.payments.clone(),
            store: h.store.clone(),
            ledger: "x.db".into(),
            replay: Arc::new(crate::stores::replay::MemoryReplayGuard::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, state.clone(), std::future::pending()));
        (state, addr)
    }

    #[tokio::test]
    async fn endpoints() {
        let h = harness(&dead_url().await);
        let (state, addr) = start(&h, false).await;
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("http://{addr}{path}")).send();

        let r = get("/healthz").await.expect("healthz");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), "ok");

        let r = get("/readyz").await.expect("readyz");
        assert_eq!(r.status(), 503);
        state.ready.store(true, Ordering::Release);
        let r = get("/readyz").await.expect("readyz");
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["status"], "ready");
        assert_eq!(body["paid_routes"], 2);
        assert_eq!(
            body["stores"]["replay"],
            json!({"backend": "memory", "up": true})
        );

        h.metrics.check("free");
        let r = get("/metrics").await.expect("metrics");
        assert_eq!(r.status(), 200);
        let text = r.text().await.expect("body");
        assert!(
            text.contains("tollway_check_total{result=\"free\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn dev_pay_endpoint() {
        let h = crate::testkit::lightning_harness(&dead_url().await);
        let (_, addr) = start(&h, true).await;
        let client = reqwest::Client::new();
        let url = format!("http://{addr}{DEV_PAY_PATH}");
        let pay = |body: String| {
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };

        let c = h
            .payments
            .challenge("quote", "/api/quote", "GET", &crate::testkit::client())
            .await
            .expect("minted");
        let r = pay(json!({"invoice": c.invoice.bolt11}).to_string())
            .await
            .expect("pay");
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.expect("json");
        let preimage = hex::decode(body["preimage"].as_str().expect("preimage")).expect("hex");
        assert_eq!(body["payment_hash"], hex::encode(c.invoice.payment_hash));
        assert_eq!(
            crate::rails::lightning::bolt11::sha256(&preimage),
            c.invoice.payment_hash
        );
        // Idempotent for the same invoice.
        let again: serde_json::Value = pay(json!({"invoice": c.invoice.bolt11}).to_string())
            .await
            .expect("pay")
            .json()
            .await
            .expect("json");
        assert_eq!(again, body);

        // Unknown, malformed, amountless or foreign invoices: 400 with a reason.
        let stranger = crate::rails::lightning::dev::DevNode::new(
            tollway_protocol::lightning::LightningNetwork::Regtest,
        )
        .create_at(1000, "x", 600, crate::clock::unix_now())
        .expect("create");
        for (body, reason) in [
            (
                json!({"invoice": stranger.bolt11}).to_string(),
                "invoice was not issued by this node",
            ),
            (
                json!({"invoice": "lnbcrt1nonsense"}).to_string(),
                "not a valid BOLT11 invoice",
            ),
            ("not json".to_owned(), "expected a JSON body"),
            (json!({"bolt11": "x"}).to_string(), "expected a JSON body"),
        ] {
            let r = pay(body).await.expect("pay");
            assert_eq!(r.status(), 400);
            let e: serde_json::Value = r.json().await.expect("json");
            assert!(e["error"].as_str().expect("error").contains(reason), "{e}");
        }

        // readyz names the backend.
        let ready: serde_json::Value = client
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .expect("readyz")
            .json()
            .await
            .expect("json");
        assert_eq!(
            ready["lightning"],
            json!({"backend": "dev", "network": "regtest"})
        );
    }

    #[tokio::test]
    async fn dev_pay_is_404_without_the_dev_backend() {
        let h = harness(&dead_url().await);
        let (_, addr) = start(&h, true).await;
        let r = reqwest::Client::new()
            .post(format!("http://{addr}{DEV_PAY_PATH}"))
            .body(r#"{"invoice":"lnbcrt1x"}"#)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 404);
    }

    /// The admin API has its own listener: here every admin path is 404, with or without the
    /// token, even when the config has one.
    #[tokio::test]
    async fn no_admin_api_here() {
        let h = crate::testkit::leased_harness(&dead_url().await);
        let (_, addr) = start(&h, true).await;
        let client = reqwest::Client::new();
        for (method, path) in [
            (reqwest::Method::GET, "/admin/routes"),
            (reqwest::Method::GET, "/admin/routes/ticker"),
            (reqwest::Method::PUT, "/admin/routes/x"),
            (reqwest::Method::GET, "/admin"),
        ] {
            let r = client
                .request(method, format!("http://{addr}{path}"))
                .bearer_auth(crate::testkit::ADMIN_TOKEN)
                .body("{}")
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), 404, "{path}");
        }
    }
}
