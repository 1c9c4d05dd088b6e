//! The admin API on its own listener, `verifier.admin` (`docs/leases.md`, dynamic routes): list
//! and change the live route table. `Authorization: Bearer <admin.token>`; over TLS (mTLS with
//! `verifier.tls.client_ca`) when `verifier.tls` is set. Without `verifier.admin` the API is
//! off; `verifier.http` answers 404 on its paths.
//!
//! | request | answer |
//! |---|---|
//! | `GET /admin/routes` | `200 {"version": N, "routes": [...]}` (`tollway.yaml` shape) |
//! | `GET /admin/routes/{name}` | `200 {"version": N, "route": {...}}`, 404 |
//! | `PUT /admin/routes/{name}` | add or replace (body: one route, `name` optional) |
//! | `PATCH /admin/routes/{name}` | JSON merge patch of the route (`null` removes a field) |
//! | `DELETE /admin/routes/{name}` | remove |
//!
//! Changes answer `200 {"version": N}`, `400 {"error": ..., "problems": [...]}`, `401` (no or
//! wrong token, with `WWW-Authenticate: Bearer`), `404` (no such route), `413` (body over
//! 64 KiB, at once when announced; the connection is closed), `408` (headers or body slower than
//! 10 s; see [`crate::api::listener`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::secret::Secret;
use crate::stores::routes_store::{Change, ChangeError, Op, RouteStore};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

pub struct AdminState {
    pub store: Arc<RouteStore>,
    /// `None`: no `admin:` section, the API is off.
    pub token: Option<Secret>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/admin/routes", get(list))
        .route(
            "/admin/routes/{name}",
            get(one).put(put).patch(patch).delete(delete),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, Json(json!({ "error": message }))).into_response()
}

/// `None` when the request carries the admin token; else the answer to send.
fn refusal(state: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &state.token else {
        return Some(error(
            StatusCode::NOT_FOUND,
            "the admin API is off (no admin.token configured)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    // Digests compared in constant time: neither the token nor its length leaks.
    let ok = given.is_some_and(|token| {
        let a = Sha256::digest(token.as_bytes());
        let b = Sha256::digest(expected.expose().as_bytes());
        bool::from(a.ct_eq(&b))
    });
    if ok {
        return None;
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong admin token (Authorization: Bearer <admin.token>)",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    Some(r)
}

async fn list(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&s, &headers) {
        return r;
    }
    let t = s.store.current();
    let routes: Vec<Value> = t.routes.iter().map(|r| r.to_json()).collect();
    Json(json!({ "version": t.version, "routes": routes })).into_response()
}

async fn one(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refusal(&s, &headers) {
        return r;
    }
    let t = s.store.current();
    match t.routes.iter().find(|r| r.name == name) {
        Some(r) => Json(json!({ "version": t.version, "route": r.to_json() })).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no route named {name:?}")),
    }
}

async fn put(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    change(s, headers, Op::Put, name, Some(body)).await
}

async fn patch(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    change(s, headers, Op::Patch, name, Some(body)).await
}

async fn delete(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    change(s, headers, Op::Delete, name, None).await
}

async fn change(
    s: Arc<AdminState>,
    headers: HeaderMap,
    op: Op,
    name: String,
    body: Option<Bytes>,
) -> Response {
    if let Some(r) = refusal(&s, &headers) {
        return r;
    }
    let body =
        match body {
            None => None,
            Some(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v @ Value::Object(_)) => Some(v),
                Ok(_) | Err(_) => return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({
                        "error": "the body must be a JSON object: one route in tollway.yaml shape",
                        "problems": [],
                    })),
                )
                    .into_response(),
            },
        };
    let store = s.store.clone();
    let route = name.clone();
    let result = tokio::task::spawn_blocking(move || store.change(Change { op, name, body })).await;
    match result {
        Ok(Ok(version)) => Json(json!({ "version": version })).into_response(),
        Ok(Err(ChangeError::NotFound(name))) => {
            error(StatusCode::NOT_FOUND, &format!("no route named {name:?}"))
        }
        Ok(Err(ChangeError::Invalid { message, problems })) => {
            tracing::info!(
                op = op.as_str(),
                route = %route,
                problems = problems.len(),
                "admin route change refused"
            );
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": message, "problems": problems })),
            )
                .into_response()
        }
        Ok(Err(e @ ChangeError::Store(_))) => {
            tracing::error!(op = op.as_str(), route = %route, error = %e, "admin route change failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, "admin route change task failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rails::facilitator::fake::dead_url;
    use crate::testkit::{leased_harness, Harness, ADMIN_TOKEN};
    use reqwest::{Client, Method};
    use tokio::net::TcpListener;

    struct Api {
        base: String,
        client: Client,
        h: Harness,
    }

    impl Api {
        async fn start(token: Option<&str>) -> Api {
            let h = leased_harness(&dead_url().await);
            let state = Arc::new(AdminState {
                store: h.store.clone(),
                token: token.map(Secret::new),
            });
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move { axum::serve(listener, router(state)).await });
            Api {
                base: format!("http://{addr}"),
                client: Client::new(),
                h,
            }
        }

        /// (status, JSON body or Null, www-authenticate).
        async fn call(
            &self,
            method: Method,
            path: &str,
            token: Option<&str>,
            body: Option<String>,
        ) -> (u16, Value, Option<String>) {
            let mut r = self.client.request(method, format!("{}{path}", self.base));
            if let Some(t) = token {
                r = r.header("authorization", format!("Bearer {t}"));
            }
            if let Some(b) = body {
                r = r.header("content-type", "application/json").body(b);
            }
            let resp = r.send().await.expect("send");
            let status = resp.status().as_u16();
            let www = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = resp.json().await.unwrap_or(Value::Null);
            (status, body, www)
        }
    }

    #[tokio::test]
    async fn off_without_a_token() {
        let api = Api::start(None).await;
        for (method, path) in [
            (Method::GET, "/admin/routes"),
            (Method::PUT, "/admin/routes/x"),
            (Method::DELETE, "/admin/routes/quote"),
        ] {
            let (status, body, _) = api.call(method, path, Some(ADMIN_TOKEN), None).await;
            assert_eq!(status, 404, "{path}");
            assert!(body["error"]
                .as_str()
                .expect("error")
                .contains("admin API is off"));
        }
    }

    #[tokio::test]
    async fn needs_the_token() {
        let api = Api::start(Some(ADMIN_TOKEN)).await;
        let wrong = format!("{ADMIN_TOKEN}x");
        for token in [None, Some("nope"), Some(wrong.as_str()), Some("")] {
            for (method, path) in [
                (Method::GET, "/admin/routes"),
                (Method::GET, "/admin/routes/quote"),
                (Method::DELETE, "/admin/routes/quote"),
                (Method::PATCH, "/admin/routes/quote"),
            ] {
                let (status, _, www) = api
                    .call(method, path, token, Some("{\"disabled\":true}".into()))
                    .await;
                assert_eq!(status, 401, "{token:?} {path}");
                assert_eq!(www.as_deref(), Some("Bearer"));
            }
        }
        // Another scheme with the right token is not it either.
        let r = api
            .client
            .get(format!("{}/admin/routes", api.base))
            .header("authorization", format!("Basic {ADMIN_TOKEN}"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
        assert!(
            !api.h
                .payments
                .compiled()
                .route("quote")
                .expect("quote")
                .disabled
        );
    }

    #[tokio::test]
    async fn list_change_and_refuse() {
        let api = Api::start(Some(ADMIN_TOKEN)).await;
        let t = Some(ADMIN_TOKEN);
        let (status, list, _) = api.call(Method::GET, "/admin/routes", t, None).await;
        assert_eq!(status, 200);
        let v0 = list["version"].as_u64().expect("version");
        assert_eq!(v0, api.h.store.current().version);
        let routes = list["routes"].as_array().expect("routes");
        assert_eq!(routes.len(), 5);
        // tollway.yaml shape: the file's fields, defaults left out.
        assert_eq!(
            routes[0],
            json!({"name": "quote", "path": "/api/quote", "methods": ["GET"], "price": "0.001",
                   "description": "A quote", "mime_type": "application/json"})
        );
        assert_eq!(
            routes[2]["lease"],
            json!({"path": "/lease/ticker/[symbol]", "seconds": 60, "renewal": {"window_seconds": 30}})
        );
        assert_eq!(routes[2]["kind"], "http-stream");

        // PUT adds.
        let (status, body, _) = api
            .call(
                Method::PUT,
                "/admin/routes/report",
                t,
                Some(
                    r#"{"path": "/api/report/[id]", "price": "0.005", "methods": ["GET"]}"#.into(),
                ),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let v1 = body["version"].as_u64().expect("version");
        assert_ne!(v1, v0);
        let (status, one, _) = api.call(Method::GET, "/admin/routes/report", t, None).await;
        assert_eq!(status, 200);
        assert_eq!(one["route"]["price"], "0.005");
        assert_eq!(one["version"], v1);

        // PATCH re-prices; PATCH/DELETE of an unknown route is 404.
        let (status, body, _) = api
            .call(
                Method::PATCH,
                "/admin/routes/report",
                t,
                Some(r#"{"price": "0.05"}"#.into()),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, _, _) = api
            .call(Method::PATCH, "/admin/routes/nope", t, Some("{}".into()))
            .await;
        assert_eq!(status, 404);
        let (status, _, _) = api
            .call(Method::DELETE, "/admin/routes/nope", t, None)
            .await;
        assert_eq!(status, 404);
        let (status, _, _) = api.call(Method::GET, "/admin/routes/nope", t, None).await;
        assert_eq!(status, 404);

        // Invalid: 400 with the problems, nothing changes.
        let before = api.h.store.current().version;
        let (status, body, _) = api
            .call(
                Method::PATCH,
                "/admin/routes/report",
                t,
                Some(r#"{"price": "free"}"#.into()),
            )
            .await;
        assert_eq!(status, 400);
        assert!(body["error"].as_str().expect("error").contains("refused"));
        let problems = body["problems"].as_array().expect("problems");
        assert!(
            problems[0]
                .as_str()
                .expect("problem")
                .starts_with("routes[5].price: \"free\""),
            "{body}"
        );
        for bad in ["not json", "[1]", "\"x\""] {
            let (status, body, _) = api
                .call(Method::PUT, "/admin/routes/report", t, Some(bad.into()))
                .await;
            assert_eq!(status, 400, "{bad}");
            assert_eq!(body["problems"], json!([]));
        }
        assert_eq!(api.h.store.current().version, before);

        // Too large.
        let big = format!(
            r#"{{"path": "/x", "description": "{}"}}"#,
            "a".repeat(MAX_BODY)
        );
        let (status, _, _) = api
            .call(Method::PUT, "/admin/routes/big", t, Some(big))
            .await;
        assert_eq!(status, 413);

        // DELETE.
        let (status, body, _) = api
            .call(Method::DELETE, "/admin/routes/report", t, None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["version"].as_u64(), Some(v0));
    }
}
