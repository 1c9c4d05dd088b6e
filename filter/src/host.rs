//! Host calls used by the filter, wrapped so that nothing here can `unwrap` a host or client
//! value. The SDK's own trait helpers unwrap every result and its string getters unwrap UTF-8
//! (a client-sent non-UTF-8 header value would abort the VM), so the filter only uses these.
//!
//! The SDK's raw `hostcalls` still panic on a status the host should never return in the phase
//! they are used in; callers keep to the phase rules documented in `http.rs`.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, Bytes, MapType, Status};

/// First value of a request header, as bytes (`None` when absent).
#[inline]
pub fn request_header(name: &str) -> Option<Bytes> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// Every request header (repeated names kept), values as bytes.
pub fn request_headers() -> Vec<(String, Bytes)> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
}

pub fn remove_request_header(name: &str) {
    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
}

/// Replaces every value of a request header (`:path` included).
pub fn set_request_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
}

pub fn add_request_header(name: &str, value: &[u8]) {
    let _ = hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value);
}

#[inline]
pub fn response_header(name: &str) -> Option<Bytes> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

/// Replaces every value of a response header.
pub fn set_response_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
}

pub fn add_response_header(name: &str, value: &str) {
    let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
}

/// Host wall clock in unix seconds (0 if the host clock is unusable; the verifier re-checks).
pub fn now_unix() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Body of the gRPC response being delivered to the current callback.
pub fn grpc_response_body(size: usize) -> Option<Bytes> {
    if size == 0 {
        return Some(Vec::new());
    }
    hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .ok()
        .flatten()
}

/// Dispatches a unary gRPC call owned by the root context, then switches back to the stream.
///
/// Envoy cancels the calls a stream context owns when the stream is destroyed, and the SDK
/// (0.2.5) then never forgets the call's token (a leak, and a "duplicate token_id" panic once
/// the host's token counter wraps). A call owned by the long-lived root context always
/// completes (Envoy enforces `timeout`), so the SDK always clears its entry; the SDK still routes
/// the answer to this stream's `on_grpc_call_response` while the stream exists, and drops it
/// otherwise. It also means a `Release` or `Settle` reaches the verifier even if the client
/// went away.
pub fn dispatch_grpc_detached(
    root_id: u32,
    stream_id: u32,
    cluster: &str,
    service: &str,
    method: &str,
    message: &[u8],
    timeout: Duration,
) -> Result<u32, Status> {
    if root_id == 0 || hostcalls::set_effective_context(root_id).is_err() {
        // No root to own the call: fall back to a stream-owned call.
        return hostcalls::dispatch_grpc_call(
            cluster,
            service,
            method,
            Vec::new(),
            Some(message),
            timeout,
        );
    }
    let result =
        hostcalls::dispatch_grpc_call(cluster, service, method, Vec::new(), Some(message), timeout);
    let _ = hostcalls::set_effective_context(stream_id);
    result
}

/// Local reply. Envoy queues it and sends it once the current callback returns.
pub fn send_response(status: u32, headers: Vec<(&str, &str)>, body: &[u8]) {
    let _ = hostcalls::send_http_response(status, headers, Some(body));
}

pub fn resume_request() {
    let _ = hostcalls::resume_http_request();
}

pub fn resume_response() {
    let _ = hostcalls::resume_http_response();
}
