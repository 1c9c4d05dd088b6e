//! HTTP client for an x402 facilitator: `POST /verify`, `POST /settle`, `GET /supported`.
//!
//! Results: a parsed answer (positive or negative) or [`FacilitatorError`], which always means
//! "unavailable" to the caller (answer 503, never a free pass). A negative answer may come as
//! HTTP 200 with `isValid:false` / `success:false` or as a non-2xx whose body still carries
//! `isValid` / `success` (hosted facilitators do that); anything else non-2xx is unavailable.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::unix_now;
use crate::config::secret::Secret;
use crate::metrics::Metrics;
use crate::rails::cdp_jwt::CdpCredentials;

/// How to authenticate to the facilitator.
#[derive(Clone)]
pub enum FacilitatorAuth {
    None,
    Bearer(Secret),
    Cdp(Arc<CdpCredentials>),
}

impl fmt::Debug for FacilitatorAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Self::Cdp(c) => write!(f, "Cdp({c:?})"),
        }
    }
}

/// Validated facilitator settings (from `facilitators.<name>` in tollway.yaml).
#[derive(Clone, Debug)]
pub struct FacilitatorSettings {
    pub url: Url,
    pub timeout: Duration,
    pub auth: FacilitatorAuth,
}

#[derive(Debug, thiserror::Error)]
pub enum FacilitatorError {
    #[error("cannot build HTTP client: {0}")]
    Client(String),
    #[error("facilitator {endpoint} timed out")]
    Timeout { endpoint: &'static str },
    #[error("facilitator {endpoint} unreachable: {reason}")]
    Connect {
        endpoint: &'static str,
        reason: String,
    },
    #[error("facilitator {endpoint} answered HTTP {status}: {body}")]
    Status {
        endpoint: &'static str,
        status: u16,
        body: String,
    },
    #[error("facilitator {endpoint} sent an unreadable body: {reason}")]
    BadBody {
        endpoint: &'static str,
        reason: String,
    },
}

/// Body of `/verify` and `/settle`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest<'a> {
    pub x402_version: u32,
    pub payment_payload: &'a Value,
    pub payment_requirements: &'a Value,
}

/// `/verify` answer. `null` is treated like absent.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VerifyAnswer {
    #[serde(default)]
    pub is_valid: bool,
    #[serde(default)]
    pub invalid_reason: Option<String>,
    #[serde(default)]
    pub invalid_message: Option<String>,
    #[serde(default)]
    pub payer: Option<String>,
}

/// `/settle` answer; re-encoded (base64 JSON) for `PAYMENT-RESPONSE`. Facilitator-internal
/// fields we do not know (e.g. `extensionResponses`) are dropped.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SettleAnswer {
    #[serde(default)]
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Always present on the wire (`""` on failure), as the spec's examples show.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub transaction: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// One `kinds[]` entry of `/supported`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    pub x402_version: u32,
    pub scheme: String,
    pub network: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Supported {
    #[serde(default)]
    pub kinds: Vec<SupportedKind>,
    #[serde(default)]
    pub extensions: Vec<String>,
    #[serde(default)]
    pub signers: Value,
}

impl Supported {
    pub fn supports(&self, version: u32, scheme: &str, network: &str) -> bool {
        self.kinds
            .iter()
            .any(|k| k.x402_version == version && k.scheme == scheme && k.network == network)
    }
}

/// What `/readyz` shows about a facilitator.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FacilitatorStatus {
    /// `None` until the first request or probe finished.
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
    pub supported: Vec<String>,
}

pub struct FacilitatorClient {
    name: String,
    base: Url,
    http: reqwest::Client,
    auth: FacilitatorAuth,
    metrics: Arc<Metrics>,
    status: Mutex<FacilitatorStatus>,
}

impl fmt::Debug for FacilitatorClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FacilitatorClient")
            .field("name", &self.name)
            .field("base", &self.base.as_str())
            .field("auth", &self.auth)
            .finish()
    }
}

const BODY_SNIPPET: usize = 300;

impl FacilitatorClient {
    pub fn new(
        name: &str,
        settings: &FacilitatorSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, FacilitatorError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(3)))
            .user_agent(concat!("tollway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FacilitatorError::Client(e.to_string()))?;
        // `url.join` needs a trailing slash to keep the base path (e.g. /platform/v2/x402).
        let mut base = settings.url.clone();
        let path = base.path().trim_end_matches('/').to_owned();
        base.set_path(&format!("{path}/"));
        Ok(Self {
            name: name.to_owned(),
            base,
            http,
            auth: settings.auth.clone(),
            metrics,
            status: Mutex::new(FacilitatorStatus::default()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> FacilitatorStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn mark(&self, result: Result<(), &FacilitatorError>) {
        if let Ok(mut s) = self.status.lock() {
            match result {
                Ok(()) => {
                    s.reachable = Some(true);
                    s.last_error = None;
                }
                Err(e) => {
                    s.reachable = Some(false);
                    s.last_error = Some(e.to_string());
                }
            }
        }
    }

    pub async fn verify(
        &self,
        req: &FacilitatorRequest<'_>,
    ) -> Result<VerifyAnswer, FacilitatorError> {
        let answer: VerifyAnswer = self
            .call(Method::POST, "verify", Some(req), "isValid")
            .await?;
        Ok(answer)
    }

    pub async fn settle(
        &self,
        req: &FacilitatorRequest<'_>,
    ) -> Result<SettleAnswer, FacilitatorError> {
        self.call(Method::POST, "settle", Some(req), "success")
            .await
    }

    pub async fn supported(&self) -> Result<Supported, FacilitatorError> {
        let s: Supported = self
            .call::<Supported>(Method::GET, "supported", None, "kinds")
            .await?;
        if let Ok(mut st) = self.status.lock() {
            st.supported = s
                .kinds
                .iter()
                .map(|k| format!("v{} {} {}", k.x402_version, k.scheme, k.network))
                .collect();
        }
        Ok(s)
    }

    fn headers(&self, method: &Method, url: &Url) -> HeaderMap {
        let mut h = HeaderMap::new();
        let bearer = match &self.auth {
            FacilitatorAuth::None => None,
            FacilitatorAuth::Bearer(token) => Some(token.expose().to_owned()),
            FacilitatorAuth::Cdp(creds) => {
                let host = url.host_str().unwrap_or_default();
                let host = match url.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_owned(),
                };
                h.insert(
                    "correlation-context",
                    HeaderValue::from_static(concat!(
                        "sdk_language=rust,source=tollway,source_version=",
                        env!("CARGO_PKG_VERSION")
                    )),
                );
                Some(creds.jwt(
                    method.as_str(),
                    &format!("{host}{}", url.path()),
                    unix_now(),
                ))
            }
        };
        if let Some(token) = bearer {
            match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    h.insert(AUTHORIZATION, v);
                }
                Err(_) => tracing::error!(
                    facilitator = %self.name,
                    "facilitator credential contains characters not allowed in a header"
                ),
            }
        }
        h
    }

    /// Sends one request. `result_key` is the field whose presence makes a non-2xx body a
    /// normal (negative) answer.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &'static str,
        body: Option<&FacilitatorRequest<'_>>,
        result_key: &str,
    ) -> Result<T, FacilitatorError> {
        let started = Instant::now();
        let result = self.send::<T>(method, endpoint, body, result_key).await;
        self.metrics
            .facilitator_duration(endpoint, started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.mark(Ok(())),
            Err(e) => {
                self.metrics.facilitator_error(endpoint);
                self.mark(Err(e));
                // The start-up probe reports its own failures.
                if endpoint != "supported" {
                    tracing::warn!(facilitator = %self.name, endpoint, error = %e, "facilitator request failed");
                }
            }
        }
        result
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &'static str,
        body: Option<&FacilitatorRequest<'_>>,
        result_key: &str,
    ) -> Result<T, FacilitatorError> {
        let url = self
            .base
            .join(endpoint)
            .map_err(|e| FacilitatorError::Client(e.to_string()))?;
        let mut rb = self
            .http
            .request(method.clone(), url.clone())
            .headers(self.headers(&method, &url));
        if let Some(b) = body {
            rb = rb.header(CONTENT_TYPE, "application/json").json(b);
        }
        let resp = rb.send().await.map_err(|e| classify(endpoint, &e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| classify(endpoint, &e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| FacilitatorError::BadBody {
                endpoint,
                reason: e.to_string(),
            });
        }
        // Hosted facilitators answer negatives with 4xx and the same JSON.
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) {
            if map.contains_key(result_key) && status != StatusCode::TOO_MANY_REQUESTS {
                if let Ok(v) = serde_json::from_value::<T>(Value::Object(map)) {
                    return Ok(v);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let body: String = text.chars().take(BODY_SNIPPET).collect();
        Err(FacilitatorError::Status {
            endpoint,
            status: status.as_u16(),
            body,
        })
    }

    /// Start-up probe: `GET /supported` with back-off until it answers, then logs what the
    /// facilitator supports and warns about each `(version, scheme, network)` we need that it
    /// does not list. Never gives up, never panics; meant to run in a spawned task.
    pub async fn probe_supported(self: Arc<Self>, needed: Vec<(u32, String, String)>) {
        let mut delay = Duration::from_secs(1);
        loop {
            match self.supported().await {
                Ok(s) => {
                    let kinds: Vec<String> = s
                        .kinds
                        .iter()
                        .map(|k| format!("v{} {} {}", k.x402_version, k.scheme, k.network))
                        .collect();
                    tracing::info!(facilitator = %self.name, kinds = ?kinds, extensions = ?s.extensions, "facilitator supported kinds");
                    for (version, scheme, network) in &needed {
                        if s.supports(*version, scheme, network) {
                            continue;
                        }
                        if *version == 1 {
                            tracing::info!(
                                facilitator = %self.name, scheme = %scheme, network = %network,
                                "facilitator does not list x402 v1 for this network: legacy (X-PAYMENT) clients may be refused"
                            );
                        } else {
                            tracing::warn!(
                                facilitator = %self.name, version, scheme = %scheme, network = %network,
                                "facilitator does not list a kind our rails offer; payments on it will likely fail"
                            );
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(facilitator = %self.name, error = %e, retry_in_s = delay.as_secs(), "facilitator /supported failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

fn classify(endpoint: &'static str, e: &reqwest::Error) -> FacilitatorError {
    if e.is_timeout() {
        FacilitatorError::Timeout { endpoint }
    } else {
        // Strip the URL (it may carry query parameters) and keep the cause chain short.
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            reason = s.to_string();
            src = s.source();
        }
        FacilitatorError::Connect { endpoint, reason }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A tiny in-process facilitator for tests (axum on 127.0.0.1:0).

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::{json, Value};

    #[derive(Clone, Debug)]
    pub enum Reply {
        Json(u16, Value),
        Slow(Duration, Value),
    }

    #[derive(Default)]
    pub struct Inner {
        pub verify: Option<Reply>,
        pub settle: Option<Reply>,
        pub calls: Vec<(String, Value, Option<String>)>,
    }

    #[derive(Clone)]
    pub struct FakeFacilitator {
        pub url: String,
        pub inner: Arc<Mutex<Inner>>,
    }

    impl FakeFacilitator {
        pub async fn start() -> Self {
            let inner = Arc::new(Mutex::new(Inner::default()));
            let app = Router::new()
                .route("/verify", post(verify))
                .route("/settle", post(settle))
                .route("/supported", get(supported))
                .with_state(inner.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Self {
                url: format!("http://{addr}"),
                inner,
            }
        }

        pub fn set_verify(&self, r: Reply) {
            self.inner.lock().expect("lock").verify = Some(r);
        }

        pub fn set_settle(&self, r: Reply) {
            self.inner.lock().expect("lock").settle = Some(r);
        }

        pub fn calls(&self) -> Vec<(String, Value, Option<String>)> {
            self.inner.lock().expect("lock").calls.clone()
        }
    }

    /// A URL where nothing listens.
    pub async fn dead_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        format!("http://{addr}")
    }

    async fn answer(r: Option<Reply>, default: Value) -> (StatusCode, Json<Value>) {
        match r {
            None => (StatusCode::OK, Json(default)),
            Some(Reply::Json(code, v)) => (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                Json(v),
            ),
            Some(Reply::Slow(d, v)) => {
                tokio::time::sleep(d).await;
                (StatusCode::OK, Json(v))
            }
        }
    }

    fn record(
        inner: &Arc<Mutex<Inner>>,
        path: &str,
        body: Value,
        headers: &HeaderMap,
    ) -> Option<Reply> {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut g = inner.lock().expect("lock");
        g.calls.push((path.to_owned(), body, auth));
        match path {
            "verify" => g.verify.clone(),
            _ => g.settle.clone(),
        }
    }

    async fn verify(
        State(inner): State<Arc<Mutex<Inner>>>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        let payer = body["paymentPayload"]["payload"]["authorization"]["from"].clone();
        let r = record(&inner, "verify", body, &headers);
        answer(r, json!({"isValid": true, "payer": payer})).await
    }

    async fn settle(
        State(inner): State<Arc<Mutex<Inner>>>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        let payer = body["paymentPayload"]["payload"]["authorization"]["from"].clone();
        let network = body["paymentRequirements"]["network"].clone();
        let r = record(&inner, "settle", body, &headers);
        answer(
            r,
            json!({"success": true, "transaction": format!("0x{}", "ab".repeat(32)),
                   "network": network, "payer": payer}),
        )
        .await
    }

    async fn supported() -> Json<Value> {
        Json(
            json!({"kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:84532"}],
                    "extensions": [], "signers": {"eip155:*": ["0x0000000000000000000000000000000000000001"]}}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{dead_url, FakeFacilitator, Reply};
    use super::*;
    use serde_json::json;

    fn client(
        url: &str,
        timeout_ms: u64,
        auth: FacilitatorAuth,
    ) -> (FacilitatorClient, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let settings = FacilitatorSettings {
            url: Url::parse(url).expect("url"),
            timeout: Duration::from_millis(timeout_ms),
            auth,
        };
        (
            FacilitatorClient::new("test", &settings, metrics.clone()).expect("client"),
            metrics,
        )
    }

    fn req_parts() -> (Value, Value) {
        (
            json!({"x402Version": 2, "payload": {"authorization": {"from": "0xabc"}}}),
            json!({"scheme": "exact", "network": "eip155:84532"}),
        )
    }

    #[tokio::test]
    async fn valid_and_body_shape() {
        let fake = FakeFacilitator::start().await;
        let (c, _) = client(&fake.url, 2000, FacilitatorAuth::Bearer(Secret::new("tok")));
        let (p, r) = req_parts();
        let req = FacilitatorRequest {
            x402_version: 2,
            payment_payload: &p,
            payment_requirements: &r,
        };
        let v = c.verify(&req).await.expect("answer");
        assert!(v.is_valid);
        assert_eq!(v.payer.as_deref(), Some("0xabc"));
        let calls = fake.calls();
        assert_eq!(calls[0].0, "verify");
        assert_eq!(
            calls[0].1,
            json!({"x402Version": 2, "paymentPayload": p, "paymentRequirements": r})
        );
        assert_eq!(calls[0].2.as_deref(), Some("Bearer tok"));
        let s = c.settle(&req).await.expect("settle");
        assert!(s.success);
        assert_eq!(s.network, "eip155:84532");
        assert_eq!(c.status().reachable, Some(true));
    }

    #[tokio::test]
    async fn invalid_200_and_invalid_4xx() {
        let fake = FakeFacilitator::start().await;
        let (c, _) = client(&fake.url, 2000, FacilitatorAuth::None);
        let (p, r) = req_parts();
        let req = FacilitatorRequest {
            x402_version: 2,
            payment_payload: &p,
            payment_requirements: &r,
        };
        fake.set_verify(Reply::Json(
            200,
            json!({"isValid": false, "invalidReason": "invalid_exact_evm_signature", "invalidMessage": null, "payer": null}),
        ));
        let v = c.verify(&req).await.expect("negative answer");
        assert!(!v.is_valid);
        assert_eq!(
            v.invalid_reason.as_deref(),
            Some("invalid_exact_evm_signature")
        );
        assert_eq!(v.payer, None);
        fake.set_verify(Reply::Json(
            400,
            json!({"isValid": false, "invalidReason": "insufficient_funds"}),
        ));
        let v = c.verify(&req).await.expect("negative answer in a 400");
        assert_eq!(v.invalid_reason.as_deref(), Some("insufficient_funds"));
        fake.set_settle(Reply::Json(
            402,
            json!({"success": false, "errorReason": "invalid_transaction_state", "transaction": null, "network": "eip155:84532"}),
        ));
        let s = c.settle(&req).await.expect("negative settle");
        assert!(!s.success);
        assert_eq!(s.transaction, "");
    }

    #[tokio::test]
    async fn server_error_is_unavailable() {
        let fake = FakeFacilitator::start().await;
        let (c, m) = client(&fake.url, 2000, FacilitatorAuth::None);
        let (p, r) = req_parts();
        let req = FacilitatorRequest {
            x402_version: 2,
            payment_payload: &p,
            payment_requirements: &r,
        };
        fake.set_verify(Reply::Json(500, json!({"error": "boom"})));
        let e = c.verify(&req).await.expect_err("unavailable");
        assert!(
            matches!(e, FacilitatorError::Status { status: 500, .. }),
            "{e}"
        );
        assert!(m
            .encode()
            .contains("tollway_facilitator_errors_total{endpoint=\"verify\"} 1"));
        assert_eq!(c.status().reachable, Some(false));
    }

    #[tokio::test]
    async fn timeout_is_unavailable() {
        let fake = FakeFacilitator::start().await;
        let (c, _) = client(&fake.url, 150, FacilitatorAuth::None);
        let (p, r) = req_parts();
        let req = FacilitatorRequest {
            x402_version: 2,
            payment_payload: &p,
            payment_requirements: &r,
        };
        fake.set_verify(Reply::Slow(
            Duration::from_millis(800),
            json!({"isValid": true}),
        ));
        let e = c.verify(&req).await.expect_err("timeout");
        assert!(matches!(e, FacilitatorError::Timeout { .. }), "{e}");
    }

    #[tokio::test]
    async fn unreachable_is_unavailable() {
        let (c, _) = client(&dead_url().await, 1000, FacilitatorAuth::None);
        let (p, r) = req_parts();
        let req = FacilitatorRequest {
            x402_version: 1,
            payment_payload: &p,
            payment_requirements: &r,
        };
        let e = c.settle(&req).await.expect_err("down");
        assert!(matches!(e, FacilitatorError::Connect { .. }), "{e}");
    }

    #[tokio::test]
    async fn supported_and_base_path() {
        let fake = FakeFacilitator::start().await;
        // A base path with a trailing slash must still reach /supported under it.
        let (c, _) = client(&format!("{}/", fake.url), 1000, FacilitatorAuth::None);
        let s = c.supported().await.expect("supported");
        assert!(s.supports(2, "exact", "eip155:84532"));
        assert!(!s.supports(1, "exact", "base-sepolia"));
        assert_eq!(c.status().supported, vec!["v2 exact eip155:84532"]);
    }

    #[tokio::test]
    async fn cdp_auth_header_is_a_jwt_for_the_path() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use base64::Engine;
        let fake = FakeFacilitator::start().await;
        let sk = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
        let creds =
            CdpCredentials::new("kid", &STANDARD.encode(sk.to_keypair_bytes())).expect("creds");
        let (c, _) = client(&fake.url, 1000, FacilitatorAuth::Cdp(Arc::new(creds)));
        let (p, r) = req_parts();
        let req = FacilitatorRequest {
            x402_version: 2,
            payment_payload: &p,
            payment_requirements: &r,
        };
        c.verify(&req).await.expect("ok");
        let (_, port) = fake.url.rsplit_once(':').expect("port");
        let auth = fake.calls()[0].2.clone().expect("authorization");
        let token = auth.strip_prefix("Bearer ").expect("bearer");
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).expect("claims"))
                .expect("b64"),
        )
        .expect("json");
        assert_eq!(
            claims["uris"],
            json!([format!("POST 127.0.0.1:{port}/verify")])
        );
    }
}
