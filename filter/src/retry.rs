//! Settle calls that got no answer (verifier down, restarting or stalled past the timeout).
//! The client already has its response with a pending receipt; the verifier must still hear
//! the Settle, or a payment it journaled as verified would expire as released and the answer
//! would have been free. The root context sends each one again on its tick until the verifier
//! answers (a verifier that already settled it answers "pending" or "unknown id": both end the
//! retries, neither moves money twice).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use log::warn;
use prost::Message;
use tollway_protocol::rpc::{SettleRequest, METHOD_SETTLE, SERVICE};

use crate::host;

/// Attempts per payment (one per tick, about a second apart, plus the call's own timeout).
const MAX_ATTEMPTS: u8 = 60;

struct Retry {
    request: SettleRequest,
    attempts: u8,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Retry>,
    /// Calls in flight: token → what was asked.
    in_flight: HashMap<u32, Retry>,
}

thread_local! {
    static QUEUE: RefCell<Queue> = RefCell::default();
}

/// Queues a Settle for the root to send again.
pub fn settle_later(payment_id: &str, upstream_status: u32) {
    QUEUE.with(|q| {
        q.borrow_mut().waiting.push(Retry {
            request: SettleRequest {
                payment_id: payment_id.to_owned(),
                upstream_status,
            },
            attempts: 0,
        });
    });
}

/// Root tick: sends every waiting Settle (the caller made the root the effective context).
pub fn send(cluster: &str, timeout: Duration) {
    QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        let waiting = std::mem::take(&mut q.waiting);
        for mut r in waiting {
            r.attempts = r.attempts.saturating_add(1);
            match host::grpc_call(
                cluster,
                SERVICE,
                METHOD_SETTLE,
                &r.request.encode_to_vec(),
                timeout,
            ) {
                Ok(token) => {
                    q.in_flight.insert(token, r);
                }
                Err(status) => {
                    warn!("cannot send a Settle again: {status:?}");
                    keep_or_drop(&mut q.waiting, r);
                }
            }
        }
    });
}

/// A root gRPC answer: `true` if it was one of ours.
pub fn answered(token: u32, status: u32) -> bool {
    QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        let Some(r) = q.in_flight.remove(&token) else {
            return false;
        };
        if status != 0 {
            keep_or_drop(&mut q.waiting, r);
        }
        true
    })
}

fn keep_or_drop(waiting: &mut Vec<Retry>, r: Retry) {
    if r.attempts < MAX_ATTEMPTS {
        waiting.push(r);
    } else {
        warn!(
            "payment {} never reached the verifier's Settle after {} attempts; it expires unsettled",
            r.request.payment_id, r.attempts
        );
    }
}
