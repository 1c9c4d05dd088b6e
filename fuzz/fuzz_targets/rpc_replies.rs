//! The verifier's replies as the filter decodes them (prost, `tollway.v1.Payments`) and what the
//! filter does with their fields: the Verify reason spliced into a 402, the Challenge's macaroon
//! and invoice spliced into `WWW-Authenticate` and its x402 offer into `PAYMENT-REQUIRED`, the
//! Routes table compiled.
//!
//! Input: one byte choosing the message, then its protobuf encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use serde_json::Value;
use tollway_fuzz::{compiled, config};
use tollway_protocol::b64;
use tollway_protocol::filter_config::{FilterConfig, RouteConfig};
use tollway_protocol::l402::www_authenticate;
use tollway_protocol::rpc::{
    ChallengeResponse, ClaimResponse, ReleaseResponse, RoutesResponse, SettleResponse,
    VerifyResponse,
};
use tollway_protocol::x402::{is_json_object, Challenge, ErrorReason};

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    assert_eq!(M::decode(m.encode_to_vec().as_slice()).as_ref(), Ok(m));
}

/// A 402 rendered with `error` and `extra` (a v2 accept) is JSON in the body and in the header.
fn render(error: Option<&str>, extra: Option<&str>) {
    let paid = compiled()
        .route("quote")
        .and_then(|r| r.paid.as_ref())
        .unwrap();
    let url = "https://api.example.com/api/quote";
    let rendered = paid.challenge.render_with(url, error, extra);
    let body: Value = serde_json::from_str(&rendered.body).unwrap();
    let header = b64::decode_strict(&rendered.payment_required_header, 1 << 20).unwrap();
    let header: Value = serde_json::from_slice(&header).unwrap();
    if let Some(error) = error {
        assert_eq!(body["error"], error);
        assert_eq!(header["error"], error);
    }
    assert_eq!(header["resource"]["url"], url);
    if let Some(extra) = extra {
        let accepts = header["accepts"].as_array().unwrap();
        let extra: Value = serde_json::from_str(extra).unwrap();
        assert_eq!(accepts.last(), Some(&extra));
        // A Lightning-only route's challenge takes it as its only entry.
        let only = Challenge::new(&[], "", "");
        let rendered = only.render_with(url, None, Some(&serde_json::to_string(&extra).unwrap()));
        let header = b64::decode_strict(&rendered.payment_required_header, 1 << 20).unwrap();
        let header: Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header["accepts"].as_array().map(Vec::len), Some(1));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => {
            let Ok(r) = VerifyResponse::decode(body) else {
                return;
            };
            round_trip(&r);
            let _ = r.outcome();
            let reason = if r.reason.is_empty() {
                ErrorReason::UnexpectedVerifyError.as_str()
            } else {
                &r.reason
            };
            render(Some(reason), None);
        }
        1 => {
            let Ok(r) = SettleResponse::decode(body) else {
                return;
            };
            round_trip(&r);
            let _ = r.outcome();
        }
        2 => {
            let Ok(r) = ChallengeResponse::decode(body) else {
                return;
            };
            round_trip(&r);
            let _ = r.outcome();
            if let Ok(lines) = www_authenticate(&r.macaroon, &r.invoice) {
                for line in &lines {
                    assert!(line.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
                }
            }
            let offer = r.x402_offer.as_str();
            let serde = offer.starts_with('{')
                && serde_json::from_str::<Value>(offer).is_ok_and(|v| v.is_object());
            assert_eq!(is_json_object(offer), serde, "{offer:?}");
            if serde {
                render(None, Some(offer));
            }
        }
        3 => {
            if let Ok(r) = ClaimResponse::decode(body) {
                round_trip(&r);
                let _ = r.outcome();
            }
        }
        4 => {
            let Ok(r) = RoutesResponse::decode(body) else {
                return;
            };
            round_trip(&r);
            let Ok(routes) = serde_json::from_str::<Vec<RouteConfig>>(&r.routes_json) else {
                return;
            };
            let synced = FilterConfig {
                routes,
                ..config().clone()
            };
            if let Ok(compiled) = synced.compile() {
                assert_eq!(compiled.table.len(), compiled.routes.len());
            }
        }
        _ => {
            if let Ok(r) = ReleaseResponse::decode(body) {
                round_trip(&r);
            }
        }
    }
});
