//! The 402 answer, in both dialects at once: the v2 `PaymentRequired` (base64, header
//! `PAYMENT-REQUIRED`) for current SDKs and a v1 `PaymentRequirementsResponse` (JSON body) for
//! legacy clients. Everything is serialised once per route at configure time; a request only
//! splices in its resource URL and error string.

use serde::Serialize;
use serde_json::{Map, Value};

use super::offer::Offer;
use super::types::{PaymentRequiredV2, ResourceInfo, X402Version};
use crate::b64;

/// Headers of every 402 (names lower-case, as Envoy wants them). `no-store` because a cached
/// challenge would carry another request's resource URL; the expose list lets browser clients
/// read the payment headers.
pub const CHALLENGE_HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
    (
        "access-control-expose-headers",
        "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE, WWW-Authenticate",
    ),
];

/// `error` of the v2 answer when none is given (the SDK's text).
pub const DEFAULT_ERROR_V2: &str = "Payment required";
/// `error` of the v1 body when none is given (the legacy middleware's text).
pub const DEFAULT_ERROR_V1: &str = "X-PAYMENT header is required";

/// A route's precomputed 402.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// v2 JSON after the URL: the rest of `resource`, then `accepts`.
    v2_after_url: String,
    /// Per v1 accept, its JSON after the leading `{"resource":<url>`.
    v1_after_url: Vec<String>,
}

/// A rendered 402: put `payment_required_header` in `PAYMENT-REQUIRED`, `body` in the body,
/// plus [`CHALLENGE_HEADERS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChallenge {
    pub payment_required_header: String,
    pub body: String,
}

impl Challenge {
    /// Offers without a v1 network name are left out of the v1 body only.
    pub fn new(offers: &[Offer], description: &str, mime_type: &str) -> Challenge {
        let v2 = PaymentRequiredV2 {
            x402_version: X402Version,
            error: None,
            resource: ResourceInfo {
                url: String::new(),
                description: description.to_owned(),
                mime_type: mime_type.to_owned(),
            },
            accepts: offers.iter().map(Offer::requirements_v2).collect(),
            extensions: None,
        };
        let mut top = to_map(&v2);
        top.remove("x402Version");
        top.remove("error");
        let mut resource = match top.remove("resource") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        resource.remove("url");
        let mut v2_after_url = members_tail(&resource);
        v2_after_url.push_str(&members_tail(&top));

        let v1_after_url = offers
            .iter()
            .filter_map(|o| o.requirements_v1("", description, mime_type))
            .map(|r| {
                let mut m = to_map(&r);
                m.remove("resource");
                members_tail(&m)
            })
            .collect();
        Challenge {
            v2_after_url,
            v1_after_url,
        }
    }

    /// Splices `resource_url` (absolute) and `error` (default: "Payment required" in v2,
    /// "X-PAYMENT header is required" in v1) into the precomputed JSON. No serde here.
    pub fn render(&self, resource_url: &str, error: Option<&str>) -> RenderedChallenge {
        let mut v2 = String::with_capacity(64 + resource_url.len() + self.v2_after_url.len());
        v2.push_str("{\"x402Version\":2,\"error\":");
        push_json_string(&mut v2, error.unwrap_or(DEFAULT_ERROR_V2));
        v2.push_str(",\"resource\":{\"url\":");
        push_json_string(&mut v2, resource_url);
        v2.push_str(&self.v2_after_url);

        let accepts_len: usize = self
            .v1_after_url
            .iter()
            .map(|a| a.len() + resource_url.len() + 16)
            .sum();
        let mut body = String::with_capacity(64 + accepts_len);
        body.push_str("{\"x402Version\":1,\"error\":");
        push_json_string(&mut body, error.unwrap_or(DEFAULT_ERROR_V1));
        body.push_str(",\"accepts\":[");
        for (i, after) in self.v1_after_url.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str("{\"resource\":");
            push_json_string(&mut body, resource_url);
            body.push_str(after);
        }
        body.push_str("]}");

        RenderedChallenge {
            payment_required_header: b64::encode(v2.as_bytes()),
            body,
        }
    }
}

fn to_map<T: Serialize>(value: &T) -> Map<String, Value> {
    // Our wire types always serialise to objects; an empty map is the impossible fallback.
    match serde_json::to_value(value) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// The members of `map` as they follow an already written first member: `,"k":v,…}`.
fn members_tail(map: &Map<String, Value>) -> String {
    let mut out = String::new();
    for (key, value) in map {
        out.push(',');
        push_json_string(&mut out, key);
        out.push(':');
        // Value's Display is its compact JSON.
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal. Only `"`, `\` and control characters need escaping;
/// safe runs are copied whole.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // Every byte matched above is ASCII, so `i` is a char boundary.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::offer::tests::base_sepolia_offer;
    use crate::x402::types::{PaymentRequiredV1, PaymentRequirementsV1};
    use crate::x402::Offer;
    use serde_json::json;

    fn offers() -> Vec<Offer> {
        let mut local = base_sepolia_offer();
        local.network = "eip155:31337".parse().unwrap();
        local.amount = crate::amount::AtomicAmount(1);
        vec![base_sepolia_offer(), local]
    }

    fn decode_header(h: &str) -> Value {
        serde_json::from_slice(&b64::decode_strict(h, 1 << 16).unwrap()).unwrap()
    }

    #[test]
    fn render_equals_the_serde_built_answer() {
        let offers = offers();
        let challenge = Challenge::new(&offers, "A \"quote\"\n", "application/json");
        for (url, error) in [
            ("https://api.example.com/q?x=1", None),
            (
                "http://127.0.0.1:10000/p/\u{1}\\\"é",
                Some("invalid_payment_requirements"),
            ),
        ] {
            let r = challenge.render(url, error);
            let v2: PaymentRequiredV2 =
                serde_json::from_value(decode_header(&r.payment_required_header)).unwrap();
            let expected_v2 = PaymentRequiredV2 {
                x402_version: X402Version,
                error: Some(error.unwrap_or(DEFAULT_ERROR_V2).to_owned()),
                resource: ResourceInfo {
                    url: url.into(),
                    description: "A \"quote\"\n".into(),
                    mime_type: "application/json".into(),
                },
                accepts: offers.iter().map(Offer::requirements_v2).collect(),
                extensions: None,
            };
            assert_eq!(v2, expected_v2);
            assert_eq!(
                decode_header(&r.payment_required_header),
                serde_json::to_value(&expected_v2).unwrap()
            );

            let v1: PaymentRequiredV1 = serde_json::from_str(&r.body).unwrap();
            let expected_v1 = PaymentRequiredV1 {
                x402_version: X402Version,
                error: error.unwrap_or(DEFAULT_ERROR_V1).to_owned(),
                accepts: offers
                    .iter()
                    .filter_map(|o| o.requirements_v1(url, "A \"quote\"\n", "application/json"))
                    .collect::<Vec<PaymentRequirementsV1>>(),
            };
            assert_eq!(v1.accepts.len(), 1, "the anvil offer has no v1 name");
            assert_eq!(v1, expected_v1);
            assert_eq!(
                serde_json::from_str::<Value>(&r.body).unwrap(),
                serde_json::to_value(&expected_v1).unwrap()
            );
        }
    }

    #[test]
    fn challenge_json_shape() {
        let challenge = Challenge::new(&[base_sepolia_offer()], "A quote", "application/json");
        let r = challenge.render("https://api.example.com/api/quote", None);
        assert_eq!(
            decode_header(&r.payment_required_header),
            json!({
                "x402Version": 2,
                "error": "Payment required",
                "resource": {
                    "url": "https://api.example.com/api/quote",
                    "description": "A quote",
                    "mimeType": "application/json"
                },
                "accepts": [{
                    "scheme": "exact",
                    "network": "eip155:84532",
                    "amount": "10000",
                    "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                    "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                    "maxTimeoutSeconds": 60,
                    "extra": {"name": "USDC", "version": "2"}
                }]
            })
        );
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            body,
            json!({
                "x402Version": 1,
                "error": "X-PAYMENT header is required",
                "accepts": [{
                    "scheme": "exact",
                    "network": "base-sepolia",
                    "maxAmountRequired": "10000",
                    "resource": "https://api.example.com/api/quote",
                    "description": "A quote",
                    "mimeType": "application/json",
                    "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                    "maxTimeoutSeconds": 60,
                    "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                    "extra": {"name": "USDC", "version": "2"}
                }]
            })
        );
        assert!(!r.body.contains("outputSchema"));
    }

    #[test]
    fn v2_only_offers_give_an_empty_v1_list() {
        let mut o = base_sepolia_offer();
        o.network = "eip155:31337".parse().unwrap();
        let r = Challenge::new(&[o], "", "").render("http://h/", Some("x"));
        assert_eq!(
            serde_json::from_str::<Value>(&r.body).unwrap(),
            json!({"x402Version": 1, "error": "x", "accepts": []})
        );
        assert_eq!(
            decode_header(&r.payment_required_header)["accepts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn json_string_escaping() {
        for s in [
            "",
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\n cr\r tab\t",
            "\u{0}\u{1f}\u{7f}",
            "é€😀",
            "</script>",
        ] {
            let mut out = String::new();
            push_json_string(&mut out, s);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s, "{out}");
        }
    }

    #[test]
    fn headers() {
        let get = |k: &str| {
            CHALLENGE_HEADERS
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| *v)
        };
        assert_eq!(get("content-type"), Some("application/json"));
        assert_eq!(get("cache-control"), Some("no-store"));
        assert!(get("access-control-expose-headers")
            .unwrap()
            .contains("PAYMENT-REQUIRED"));
    }
}
