//! Prometheus metrics of the verifier, served as text on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeReason {
    pub outcome: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Endpoint {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendOutcome {
    pub backend: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendOp {
    pub backend: String,
    pub op: String,
}

type HistogramFamily = Family<Endpoint, Histogram, fn() -> Histogram>;

fn facilitator_histogram() -> Histogram {
    // 5 ms .. ~20 s: verify is tens of ms, settle waits for a receipt (seconds).
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    ])
}

/// Every metric the verifier exports. Cheap to clone handles are inside; share it in an `Arc`.
pub struct Metrics {
    registry: Registry,
    verify: Family<OutcomeReason, Counter>,
    settle: Family<Outcome, Counter>,
    facilitator_duration: HistogramFamily,
    facilitator_errors: Family<Endpoint, Counter>,
    ledger_write_errors: Counter,
    replay_claims: Family<ResultLabel, Counter>,
    replay_store_errors: Family<Op, Counter>,
    replay_store_up: Gauge,
    check: Family<ResultLabel, Counter>,
    pending_payments: Gauge,
    invoices_open: Gauge,
    lightning_invoices: Family<BackendOutcome, Counter>,
    lightning_node_errors: Family<BackendOp, Counter>,
    l402_claims: Family<ResultLabel, Counter>,
    lease_claims: Family<ResultLabel, Counter>,
    challenges: Family<Outcome, Counter>,
    unresolved: Gauge,
    unresolved_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    reconcile: Family<Outcome, Counter>,
    ledger_backlog: Gauge,
    ledger_writable: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let verify = Family::<OutcomeReason, Counter>::default();
        let settle = Family::<Outcome, Counter>::default();
        let facilitator_duration: HistogramFamily =
            Family::new_with_constructor(facilitator_histogram);
        let facilitator_errors = Family::<Endpoint, Counter>::default();
        let ledger_write_errors = Counter::default();
        let replay_claims = Family::<ResultLabel, Counter>::default();
        let replay_store_errors = Family::<Op, Counter>::default();
        let replay_store_up = Gauge::default();
        let check = Family::<ResultLabel, Counter>::default();
        let pending_payments = Gauge::default();
        let invoices_open = Gauge::default();
        let lightning_invoices = Family::<BackendOutcome, Counter>::default();
        let lightning_node_errors = Family::<BackendOp, Counter>::default();
        let l402_claims = Family::<ResultLabel, Counter>::default();
        let lease_claims = Family::<ResultLabel, Counter>::default();
        let challenges = Family::<Outcome, Counter>::default();
        let unresolved = Gauge::default();
        let unresolved_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let reconcile = Family::<Outcome, Counter>::default();
        let ledger_backlog = Gauge::default();
        let ledger_writable = Gauge::default();
        ledger_writable.set(1);
        registry.register(
            "tollway_settlements_unresolved",
            "Settlements whose outcome is not known yet (timeout, restart); the reconciler decides them",
            unresolved.clone(),
        );
        registry.register(
            "tollway_settlement_unresolved_oldest_age_seconds",
            "Age of the oldest unresolved settlement (0 when there is none)",
            unresolved_age.clone(),
        );
        registry.register(
            "tollway_reconcile_attempts",
            "Reconciliation attempts of unknown settlements by outcome (settled, failed, unknown)",
            reconcile.clone(),
        );
        registry.register(
            "tollway_ledger_backlog_groups",
            "Ledger writes held for retry because the database refused them (full disk)",
            ledger_backlog.clone(),
        );
        registry.register(
            "tollway_ledger_writable",
            "1 while the ledger takes writes; 0 while it does not (paid routes answer 503)",
            ledger_writable.clone(),
        );
        // Counters get the `_total` suffix from the encoder.
        registry.register(
            "tollway_verify",
            "Payment verifications by outcome and x402 reason",
            verify.clone(),
        );
        registry.register("tollway_settle", "Settlements by outcome", settle.clone());
        registry.register(
            "tollway_facilitator_request_duration_seconds",
            "Facilitator HTTP request duration by endpoint",
            facilitator_duration.clone(),
        );
        registry.register(
            "tollway_facilitator_errors",
            "Facilitator requests that failed (connect, timeout, 5xx, bad body)",
            facilitator_errors.clone(),
        );
        registry.register(
            "tollway_ledger_write_errors",
            "Ledger events that could not be written (each is logged at error level)",
            ledger_write_errors.clone(),
        );
        registry.register(
            "tollway_replay_claims",
            "Nonce claims in the replay guard by result",
            replay_claims.clone(),
        );
        registry.register(
            "tollway_replay_store_errors",
            "Replay store (Redis) operations that failed or timed out, by operation (claim, release, ping)",
            replay_store_errors.clone(),
        );
        registry.register(
            "tollway_replay_store_up",
            "1 if the last replay store operation or health check succeeded (always 1 in memory)",
            replay_store_up.clone(),
        );
        registry.register(
            "tollway_check",
            "ext_authz Check calls by result",
            check.clone(),
        );
        registry.register(
            "tollway_pending_payments",
            "Verified payments waiting for settle or release",
            pending_payments.clone(),
        );
        registry.register(
            "tollway_lightning_invoices_open",
            "Unpaid, unexpired invoices minted for 402s (bounded by lightning.invoice_limits)",
            invoices_open.clone(),
        );
        registry.register(
            "tollway_lightning_invoices",
            "Invoices asked of the Lightning node by backend and outcome (created, error, timeout, busy)",
            lightning_invoices.clone(),
        );
        registry.register(
            "tollway_lightning_node_errors",
            "Lightning node calls that failed (connect, auth, timeout, node error, bad answer) by backend and operation",
            lightning_node_errors.clone(),
        );
        registry.register(
            "tollway_l402_claims",
            "Single-use L402 token claims by result",
            l402_claims.clone(),
        );
        registry.register(
            "tollway_lease_claims",
            "Single-use lease claims by result",
            lease_claims.clone(),
        );
        registry.register(
            "tollway_lightning_challenges",
            "Lightning challenges (invoice + macaroon) by outcome (minted, unavailable)",
            challenges.clone(),
        );
        Self {
            registry,
            verify,
            settle,
            facilitator_duration,
            facilitator_errors,
            ledger_write_errors,
            replay_claims,
            replay_store_errors,
            replay_store_up,
            check,
            pending_payments,
            invoices_open,
            lightning_invoices,
            lightning_node_errors,
            l402_claims,
            lease_claims,
            challenges,
            unresolved,
            unresolved_age,
            reconcile,
            ledger_backlog,
            ledger_writable,
        }
    }

    pub fn set_unresolved(&self, n: usize, oldest_age_seconds: f64) {
        self.unresolved.set(i64::try_from(n).unwrap_or(i64::MAX));
        self.unresolved_age.set(oldest_age_seconds);
    }

    pub fn reconciled(&self, outcome: &str) {
        self.reconcile
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn set_ledger_health(&self, writable: bool, backlog: usize) {
        self.ledger_writable.set(i64::from(writable));
        self.ledger_backlog
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
    }

    pub fn lightning_invoice(&self, backend: &str, outcome: &str) {
        self.lightning_invoices
            .get_or_create(&BackendOutcome {
                backend: backend.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn lightning_node_error(&self, backend: &str, op: &str) {
        self.lightning_node_errors
            .get_or_create(&BackendOp {
                backend: backend.to_owned(),
                op: op.to_owned(),
            })
            .inc();
    }

    pub fn l402_claim(&self, result: &str) {
        self.l402_claims
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn lease_claim(&self, result: &str) {
        self.lease_claims
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn challenge(&self, outcome: &str) {
        self.challenges
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn verify(&self, outcome: &str, reason: &str) {
        self.verify
            .get_or_create(&OutcomeReason {
                outcome: outcome.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn settle(&self, outcome: &str) {
        self.settle
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn facilitator_duration(&self, endpoint: &str, seconds: f64) {
        self.facilitator_duration
            .get_or_create(&Endpoint {
                endpoint: endpoint.to_owned(),
            })
            .observe(seconds);
    }

    pub fn facilitator_error(&self, endpoint: &str) {
        self.facilitator_errors
            .get_or_create(&Endpoint {
                endpoint: endpoint.to_owned(),
            })
            .inc();
    }

    pub fn ledger_write_error(&self) {
        self.ledger_write_errors.inc();
    }

    #[cfg(test)]
    pub fn ledger_write_errors(&self) -> u64 {
        self.ledger_write_errors.get()
    }

    pub fn replay_claim(&self, result: &str) {
        self.replay_claims
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn replay_store_error(&self, op: &str) {
        self.replay_store_errors
            .get_or_create(&Op { op: op.to_owned() })
            .inc();
    }

    pub fn set_replay_store_up(&self, up: bool) {
        self.replay_store_up.set(i64::from(up));
    }

    pub fn check(&self, result: &str) {
        self.check
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn set_invoices_open(&self, n: usize) {
        self.invoices_open.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_pending(&self, n: usize) {
        self.pending_payments
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_exposition() {
        let m = Metrics::new();
        m.verify("valid", "");
        m.settle("settled");
        m.facilitator_duration("verify", 0.02);
        m.facilitator_error("settle");
        m.ledger_write_error();
        m.replay_claim("claimed");
        m.replay_store_error("claim");
        m.set_replay_store_up(true);
        m.check("free");
        m.lightning_invoice("dev", "created");
        m.lightning_node_error("lnd", "lookup_invoice");
        m.l402_claim("claimed");
        m.challenge("minted");
        let text = m.encode();
        for name in [
            "tollway_verify_total{outcome=\"valid\",reason=\"\"} 1",
            "tollway_settle_total{outcome=\"settled\"} 1",
            "tollway_facilitator_request_duration_seconds_bucket{le=\"0.025\",endpoint=\"verify\"} 1",
            "tollway_facilitator_errors_total{endpoint=\"settle\"} 1",
            "tollway_ledger_write_errors_total 1",
            "tollway_replay_claims_total{result=\"claimed\"} 1",
            "tollway_replay_store_errors_total{op=\"claim\"} 1",
            "tollway_replay_store_up 1",
            "tollway_check_total{result=\"free\"} 1",
            "tollway_lightning_invoices_total{backend=\"dev\",outcome=\"created\"} 1",
            "tollway_lightning_node_errors_total{backend=\"lnd\",op=\"lookup_invoice\"} 1",
            "tollway_l402_claims_total{result=\"claimed\"} 1",
            "tollway_lightning_challenges_total{outcome=\"minted\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
