"""Fault injection: a process killed or stopped at the worst moment, a chain slower than any
timeout, a full disk, the shared ledger down. Each test boots a stack of its own, breaks it, then
checks the money invariant from outside (design.md): the chain's AuthorizationUsed logs for the
payment's nonce, the upstream's hit counters, what the client got, and the verifier's ledger
(`payments` and `payment_events`), read-only.

Every stack test runs on two ledgers (the `ledger` parameter, tests/faults.py `fault_stack`):
- `sqlite`: one stack, the verifier's own SQLite file;
- `postgres-replicas`: two replicas (A: the stack, B: `stack.replica_b`, each its own verifier
  and Envoy) sharing one PostgreSQL ledger (`verifier.ledger: postgres://tollway@127.0.0.1:<port>/
  tollway`) and one Redis replay store. The paid request under test goes through A; where it is
  cheap, a normal payment through B must still end settled. The full disk has no Postgres
  analogue: the shared ledger going down replaces it; two replicas racing one payment is a
  Postgres-only test.
  Run one variant with `-k sqlite` or `-k postgres`.

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
import sqlite3
import time
from types import SimpleNamespace

import pytest

from dev.stack import PostgresServer
from faults import (
    LEDGERS,
    POSTGRES_REPLICAS,
    SQLITE,
    Checks,
    InFlight,
    LedgerError,
    NoJournal,
    authorization_used,
    expect_pending_receipt,
    expect_unavailable,
    fault_stack,
    fill_filesystem,
    filter_timeout_s,
    hits,
    invariant_problems,
    ledger_events,
    new_payment,
    paused,
    payment_rows,
    race,
    release_gate,
    send,
    Snapshot,
    small_tmpfs,
    transfers,
    unique,
    verifier_ready,
    wait_for_hits,
)

SHORT_TIMEOUT_MS = 3000  # facilitator timeout of the tests that outlast it (filter timeouts: 4 s)
SHORT_VALIDITY = 12  # seconds: refused payments expire soon, so "no transfer, ever" is provable
RECOVERY_VALIDITY = 20  # seconds: payments sent while the shared ledger comes back (either outcome)
LEDGER_RECOVERY_S = 15.0  # the shared ledger back: a paid request succeeds within this

# The `ledger` parameter: both ledgers.
BOTH = pytest.mark.parametrize("ledger", LEDGERS)


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


def other_replica_serves(checks: Checks, stack, what: str):
    """postgres-replicas: a normal payment through replica B (`stack.replica_b`) ends settled
    (200 with a successful receipt, one transfer, `settled` in the shared ledger). No-op for a
    single stack."""
    b = getattr(stack, "replica_b", None)
    if b is None:
        return
    payment = new_payment(b, "/api/quote")
    answer = send(b, "/api/quote", payment)
    expect_settled_receipt(checks, answer, f"replica B, {what}")
    checks.invariant(b, payment, delivered=delivered(answer))


def readyz_until(stack, ok, timeout: float) -> tuple[int, dict]:
    """/readyz of `stack`'s verifier once `ok(status, body)`, or its last answer after `timeout`."""
    deadline = time.monotonic() + timeout
    while not ok(*(ready := verifier_ready(stack))) and time.monotonic() < deadline:
        time.sleep(0.2)
    return ready


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


# The SQLite ledger's tables as the verifier creates them (verifier/src/stores/ledger.rs,
# verifier/src/payments/journal.rs), and the Postgres tables with the same names and columns in
# the types we expect there (BIGINT for INTEGER): the harness check below fills both alike.
SQLITE_TABLES = {
    "payment_events": """CREATE TABLE payment_events (id INTEGER PRIMARY KEY, at INTEGER NOT NULL,
        event TEXT NOT NULL, route TEXT NOT NULL, network TEXT, asset TEXT, payer TEXT, amount TEXT,
        nonce TEXT, reason TEXT, "transaction" TEXT)""",
    "payments": """CREATE TABLE payments (id TEXT PRIMARY KEY, state TEXT NOT NULL, route TEXT NOT NULL,
        network TEXT, asset TEXT, payer TEXT, amount TEXT, nonce TEXT, "transaction" TEXT, reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL, settlement TEXT NOT NULL) WITHOUT ROWID""",
}
POSTGRES_TABLES = {
    "payment_events": """CREATE TABLE payment_events (id BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL,
        event TEXT NOT NULL, route TEXT NOT NULL, network TEXT, asset TEXT, payer TEXT, amount TEXT,
        nonce TEXT, reason TEXT, "transaction" TEXT)""",
    "payments": """CREATE TABLE payments (id TEXT PRIMARY KEY, state TEXT NOT NULL, route TEXT NOT NULL,
        network TEXT, asset TEXT, payer TEXT, amount TEXT, nonce TEXT, "transaction" TEXT, reason TEXT,
        attempts BIGINT NOT NULL DEFAULT 0, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL, settlement TEXT NOT NULL)""",
}


def test_harness_postgres_ledger_reads_like_sqlite(tmp_path):
    """The ledger readers give the same rows, with the same Python types, from a SQLite file and
    from a PostgresServer holding the same rows; a killed server is a LedgerError (not a hang),
    and `start()` brings back the committed rows. Needs no verifier."""
    nonce = "0x" + "ab" * 32
    other = "0x" + "cd" * 32
    events = [
        (1, 1700000000000, "verified", "quote", "eip155:84532", "0xToken", "0xPayer", "1000", nonce.upper().replace("0X", "0x"), None, None),
        (2, 1700000000100, "rejected", "quote", None, None, None, None, other, "nonce_used", None),
        (3, 1700000000200, "settled", "quote", "eip155:84532", "0xToken", "0xPayer", "1000", nonce, None, "0x" + "12" * 32),
    ]
    payment = ("p-1", "settled", "quote", "eip155:84532", "0xToken", "0xPayer", "1000", nonce, "0x" + "12" * 32, None, 1,
               1700000000000, 1700000000200, 1700000300000, '{"kind":"x402","payload":"e30="}')

    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute(SQLITE_TABLES["payment_events"])
    sq = SimpleNamespace(ledger_path=tmp_path / "ledger.db", ledger_url=None)

    def literal(v):
        return "NULL" if v is None else str(v) if isinstance(v, int) else "'" + v.replace("'", "''") + "'"

    def values(row):
        return "(" + ", ".join(literal(v) for v in row) + ")"

    with PostgresServer(tmp_path / "postgres") as server:
        pg = SimpleNamespace(ledger_url=server.url)
        server.psql(POSTGRES_TABLES["payment_events"] + ";")
        db.commit()
        for stack in (sq, pg):  # no journal table yet
            with pytest.raises(NoJournal):
                payment_rows(stack, nonce)
        db.execute(SQLITE_TABLES["payments"])
        db.executemany(f"INSERT INTO payment_events VALUES ({', '.join('?' * 11)})", events)
        db.execute(f"INSERT INTO payments VALUES ({', '.join('?' * 15)})", payment)
        db.commit()
        db.close()
        server.psql(
            POSTGRES_TABLES["payments"] + ";\n"
            + 'INSERT INTO payment_events (id, at, event, route, network, asset, payer, amount, nonce, reason, "transaction") VALUES '
            + ", ".join(values(e) for e in events) + ";\n"
            + f"INSERT INTO payments VALUES {values(payment)};\n"
        )
        got = {name: (ledger_events(stack, nonce), payment_rows(stack, nonce)) for name, stack in (("sqlite", sq), ("postgres", pg))}
        assert got["sqlite"] == got["postgres"]
        events_read, payments_read = got["postgres"]
        assert [e["event"] for e in events_read] == ["verified", "settled"]  # by id, nonce case-insensitive
        assert all(type(e["id"]) is int and type(e["at"]) is int for e in events_read)
        assert events_read[0]["reason"] is None and events_read[1]["transaction"] == "0x" + "12" * 32
        [row] = payments_read
        assert row["state"] == "settled" and type(row["attempts"]) is int and type(row["expires_at"]) is int
        assert row["settlement"] == payment[-1] and row["amount"] == "1000"

        server.kill()  # a crash: readers fail fast with LedgerError
        started = time.monotonic()
        with pytest.raises(LedgerError):
            ledger_events(pg, nonce)
        assert time.monotonic() - started < 10
        server.start()
        assert ledger_events(pg, nonce) == events_read and payment_rows(pg, nonce) == payments_read


# -- control: the harness sees a normal payment as the contract describes it ----------------------


@BOTH
def test_control_normal_payments_keep_the_invariant(tmp_path, ledger):
    """No fault: paid requests (a fast route and the slow one) are settled, with one transfer,
    one `verified` and one `settled` row, and `payments.state == 'settled'` (through A and B on
    the shared ledger)."""
    with fault_stack(tmp_path, ledger=ledger) as stack:
        checks = Checks()
        for path, query in (("/api/quote", ""), ("/api/slow", "?ms=200")):
            payment = new_payment(stack, path)
            answer = send(stack, path + query, payment)
            expect_settled_receipt(checks, answer, path)
            checks.that(authorization_used(stack, payment.payer, payment.nonce), f"{path}: authorization not used on chain")
            checks.invariant(stack, payment, delivered=delivered(answer))
        other_replica_serves(checks, stack, "no fault")
        checks.done()


# -- 1. Envoy killed while Settle is in flight ------------------------------------------------------


@BOTH
def test_envoy_killed_during_settle_the_verifier_still_settles(tmp_path, ledger):
    with fault_stack(tmp_path, ledger=ledger) as stack:
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
        other_replica_serves(checks, stack, "after A's Envoy was killed")
        checks.done()


# -- 2. verifier stopped during Settle, past the filter's settle timeout --------------------------


@BOTH
def test_verifier_stalled_during_settle_gives_pending_receipt_then_settles(tmp_path, ledger):
    with fault_stack(tmp_path, ledger=ledger, facilitator_timeout_ms=SHORT_TIMEOUT_MS) as stack:
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


@BOTH
def test_withholding_route_answers_503_while_the_settlement_is_unknown_and_charges_nothing(tmp_path, ledger):
    """`on_unknown_settlement: withhold`: the Settle times out on a stalled verifier; the client
    gets 503 + Retry-After with the pending receipt and no body, and the filter's Release makes
    sure the payment is not charged."""
    with fault_stack(tmp_path, ledger=ledger, facilitator_timeout_ms=SHORT_TIMEOUT_MS) as stack:
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


@BOTH
def test_verifier_stalled_during_verify_fails_closed_and_never_charges(tmp_path, ledger):
    with fault_stack(tmp_path, ledger=ledger, facilitator_timeout_ms=SHORT_TIMEOUT_MS) as stack:
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


@BOTH
def test_a_payment_verified_after_its_caller_gave_up_can_be_presented_again(tmp_path, ledger):
    """Deadlines travel: the filter's Verify carries its deadline; a Verify the stalled verifier
    finishes after it gives the nonce back (and releases the payment), so the client's retry
    with the same header is accepted, once."""
    with fault_stack(tmp_path, ledger=ledger, facilitator_timeout_ms=SHORT_TIMEOUT_MS) as stack:
        payment = new_payment(stack, "/api/quote", valid_seconds=60)
        before = hits(stack, "/api/quote")
        try:
            with paused(stack, "anvil"):
                request = InFlight(stack, "/api/quote", payment)
                time.sleep(0.7)
                stack.pause("verifier")
            answer = request.answer(timeout=filter_timeout_s(stack) + 5)
        finally:
            stack.resume("verifier")
        checks = Checks()
        expect_unavailable(checks, answer, "verifier stalled during Verify")
        time.sleep(2)
        retry = send(stack, "/api/quote", payment)
        expect_settled_receipt(checks, retry, "the same payment presented again")
        checks.that(hits(stack, "/api/quote") == before + 1, "one upstream hit for one payment")
        deadline = time.monotonic() + 20
        while transfers(stack, payment.nonce) == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        checks.that(transfers(stack, payment.nonce) == 1, "one transfer for the nonce")
        rows = payment_rows(stack, payment.nonce)
        states = sorted(r["state"] for r in rows)
        checks.that(
            states in (["settled"], ["released", "settled"]),
            f"journal rows for the nonce: {rows} (the abandoned Verify, if it finished, released)",
        )
        checks.that(
            all(r["reason"] == "caller_deadline_passed" for r in rows if r["state"] == "released"),
            f"a released row says why: {rows}",
        )
        checks.done()


# -- 4. the chain stalls longer than the facilitator timeout during Settle ------------------------


@BOTH
def test_chain_stalled_during_settle_gives_pending_receipt_then_settles(tmp_path, ledger):
    with fault_stack(tmp_path, ledger=ledger, facilitator_timeout_ms=SHORT_TIMEOUT_MS, rail_rpc_url=True) as stack:
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
        other_replica_serves(checks, stack, "after the chain stalled")
        checks.done()


# -- 5. verifier killed between Verify and Settle, restarted on the same ledger --------------------


@BOTH
def test_verifier_killed_between_verify_and_settle_resumes_from_the_journal(tmp_path, ledger):
    with fault_stack(tmp_path, ledger=ledger) as stack:
        payment = new_payment(stack, "/api/slow")
        gate = unique("crash")
        request = start_gated(stack, payment, gate)  # verified; the upstream is busy
        stack.kill9("verifier")
        checks = Checks()
        # postgres-replicas: B serves while A's verifier is dead (and leaves A's open payment
        # in the shared journal alone, or settles it: either way, exactly once).
        other_replica_serves(checks, stack, "while A's verifier is dead")
        stack.start_verifier()  # same config, same ledger
        release_gate(stack, gate)  # the filter's Settle reaches the new verifier
        answer = request.answer(timeout=20)
        expect_settled_receipt(checks, answer, "verifier restarted before Settle")
        checks.that(b'"slow": true' in answer.body, f"not the upstream's body: {answer}")
        checks.invariant(stack, payment, delivered=delivered(answer))
        checks.done()


# -- 6. the ledger's filesystem is full ------------------------------------------------------------


@pytest.mark.parametrize("ledger", [SQLITE])
def test_ledger_on_full_filesystem_fails_closed_and_recovers(tmp_path, ledger):
    with small_tmpfs(tmp_path / "ledger-fs") as fs:
        with fault_stack(tmp_path / "stack", ledger=ledger, ledger_path=fs / "ledger.db") as stack:
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


@BOTH
@pytest.mark.parametrize("how", ["refused", "stalled"])
def test_chain_unavailable_at_verify_is_503_not_402(tmp_path, how, ledger):
    with fault_stack(tmp_path, ledger=ledger, facilitator_timeout_ms=SHORT_TIMEOUT_MS, chain_gate=True) as stack:
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


# -- 8. the shared ledger is down (postgres-replicas: the analogue of the full disk) ---------------


@pytest.mark.parametrize("ledger", [POSTGRES_REPLICAS])
def test_shared_ledger_down_fails_closed_and_recovers(tmp_path, ledger):
    """PostgreSQL killed (SIGKILL, like a crash): a paid request is 503 + Retry-After, nothing is
    transferred, the upstream is not reached and both replicas' /readyz are 503 naming the
    ledger. Once it is started again, the verifiers reconnect by themselves: within
    LEDGER_RECOVERY_S a paid request through A succeeds and its rows are in the ledger, and B
    serves too."""
    with fault_stack(tmp_path, ledger=ledger) as stack:
        a, b, postgres = stack, stack.replica_b, stack.postgres
        checks = Checks()
        refused = new_payment(a, "/api/quote", valid_seconds=SHORT_VALIDITY)
        before = hits(a, "/api/quote")
        postgres.kill()
        try:
            answer = send(a, "/api/quote", refused)
            expect_unavailable(checks, answer, "shared ledger down at Verify")
            checks.that(hits(a, "/api/quote") == before, f"the upstream was reached ({answer})")
            for name, s in (("A", a), ("B", b)):
                status, body = readyz_until(s, lambda st, body: st == 503 and "ledger" in json.dumps(body), timeout=10)
                checks.that(
                    status == 503 and "ledger" in json.dumps(body),
                    f"replica {name}: /readyz with the ledger down: {status} {body}, wanted 503 naming the ledger",
                )
        finally:
            postgres.start()
        # Back: paid requests through A until one succeeds (each refused one must not be charged).
        deadline = time.monotonic() + LEDGER_RECOVERY_S
        attempts = []
        while True:
            payment = new_payment(a, "/api/quote", valid_seconds=RECOVERY_VALIDITY)
            ok = send(a, "/api/quote", payment, timeout=LEDGER_RECOVERY_S)
            attempts.append((payment, ok))
            if ok.status == 200 or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        payment, ok = attempts[-1]
        expect_settled_receipt(
            checks, ok, f"within {LEDGER_RECOVERY_S:.0f} s of the shared ledger coming back ({len(attempts)} attempts)"
        )
        checks.invariant(a, payment, delivered=delivered(ok))  # its rows exist, settled
        for earlier, refused_answer in attempts[:-1]:
            checks.invariant(a, earlier, delivered=delivered(refused_answer))
        checks.invariant(a, refused, delivered=delivered(answer))
        for name, s in (("A", a), ("B", b)):
            status, body = readyz_until(s, lambda st, body: st == 200, timeout=5)
            checks.that(status == 200, f"replica {name}: /readyz after the ledger came back: {status} {body}")
        other_replica_serves(checks, stack, "after the shared ledger came back")
        checks.done()


# -- 9. two replicas, one payment ------------------------------------------------------------------


@pytest.mark.parametrize("ledger", [POSTGRES_REPLICAS])
def test_two_replicas_one_payment_is_settled_once(tmp_path, ledger):
    """The same PAYMENT-SIGNATURE sent through A and B at once: exactly one 200, one transfer,
    one `payments` row and one `settled` row in the shared ledger; the upstream is reached once."""
    with fault_stack(tmp_path, ledger=ledger) as stack:
        a, b = stack, stack.replica_b
        payment = new_payment(a, "/api/quote")
        before = hits(a, "/api/quote")
        answers = race(lambda: send(a, "/api/quote", payment), lambda: send(b, "/api/quote", payment))
        checks = Checks()
        shown = "; ".join(f"{name}: {x}" for name, x in zip("AB", answers))
        checks.that(not any(isinstance(x, BaseException) for x in answers), f"a request raised: {shown}")
        statuses = [getattr(x, "status", None) for x in answers]
        checks.that(statuses.count(200) == 1, f"wanted exactly one 200: {shown}")
        checks.that(sum(1 for st in statuses if st is not None and st < 400) == 1, f"wanted one delivery: {shown}")
        checks.that(hits(a, "/api/quote") == before + 1, f"the upstream saw {hits(a, '/api/quote') - before} requests, wanted 1")
        snap = checks.invariant(a, payment, delivered=True)
        if snap is not None:
            checks.that(snap.transfers == 1, f"{snap.transfers} transfers, wanted 1: {snap}")
            checks.that(snap.payments is not None and len(snap.payments) == 1, f"wanted one `payments` row: {snap}")
            checks.that(snap.count("settled") == 1, f"wanted one `settled` row: {snap}")
        checks.done()
