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
    /// Offset in `v2_after_url` of the `]` closing `accepts` (where a per-request entry goes).
    v2_accepts_end: usize,
    /// `accepts` has no entry of its own (a Lightning-only route).
    v2_accepts_empty: bool,
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

impl RenderedChallenge {
    /// The 402's headers: [`CHALLENGE_HEADERS`], then `PAYMENT-REQUIRED` unless the 402 offers
    /// no x402 payment at all (a Lightning-only route without an x402 Lightning entry).
    pub fn headers(&self, offers_x402: bool) -> Vec<(&'static str, &str)> {
        let mut headers = Vec::with_capacity(CHALLENGE_HEADERS.len() + 3);
        headers.extend_from_slice(CHALLENGE_HEADERS);
        if offers_x402 {
            headers.push((
                super::HEADER_PAYMENT_REQUIRED,
                self.payment_required_header.as_str(),
            ));
        }
        headers
    }
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
        let accepts = match top.remove("accepts") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        let mut v2_after_url = members_tail(&resource);
        v2_after_url.push_str(",\"accepts\":[");
        for (i, accept) in accepts.iter().enumerate() {
            if i > 0 {
                v2_after_url.push(',');
            }
            v2_after_url.push_str(&accept.to_string());
        }
        let v2_accepts_end = v2_after_url.len();
        v2_after_url.push(']');
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
            v2_accepts_end,
            v2_accepts_empty: accepts.is_empty(),
            v1_after_url,
        }
    }

    /// Whether the route has x402 offers of its own (EVM), as opposed to Lightning only.
    pub fn has_offers(&self) -> bool {
        !self.v2_accepts_empty
    }

    /// Splices `resource_url` (absolute) and `error` (default: "Payment required" in v2,
    /// "X-PAYMENT header is required" in v1) into the precomputed JSON. No serde here.
    pub fn render(&self, resource_url: &str, error: Option<&str>) -> RenderedChallenge {
        self.render_with(resource_url, error, None)
    }

    /// [`Challenge::render`] with one more v2 `accepts` entry appended: `extra_v2_accept` is a
    /// complete JSON object (the verifier's Lightning `bip122` offer, minted per request; see
    /// [`is_json_object`]). The v1 body never gets it: v1 has no name for Bitcoin networks.
    pub fn render_with(
        &self,
        resource_url: &str,
        error: Option<&str>,
        extra_v2_accept: Option<&str>,
    ) -> RenderedChallenge {
        let extra_len = extra_v2_accept.map_or(0, |a| a.len() + 1);
        let mut v2 =
            String::with_capacity(64 + resource_url.len() + self.v2_after_url.len() + extra_len);
        v2.push_str("{\"x402Version\":2,\"error\":");
        push_json_string(&mut v2, error.unwrap_or(DEFAULT_ERROR_V2));
        v2.push_str(",\"resource\":{\"url\":");
        push_json_string(&mut v2, resource_url);
        match (
            extra_v2_accept,
            self.v2_after_url.split_at_checked(self.v2_accepts_end),
        ) {
            (Some(extra), Some((before, after))) => {
                v2.push_str(before);
                if !self.v2_accepts_empty {
                    v2.push(',');
                }
                v2.push_str(extra);
                v2.push_str(after);
            }
            _ => v2.push_str(&self.v2_after_url),
        }

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

/// A cheap guard before splicing JSON from elsewhere into a challenge: one JSON object that
/// serde_json accepts as a `Value` (so every string decodes: no lone UTF-16 surrogate escape,
/// which `IgnoredAny` would skip unchecked). Builds nothing.
pub fn is_json_object(s: &str) -> bool {
    s.starts_with('{') && serde_json::from_str::<Checked>(s).is_ok()
}

/// Any JSON value, read the way `Value` reads it (strings decoded, so their escapes are
/// checked) but kept nowhere.
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
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
    fn render_with_appends_one_v2_accept() {
        let offers = offers();
        let challenge = Challenge::new(&offers, "d", "m");
        assert!(challenge.has_offers());
        let ln = crate::x402::lightning_offer_v2(
            crate::lightning::LightningNetwork::Regtest,
            10_000,
            "lnbcrt100n1pxyz",
            600,
        );
        let ln_text = ln.to_string();
        assert!(is_json_object(&ln_text));
        let plain = challenge.render("http://h/p", Some("e"));
        let r = challenge.render_with("http://h/p", Some("e"), Some(&ln_text));
        assert_eq!(r.body, plain.body, "the v1 body never offers Lightning");
        let mut want = decode_header(&plain.payment_required_header);
        want["accepts"].as_array_mut().unwrap().push(ln.clone());
        assert_eq!(decode_header(&r.payment_required_header), want);
        assert_eq!(challenge.render_with("http://h/p", Some("e"), None), plain);

        // Lightning-only route: no offers of its own, the entry is the only one.
        let only = Challenge::new(&[], "d", "m");
        assert!(!only.has_offers());
        let r = only.render_with("http://h/p", None, Some(&ln_text));
        let v2 = decode_header(&r.payment_required_header);
        assert_eq!(v2["accepts"], json!([ln]));
        assert_eq!(v2["resource"]["url"], json!("http://h/p"));
        assert_eq!(
            serde_json::from_str::<Value>(&r.body).unwrap()["accepts"],
            json!([])
        );
        let r = only.render("http://h/p", None);
        assert_eq!(
            decode_header(&r.payment_required_header)["accepts"],
            json!([])
        );
    }

    #[test]
    fn json_object_guard() {
        assert!(is_json_object("{}"));
        assert!(is_json_object(r#"{"a":[1,{"b":"}"}]}"#));
        for bad in ["", "[]", "{", "{}}", "{},{}", "{\"a\":1} x", " {}", "null"] {
            assert!(!is_json_object(bad), "{bad}");
        }
    }

    /// The guard used to skip strings without decoding their escapes, so a lone UTF-16
    /// surrogate passed it and the spliced challenge then failed in serde_json (and in every
    /// client built on it).
    #[test]
    fn json_object_guard_agrees_with_serde_json() {
        let cases = [
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            r#"{"a":"\ud800\ud800"}"#,
            r#"{"\udfff":1}"#,
            r#"{"a":["\ud83d"]}"#,
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"a":"\u00e9\n","b":[1,2.5e3,-0,true,null,{}]}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":1e999}"#,
            "{\"a\":\"\u{0}\"}",
            "{} ",
        ];
        for s in cases {
            let serde = serde_json::from_str::<Value>(s).is_ok_and(|v| v.is_object());
            assert_eq!(is_json_object(s), serde, "{s}");
        }
        assert!(!is_json_object(r#"{"a":"\ud800"}"#));
        assert!(is_json_object(r#"{"a":"\ud83d\ude00"}"#));
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
