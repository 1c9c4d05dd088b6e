"""Many replicas (design.md "Scale"): two verifiers (two `tollway serve` processes, each with its
own ports and ledger, the same tollway.yaml otherwise) behind two real Envoys with the wasm
filter, each Envoy pointing to its own verifier, and one real redis-server holding the claims
both share (`stores: { replay: redis://... }`). A single-use lease, an x402 nonce: at most one use
across both gateways. With Redis down, paid routes fail closed (503) and free routes still work;
when it is back, so are payments."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from dev.pay import paying_session, receipt
from dev.stack import PAYER, PAYER_KEY, RedisServer, Stack, http_get
from leases import SSE, buy_lease, event_data, unique
from payments import challenge, sign_payment

QUOTE_ATOMIC = 1000  # 0.001 USD in a 6-decimal token


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as r:
        yield r


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, redis):
    """(a, b): a is a whole stack (chain, facilitator, upstream, verifier, Envoy); b is a second
    verifier + Envoy pair for the same upstream. Both use `redis` for claims."""
    with Stack(tmp_path_factory.mktemp("replica-a"), replay_store=redis.url) as a:
        with a.replica(tmp_path_factory.mktemp("replica-b")) as b:
            yield a, b


def readyz(stack) -> dict:
    status, body = http_get(f"{stack.verifier_http}/readyz")
    assert status == 200, body
    return json.loads(body)


def replay_store(stack) -> dict:
    return readyz(stack)["stores"]["replay"]


def metric(stack, series: str) -> float:
    """The value of one series (`name{labels}` exactly as exposed) on the verifier; 0 if absent."""
    text = requests.get(stack.verifier_http + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for_store(stacks, up: bool, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(replay_store(s)["up"] is up for s in stacks):
            return
        time.sleep(0.1)
    raise AssertionError(f"replay store not up={up} after {timeout}s: {[replay_store(s) for s in stacks]}")


def race(*calls):
    """Runs the calls at once (a barrier releases them together); answers their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i, call):
        try:
            barrier.wait(timeout=10)
            results[i] = call()
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def unpaid_quote(stack) -> dict:
    r = requests.get(stack.url + "/api/quote", timeout=10)
    assert r.status_code == 402, r.text
    return challenge(r)


def test_both_verifiers_report_the_shared_redis(replicas, redis):
    a, b = replicas
    assert a.ports.grpc != b.ports.grpc and a.ports.envoy != b.ports.envoy
    for s in (a, b):
        assert replay_store(s) == {"backend": "redis", "url": redis.url, "up": True}
        assert metric(s, "tollway_replay_store_up") == 1


def test_single_use_lease_used_through_both_gateways_at_once_succeeds_once(replicas):
    a, b = replicas
    symbol = unique("TWO")
    lease = buy_lease(a, f"/lease/once/{symbol}")
    assert lease["single_use"] is True
    upstream = f"/v1/ticker/{symbol}"
    hits0 = a.upstream_hits().get(upstream, 0)

    streams = race(
        lambda: SSE(a, lease["path"], lease=lease["lease"]),
        lambda: SSE(b, lease["path"], lease=lease["lease"]),
    )
    try:
        assert sorted(s.status for s in streams) == [200, 402], [(s.status, s.body) for s in streams]
        [won] = [s for s in streams if s.status == 200]
        [lost] = [s for s in streams if s.status == 402]
        assert lost.error == "lease_already_used", lost.body
        assert event_data(won.next_event())["seq"] == 1
        assert a.upstream_release(symbol) == 1
        assert event_data(won.next_event())["seq"] == 2
    finally:
        for s in streams:
            s.close()
    assert a.upstream_hits().get(upstream, 0) == hits0 + 1
    # Used is used, on either gateway.
    for s in (a, b):
        with SSE(s, lease["path"], lease=lease["lease"]) as again:
            assert again.status == 402 and again.error == "lease_already_used", (again.status, again.body)
    assert a.upstream_hits().get(upstream, 0) == hits0 + 1


def test_x402_payment_accepted_by_one_gateway_is_refused_by_the_other(replicas):
    a, b = replicas
    header = sign_payment(unpaid_quote(a), PAYER_KEY)
    payer0 = a.balance(PAYER)
    used_b0 = metric(b, 'tollway_replay_claims_total{result="already_used"}')

    first = requests.get(a.url + "/api/quote", headers={"PAYMENT-SIGNATURE": header}, timeout=60)
    assert first.status_code == 200, first.text
    hits = a.upstream_hits()["/api/quote"]
    replayed = requests.get(b.url + "/api/quote", headers={"PAYMENT-SIGNATURE": header}, timeout=60)
    assert replayed.status_code == 402, replayed.text
    assert "nonce" in challenge(replayed)["error"]
    # Refused by b's claim in the shared store, before any facilitator call.
    assert metric(b, 'tollway_replay_claims_total{result="already_used"}') == used_b0 + 1
    assert a.upstream_hits()["/api/quote"] == hits
    assert a.balance(PAYER) == payer0 - QUOTE_ATOMIC


def test_one_x402_payment_raced_through_both_gateways_reaches_the_upstream_once(replicas):
    a, b = replicas
    header = sign_payment(unpaid_quote(a), PAYER_KEY)
    payer0 = a.balance(PAYER)
    hits0 = a.upstream_hits().get("/api/quote", 0)

    def pay(stack):
        return lambda: requests.get(stack.url + "/api/quote", headers={"PAYMENT-SIGNATURE": header}, timeout=60)

    answers = race(pay(a), pay(b))
    assert sorted(r.status_code for r in answers) == [200, 402], [(r.status_code, r.text) for r in answers]
    [lost] = [r for r in answers if r.status_code == 402]
    assert "nonce" in challenge(lost)["error"]
    assert a.upstream_hits().get("/api/quote", 0) == hits0 + 1
    assert a.balance(PAYER) == payer0 - QUOTE_ATOMIC


def test_redis_down_fails_paid_routes_closed_and_both_recover(replicas, redis):
    a, b = replicas
    symbol = unique("DOWN")
    lease = buy_lease(b, f"/lease/once/{symbol}")
    header = sign_payment(unpaid_quote(a), PAYER_KEY)
    payer0 = a.balance(PAYER)
    hits0 = a.upstream_hits()
    redis.stop()
    try:
        wait_for_store((a, b), up=False)
        for s in (a, b):
            store = replay_store(s)
            assert store["backend"] == "redis" and store["error"], store
            assert metric(s, "tollway_replay_store_up") == 0
            # Free routes and challenges do not need the store.
            assert requests.get(s.url + "/free", timeout=10).status_code == 200
            assert requests.get(s.url + "/api/quote", timeout=10).status_code == 402
            # A payment cannot be claimed: 503, never a free pass.
            r = requests.get(s.url + "/api/quote", headers={"PAYMENT-SIGNATURE": header}, timeout=30)
            assert r.status_code == 503, r.text
            assert r.headers.get("retry-after")
            # Nor can a single-use lease.
            with SSE(s, lease["path"], lease=lease["lease"]) as refused:
                assert refused.status == 503, (refused.status, refused.body)
        paid_hits = {k: v for k, v in a.upstream_hits().items() if k != "/free"}
        assert paid_hits == {k: v for k, v in hits0.items() if k != "/free"}
        assert a.balance(PAYER) == payer0
    finally:
        redis.start()
    wait_for_store((a, b), up=True)
    # Back (and empty): the lease was never used, the payment never accepted.
    with SSE(a, lease["path"], lease=lease["lease"]) as used:
        assert used.status == 200, (used.status, used.body)
        assert event_data(used.next_event())["seq"] == 1
        assert a.upstream_release(symbol) == 1
    with SSE(b, lease["path"], lease=lease["lease"]) as again:
        assert again.status == 402 and again.error == "lease_already_used", (again.status, again.body)
    r = requests.get(b.url + "/api/quote", headers={"PAYMENT-SIGNATURE": header}, timeout=60)
    assert r.status_code == 200, r.text
    assert a.balance(PAYER) == payer0 - QUOTE_ATOMIC
    session, client = paying_session(PAYER_KEY)
    paid = session.get(a.url + "/api/quote", timeout=60)
    assert paid.status_code == 200, paid.text
    assert receipt(client, paid)["success"] is True


def test_used_credentials_stay_used_after_redis_restarts(replicas, redis):
    """Redis runs with AOF (the verifier refuses a Redis without persistence): a single-use lease
    used before Redis restarted is still refused after, on both replicas."""
    a, b = replicas
    symbol = unique("AOF")
    lease = buy_lease(a, f"/lease/once/{symbol}")
    with SSE(a, lease["path"], lease=lease["lease"]) as used:
        assert used.status == 200, (used.status, used.body)
    redis.stop()
    redis.start()
    wait_for_store((a, b), up=True)
    for s in (a, b):
        # 503 (fail closed) until the replica's connection is back; then the lease's claim is
        # still there.
        deadline = time.monotonic() + 15
        while True:
            with SSE(s, lease["path"], lease=lease["lease"]) as again:
                status, error, body = again.status, again.error, again.body
            if status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == 402 and error == "lease_already_used", (status, body)
    for s in (a, b):
        assert readyz(s)["stores"]["replay"]["backend"] == "redis"
