"""x402 end to end through the real Envoy binary, the real wasm filter, the real verifier over gRPC,
the official facilitator on anvil, and the official x402 clients paying for real."""

import http.client
import json
import sqlite3
import subprocess
import time

import pytest
import requests

from dev.pay import paying_session, receipt
from dev.stack import CHAIN, OTHER_PAYER_KEY, PAY_TO, PAYER, PAYER_KEY, ROOT
from payments import challenge, evm_offers, sign_payment

QUOTE_ATOMIC = 1000  # 0.001 USD in a 6-decimal token
ECHO_ATOMIC = 2000


def balances(stack):
    return stack.balance(PAYER), stack.balance(PAY_TO)


def unpaid(stack, path="/api/quote", method="GET"):
    r = requests.request(method, stack.url + path, timeout=10)
    assert r.status_code == 402, r.text
    return challenge(r)


def node_pay(script: str, url: str, *args: str) -> dict:
    out = subprocess.run(
        ["node", str(CHAIN / script), url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "PAYER_PRIVATE_KEY": PAYER_KEY},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- free routes and challenges -----------------------------------------------------------


def test_free_route_passes_untouched(stack):
    before = stack.upstream_hits().get("/free", 0)
    r = requests.get(stack.url + "/free", timeout=10)
    assert r.status_code == 200
    assert r.json()["free"] is True
    assert "payment-required" not in r.headers
    assert stack.upstream_hits()["/free"] == before + 1


def test_unpaid_request_gets_dual_dialect_402(stack):
    before = stack.upstream_hits().get("/api/quote", 0)
    r = requests.get(stack.url + "/api/quote?symbol=TOLL", timeout=10)
    assert r.status_code == 402
    assert r.headers["cache-control"] == "no-store"
    assert "PAYMENT-REQUIRED" in r.headers["access-control-expose-headers"]

    v2 = challenge(r)
    assert v2["x402Version"] == 2
    assert v2["resource"]["url"] == stack.url + "/api/quote"  # query dropped: it may carry a lease token
    [offer] = evm_offers(v2)  # the Lightning (bip122) offer is tested in test_l402.py
    assert offer["scheme"] == "exact"
    assert offer["network"] == "eip155:84532"
    assert offer["amount"] == str(QUOTE_ATOMIC)
    assert offer["asset"].lower() == stack.token.lower()
    assert offer["payTo"].lower() == PAY_TO.lower()
    assert offer["extra"] == {"name": "USDC", "version": "2"}

    v1 = r.json()
    assert v1["x402Version"] == 1
    [legacy] = v1["accepts"]  # EVM only: x402-fetch 1.2 rejects the whole 402 on an unknown v1 network
    assert legacy["network"] == "base-sepolia"
    assert legacy["maxAmountRequired"] == str(QUOTE_ATOMIC)
    assert legacy["resource"] == stack.url + "/api/quote"
    assert "outputSchema" not in legacy
    assert isinstance(legacy["mimeType"], str) and isinstance(legacy["description"], str)
    assert stack.upstream_hits().get("/api/quote", 0) == before, "a 402 must not reach the upstream"


@pytest.mark.parametrize("path", ["/free/../api/quote", "//api/quote", "/api//quote", "/free/%2e%2e/api/quote"])
def test_path_tricks_do_not_make_a_paid_route_free(stack, path):
    before = stack.upstream_hits().get("/api/quote", 0)
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports.envoy, timeout=10)
    conn.request("GET", path)  # sent verbatim: no client-side normalisation
    r = conn.getresponse()
    r.read()
    conn.close()
    assert r.status in (402, 404), (path, r.status)
    assert stack.upstream_hits().get("/api/quote", 0) == before


# -- the official clients pay ----------------------------------------------------------


def test_python_client_pays_and_balance_moves_exactly(stack):
    payer0, pay_to0 = balances(stack)
    session, client = paying_session(PAYER_KEY)
    r = session.get(stack.url + "/api/quote", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["symbol"] == "TOLL"
    settle = receipt(client, r)
    assert settle["success"] is True
    assert settle["network"] == "eip155:84532"
    assert settle["transaction"].startswith("0x")
    assert settle["payer"].lower() == PAYER.lower()
    assert balances(stack) == (payer0 - QUOTE_ATOMIC, pay_to0 + QUOTE_ATOMIC)


def test_x402_fetch_v2_client_pays(stack):
    payer0, _ = balances(stack)
    out = node_pay("pay-fetch.mjs", stack.url + "/api/quote")
    assert out["status"] == 200, out
    assert out["receipt"]["success"] is True
    assert stack.balance(PAYER) == payer0 - QUOTE_ATOMIC


def test_legacy_x402_fetch_v1_client_pays(stack):
    payer0, _ = balances(stack)
    out = node_pay("pay-legacy.mjs", stack.url + "/api/quote")
    assert out["status"] == 200, out
    assert "x-payment-response" in out["headers"], "v1 payments are answered in X-PAYMENT-RESPONSE"
    assert out["receipt"]["success"] is True
    assert stack.balance(PAYER) == payer0 - QUOTE_ATOMIC


def test_paid_post_reaches_upstream_without_payment_headers(stack):
    payer0, _ = balances(stack)
    session, _ = paying_session(PAYER_KEY)
    r = session.post(stack.url + "/api/echo", json={"hello": "tollway"}, timeout=60)
    assert r.status_code == 200, r.text
    seen = r.json()
    assert json.loads(seen["body"]) == {"hello": "tollway"}
    for name in ("payment-signature", "x-payment", "x-x402-lease"):
        assert name not in seen["headers"], f"upstream saw {name}"
    assert "payment-response" in r.headers
    assert stack.balance(PAYER) == payer0 - ECHO_ATOMIC


# -- replay and bad payments -----------------------------------------------------------


def test_same_payment_twice_is_refused_and_charged_once(stack):
    required = unpaid(stack)
    header = sign_payment(required, PAYER_KEY)
    payer0, _ = balances(stack)
    first = requests.get(stack.url + "/api/quote", headers={"PAYMENT-SIGNATURE": header}, timeout=60)
    assert first.status_code == 200, first.text
    hits = stack.upstream_hits()["/api/quote"]
    second = requests.get(stack.url + "/api/quote", headers={"PAYMENT-SIGNATURE": header}, timeout=60)
    assert second.status_code == 402
    assert "nonce" in challenge(second)["error"]
    assert stack.upstream_hits()["/api/quote"] == hits
    assert stack.balance(PAYER) == payer0 - QUOTE_ATOMIC


BAD_PAYMENTS = {
    "underpay": (dict(value=QUOTE_ATOMIC - 1), "invalid_exact_evm_payload_authorization_value_mismatch"),
    "wrong_pay_to": (dict(to="0x90F79bf6EB2c4f870365E785982E1f101E93b906"), "invalid_exact_evm_payload_recipient_mismatch"),
    "wrong_network": (dict(accepted_overrides={"network": "eip155:8453"}), "invalid_network"),
    "wrong_asset": (
        dict(accepted_overrides={"asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e"}),
        "invalid_exact_evm_asset_mismatch",
    ),
    "expired": (dict(valid_before=int(time.time()) - 60), "invalid_exact_evm_payload_authorization_valid_before"),
    "not_yet_valid": (dict(valid_after=int(time.time()) + 3600), "invalid_exact_evm_payload_authorization_valid_after"),
    "bad_signature": (dict(signer_key=OTHER_PAYER_KEY), "invalid_exact_evm_payload_signature"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYMENTS))
def test_bad_payment_gets_its_reason_and_never_reaches_upstream(stack, case):
    faults, reason = BAD_PAYMENTS[case]
    required = unpaid(stack)
    header = sign_payment(required, PAYER_KEY, **faults)
    before = stack.upstream_hits().get("/api/quote", 0)
    payer0, _ = balances(stack)
    r = requests.get(stack.url + "/api/quote", headers={"PAYMENT-SIGNATURE": header}, timeout=60)
    assert r.status_code == 402, r.text
    assert challenge(r)["error"] == reason
    assert stack.upstream_hits().get("/api/quote", 0) == before
    assert stack.balance(PAYER) == payer0


@pytest.mark.parametrize("header", ["PAYMENT-SIGNATURE", "X-PAYMENT"])
def test_garbage_base64_is_invalid_payload(stack, header):
    before = stack.upstream_hits().get("/api/quote", 0)
    for garbage in ["not base64 at all!", "eyJ4NDAyVmVyc2lvbiI6Mn0-_", "e30="]:
        r = requests.get(stack.url + "/api/quote", headers={header: garbage}, timeout=10)
        assert r.status_code == 402, (garbage, r.text)
        assert challenge(r)["error"] in ("invalid_payload", "invalid_x402_version"), garbage
    assert stack.upstream_hits().get("/api/quote", 0) == before


def test_oversized_payment_header_is_refused(stack):
    before = stack.upstream_hits().get("/api/quote", 0)
    r = requests.get(stack.url + "/api/quote", headers={"PAYMENT-SIGNATURE": "A" * 65536}, timeout=10)
    assert r.status_code in (400, 431)
    assert stack.upstream_hits().get("/api/quote", 0) == before


def test_upstream_failure_is_not_charged(stack):
    payer0, pay_to0 = balances(stack)
    session, _ = paying_session(PAYER_KEY)
    r = session.get(stack.url + "/api/fail", timeout=60)
    assert r.status_code == 500
    assert "payment-response" not in r.headers
    assert balances(stack) == (payer0, pay_to0)


# -- records and metrics ---------------------------------------------------------------


def test_ledger_and_metrics_record_payments(stack):
    session, _ = paying_session(PAYER_KEY)
    assert session.get(stack.url + "/api/quote", timeout=60).status_code == 200
    with sqlite3.connect(stack.ledger_path) as db:
        events = {row[0] for row in db.execute("select distinct event from payment_events")}
    assert {"verified", "settled", "rejected"} <= events, events
    metrics = requests.get(stack.verifier_http + "/metrics", timeout=10).text
    assert "tollway_settle_total" in metrics
    assert "tollway_verify_total" in metrics


# -- fail closed -----------------------------------------------------------------------


def test_verifier_down_fails_closed_and_recovers_without_restarting_envoy(stack):
    required = unpaid(stack)
    stack.stop_verifier()
    try:
        payer0, _ = balances(stack)
        before = stack.upstream_hits().get("/api/quote", 0)
        r = requests.get(
            stack.url + "/api/quote", headers={"PAYMENT-SIGNATURE": sign_payment(required, PAYER_KEY)}, timeout=30
        )
        assert r.status_code == 503
        assert r.headers.get("retry-after")
        assert stack.upstream_hits().get("/api/quote", 0) == before
        assert stack.balance(PAYER) == payer0
        assert requests.get(stack.url + "/free", timeout=10).status_code == 200
    finally:
        stack.start_verifier()
    session, client = paying_session(PAYER_KEY)
    r = session.get(stack.url + "/api/quote", timeout=60)
    assert r.status_code == 200, r.text
    assert receipt(client, r)["success"] is True


# -- ext_authz-only mode ---------------------------------------------------------------


def test_ext_authz_mode_challenge_and_python_client_pays(authz_stack):
    r = requests.get(authz_stack.url + "/api/quote", timeout=10)
    assert r.status_code == 402
    assert evm_offers(challenge(r))[0]["amount"] == str(QUOTE_ATOMIC)
    assert requests.get(authz_stack.url + "/free", timeout=10).status_code == 200

    payer0, pay_to0 = balances(authz_stack)
    session, client = paying_session(PAYER_KEY)
    r = session.post(authz_stack.url + "/api/echo", json={"mode": "ext_authz"}, timeout=60)
    assert r.status_code == 200, r.text
    assert "payment-signature" not in r.json()["headers"]
    assert receipt(client, r)["success"] is True
    assert balances(authz_stack) == (payer0 - ECHO_ATOMIC, pay_to0 + ECHO_ATOMIC)


def test_envoy_answers_unpaid_x402_requests_with_the_filters_own_402(stack):
    """With `public_url` set, an x402-only route's 402 depends on nothing in the request, so
    Envoy answers unpaid requests itself (its RDS route, no filter). The answer is the one the
    filter gives: compared with the filter's 402 for `/api/fail/` (the same route to the filter,
    which Envoy's exact-path route does not take). Only the filter's answers count in
    `tollway.challenges`."""
    challenges = lambda: stack.envoy_counter("wasmcustom.tollway.challenges")  # noqa: E731
    hits = stack.upstream_hits().get("/api/fail", 0)
    time.sleep(2.4)  # the filter flushes its counts once a second: let earlier ones land
    counted = challenges()
    by_envoy = [requests.get(stack.url + "/api/fail", timeout=10) for _ in range(3)]
    time.sleep(2.4)
    assert challenges() == counted
    by_filter = requests.get(stack.url + "/api/fail/", timeout=10)
    assert stack.envoy_counter_moved("wasmcustom.tollway.challenges", counted) == counted + 1

    def normalised(r):
        assert r.status_code == 402
        v2 = challenge(r)
        v2["resource"]["url"] = v2["resource"]["url"].rstrip("/")
        v1 = r.json()
        for offer in v1["accepts"]:
            offer["resource"] = offer["resource"].rstrip("/")
        headers = {k.lower(): v for k, v in r.headers.items() if k.lower() not in ("date", "content-length", "payment-required")}
        return v2, v1, headers

    assert all(normalised(r) == normalised(by_filter) for r in by_envoy)
    assert challenge(by_envoy[0])["resource"]["url"] == stack.url + "/api/fail"
    assert stack.upstream_hits().get("/api/fail", 0) == hits
