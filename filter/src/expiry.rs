//! Open streams end with their lease. A request on a leased resource (a server-sent-events
//! stream, a WebSocket session) may stay open far longer than the lease it was let in with; the
//! root's tick (about once a second) closes the ones whose lease has expired, unless the lease
//! was renewed: a renewable lease is looked up at the verifier when it expires (`Purchased`,
//! the renewal `renewal:<lease id>:<expiry>` may have been bought at any Envoy), and a renewal
//! extends the open stream by the lease's `seconds`. Closing resets the stream (the client sees
//! the connection end). A verifier that cannot tell closes it too: fail closed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use log::warn;
use prost::Message;
use tollway_protocol::lease::Renewal;
use tollway_protocol::rpc::{
    PurchaseOutcome, PurchasedRequest, PurchasedResponse, METHOD_PURCHASED, SERVICE,
};

use crate::host;
use crate::metrics::inc;

/// How long past its expiry a stream waits on a renewal whose payment is being settled.
const IN_FLIGHT_GRACE_SECS: u64 = 10;

struct Open {
    lease_id: [u8; 16],
    expires_at: u64,
    /// The lease's `seconds` when it is renewable.
    renew_seconds: Option<u64>,
    /// A `Purchased` call in flight for it.
    asking: bool,
}

#[derive(Default)]
struct Watch {
    open: HashMap<u32, Open>,
    /// `Purchased` calls in flight: token → stream.
    calls: HashMap<u32, u32>,
}

thread_local! {
    static WATCH: RefCell<Watch> = RefCell::default();
}

/// Watches stream `context_id`, let in with lease `lease_id` until `expires_at`.
pub fn watch(context_id: u32, lease_id: [u8; 16], expires_at: u64, renew_seconds: Option<u64>) {
    WATCH.with(|w| {
        w.borrow_mut().open.insert(
            context_id,
            Open {
                lease_id,
                expires_at,
                renew_seconds,
                asking: false,
            },
        );
    });
}

/// The stream ended.
pub fn forget(context_id: u32) {
    WATCH.with(|w| {
        w.borrow_mut().open.remove(&context_id);
    });
}

/// Root tick: closes expired streams, or asks whether their lease was renewed. The root is the
/// effective context on entry and again on return (`root_id`).
pub fn tick(root_id: u32, closed: u32, cluster: &str, timeout: Duration, now: u64) {
    let (close, ask) = WATCH.with(|w| {
        let w = w.borrow();
        let mut close = Vec::new();
        let mut ask = Vec::new();
        for (id, o) in w.open.iter().filter(|(_, o)| o.expires_at <= now) {
            match o.renew_seconds {
                Some(_) if o.asking => {}
                Some(_) if now < o.expires_at.saturating_add(IN_FLIGHT_GRACE_SECS) => {
                    let renewal = Renewal {
                        id: o.lease_id,
                        from: o.expires_at,
                    };
                    ask.push((*id, renewal.key()));
                }
                _ => close.push(*id),
            }
        }
        (close, ask)
    });
    for (id, purchase) in ask {
        let request = PurchasedRequest { purchase };
        match host::grpc_call(
            cluster,
            SERVICE,
            METHOD_PURCHASED,
            &request.encode_to_vec(),
            timeout,
        ) {
            Ok(token) => WATCH.with(|w| {
                let mut w = w.borrow_mut();
                w.calls.insert(token, id);
                if let Some(o) = w.open.get_mut(&id) {
                    o.asking = true;
                }
            }),
            Err(status) => {
                warn!("cannot ask the verifier whether a lease was renewed: {status:?}");
                close_stream(root_id, closed, id);
            }
        }
    }
    for id in close {
        close_stream(root_id, closed, id);
    }
}

/// A root gRPC answer: `true` if it was one of ours.
pub fn answered(root_id: u32, closed: u32, token: u32, status: u32, size: usize) -> bool {
    let Some(id) = WATCH.with(|w| w.borrow_mut().calls.remove(&token)) else {
        return false;
    };
    let outcome = if status == 0 {
        host::grpc_response_body(size)
            .and_then(|b| PurchasedResponse::decode(b.as_slice()).ok())
            .map(|a| a.outcome())
    } else {
        None
    };
    let close = WATCH.with(|w| {
        let mut w = w.borrow_mut();
        let Some(o) = w.open.get_mut(&id) else {
            return false;
        };
        o.asking = false;
        match (outcome, o.renew_seconds) {
            (Some(PurchaseOutcome::Bought), Some(seconds)) => {
                o.expires_at = o.expires_at.saturating_add(seconds);
                false
            }
            // Asked again on the next tick, within the grace.
            (Some(PurchaseOutcome::InFlight), _) => false,
            _ => true,
        }
    });
    if close {
        close_stream(root_id, closed, id);
    }
    true
}

/// Resets stream `id` and forgets it; the root is the effective context again afterwards.
fn close_stream(root_id: u32, closed: u32, id: u32) {
    forget(id);
    inc(closed);
    if host::set_effective_context(id).is_ok() {
        host::close_stream();
    }
    let _ = host::set_effective_context(root_id);
}
