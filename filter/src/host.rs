//! Host calls used by the filter: safe wrappers over `abi.rs`. Nothing here panics; a host error
//! becomes `None`, `Err` or is ignored where the caller has nothing better to do.
//!
//! Header values are read as bytes: a client may send non-UTF-8 values.

use std::ptr::{null, null_mut};
use std::time::Duration;

use crate::abi::{self, BufferType, HeaderMap, MapType, StreamType, OK};

/// A host call that failed, with the host's status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

fn status(code: u32) -> Result<(), HostError> {
    if code == OK {
        Ok(())
    } else {
        Err(HostError(code))
    }
}

fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the host writes a buffer it allocated through `proxy_on_memory_allocate`.
    let code = unsafe {
        abi::proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    // SAFETY: as above; taken once.
    let value = unsafe { abi::take(data, size) };
    (code == OK).then_some(value)
}

type WriteHeader = unsafe extern "C" fn(MapType, *const u8, usize, *const u8, usize) -> u32;

/// `proxy_replace_header_map_value` or `proxy_add_header_map_value`.
fn write_header(call: WriteHeader, map: MapType, name: &str, value: &[u8]) {
    // SAFETY: pointers and lengths of live slices.
    unsafe { call(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
}

fn set_header(map: MapType, name: &str, value: &[u8]) {
    write_header(abi::proxy_replace_header_map_value, map, name, value);
}

fn add_header(map: MapType, name: &str, value: &[u8]) {
    write_header(abi::proxy_add_header_map_value, map, name, value);
}

/// Every request header in one host call (`None` if the host refused or sent a malformed map).
/// One read per request: each host read costs a VM exit and a re-entry into our allocator.
pub fn request_header_map() -> Option<HeaderMap> {
    header_map(MapType::HttpRequestHeaders)
}

fn header_map(map: MapType) -> Option<HeaderMap> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in `header`.
    let code = unsafe { abi::proxy_get_header_map_pairs(map, &mut data, &mut size) };
    // SAFETY: as in `header`.
    let bytes = unsafe { abi::take(data, size) };
    (code == OK).then(|| HeaderMap::parse(bytes)).flatten()
}

pub fn remove_request_header(name: &str) {
    // SAFETY: pointer and length of a live str.
    unsafe {
        abi::proxy_remove_header_map_value(MapType::HttpRequestHeaders, name.as_ptr(), name.len());
    }
}

/// Replaces every value of a request header (`:path` included).
pub fn set_request_header(name: &str, value: &str) {
    set_header(MapType::HttpRequestHeaders, name, value.as_bytes());
}

pub fn add_request_header(name: &str, value: &[u8]) {
    add_header(MapType::HttpRequestHeaders, name, value);
}

#[inline]
pub fn response_header(name: &str) -> Option<Vec<u8>> {
    header(MapType::HttpResponseHeaders, name)
}

/// Replaces every value of a response header.
pub fn set_response_header(name: &str, value: &str) {
    set_header(MapType::HttpResponseHeaders, name, value.as_bytes());
}

pub fn add_response_header(name: &str, value: &str) {
    add_header(MapType::HttpResponseHeaders, name, value.as_bytes());
}

/// Host wall clock in unix seconds (0 if the host clock is unusable; the verifier re-checks).
/// Unix milliseconds (0 when the host cannot tell).
pub fn now_millis() -> u64 {
    let mut nanos = 0u64;
    // SAFETY: a pointer to a live u64.
    match unsafe { abi::proxy_get_current_time_nanoseconds(&mut nanos) } {
        OK => nanos / 1_000_000,
        _ => 0,
    }
}

/// The deadline of a call made now with `timeout`, for the verifier (0: unknown).
pub fn deadline_ms(timeout: std::time::Duration) -> u64 {
    match now_millis() {
        0 => 0,
        now => now.saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
    }
}

pub fn now_unix() -> u64 {
    let mut nanos = 0u64;
    // SAFETY: a pointer to a live u64.
    match unsafe { abi::proxy_get_current_time_nanoseconds(&mut nanos) } {
        OK => nanos / 1_000_000_000,
        _ => 0,
    }
}

/// The downstream client's address as Envoy sees it (`source.address`: `ip:port`); empty when
/// Envoy does not say.
pub fn source_address() -> String {
    // Property path segments, NUL-separated.
    const PATH: &[u8] = b"source\0address";
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in `header`.
    let code = unsafe { abi::proxy_get_property(PATH.as_ptr(), PATH.len(), &mut data, &mut size) };
    // SAFETY: as in `header`.
    let bytes = unsafe { abi::take(data, size) };
    if code != OK {
        return String::new();
    }
    String::from_utf8(bytes).unwrap_or_default()
}

/// A whole host buffer (`None` when absent or unreadable).
pub fn buffer(kind: BufferType, size: usize) -> Option<Vec<u8>> {
    if size == 0 {
        return Some(Vec::new());
    }
    let (mut data, mut got) = (null_mut(), 0);
    // SAFETY: as in `header`.
    let code = unsafe { abi::proxy_get_buffer_bytes(kind, 0, size, &mut data, &mut got) };
    // SAFETY: as in `header`.
    let bytes = unsafe { abi::take(data, got) };
    (code == OK).then_some(bytes)
}

/// Body of the gRPC response being delivered to the current callback.
pub fn grpc_response_body(size: usize) -> Option<Vec<u8>> {
    buffer(BufferType::GrpcReceiveBuffer, size)
}

/// Starts a unary gRPC call owned by the current (effective) context; returns its token.
pub fn grpc_call(
    cluster: &str,
    service: &str,
    method: &str,
    message: &[u8],
    timeout: Duration,
) -> Result<u32, HostError> {
    let metadata = abi::encode_map(&[]);
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let mut token = 0;
    // SAFETY: pointers and lengths of live slices, and of a live u32.
    status(unsafe {
        abi::proxy_grpc_call(
            cluster.as_ptr(),
            cluster.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            metadata.as_ptr(),
            metadata.len(),
            message.as_ptr(),
            message.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Makes host calls act on another context (a stream or the root) until the callback returns.
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: plain value.
    status(unsafe { abi::proxy_set_effective_context(context_id) })
}

/// Dispatches a unary gRPC call owned by the root context, then switches back to the stream.
///
/// Envoy cancels the calls a stream context owns when the stream is destroyed. A call owned by
/// the long-lived root context always completes (Envoy enforces `timeout`), so `exports.rs`
/// always forgets its token; the answer goes to this stream while it exists and is dropped
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
) -> Result<u32, HostError> {
    // No root to own the call: the stream owns it.
    let detached = root_id != 0 && set_effective_context(root_id).is_ok();
    let result = grpc_call(cluster, service, method, message, timeout);
    if detached {
        let _ = set_effective_context(stream_id);
    }
    if let Ok(token) = result {
        crate::exports::answer_to(token, stream_id);
    }
    result
}

/// Local reply. Envoy queues it and sends it once the current callback returns.
pub fn send_response(status: u32, headers: Vec<(&str, &str)>, body: &[u8]) {
    let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    let headers = abi::encode_map(&pairs);
    // SAFETY: pointers and lengths of live slices (no details string).
    unsafe {
        abi::proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        );
    }
}

/// Resets the effective context's stream (both directions): the client sees it end.
pub fn close_stream() {
    // SAFETY: no pointers.
    let code = unsafe { abi::proxy_close_stream(StreamType::HttpResponse) };
    if code != OK {
        // SAFETY: no pointers.
        unsafe { abi::proxy_close_stream(StreamType::HttpRequest) };
    }
}

pub fn resume_request() {
    // SAFETY: plain value.
    unsafe { abi::proxy_continue_stream(StreamType::HttpRequest) };
}

pub fn resume_response() {
    // SAFETY: plain value.
    unsafe { abi::proxy_continue_stream(StreamType::HttpResponse) };
}

pub fn set_tick_period(period: Duration) {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: plain value.
    unsafe { abi::proxy_set_tick_period_milliseconds(ms) };
}

/// Defines a counter; its id is valid for this VM.
pub fn define_counter(name: &str) -> Result<u32, HostError> {
    let mut id = 0;
    // SAFETY: pointer and length of a live str, and of a live u32.
    status(unsafe {
        abi::proxy_define_metric(abi::METRIC_COUNTER, name.as_ptr(), name.len(), &mut id)
    })?;
    Ok(id)
}

pub fn increment_counter(id: u32, by: i64) {
    // SAFETY: plain values.
    unsafe { abi::proxy_increment_metric(id, by) };
}

/// Writes a line to Envoy's log at `level` (`abi::LOG_*`).
pub fn log(level: u32, message: &str) {
    // SAFETY: pointer and length of a live str.
    unsafe { abi::proxy_log(level, message.as_ptr(), message.len()) };
}
