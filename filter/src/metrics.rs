//! Envoy counters (`wasmcustom.tollway.*` in `/stats`, `tollway_*` in Prometheus).
//!
//! Requests count in the VM and the root's tick (every second) adds the counts to Envoy's
//! counters: a host call per counted request would cost more than the counting is worth. A
//! counter is at most one tick behind.

use std::cell::RefCell;

use crate::host;

/// Metric ids of this VM. Defined once per VM (ids are per VM, the stats are shared).
#[derive(Clone, Copy, Debug)]
pub struct Metrics {
    /// Requests on a route declared `free` that went through the filter (Envoy routes most of
    /// them around it: see `verifier/src/rds.rs`).
    pub requests_free: u32,
    /// 402 challenges sent to requests without a payment.
    pub challenges: u32,
    /// Payments refused: malformed, duplicated, oversized, locally wrong or INVALID at the verifier.
    pub rejected: u32,
    /// Payments the verifier accepted (the request went upstream).
    pub verified: u32,
    /// Settlements that succeeded or are pending (the client kept its response).
    pub settled: u32,
    /// Settlements that failed: the upstream response was replaced by a 402.
    pub settle_failed: u32,
    /// Settles that got no answer (timeout, verifier down): delivered with a pending receipt
    /// and sent again from the root.
    pub settle_unknown: u32,
    /// Verifier unreachable or answering UNAVAILABLE: 503, fail closed.
    pub verifier_unavailable: u32,
    /// Upstream answered >= 400: the payment was released, nothing charged.
    pub upstream_failed_not_charged: u32,
    /// L402 tokens accepted (verified in the filter; single-use ones also claimed).
    pub l402_accepted: u32,
    /// L402 credentials refused (malformed, invalid, expired, already used).
    pub l402_rejected: u32,
    /// Lightning routes whose 402 could not offer Lightning (verifier or node down).
    pub lightning_challenge_unavailable: u32,
    /// Leases sold or renewed.
    pub leases_sold: u32,
    /// Requests let through on a lease.
    pub leases_accepted: u32,
    /// Lease tokens refused (missing, invalid, expired, used) and refused renewals.
    pub leases_rejected: u32,
    /// Open streams (SSE, WebSocket) closed because their lease expired.
    pub lease_streams_closed: u32,
}

impl Metrics {
    pub fn define() -> Option<Metrics> {
        Some(Metrics {
            requests_free: counter("tollway.requests_free")?,
            challenges: counter("tollway.challenges")?,
            rejected: counter("tollway.rejected")?,
            verified: counter("tollway.verified")?,
            settled: counter("tollway.settled")?,
            settle_failed: counter("tollway.settle_failed")?,
            settle_unknown: counter("tollway.settle_unknown")?,
            verifier_unavailable: counter("tollway.verifier_unavailable")?,
            upstream_failed_not_charged: counter("tollway.upstream_failed_not_charged")?,
            l402_accepted: counter("tollway.l402_accepted")?,
            l402_rejected: counter("tollway.l402_rejected")?,
            lightning_challenge_unavailable: counter("tollway.lightning_challenge_unavailable")?,
            leases_sold: counter("tollway.leases_sold")?,
            leases_accepted: counter("tollway.leases_accepted")?,
            leases_rejected: counter("tollway.leases_rejected")?,
            lease_streams_closed: counter("tollway.lease_streams_closed")?,
        })
    }
}

fn counter(name: &str) -> Option<u32> {
    match host::define_counter(name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("cannot define metric {name}: {status:?}");
            None
        }
    }
}

thread_local! {
    /// Counts not yet added to Envoy's counters: (metric id, count).
    static UNFLUSHED: RefCell<Vec<(u32, i64)>> = const { RefCell::new(Vec::new()) };
}

/// Adds one to a counter (in Envoy at the next [`flush`]).
#[inline]
pub fn inc(id: u32) {
    UNFLUSHED.with(|counts| {
        let mut counts = counts.borrow_mut();
        match counts.iter_mut().find(|(m, _)| *m == id) {
            Some((_, n)) => *n += 1,
            None => counts.push((id, 1)),
        }
    });
}

/// Adds the counts since the last flush to Envoy's counters.
pub fn flush() {
    UNFLUSHED.with(|counts| {
        for (id, n) in counts.borrow_mut().iter_mut() {
            if *n > 0 {
                host::increment_counter(*id, std::mem::take(n));
            }
        }
    });
}
