//! What happens to a request the filter lets through: the route's header allow-list, the
//! trusted payment context, the upstream path rewrite; and the response presets.

use tollway_protocol::filter_config::CompiledRoute;
use tollway_protocol::headers::CONTEXT_HEADERS;

use crate::abi::HeaderMap;
use crate::host;

/// Decided in the request-header phase, applied right before the request goes upstream (in
/// that phase, or while still paused in it).
pub struct Forward {
    pub route: usize,
    /// New `:path` (rewritten, or with the `t` lease parameter removed).
    pub path: Option<String>,
    /// Trusted context headers to set (client copies were removed on arrival).
    pub context: Vec<(&'static str, String)>,
    /// Request headers the route's allow-list drops, named on arrival.
    strip: Vec<String>,
}

impl Forward {
    pub fn new(
        route: usize,
        compiled: &CompiledRoute,
        headers: &HeaderMap,
        path: Option<String>,
        context: Vec<(&'static str, String)>,
    ) -> Forward {
        let mut strip: Vec<String> = Vec::new();
        if compiled.headers.filters_requests() {
            for (name, _) in headers.iter() {
                if !compiled.headers.allows(name) && !strip.iter().any(|s| s == name) {
                    strip.push(name.to_owned());
                }
            }
        }
        Forward {
            route,
            path,
            context,
            strip,
        }
    }

    /// `strip_context`: remove client copies of the context first (Envoy did not).
    pub fn apply(&self, strip_context: bool) {
        for name in &self.strip {
            host::remove_request_header(name);
        }
        if !self.context.is_empty() {
            if strip_context {
                for name in CONTEXT_HEADERS {
                    host::remove_request_header(name);
                }
            }
            for (name, value) in &self.context {
                host::add_request_header(name, value.as_bytes());
            }
        }
        if let Some(path) = &self.path {
            host::set_request_header(":path", path);
        }
    }
}

/// Adds the route's response presets the upstream did not set itself.
pub fn response_presets(route: &CompiledRoute) {
    for (name, value) in route.headers.response_headers() {
        if host::response_header(name).is_none() {
            host::add_response_header(name, value);
        }
    }
}

/// `template`'s rendering plus the request's query, or the query-stripped path alone.
pub fn upstream_path(
    route: &CompiledRoute,
    params: &[(String, String)],
    path: &str,
) -> Option<String> {
    let template = route.upstream_path.as_ref()?;
    let mut out = template.render(params);
    if let Some((_, query)) = path.split_once('?') {
        out.push('?');
        out.push_str(query);
    }
    Some(out)
}
