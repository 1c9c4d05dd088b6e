"""ext_authz-only mode (Envoy's native ext_authz filter calling the verifier's Check, no wasm) end
to end, for what filter mode gives a paid request on its way upstream (docs/leases.md, "Header
policy" and "ext_authz-only mode"): the trusted payment context on x402 and L402 requests, the
route's request header allow-list, its `upstream_path` rewrite (the Check answers a new `:path`)
and its response presets; and how leased routes answer in this mode, where leases are checked but
not sold.

The stack's two modes have different lease secrets, so a lease bought in filter mode is never
tried here; lease acceptance in this mode is covered by the verifier's unit tests."""

from __future__ import annotations

import uuid

import httpx
import pytest
import requests

from dev.pay import paying_session, receipt
from dev.stack import PAYER, PAYER_KEY
from leases import SSE, error_of, event_data, unique, ws_refused
from lightning import authorization, l402_challenge
from payments import decode_b64json, evm_offers

QUOTE_ATOMIC = 1000  # 0.001 USD in the 6-decimal test token
ECHO_ATOMIC = 2000
SATS_MSAT = 21_000  # the Lightning-only `sats` route: 21 sats
LEASE_ATOMIC = 10_000

FORGED = {
    "x-tollway-payer": "0x000000000000000000000000000000000000dEaD",
    "x-tollway-rail": "free",
    "x-tollway-amount": "0",
    "x-tollway-resource": "quote",
}
CONTEXT = tuple(FORGED)


def evm_amount(stack, atomic: int) -> str:
    return f"{atomic} eip155:84532/erc20:{stack.token}".lower()


@pytest.fixture
def route(authz_stack):
    """PUTs routes through the admin API under fresh names (the Check serves the verifier's live
    table: no sync delay in this mode); deletes them after the test."""
    names = []

    def put(body: dict) -> str:
        name = f"xa-{uuid.uuid4().hex[:10]}"
        status, answer = authz_stack.admin("PUT", f"/admin/routes/{name}", body)
        assert status == 200, (status, answer)
        names.append(name)
        return name

    yield put
    for name in names:
        authz_stack.admin("DELETE", f"/admin/routes/{name}")


# -- trusted payment context ----------------------------------------------------------------


def test_x402_request_reaches_the_upstream_with_the_trusted_context(authz_stack):
    session, client = paying_session(PAYER_KEY)
    r = session.post(authz_stack.url + "/api/echo", json={"mode": "ext_authz"}, headers=FORGED, timeout=60)
    assert r.status_code == 200, r.text
    assert receipt(client, r)["success"] is True
    got = r.json()["headers"]
    assert got["x-tollway-rail"] == "x402"
    assert got["x-tollway-payer"].lower() == PAYER.lower()  # the x402 payer, not the forgery
    assert got["x-tollway-amount"].lower() == evm_amount(authz_stack, ECHO_ATOMIC)
    assert got["x-tollway-resource"] == "echo"
    for name in ("payment-signature", "x-payment"):
        assert name not in got, f"upstream saw {name}"
    # Paid content: private unless the upstream said otherwise.
    assert r.headers["cache-control"] == "private"


def test_l402_request_reaches_the_upstream_with_the_trusted_context(authz_stack):
    challenged = httpx.get(authz_stack.url + "/api/sats", timeout=30)
    assert challenged.status_code == 402, challenged.text
    c = l402_challenge(challenged)
    paid = authz_stack.lightning_pay(c.invoice)
    r = httpx.get(
        authz_stack.url + "/api/sats",
        headers={"authorization": authorization(c.macaroon, paid["preimage"]), **FORGED},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    got = r.json()["headers"]
    assert got["x-tollway-rail"] == "l402"
    assert got["x-tollway-payer"] == paid["payment_hash"]
    assert got["x-tollway-amount"] == f"{SATS_MSAT} msat"
    assert got["x-tollway-resource"] == "sats"
    assert "authorization" not in got  # the credential never reaches the upstream


def test_free_request_carries_no_context_even_if_forged(authz_stack):
    r = requests.get(authz_stack.url + "/free", headers=FORGED, timeout=10)
    assert r.status_code == 200
    seen = authz_stack.upstream_seen("/free")
    assert not set(CONTEXT) & seen.keys(), seen  # removed by the bootstrap's early mutation


def test_every_client_header_in_the_context_namespace_is_stripped(authz_stack):
    # Envoy removes the whole `x-tollway-` prefix, so a context header added later is covered.
    r = requests.get(authz_stack.url + "/free", headers={"x-tollway-future": "forged"}, timeout=10)
    assert r.status_code == 200
    assert "x-tollway-future" not in authz_stack.upstream_seen("/free")


# -- header policy and upstream_path ----------------------------------------------------------


def test_allow_list_context_and_upstream_path_rewrite(authz_stack):
    """The configured `headers` route: `request_headers: [api-auth, x-client-id]`,
    `upstream_path: /v1/headers` (the upstream has no /api/headers)."""
    sent = {
        "authorization": "Bearer upstream-api-key",  # api-auth preset (not an L402 credential)
        "x-api-key": "key-123",  # api-auth preset
        "x-client-id": "client-7",  # listed by name
        "x-secret-thing": "must-not-leak",  # not listed
        **FORGED,
    }
    session, client = paying_session(PAYER_KEY)
    r = session.get(authz_stack.url + "/api/headers?x=1&t=kept", headers=sent, timeout=60)
    assert r.status_code == 200, r.text
    assert receipt(client, r)["success"] is True
    # Rewritten, the query kept as sent (`t` is a lease parameter on leased routes only).
    assert r.json()["path"] == "/v1/headers?x=1&t=kept"
    got = r.json()["headers"]
    assert got["authorization"] == sent["authorization"]
    assert got["x-api-key"] == sent["x-api-key"]
    assert got["x-client-id"] == sent["x-client-id"]
    assert "x-secret-thing" not in got
    for name in ("payment-signature", "x-payment", "x-x402-lease"):
        assert name not in got, f"upstream saw {name}"
    assert got["x-tollway-payer"].lower() == PAYER.lower()
    assert got["x-tollway-rail"] == "x402"
    assert got["x-tollway-resource"] == "headers"
    assert got["x-tollway-amount"].lower() == evm_amount(authz_stack, QUOTE_ATOMIC)
    seen = authz_stack.upstream_seen("/v1/headers")
    assert seen == {**got, ":method": "GET", ":path": "/v1/headers?x=1&t=kept"}
    assert authz_stack.upstream_hits().get("/api/headers", 0) == 0


def test_unpaid_request_on_a_rewritten_route_never_reaches_the_upstream(authz_stack):
    before = authz_stack.upstream_hits().get("/v1/headers", 0)
    r = requests.get(authz_stack.url + "/api/headers", timeout=10)
    assert r.status_code == 402
    assert authz_stack.upstream_hits().get("/v1/headers", 0) == before


def test_the_upstream_path_of_a_rewritten_route_is_not_public(authz_stack):
    before = authz_stack.upstream_hits().get("/v1/headers", 0)
    r = requests.get(authz_stack.url + "/v1/headers", timeout=10)
    assert r.status_code == 404, r.text
    assert r.json()["error"] == "not_found"
    assert authz_stack.upstream_hits().get("/v1/headers", 0) == before


def test_paid_route_response_presets(authz_stack, route):
    """A paid route with `response_headers: [streaming]`: the presets come back with the
    receipt (and win over our `cache-control: private`, as in filter mode)."""
    path = f"/xa/paid/{uuid.uuid4().hex[:8]}"
    name = route(
        {
            "path": path,
            "methods": ["GET"],
            "price": "0.001",
            "upstream_path": "/v1/headers",
            "request_headers": ["x-client-id"],
            "response_headers": ["streaming"],
        }
    )
    session, client = paying_session(PAYER_KEY)
    r = session.get(authz_stack.url + path, headers={"x-client-id": "c9", "x-other": "no", **FORGED}, timeout=60)
    assert r.status_code == 200, r.text
    assert receipt(client, r)["success"] is True
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    assert r.json()["path"] == "/v1/headers"
    got = r.json()["headers"]
    assert got["x-client-id"] == "c9"
    assert "x-other" not in got
    assert got["x-tollway-resource"] == name
    assert got["x-tollway-payer"].lower() == PAYER.lower()


def test_free_stream_route_rewrite_with_params_and_presets(authz_stack, route):
    """A free route whose `upstream_path` renders a `[param]`: the ticker stream comes through
    ext_authz unbuffered (first event while the upstream still holds the stream open), with the
    `streaming` presets; the allow-list drops what is not listed."""
    route(
        {
            "path": "/xa/free/[symbol]",
            "methods": ["GET"],
            "free": True,
            "upstream_path": "/v1/ticker/[symbol]",
            "request_headers": ["x-client-id"],
            "response_headers": ["streaming"],
        }
    )
    symbol = unique("XA")
    with SSE(authz_stack, f"/xa/free/{symbol}?z=1", headers={"x-client-id": "c1", "x-other": "no"}) as s:
        assert s.status == 200, (s.status, s.body)
        assert s.headers["cache-control"] == "no-cache"
        assert s.headers["x-accel-buffering"] == "no"
        first = event_data(s.next_event())
        assert first["symbol"] == symbol and first["seq"] == 1
        assert authz_stack.upstream_release(symbol) == 1, "the upstream had to be still inside the stream"
        assert event_data(s.next_event())["seq"] == 2
        assert s.next_event() is None
    seen = authz_stack.upstream_seen(f"/v1/ticker/{symbol}")
    assert seen[":path"] == f"/v1/ticker/{symbol}?z=1"
    assert seen["x-client-id"] == "c1"
    assert "x-other" not in seen
    assert not set(CONTEXT) & seen.keys()


# -- leased routes --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_lease_path_answers_501_lease_sales_need_filter_mode(authz_stack, method):
    symbol = unique("SOL")
    hits = authz_stack.upstream_hits()
    r = requests.request(method, authz_stack.url + f"/lease/ticker/{symbol}", timeout=10)
    assert r.status_code == 501, r.text
    assert r.json()["error"] == "lease_sales_need_filter_mode"
    assert "payment-required" not in r.headers  # nothing is offered: nothing can be bought here
    assert authz_stack.upstream_hits() == hits


def assert_lease_refusal(stack, status, headers, body, lease_path: str, reason: str):
    assert status == 402, (status, body)
    assert error_of(body) == reason, body
    required = decode_b64json(headers["payment-required"])
    assert required["resource"]["url"] == stack.url + lease_path
    [offer] = evm_offers(required)
    assert offer["amount"] == str(LEASE_ATOMIC)


def test_stream_without_lease_is_402_lease_required(authz_stack):
    symbol = unique("ETH")
    with SSE(authz_stack, f"/stream/ticker/{symbol}") as s:
        assert_lease_refusal(authz_stack, s.status, s.headers, s.body, f"/lease/ticker/{symbol}", "lease_required")
    with SSE(authz_stack, f"/stream/ticker/{symbol}?t=garbage") as s:
        assert_lease_refusal(authz_stack, s.status, s.headers, s.body, f"/lease/ticker/{symbol}", "lease_invalid")
    assert authz_stack.upstream_hits().get(f"/v1/ticker/{symbol}", 0) == 0


def test_websocket_without_lease_is_402_lease_required(authz_stack):
    room = unique("room")
    r = ws_refused(authz_stack, f"/ws/chat/{room}")
    assert_lease_refusal(authz_stack, r.status_code, r.headers, r.body, f"/lease/chat/{room}", "lease_required")
    assert authz_stack.upstream_hits().get(f"/v1/ws/{room}", 0) == 0


def test_verifier_down_is_503_with_retry_after_and_a_json_reason_then_recovers(authz_stack):
    """Envoy's own answer while the Check cannot reach the verifier: 503, Retry-After, JSON."""
    stack = authz_stack
    stack.stop_verifier()
    try:
        r = httpx.get(stack.url + "/api/quote", timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"] == "payment verifier unavailable"
    finally:
        stack.start_verifier()
    r = httpx.get(stack.url + "/api/quote", timeout=30)
    assert r.status_code == 402, r.text
