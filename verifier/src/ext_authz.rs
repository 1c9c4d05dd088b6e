//! Envoy `envoy.service.auth.v3.Authorization/Check` for ext_authz-only mode (no wasm).
//!
//! The verifier does the filter's whole job here: match the route, answer the 402 challenge,
//! verify a payment and — because ext_authz never sees the upstream's response — settle it
//! *before* the request is forwarded (documented trade-off: a failing upstream still charges).
//! Allowed requests get `PAYMENT-RESPONSE` (v2) / `X-PAYMENT-RESPONSE` (v1) on the response and
//! lose their payment headers on the way upstream. Facilitator down: 503 with `retry-after`.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tollway_protocol::resource_url;
use tollway_protocol::x402::{
    CHALLENGE_HEADERS, HEADER_PAYMENT_REQUIRED, HEADER_PAYMENT_RESPONSE, HEADER_PAYMENT_SIGNATURE,
    HEADER_X_PAYMENT, HEADER_X_PAYMENT_RESPONSE,
};

use crate::metrics::Metrics;
use crate::payments::{Payments, SettleOutcome, Verified};

/// gRPC codes carried in `CheckResponse.status`.
const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAVAILABLE: i32 = 14;

/// The one reason that maps to 412 instead of 402 (x402 spec §1.3).
const PERMIT2_ALLOWANCE_REQUIRED: &str = "permit2_allowance_required";

pub struct ExtAuthz {
    payments: Arc<Payments>,
    metrics: Arc<Metrics>,
}

/// A header we own: replaces any copy.
fn header(key: &str, value: &str) -> HeaderValueOption {
    header_with(key, value, HeaderAppendAction::OverwriteIfExistsOrAdd)
}

fn header_with(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    }
}

fn ok(response_headers: Vec<HeaderValueOption>, strip_payment: bool) -> CheckResponse {
    let headers_to_remove = if strip_payment {
        vec![
            HEADER_PAYMENT_SIGNATURE.to_owned(),
            HEADER_X_PAYMENT.to_owned(),
        ]
    } else {
        Vec::new()
    };
    CheckResponse {
        status: Some(RpcStatus {
            code: GRPC_OK,
            ..RpcStatus::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers_to_remove,
            response_headers_to_add: response_headers,
            ..OkHttpResponse::default()
        })),
        ..CheckResponse::default()
    }
}

fn denied(
    grpc_code: i32,
    http_status: i32,
    headers: Vec<HeaderValueOption>,
    body: String,
) -> CheckResponse {
    CheckResponse {
        status: Some(RpcStatus {
            code: grpc_code,
            ..RpcStatus::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http_status }),
            headers,
            body,
        })),
        ..CheckResponse::default()
    }
}

fn unavailable() -> CheckResponse {
    denied(
        GRPC_UNAVAILABLE,
        503,
        vec![
            header("retry-after", "1"),
            header("content-type", "application/json"),
            header("cache-control", "no-store"),
        ],
        r#"{"error":"payment verification is temporarily unavailable"}"#.to_owned(),
    )
}

fn receipt_header(version: u8) -> &'static str {
    if version == 1 {
        HEADER_X_PAYMENT_RESPONSE
    } else {
        HEADER_PAYMENT_RESPONSE
    }
}

impl ExtAuthz {
    pub fn new(payments: Arc<Payments>, metrics: Arc<Metrics>) -> Self {
        Self { payments, metrics }
    }

    pub async fn check(&self, req: &CheckRequest) -> CheckResponse {
        let Some(http) = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
        else {
            // Not an HTTP check: nothing we can price. Refuse rather than let it through.
            self.metrics.check("malformed");
            return denied(GRPC_PERMISSION_DENIED, 400, Vec::new(), String::new());
        };
        let compiled = self.payments.compiled();
        let Some(m) = compiled.table.find(&http.host, &http.method, &http.path) else {
            self.metrics.check("unmatched");
            return ok(Vec::new(), false);
        };
        let Some(route) = compiled.routes.get(m.index) else {
            self.metrics.check("unmatched");
            return ok(Vec::new(), false);
        };
        let Some(paid) = &route.paid else {
            self.metrics.check("free");
            return ok(Vec::new(), false);
        };
        let url = resource_url(
            self.payments.public_url(),
            &http.scheme,
            &http.host,
            &http.path,
        );
        let challenge = |error: Option<&str>, status: i32| {
            let rendered = paid.challenge.render(&url, error);
            let mut headers = vec![header(
                HEADER_PAYMENT_REQUIRED,
                &rendered.payment_required_header,
            )];
            headers.extend(CHALLENGE_HEADERS.iter().map(|(k, v)| header(k, v)));
            denied(GRPC_PERMISSION_DENIED, status, headers, rendered.body)
        };

        // Envoy lower-cases header names in the check request.
        let payment = [HEADER_PAYMENT_SIGNATURE, HEADER_X_PAYMENT]
            .iter()
            .find_map(|name| http.headers.get(*name).map(|v| (*name, v.as_str())))
            .filter(|(_, v)| !v.trim().is_empty());
        let Some((header_name, value)) = payment else {
            self.metrics.check("challenge");
            return challenge(None, 402);
        };

        match self
            .payments
            .verify(&route.name, header_name, value, &url)
            .await
        {
            Verified::Invalid { reason, .. } => {
                self.metrics.check("invalid");
                let status = if reason == PERMIT2_ALLOWANCE_REQUIRED {
                    412
                } else {
                    402
                };
                challenge(Some(&reason), status)
            }
            Verified::Unavailable { .. } => {
                self.metrics.check("unavailable");
                unavailable()
            }
            Verified::Valid { payment_id, .. } => {
                // ext_authz cannot wait for the upstream: settle now.
                let s = self.payments.settle(&payment_id, 0).await;
                let name = receipt_header(s.x402_version);
                match s.outcome {
                    SettleOutcome::Settled | SettleOutcome::Pending => {
                        self.metrics.check("paid");
                        ok(
                            vec![
                                header(name, &s.payment_response),
                                // Paid content must not land in a shared cache.
                                header("cache-control", "private"),
                                // The upstream's own CORS list is kept; ours is appended.
                                header_with(
                                    "access-control-expose-headers",
                                    "PAYMENT-RESPONSE, X-PAYMENT-RESPONSE",
                                    HeaderAppendAction::AppendIfExistsOrAdd,
                                ),
                            ],
                            true,
                        )
                    }
                    SettleOutcome::Failed => {
                        self.metrics.check("settle_failed");
                        let mut headers = vec![header(name, &s.payment_response)];
                        headers.extend(CHALLENGE_HEADERS.iter().map(|(k, v)| header(k, v)));
                        denied(GRPC_PERMISSION_DENIED, 402, headers, "{}".to_owned())
                    }
                    SettleOutcome::Unavailable => {
                        self.metrics.check("unavailable");
                        unavailable()
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            ExtAuthz::check(self, request.get_ref()).await,
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::unix_now;
    use crate::facilitator::fake::{dead_url, FakeFacilitator, Reply};
    use crate::testkit::{harness, offer, Harness, Payer};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use serde_json::{json, Value};
    use std::collections::HashMap;
    use tollway_protocol::b64;

    pub(crate) fn check_request(
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: method.into(),
                        path: path.into(),
                        host: "api.test:10000".into(),
                        scheme: "http".into(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect::<HashMap<_, _>>(),
                        ..HttpRequest::default()
                    }),
                    ..Request::default()
                }),
                ..AttributeContext::default()
            }),
        }
    }

    fn authz(h: &Harness) -> ExtAuthz {
        ExtAuthz::new(h.payments.clone(), h.metrics.clone())
    }

    fn denied_of(r: &CheckResponse) -> &DeniedHttpResponse {
        match &r.http_response {
            Some(HttpResponse::DeniedResponse(d)) => d,
            other => panic!("expected denied, got {other:?}"),
        }
    }

    fn ok_of(r: &CheckResponse) -> &OkHttpResponse {
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(0));
        match &r.http_response {
            Some(HttpResponse::OkResponse(o)) => o,
            other => panic!("expected ok, got {other:?}"),
        }
    }

    fn header_of<'a>(hs: &'a [HeaderValueOption], name: &str) -> Option<&'a str> {
        hs.iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.as_str())
    }

    fn b64_json(s: &str) -> Value {
        serde_json::from_slice(&b64::decode_strict(s, 1 << 16).expect("b64")).expect("json")
    }

    #[tokio::test]
    async fn free_and_unmatched_pass() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let a = authz(&h);
        let r = a.check(&check_request("GET", "/free?x=1", &[])).await;
        assert!(ok_of(&r).headers_to_remove.is_empty());
        let r = a.check(&check_request("GET", "/somewhere/else", &[])).await;
        ok_of(&r);
        // POST to a GET-only paid path is not that route.
        let r = a.check(&check_request("POST", "/api/quote", &[])).await;
        ok_of(&r);
        assert!(h
            .metrics
            .encode()
            .contains("tollway_check_total{result=\"free\"} 1"));
    }

    #[tokio::test]
    async fn unpaid_gets_402_challenge() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let r = authz(&h)
            .check(&check_request("GET", "/api/quote?symbol=X", &[]))
            .await;
        assert_eq!(
            r.status.as_ref().map(|s| s.code),
            Some(GRPC_PERMISSION_DENIED)
        );
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(402));
        let required =
            b64_json(header_of(&d.headers, "payment-required").expect("PAYMENT-REQUIRED"));
        assert_eq!(required["x402Version"], 2);
        assert_eq!(
            required["resource"]["url"],
            "http://api.test:10000/api/quote"
        );
        assert_eq!(required["accepts"][0]["amount"], "1000");
        assert_eq!(header_of(&d.headers, "cache-control"), Some("no-store"));
        assert_eq!(
            header_of(&d.headers, "content-type"),
            Some("application/json")
        );
        let body: Value = serde_json::from_str(&d.body).expect("v1 body");
        assert_eq!(body["x402Version"], 1);
        assert_eq!(body["accepts"][0]["network"], "base-sepolia");
        assert_eq!(
            body["accepts"][0]["resource"],
            "http://api.test:10000/api/quote"
        );
        assert!(d
            .headers
            .iter()
            .all(|h| h.append_action == HeaderAppendAction::OverwriteIfExistsOrAdd as i32));
    }

    #[tokio::test]
    async fn paid_request_is_settled_and_forwarded() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(21);
        let auth = payer.authorization(&offer, unix_now(), 1);
        let header = payer.header_v2(&offer, &auth, "http://api.test:10000/api/quote");
        let r = authz(&h)
            .check(&check_request(
                "GET",
                "/api/quote",
                &[("payment-signature", &header)],
            ))
            .await;
        let o = ok_of(&r);
        assert_eq!(o.headers_to_remove, vec!["payment-signature", "x-payment"]);
        let receipt =
            b64_json(header_of(&o.response_headers_to_add, "payment-response").expect("receipt"));
        assert_eq!(receipt["success"], true);
        assert_eq!(receipt["payer"], payer.address().to_string());
        assert_eq!(
            fake.calls()
                .iter()
                .map(|c| c.0.as_str())
                .collect::<Vec<_>>(),
            vec!["verify", "settle"]
        );

        // v1 client on the POST route: X-PAYMENT in, X-PAYMENT-RESPONSE out.
        let offer = crate::testkit::offer(&h.config, "echo");
        let auth = payer.authorization(&offer, unix_now(), 2);
        let r = authz(&h)
            .check(&check_request(
                "POST",
                "/api/echo",
                &[("x-payment", &payer.header_v1(&offer, &auth))],
            ))
            .await;
        let o = ok_of(&r);
        assert!(header_of(&o.response_headers_to_add, "x-payment-response").is_some());
        assert!(header_of(&o.response_headers_to_add, "payment-response").is_none());

        // The same payment again: 402 naming the reason.
        let r = authz(&h)
            .check(&check_request(
                "GET",
                "/api/quote",
                &[("payment-signature", &header)],
            ))
            .await;
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(402));
        let required = b64_json(header_of(&d.headers, "payment-required").expect("challenge"));
        assert_eq!(required["error"], "invalid_exact_evm_nonce_already_used");
    }

    #[tokio::test]
    async fn bad_payment_gets_402_with_reason() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        let r = authz(&h)
            .check(&check_request(
                "GET",
                "/api/quote",
                &[("payment-signature", "garbage")],
            ))
            .await;
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(402));
        let body: Value = serde_json::from_str(&d.body).expect("json");
        assert_eq!(body["error"], "invalid_payload");
    }

    #[tokio::test]
    async fn facilitator_down_gives_503() {
        let h = harness(&dead_url().await);
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(22);
        let auth = payer.authorization(&offer, unix_now(), 1);
        let header = payer.header_v2(&offer, &auth, "http://api.test:10000/api/quote");
        let r = authz(&h)
            .check(&check_request(
                "GET",
                "/api/quote",
                &[("payment-signature", &header)],
            ))
            .await;
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(GRPC_UNAVAILABLE));
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(503));
        assert_eq!(header_of(&d.headers, "retry-after"), Some("1"));
    }

    #[tokio::test]
    async fn settle_failure_gives_402_with_receipt() {
        let fake = FakeFacilitator::start().await;
        let h = harness(&fake.url);
        fake.set_settle(Reply::Json(
            200,
            json!({"success": false, "errorReason": "invalid_exact_evm_transaction_failed", "transaction": "", "network": "eip155:84532"}),
        ));
        let offer = offer(&h.config, "quote");
        let payer = Payer::new(23);
        let auth = payer.authorization(&offer, unix_now(), 1);
        let header = payer.header_v2(&offer, &auth, "http://api.test:10000/api/quote");
        let r = authz(&h)
            .check(&check_request(
                "GET",
                "/api/quote",
                &[("payment-signature", &header)],
            ))
            .await;
        let d = denied_of(&r);
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(402));
        let receipt = b64_json(header_of(&d.headers, "payment-response").expect("receipt"));
        assert_eq!(receipt["success"], false);
        assert_eq!(d.body, "{}");
    }
}
