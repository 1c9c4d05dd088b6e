//! Operations HTTP on `verifier.http`: `/healthz` (alive), `/readyz` (config loaded and ledger
//! open; facilitator reachability reported, not required) and `/metrics` (Prometheus).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::facilitator::FacilitatorClient;
use crate::metrics::Metrics;
use crate::payments::Payments;

pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
    pub facilitators: Vec<Arc<FacilitatorClient>>,
    pub payments: Arc<Payments>,
    pub routes: usize,
    pub paid_routes: usize,
    pub ledger: String,
}

pub fn router(state: Arc<OpsState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<Arc<OpsState>>) -> impl IntoResponse {
    let ready = s.ready.load(Ordering::Acquire);
    let facilitators: BTreeMap<&str, _> = s
        .facilitators
        .iter()
        .map(|f| (f.name(), f.status()))
        .collect();
    let body = json!({
        "status": if ready { "ready" } else { "starting" },
        "routes": s.routes,
        "paid_routes": s.paid_routes,
        "ledger": s.ledger,
        "pending_payments": s.payments.pending_count(),
        "facilitators": facilitators,
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

pub async fn serve(
    listener: TcpListener,
    state: Arc<OpsState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facilitator::fake::dead_url;
    use crate::testkit::harness;

    #[tokio::test]
    async fn endpoints() {
        let h = harness(&dead_url().await);
        let state = Arc::new(OpsState {
            metrics: h.metrics.clone(),
            ready: AtomicBool::new(false),
            facilitators: Vec::new(),
            payments: h.payments.clone(),
            routes: 3,
            paid_routes: 2,
            ledger: "x.db".into(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, state.clone(), std::future::pending()));
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
}
