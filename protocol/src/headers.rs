//! Which request headers reach the upstream, which the filter adds, and the response presets.

/// Trusted payment context the filter sets on paid requests; client copies are removed first.
pub const CONTEXT_RAIL: &str = "x-tollway-rail";
pub const CONTEXT_PAYER: &str = "x-tollway-payer";
pub const CONTEXT_AMOUNT: &str = "x-tollway-amount";
pub const CONTEXT_RESOURCE: &str = "x-tollway-resource";
/// Every context header starts with it: Envoy strips client headers by this prefix (one pass
/// over the request's headers instead of one lookup per name).
pub const CONTEXT_PREFIX: &str = "x-tollway-";
pub const CONTEXT_HEADERS: [&str; 4] = [
    CONTEXT_RAIL,
    CONTEXT_PAYER,
    CONTEXT_AMOUNT,
    CONTEXT_RESOURCE,
];

/// Headers that tell some frameworks (Express's `method-override`, Rails, Laravel) to treat a
/// request as another method: `POST` + `X-HTTP-Method-Override: GET` would reach a GET-priced
/// handler as an unpriced POST. Removed from every request (Envoy removes them first in the
/// bootstrap `tollway envoy` renders; the filter again).
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The query parameter `method-override` and others read as the method. A request carrying it
/// is refused (400): rewriting the query is not the gateway's business.
pub const METHOD_OVERRIDE_PARAM: &str = "_method";
/// The `error` of that 400.
pub const REASON_METHOD_OVERRIDE: &str = "method_override_refused";

/// Whether the request target's query has a `_method` parameter (its name in any case, also
/// percent-encoded).
pub fn has_method_override_param(path: &str) -> bool {
    let path = path.split('#').next().unwrap_or("");
    let Some((_, query)) = path.split_once('?') else {
        return false;
    };
    query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        let name = name.replace("%5F", "_").replace("%5f", "_");
        name.eq_ignore_ascii_case(METHOD_OVERRIDE_PARAM)
    })
}

/// Why a request is refused (400) before any route decision, if it is: a path an upstream may
/// read differently from the route table ([`crate::routes::refuse_path`]), or a `_method`
/// parameter. The filter and ext_authz both ask this.
pub fn refuse_request(path: &str) -> Option<&'static str> {
    crate::routes::refuse_path(path)
        .or_else(|| has_method_override_param(path).then_some(REASON_METHOD_OVERRIDE))
}

/// What every request needs whatever the allow-list says (pseudo-headers always pass).
const BASICS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "accept",
    "accept-encoding",
    "accept-language",
    "user-agent",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-envoy-expected-rq-timeout-ms",
    "traceparent",
    "tracestate",
];

/// The WebSocket handshake (RFC 6455 §4.1) on `websocket` routes.
const WEBSOCKET: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "origin",
];

const PRESET_API_AUTH: &[&str] = &["authorization", "x-api-key", "api-key"];
const PRESET_BROWSER_AUTH: &[&str] = &["cookie", "authorization", "x-csrf-token", "x-xsrf-token"];

const STREAMING: &[(&str, &str)] = &[("cache-control", "no-cache"), ("x-accel-buffering", "no")];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderPolicyError {
    #[error("{0:?} is not a header name or a preset (presets: api-auth, browser-auth)")]
    BadRequestHeader(String),
    #[error("{0:?} is not a response preset (presets: streaming)")]
    BadResponsePreset(String),
}

/// One route's header policy, compiled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderPolicy {
    /// Lower-case names allowed upstream, sorted; `None` = everything not stripped anyway.
    allow: Option<Vec<String>>,
    /// Response headers added when the upstream did not set them.
    response: Vec<(&'static str, &'static str)>,
}

impl HeaderPolicy {
    pub fn compile(
        request_headers: Option<&[String]>,
        response_headers: &[String],
        websocket: bool,
    ) -> Result<HeaderPolicy, HeaderPolicyError> {
        let allow = request_headers
            .map(|entries| {
                let mut allow: Vec<String> = BASICS.iter().map(|s| (*s).to_owned()).collect();
                if websocket {
                    allow.extend(WEBSOCKET.iter().map(|s| (*s).to_owned()));
                }
                for entry in entries {
                    match entry.as_str() {
                        "api-auth" => allow.extend(PRESET_API_AUTH.iter().map(|s| (*s).to_owned())),
                        "browser-auth" => {
                            allow.extend(PRESET_BROWSER_AUTH.iter().map(|s| (*s).to_owned()))
                        }
                        name if is_token(name) => allow.push(name.to_ascii_lowercase()),
                        other => return Err(HeaderPolicyError::BadRequestHeader(other.to_owned())),
                    }
                }
                allow.sort();
                allow.dedup();
                Ok(allow)
            })
            .transpose()?;
        let mut response = Vec::new();
        for preset in response_headers {
            match preset.as_str() {
                "streaming" => response.extend_from_slice(STREAMING),
                other => return Err(HeaderPolicyError::BadResponsePreset(other.to_owned())),
            }
        }
        Ok(HeaderPolicy { allow, response })
    }

    /// Whether the policy filters request headers at all (if not, nothing needs reading).
    pub fn filters_requests(&self) -> bool {
        self.allow.is_some()
    }

    /// `name` (lower-case, as Envoy gives it) may reach the upstream.
    pub fn allows(&self, name: &str) -> bool {
        name.starts_with(':')
            || self
                .allow
                .as_ref()
                .is_none_or(|a| a.binary_search_by(|x| x.as_str().cmp(name)).is_ok())
    }

    pub fn response_headers(&self) -> &[(&'static str, &'static str)] {
        &self.response
    }
}

/// An RFC 9110 token (header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_context_header_has_the_stripped_prefix() {
        for name in CONTEXT_HEADERS {
            assert!(name.starts_with(CONTEXT_PREFIX), "{name}");
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn presets_and_names() {
        let p = HeaderPolicy::compile(Some(&strings(&["api-auth", "X-Client-Id"])), &[], false)
            .unwrap();
        assert!(p.filters_requests());
        for ok in [
            ":path",
            "host",
            "authorization",
            "x-api-key",
            "x-client-id",
            "content-type",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for no in ["cookie", "x-secret", "upgrade"] {
            assert!(!p.allows(no), "{no}");
        }
        let b = HeaderPolicy::compile(Some(&strings(&["browser-auth"])), &[], true).unwrap();
        assert!(b.allows("cookie") && b.allows("sec-websocket-key") && !b.allows("x-api-key"));
    }

    #[test]
    fn no_list_allows_everything() {
        let p = HeaderPolicy::compile(None, &strings(&["streaming"]), false).unwrap();
        assert!(!p.filters_requests());
        assert!(p.allows("x-anything"));
        assert_eq!(p.response_headers(), STREAMING);
    }

    #[test]
    fn refuses_unknown_entries() {
        assert_eq!(
            HeaderPolicy::compile(Some(&strings(&["bad header"])), &[], false),
            Err(HeaderPolicyError::BadRequestHeader("bad header".into()))
        );
        assert_eq!(
            HeaderPolicy::compile(None, &strings(&["buffered"]), false),
            Err(HeaderPolicyError::BadResponsePreset("buffered".into()))
        );
    }

    #[test]
    fn method_override_parameters_are_found_in_any_spelling() {
        for path in [
            "/a?_method=GET",
            "/a?x=1&_METHOD=get",
            "/a?%5Fmethod=GET",
            "/a?%5fmethod",
            "/a?_method",
        ] {
            assert!(super::has_method_override_param(path), "{path}");
        }
        for path in [
            "/a",
            "/a?method=GET",
            "/a?x=_method",
            "/a#?_method=1",
            "/_method",
        ] {
            assert!(!super::has_method_override_param(path), "{path}");
        }
    }
}
