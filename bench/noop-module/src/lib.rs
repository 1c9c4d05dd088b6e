//! An Envoy dynamic module (a native shared library, `envoy.filters.http.dynamic_modules`) whose
//! HTTP filter does nothing. `make bench` loads it into bare Envoy (scenario B1n) beside B1w's
//! no-op proxy-wasm filter: the two are the floors of a filter that sees every request, native
//! and in V8, so the report can say what the VM itself costs Tollway's paid scenarios.
//!
//! Envoy resolves every hook below by name when it loads the filter configuration and refuses the
//! module if one is missing, so the hooks this filter never needs are exported as empty functions.
//! The ones Envoy calls per request return "continue" (0 in every status enum of the ABI).

use std::ffi::c_void;

/// The ABI version this module was written against (Envoy 1.40's); a mismatch is only a warning.
static ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Any non-null pointer: the module keeps no per-configuration or per-stream state.
static STATE: u8 = 0;

/// Envoy's buffers (names, configuration) are passed as a pointer and a length.
#[repr(C)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    len: usize,
}

fn state() -> *const c_void {
    std::ptr::addr_of!(STATE).cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    ABI_VERSION.as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy: *const c_void,
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    state()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(_config: *const c_void) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    _config: *const c_void,
    _filter_envoy: *const c_void,
) -> *const c_void {
    state()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    _filter_envoy: *const c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: *const c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: *const c_void,
    _filter: *const c_void,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter_envoy: *const c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: *const c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: *const c_void,
    _filter: *const c_void,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: *const c_void,
    _filter: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: *const c_void) {}

/// Hooks for callouts, scheduled events and watermarks this filter never starts: never called.
macro_rules! unused_hooks {
    ($($name:ident),* $(,)?) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name() {}
        )*
    };
}

unused_hooks!(
    envoy_dynamic_module_on_http_filter_http_callout_done,
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_reset,
    envoy_dynamic_module_on_http_filter_scheduled,
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark,
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark,
);
