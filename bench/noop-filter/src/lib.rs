//! A proxy-wasm HTTP filter that does nothing. `make bench` loads it into bare Envoy (scenario
//! B1w) to measure what the V8 VM and the proxy-wasm ABI cost per request by themselves, so the
//! Tollway filter's own logic can be told apart from them.
//!
//! It exports the same per-request callbacks as the Tollway filter (context create, request
//! headers, response headers, delete; see `filter/src/exports.rs`) and nothing else: Envoy enters
//! the VM once per exported callback, so this is the floor for a filter that sees both
//! directions of a request.

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(size)).as_mut_ptr()
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_root_id: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(_id: u32, _parent_id: u32) {}

/// 0: continue.
#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_id: u32, _headers: usize, _end: bool) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_id: u32, _headers: usize, _end: bool) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(_id: u32) {}
