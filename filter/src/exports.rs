//! The callbacks Envoy calls (proxy-wasm ABI 0.2.1), and which context each one goes to.
//!
//! Only what Tollway uses is exported: each exported HTTP callback is one more VM entry on every
//! request (see `abi.rs`). Bodies, trailers, `on_log` and `on_done` are not; a stream's last
//! words (releasing an unanswered payment) are said in `proxy_on_delete`.
//!
//! A context is taken out of its map while its callback runs and put back after, so a host call
//! that re-enters the VM (it should not, but a panic would abort every request of the worker)
//! finds nothing to borrow twice.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::abi::{Action, LOG_CRITICAL, LOG_WARN};
use crate::host;
use crate::http::Stream;
use crate::root::Root;

/// Context ids and call tokens are small host counters: they need no hashing.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct Contexts {
    roots: IdMap<Box<Root>>,
    streams: IdMap<Box<Stream>>,
    /// Calls made for a stream (`host::dispatch_grpc_detached`): token → stream id.
    answers: IdMap<u32>,
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::default();
}

fn contexts<R>(f: impl FnOnce(&mut Contexts) -> R) -> R {
    CONTEXTS.with(|c| f(&mut c.borrow_mut()))
}

fn with_root<R>(id: u32, f: impl FnOnce(&mut Root) -> R) -> Option<R> {
    let mut root = contexts(|c| c.roots.remove(&id))?;
    let out = f(&mut root);
    contexts(|c| c.roots.insert(id, root));
    Some(out)
}

fn with_stream<R>(id: u32, f: impl FnOnce(&mut Stream) -> R) -> Option<R> {
    let mut stream = contexts(|c| c.streams.remove(&id))?;
    let out = f(&mut stream);
    contexts(|c| c.streams.insert(id, stream));
    Some(out)
}

/// Routes the answer of call `token` to stream `stream_id` instead of the context that owns it.
pub fn answer_to(token: u32, stream_id: u32) {
    contexts(|c| c.answers.insert(token, stream_id));
}

/// Delivers a gRPC answer: to the stream the call was made for (if it still exists), else to
/// the root that made it.
fn grpc_answer(context_id: u32, token: u32, status: u32, size: usize) {
    match contexts(|c| c.answers.remove(&token)) {
        Some(stream_id) => {
            if contexts(|c| c.streams.contains_key(&stream_id))
                && host::set_effective_context(stream_id).is_ok()
            {
                with_stream(stream_id, |s| s.on_grpc_call_response(token, status, size));
            }
        }
        None => {
            with_root(context_id, |r| r.on_grpc_call_response(token, status, size));
        }
    }
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            host::log(LOG_WARN, &record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host's allocations in our memory (header values, buffers); taken back by `abi::take`.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(size));
    buffer.as_mut_ptr()
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_config_size: usize) -> bool {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
        // A panic aborts the VM (and every request of the worker until Envoy reloads it): at
        // least say why in Envoy's log.
        std::panic::set_hook(Box::new(|info| host::log(LOG_CRITICAL, &info.to_string())));
    }
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
    contexts(|c| {
        if parent_id == 0 {
            c.roots.insert(context_id, Box::new(Root::new(context_id)));
        } else {
            let shared = c.roots.get(&parent_id).and_then(|r| r.shared());
            c.streams.insert(
                context_id,
                Box::new(Stream::new(context_id, parent_id, shared)),
            );
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, config_size: usize) -> bool {
    with_root(root_id, |r| r.on_configure(config_size)).unwrap_or(false)
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    with_root(root_id, Root::on_tick);
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(id: u32, _headers: usize, _end: bool) -> Action {
    // An unknown stream cannot be checked: answer it rather than let it through.
    with_stream(id, Stream::on_request_headers).unwrap_or_else(Stream::refuse_unknown)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(id: u32, _headers: usize, _end: bool) -> Action {
    with_stream(id, Stream::on_response_headers).unwrap_or(Action::Continue)
}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive(context_id: u32, token: u32, size: usize) {
    grpc_answer(context_id, token, 0, size);
}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_close(context_id: u32, token: u32, status: u32) {
    grpc_answer(context_id, token, status, 0);
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(id: u32) {
    if let Some(mut stream) = contexts(|c| c.streams.remove(&id)) {
        crate::expiry::forget(id);
        stream.on_delete();
    } else {
        contexts(|c| c.roots.remove(&id));
    }
}
