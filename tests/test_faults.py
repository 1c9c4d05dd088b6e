"""Fault injection: a process killed or stopped at the worst moment, a chain slower than any
timeout, a full disk. Each test boots a stack of its own, breaks it, then checks the money
invariant from outside (design.md): the chain's AuthorizationUsed logs for the payment's nonce,
the upstream's hit counters, what the client got, and the verifier's ledger (`payments` and
`payment_events`), read-only.

The contract asserted (settlement journal):
- a settle whose outcome is unknown (facilitator timeout, verifier stalled past the filter's
  settle timeout) gives the client the upstream's 200 and body with a PAYMENT-RESPONSE whose
  errorReason is `settlement_pending`; the verifier resolves it later on its own;
- the chain or the ledger unavailable at Verify: 503 with Retry-After, never a 402 with a payment
  reason, never a free pass;
- whatever dies, every verified payment reaches one final state: `settled` (with exactly one
  transfer on the chain) or `failed`/`released` (with none).
"""

from __future__ import annotations

import json
import time

import pytest

from faults import (
    Checks,
    InFlight,
    authorization_used,
    expect_pending_receipt,
    expect_unavailable,
    fault_stack,
    fill_filesystem,
    filter_timeout_s,
    hits,
    invariant_problems,
    new_payment,
    paused,
    release_gate,
    send,
    Snapshot,
    small_tmpfs,
    unique,
    verifier_ready,
    wait_for_hits,
)

SHORT_TIMEOUT_MS = 3000  # facilitator timeout of the tests that outlast it (filter timeouts: 4 s)
SHORT_VALIDITY = 12  # seconds: refused payments expire soon, so "no transfer, ever" is provable


def delivered(answer) -> bool:
    """Did the client get the paid content?"""
    return answer.status is not None and answer.status < 400


def expect_settled_receipt(checks: Checks, answer, what: str):
    checks.that(answer.status == 200, f"{what}: client got {answer}, wanted 200")
    receipt = answer.receipt
    checks.that(
        receipt is not None and receipt.get("success") is True and str(receipt.get("transaction", "")).startswith("0x"),
        f"{what}: PAYMENT-RESPONSE {receipt}, wanted a successful settlement with its transaction",
    )


def start_gated(stack, payment, gate: str) -> InFlight:
    """A paid request on the slow route, held by the upstream at `gate`: once this returns, the
    payment was verified and the upstream is busy (Settle has not started)."""
    before = hits(stack, "/api/slow")
    request = InFlight(stack, f"/api/slow?gate={gate}", payment)
    wait_for_hits(stack, "/api/slow", before + 1)
    return request


# -- the checker itself (no stack) -----------------------------------------------------------------


def test_invariant_checker_accepts_the_contract_and_rejects_violations():
    def snap(transfers, events, state="absent"):
        rows = None if state is None else [] if state == "absent" else [{"state": state}]
        return Snapshot(transfers, [{"event": e} for e in events], rows)

    def verdict(s, delivered, quiet=True):
        problems = invariant_problems(s, delivered, quiet)
        if not problems:
            return "ok"
        return "wait" if all(w for _, w in problems) else "broken"

    settled = ["verified", "settlement_unknown", "settled"]
    cases = [
        (snap(1, settled, "settled"), True, True, "ok"),
        (snap(0, ["verified", "released"], "released"), False, True, "ok"),
        (snap(0, ["verified", "settlement_failed"], "failed"), False, True, "ok"),
        (snap(0, ["rejected"]), False, True, "ok"),  # never verified
        (snap(0, []), False, False, "wait"),  # a transfer may still come
        (snap(0, ["verified", "settlement_unknown"], "unknown"), True, True, "wait"),
        (snap(1, ["verified"], "unknown"), True, True, "wait"),  # chain ahead of the ledger
        (snap(0, ["verified"], "verified"), False, True, "wait"),
        (snap(1, ["verified", "settlement_failed"], "failed"), True, True, "broken"),
        (snap(1, settled, "settled"), False, True, "broken"),  # charged without delivery
        (snap(2, settled, "settled"), True, True, "broken"),
        (snap(1, ["verified", "settled", "settled"], "settled"), True, True, "broken"),
        (snap(1, [], "absent"), True, True, "broken"),  # a payment not in the ledger
        (snap(0, ["verified", "settled"], "settled"), True, True, "broken"),  # settled, no transfer
        (snap(0, ["verified", "released"], "released"), True, True, "broken"),  # delivered free
        (snap(1, settled, None), True, True, "broken"),  # no journal table
    ]
    for s, delivered_, quiet, expected in cases:
        assert verdict(s, delivered_, quiet) == expected, (s, delivered_, invariant_problems(s, delivered_, quiet))


# -- control: the harness sees a normal payment as the contract describes it ----------------------


def test_control_normal_payments_keep_the_invariant(tmp_path):
    """No fault: paid requests (a fast route and the slow one) are settled, with one transfer,
    one `verified` and one `settled` row, and `payments.state == 'settled'`."""
    with fault_stack(tmp_path) as stack:
        checks = Checks()
        for path, query in (("/api/quote", ""), ("/api/slow", "?ms=200")):
            payment = new_payment(stack, path)
            answer = send(stack, path + query, payment)
            expect_settled_receipt(checks, answer, path)
            checks.that(authorization_used(stack, payment.payer, payment.nonce), f"{path}: authorization not used on chain")
            checks.invariant(stack, payment, delivered=delivered(answer))
        checks.done()


# -- 1. Envoy killed while Settle is in flight ------------------------------------------------------


def test_envoy_killed_during_settle_the_verifier_still_settles(tmp_path):
    with fault_stack(tmp_path) as stack:
        payment = new_payment(stack, "/api/slow")
        gate = unique("envoy")
        request = start_gated(stack, payment, gate)
        with paused(stack, "anvil"):  # the facilitator's /settle now hangs on the chain
            release_gate(stack, gate)
            time.sleep(1.0)  # upstream answered; filter -> verifier Settle -> facilitator /settle
            stack.kill9("envoy")
            time.sleep(0.5)
        answer = request.answer(timeout=15)
        checks = Checks()
        checks.that(answer.status is None, f"the client should have lost its connection: {answer}")
        # The upstream answered and the gateway asked to settle before it died: the verifier
        # finishes the Settle though its caller is gone (one transfer, `settled`).
        checks.invariant(stack, payment, delivered=True)
        checks.done()


# -- 2. verifier stopped during Settle, past the filter's settle timeout --------------------------


def test_verifier_stalled_during_settle_gives_pending_receipt_then_settles(tmp_path):
    with fault_stack(tmp_path, facilitator_timeout_ms=SHORT_TIMEOUT_MS) as stack:
        payment = new_payment(stack, "/api/slow")
        gate = unique("stall")
        request = start_gated(stack, payment, gate)
        with paused(stack, "verifier"):
            release_gate(stack, gate)  # the filter's Settle goes to a stopped verifier
            answer = request.answer(timeout=filter_timeout_s(stack) + 5)
        checks = Checks()
        expect_pending_receipt(checks, answer, "verifier stalled during Settle")
        checks.invariant(stack, payment, delivered=delivered(answer))
        checks.done()


def test_withholding_route_answers_503_while_the_settlement_is_unknown_and_charges_nothing(tmp_path):
    """`on_unknown_settlement: withhold`: the Settle times out on a stalled verifier; the client
    gets 503 + Retry-After with the pending receipt and no body, and the filter's Release makes
    sure the payment is not charged."""
    with fault_stack(tmp_path, facilitator_timeout_ms=SHORT_TIMEOUT_MS) as stack:
        path = "/api/slow-withheld"
        payment = new_payment(stack, path)
        gate = unique("withheld")
        before = hits(stack, path)
        request = InFlight(stack, f"{path}?gate={gate}", payment)
        wait_for_hits(stack, path, before + 1)
        with paused(stack, "verifier"):
            release_gate(stack, gate)
            answer = request.answer(timeout=filter_timeout_s(stack) + 5)
        checks = Checks()
        expect_unavailable(checks, answer, "withheld answer")
        checks.that(b'"slow"' not in answer.body, f"withheld answer carries the upstream's body: {answer}")
        receipt = answer.receipt
        checks.that(
            receipt is not None and receipt.get("errorReason") == "settlement_pending",
            f"withheld answer: PAYMENT-RESPONSE {receipt}, wanted errorReason settlement_pending",
        )
        checks.invariant(stack, payment, delivered=False)
        checks.done()


# -- 3. verifier stopped during Verify, past the filter's verify timeout --------------------------


def test_verifier_stalled_during_verify_fails_closed_and_never_charges(tmp_path):
    with fault_stack(tmp_path, facilitator_timeout_ms=SHORT_TIMEOUT_MS) as stack:
        payment = new_payment(stack, "/api/quote", valid_seconds=SHORT_VALIDITY)
        before = hits(stack, "/api/quote")
        try:
            with paused(stack, "anvil"):  # the verifier's call to /verify waits on the chain...
                request = InFlight(stack, "/api/quote", payment)
                time.sleep(0.7)
                stack.pause("verifier")  # ...and now the verifier is stopped with it in flight
            # The facilitator answers /verify to a stopped verifier; the filter gives up.
            answer = request.answer(timeout=filter_timeout_s(stack) + 5)
        finally:
            stack.resume("verifier")
        # The verifier runs again and may finish the Verify its caller abandoned.
        checks = Checks()
        expect_unavailable(checks, answer, "verifier stalled during Verify")
        checks.that(hits(stack, "/api/quote") == before, "the upstream was reached")
        time.sleep(2)
        checks.invariant(stack, payment, delivered=delivered(answer))
        checks.that(hits(stack, "/api/quote") == before, "the upstream was reached after the verifier resumed")
        checks.done()


# -- 4. the chain stalls longer than the facilitator timeout during Settle ------------------------


def test_chain_stalled_during_settle_gives_pending_receipt_then_settles(tmp_path):
    with fault_stack(tmp_path, facilitator_timeout_ms=SHORT_TIMEOUT_MS, rail_rpc_url=True) as stack:
        payment = new_payment(stack, "/api/slow")
        gate = unique("chain")
        request = start_gated(stack, payment, gate)
        with paused(stack, "anvil"):
            stalled = time.monotonic()
            release_gate(stack, gate)  # Settle: the facilitator's /settle hangs on the chain
            answer = request.answer(timeout=filter_timeout_s(stack) + 3)
            time.sleep(max(0.0, SHORT_TIMEOUT_MS / 1000 + 5 - (time.monotonic() - stalled)))
        checks = Checks()
        expect_pending_receipt(checks, answer, "chain stalled during Settle")
        checks.invariant(stack, payment, delivered=delivered(answer))
        checks.done()


# -- 5. verifier killed between Verify and Settle, restarted on the same ledger --------------------


def test_verifier_killed_between_verify_and_settle_resumes_from_the_journal(tmp_path):
    with fault_stack(tmp_path) as stack:
        payment = new_payment(stack, "/api/slow")
        gate = unique("crash")
        request = start_gated(stack, payment, gate)  # verified; the upstream is busy
        stack.kill9("verifier")
        stack.start_verifier()  # same config, same ledger
        release_gate(stack, gate)  # the filter's Settle reaches the new verifier
        answer = request.answer(timeout=20)
        checks = Checks()
        expect_settled_receipt(checks, answer, "verifier restarted before Settle")
        checks.that(b'"slow": true' in answer.body, f"not the upstream's body: {answer}")
        checks.invariant(stack, payment, delivered=delivered(answer))
        checks.done()


# -- 6. the ledger's filesystem is full ------------------------------------------------------------


def test_ledger_on_full_filesystem_fails_closed_and_recovers(tmp_path):
    with small_tmpfs(tmp_path / "ledger-fs") as fs:
        with fault_stack(tmp_path / "stack", ledger_path=fs / "ledger.db") as stack:
            checks = Checks()
            refused = new_payment(stack, "/api/quote", valid_seconds=SHORT_VALIDITY)
            before = hits(stack, "/api/quote")
            filler = fill_filesystem(fs)
            try:
                answer = send(stack, "/api/quote", refused)
                expect_unavailable(checks, answer, "ledger unwritable at Verify")
                checks.that(hits(stack, "/api/quote") == before, f"the upstream was reached ({answer})")
                deadline = time.monotonic() + 5
                while (ready := verifier_ready(stack))[0] != 503 and time.monotonic() < deadline:
                    time.sleep(0.2)
                status, body = ready
                checks.that(
                    status == 503 and "ledger" in json.dumps(body),
                    f"/readyz with the ledger unwritable: {status} {body}, wanted 503 naming the ledger",
                )
            finally:
                filler.unlink()
            deadline = time.monotonic() + 20
            while verifier_ready(stack)[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            checks.that(verifier_ready(stack)[0] == 200, f"/readyz after space was freed: {verifier_ready(stack)}")
            payment = new_payment(stack, "/api/quote")
            ok = send(stack, "/api/quote", payment)
            expect_settled_receipt(checks, ok, "after space was freed")
            checks.invariant(stack, payment, delivered=delivered(ok))
            checks.invariant(stack, refused, delivered=delivered(answer))
            checks.done()


# -- 7. the chain's RPC is refused (or stalls) at Verify ------------------------------------------


@pytest.mark.parametrize("how", ["refused", "stalled"])
def test_chain_unavailable_at_verify_is_503_not_402(tmp_path, how):
    with fault_stack(tmp_path, facilitator_timeout_ms=SHORT_TIMEOUT_MS, chain_gate=True) as stack:
        # A gateway in service: one payment first, so the facilitator has cached that the asset
        # is a contract (a cold facilitator dies on a refused eth_getCode: an unhandled
        # rejection in @x402/evm's AssetContractCheck, which would test the facilitator instead).
        warm = new_payment(stack, "/api/quote")
        checks = Checks()
        expect_settled_receipt(checks, send(stack, "/api/quote", warm), "before the fault")
        payment = new_payment(stack, "/api/quote", valid_seconds=SHORT_VALIDITY)
        before = hits(stack, "/api/quote")
        if how == "refused":
            stack.chain_gate.refuse()  # every chain call the facilitator makes is refused
            try:
                answer = send(stack, "/api/quote", payment)
            finally:
                stack.chain_gate.accept()
        else:
            with paused(stack, "anvil"):  # every chain call hangs: the facilitator times out
                answer = send(stack, "/api/quote", payment)
        expect_unavailable(checks, answer, f"chain RPC {how} at Verify")
        checks.that(hits(stack, "/api/quote") == before, f"the upstream was reached ({answer})")
        checks.invariant(stack, payment, delivered=delivered(answer))
        checks.done()
