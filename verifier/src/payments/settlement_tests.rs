//! The settlement journal seen from the payment core: rows committed before VALID, settles that
//! outlive their caller, unknown outcomes, restarts and reconciliation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::rails::facilitator::fake::{FakeFacilitator, Reply};
use crate::stores::replay::MemoryReplayGuard;
use crate::testkit::{harness, harness_with_clock, offer, Harness, Payer};

const URL: &str = "http://api.test/api/quote";

fn header(h: &Harness, seed: u8, nonce: u8) -> String {
    let offer = offer(&h.config, "quote");
    let payer = Payer::new(seed);
    let auth = payer.authorization(&offer, unix_now(), nonce);
    payer.header_v2(&offer, &auth, URL)
}

async fn valid(h: &Harness, header: &str) -> String {
    match h
        .payments
        .verify("quote", "payment-signature", header, URL)
        .await
    {
        Verified::Valid { payment_id, .. } => payment_id,
        other => panic!("expected valid, got {other:?}"),
    }
}

async fn state(ledger: &Ledger, id: &str) -> PaymentState {
    ledger.flush().await.expect("flush");
    ledger
        .payment(id)
        .await
        .expect("query")
        .expect("journal row")
        .state
}

fn settles(fake: &FakeFacilitator) -> usize {
    fake.calls().iter().filter(|c| c.0 == "settle").count()
}

/// A second verifier on the same ledger file, as after the first was killed and restarted.
fn restarted(h: &Harness) -> (Arc<Payments>, Arc<Ledger>) {
    let metrics = Arc::new(Metrics::new());
    let ledger = Arc::new(
        Ledger::open(&crate::testkit::sqlite_at(h.dir.path()), metrics.clone()).expect("ledger"),
    );
    let clients = h
        .config
        .facilitators
        .iter()
        .map(|(name, settings)| {
            let client = FacilitatorClient::new(name, settings, metrics.clone()).expect("client");
            (name.clone(), Arc::new(client))
        })
        .collect();
    let payments = Payments::new(
        &h.config,
        clients,
        Arc::new(MemoryReplayGuard::new()),
        ledger.clone(),
        metrics,
    )
    .expect("payments");
    (Arc::new(payments), ledger)
}

#[tokio::test]
async fn the_journal_row_is_committed_before_valid_and_follows_the_settlement() {
    let fake = FakeFacilitator::start().await;
    let h = harness(&fake.url);
    let id = valid(&h, &header(&h, 1, 1)).await;
    // No flush: the row is there because Verify waited for its commit.
    let row = h.ledger.payment(&id).await.expect("query").expect("row");
    assert_eq!(row.state, PaymentState::Verified);
    assert_eq!(row.event.amount.as_deref(), Some("1000"));
    assert!(row.event.nonce.as_deref().is_some_and(|n| n.len() == 66));

    let s = h.payments.settle(&id, 200).await;
    assert_eq!(s.outcome, SettleOutcome::Settled);
    h.ledger.flush().await.expect("flush");
    let row = h.ledger.payment(&id).await.expect("query").expect("row");
    assert_eq!(row.state, PaymentState::Settled);
    assert_eq!(
        row.event.transaction.as_deref(),
        Some(s.transaction.as_str())
    );
    assert_eq!(row.attempts, 1);
}

#[tokio::test]
async fn a_settle_runs_to_its_end_and_is_journaled_when_its_caller_is_gone() {
    let fake = FakeFacilitator::start().await;
    let h = harness(&fake.url);
    fake.set_settle(Reply::Slow(
        Duration::from_millis(300),
        json!({"success": true, "transaction": "0xbeef", "network": "eip155:84532"}),
    ));
    let id = valid(&h, &header(&h, 2, 1)).await;
    // The caller (Envoy) goes away while the facilitator is still settling.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), h.payments.settle(&id, 200)).await;
    assert!(gave_up.is_err(), "the settle should still be running");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(state(&h.ledger, &id).await, PaymentState::Settled);
    assert_eq!(settles(&fake), 1);
    let events = h.ledger.recent(1).await.expect("events");
    assert_eq!(events[0].event, EventKind::Settled);
    assert_eq!(events[0].transaction.as_deref(), Some("0xbeef"));
}

#[tokio::test]
async fn an_unknown_settlement_is_decided_by_retrying_the_facilitator() {
    let fake = FakeFacilitator::start().await;
    let offset = Arc::new(AtomicU64::new(0));
    let o = offset.clone();
    let h = harness_with_clock(
        &fake.url,
        Arc::new(move || unix_now() + o.load(Ordering::Relaxed)),
    );
    fake.set_settle(Reply::Json(503, json!({"error": "chain congested"})));
    let id = valid(&h, &header(&h, 3, 1)).await;
    let s = h.payments.settle(&id, 200).await;
    assert_eq!(
        s.outcome,
        SettleOutcome::Pending,
        "a timeout is not a failure"
    );
    assert_eq!(state(&h.ledger, &id).await, PaymentState::Unknown);
    assert_eq!(h.payments.unresolved_count(), 1);
    // A Settle asked again (the filter retrying) gets "pending" and moves no money.
    assert_eq!(
        h.payments.settle(&id, 200).await.outcome,
        SettleOutcome::Pending
    );
    assert_eq!(settles(&fake), 1);

    fake.set_settle(Reply::Json(
        200,
        json!({"success": true, "transaction": "0xcafe", "network": "eip155:84532"}),
    ));
    // Not due yet (backoff), then due.
    assert_eq!(h.payments.reconcile().await, 0);
    offset.store(60, Ordering::Relaxed);
    assert_eq!(h.payments.reconcile().await, 1);
    assert_eq!(h.payments.unresolved_count(), 0);
    assert_eq!(state(&h.ledger, &id).await, PaymentState::Settled);
    let row = h.ledger.payment(&id).await.expect("query").expect("row");
    assert_eq!(row.event.transaction.as_deref(), Some("0xcafe"));
    let kinds: Vec<EventKind> = h
        .ledger
        .recent(3)
        .await
        .expect("events")
        .iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Settled,
            EventKind::SettlementUnknown,
            EventKind::Verified
        ]
    );
}

#[tokio::test]
async fn a_refusal_after_an_unknown_attempt_is_not_taken_as_a_failure_without_the_chain() {
    let fake = FakeFacilitator::start().await;
    let offset = Arc::new(AtomicU64::new(0));
    let o = offset.clone();
    let h = harness_with_clock(
        &fake.url,
        Arc::new(move || unix_now() + o.load(Ordering::Relaxed)),
    );
    fake.set_settle(Reply::Json(503, json!({"error": "timeout"})));
    let id = valid(&h, &header(&h, 4, 1)).await;
    assert_eq!(
        h.payments.settle(&id, 200).await.outcome,
        SettleOutcome::Pending
    );
    // The first attempt may have gone through: "nonce already used" proves nothing.
    fake.set_settle(Reply::Json(
        200,
        json!({"success": false, "errorReason": "invalid_exact_evm_nonce_already_used"}),
    ));
    offset.store(60, Ordering::Relaxed);
    assert_eq!(h.payments.reconcile().await, 0);
    assert_eq!(state(&h.ledger, &id).await, PaymentState::Unknown);
    // A plain refusal (the payer spent the funds meanwhile) is a failure.
    fake.set_settle(Reply::Json(
        200,
        json!({"success": false, "errorReason": "invalid_exact_evm_insufficient_balance"}),
    ));
    offset.store(120, Ordering::Relaxed);
    assert_eq!(h.payments.reconcile().await, 1);
    assert_eq!(state(&h.ledger, &id).await, PaymentState::Failed);
}

#[tokio::test]
async fn a_restarted_verifier_settles_the_payments_it_had_verified() {
    let fake = FakeFacilitator::start().await;
    let h = harness(&fake.url);
    let id = valid(&h, &header(&h, 5, 1)).await;
    let (payments, ledger) = restarted(&h);
    assert_eq!(payments.resume(), 1);
    assert_eq!(payments.pending_count(), 1);
    let s = payments.settle(&id, 200).await;
    assert_eq!(s.outcome, SettleOutcome::Settled);
    assert_eq!(state(&ledger, &id).await, PaymentState::Settled);
}

#[tokio::test]
async fn a_settlement_cut_short_by_a_crash_is_reconciled_after_restart() {
    let fake = FakeFacilitator::start().await;
    let h = harness(&fake.url);
    let id = valid(&h, &header(&h, 6, 1)).await;
    // The crash came after `settling` was journaled, before the answer.
    h.ledger
        .write(
            vec![Op::Transition(
                JournalUpdate {
                    id: id.clone(),
                    state: PaymentState::Settling,
                    transaction: None,
                    reason: None,
                    attempt: true,
                },
                None,
            )],
            true,
        )
        .await
        .expect("write");
    let (payments, ledger) = restarted(&h);
    assert_eq!(payments.resume(), 1);
    assert_eq!(payments.pending_count(), 0);
    assert_eq!(payments.unresolved_count(), 1);
    assert_eq!(state(&ledger, &id).await, PaymentState::Unknown);
    assert_eq!(payments.reconcile().await, 1);
    assert_eq!(state(&ledger, &id).await, PaymentState::Settled);
    assert_eq!(settles(&fake), 1);
}

#[tokio::test]
async fn a_facilitator_that_blames_a_signature_we_checked_is_unavailable() {
    let fake = FakeFacilitator::start().await;
    let h = harness(&fake.url);
    fake.set_verify(Reply::Json(
        200,
        json!({"isValid": false, "invalidReason": "invalid_exact_evm_signature"}),
    ));
    let header = header(&h, 7, 1);
    let v = h
        .payments
        .verify("quote", "payment-signature", &header, URL)
        .await;
    assert_eq!(
        v,
        Verified::Unavailable {
            reason: REASON_UNAVAILABLE.into()
        }
    );
    // Nothing was used up: once the facilitator can check again, the same payment goes through.
    fake.set_verify(Reply::Json(200, json!({"isValid": true})));
    valid(&h, &header).await;
}

#[tokio::test]
async fn an_unwritable_ledger_takes_no_payment() {
    let fake = FakeFacilitator::start().await;
    let h = harness(&fake.url);
    rusqlite::Connection::open(h.dir.path().join("ledger.db"))
        .expect("conn")
        .execute_batch("DROP TABLE payments;")
        .expect("drop");
    let header_1 = header(&h, 8, 1);
    let v = h
        .payments
        .verify("quote", "payment-signature", &header_1, URL)
        .await;
    assert_eq!(
        v,
        Verified::Unavailable {
            reason: REASON_LEDGER_UNAVAILABLE.into()
        }
    );
    assert!(!h.ledger.writable());
    // Meanwhile the facilitator is not even asked.
    let asked = fake.calls().len();
    let v = h
        .payments
        .verify("quote", "payment-signature", &header(&h, 8, 2), URL)
        .await;
    assert!(matches!(v, Verified::Unavailable { .. }), "{v:?}");
    assert_eq!(fake.calls().len(), asked);
    // Space is back: the writer's probe sees it and payments are taken again, the refused
    // one included (its nonce was given back).
    rusqlite::Connection::open(h.dir.path().join("ledger.db"))
        .expect("conn")
        .execute_batch(crate::stores::ledger::JOURNAL_SCHEMA)
        .expect("schema");
    for _ in 0..50 {
        if h.ledger.writable() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h.ledger.writable());
    valid(&h, &header_1).await;
}

#[tokio::test]
async fn an_answer_withheld_while_settling_is_noted_in_the_ledger() {
    let fake = FakeFacilitator::start().await;
    let h = harness(&fake.url);
    fake.set_settle(Reply::Json(503, json!({"error": "timeout"})));
    let id = valid(&h, &header(&h, 9, 1)).await;
    assert_eq!(
        h.payments.settle(&id, 200).await.outcome,
        SettleOutcome::Pending
    );
    // The route withholds: the caller releases what it could not deliver.
    h.payments.release(&id, 0).await;
    h.ledger.flush().await.expect("flush");
    let row = h.ledger.payment(&id).await.expect("query").expect("row");
    assert_eq!(row.state, PaymentState::Unknown, "too late to release");
    assert_eq!(
        row.event.reason.as_deref(),
        Some(crate::payments::journal::REASON_WITHHELD)
    );
    let last = &h.ledger.recent(1).await.expect("events")[0];
    assert_eq!(last.event, EventKind::DeliveryWithheld);
    assert_eq!(last.nonce, row.event.nonce);
}
