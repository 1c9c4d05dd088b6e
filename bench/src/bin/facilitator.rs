//! `bench-facilitator --port N [--threads 1]`: an x402 facilitator double that says yes at once,
//! so a paid-request benchmark measures the gateway's own cost and not a chain.
//!
//! - `POST /verify` → `{"isValid":true,"payer":<paymentPayload.payload.authorization.from>}`
//! - `POST /settle` → `{"success":true,"transaction":"0x…64 hex","network":<paymentRequirements.network>,"payer":…}`
//! - `GET /supported` → `exact` on `eip155:84532` (v2) and `base-sepolia` (v1)
//! - `GET /healthz` → `ok`
//!
//! It never checks a signature: the verifier under test does that itself before calling here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::{json, Value};
use tollway_bench::{reply, runtime, serve, Args};

const USAGE: &str = "usage: bench-facilitator --port PORT [--threads 1]\n\
Instant x402 facilitator double: /verify and /settle always succeed, /supported, /healthz.";

const SUPPORTED: &str = r#"{"kinds":[{"x402Version":2,"scheme":"exact","network":"eip155:84532"},{"x402Version":1,"scheme":"exact","network":"base-sepolia"}],"extensions":[],"signers":{"eip155:*":["0x0000000000000000000000000000000000000001"]}}"#;

fn main() {
    let args = Args::parse(USAGE);
    let port: u16 = args.number("port", 0);
    if port == 0 {
        tollway_bench::fail(USAGE, "--port is required");
    }
    let settled = Arc::new(AtomicU64::new(0));
    runtime(args.number("threads", 1)).block_on(serve(port, "bench-facilitator", move |req| {
        let settled = settled.clone();
        async move { handle(req, &settled).await }
    }));
}

async fn handle(
    req: Request<Incoming>,
    settled: &AtomicU64,
) -> hyper::Response<http_body_util::Full<Bytes>> {
    let json_reply = |v: Value| reply(200, "application/json", Bytes::from(v.to_string()));
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/healthz") => reply(200, "text/plain", Bytes::from_static(b"ok")),
        (Method::GET, "/supported") => reply(
            200,
            "application/json",
            Bytes::from_static(SUPPORTED.as_bytes()),
        ),
        (Method::POST, path @ ("/verify" | "/settle")) => {
            let verify = path == "/verify";
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return reply(400, "text/plain", Bytes::from_static(b"unreadable body")),
            };
            let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                return reply(
                    400,
                    "application/json",
                    Bytes::from_static(br#"{"error":"invalid JSON"}"#),
                );
            };
            let payer = body["paymentPayload"]["payload"]["authorization"]["from"].clone();
            if verify {
                json_reply(json!({"isValid": true, "payer": payer}))
            } else {
                let n = settled.fetch_add(1, Ordering::Relaxed) + 1;
                json_reply(json!({
                    "success": true,
                    "transaction": format!("0x{n:064x}"),
                    "network": body["paymentRequirements"]["network"].clone(),
                    "payer": payer,
                }))
            }
        }
        _ => reply(404, "text/plain", Bytes::from_static(b"not found")),
    }
}
