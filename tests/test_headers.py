"""Header policy end to end (docs/leases.md, "Header policy"): the route `headers` lets only
`api-auth` (authorization, x-api-key, api-key) and `x-client-id` through, and the filter replaces
any client copy of the trusted `x-tollway-*` context with its own. Paid with the official x402
Python client through the real Envoy; the upstream answers the headers it received."""

import requests

from dev.pay import paying_session, receipt
from dev.stack import PAYER, PAYER_KEY

SENT = {
    "authorization": "Bearer upstream-api-key",  # api-auth preset (not an L402 credential)
    "x-api-key": "key-123",  # api-auth preset
    "x-client-id": "client-7",  # listed by name
    "x-secret-thing": "must-not-leak",  # not listed
    "x-tollway-payer": "0x000000000000000000000000000000000000dEaD",  # forged trusted context
    "x-tollway-rail": "free",
    "x-tollway-amount": "0",
    "x-tollway-resource": "quote",
}


def test_allow_list_and_trusted_context_reach_the_upstream(stack):
    session, client = paying_session(PAYER_KEY)
    r = session.get(stack.url + "/api/headers", headers=SENT, timeout=60)
    assert r.status_code == 200, r.text
    assert receipt(client, r)["success"] is True
    got = r.json()["headers"]

    assert got["authorization"] == SENT["authorization"]
    assert got["x-api-key"] == SENT["x-api-key"]
    assert got["x-client-id"] == SENT["x-client-id"]
    assert "x-secret-thing" not in got
    for name in ("payment-signature", "x-payment", "x-x402-lease"):
        assert name not in got, f"upstream saw {name}"

    assert got["x-tollway-payer"].lower() == PAYER.lower(), got  # the x402 payer, not the forgery
    assert got["x-tollway-rail"] == "x402"
    assert got["x-tollway-resource"] == "headers"
    assert got["x-tollway-amount"] != SENT["x-tollway-amount"]
    assert r.json()["path"] == "/v1/headers"  # upstream_path rewrite
    assert stack.upstream_seen("/v1/headers") == {**got, ":method": "GET", ":path": "/v1/headers"}


def test_a_lease_token_never_reaches_the_upstream_off_a_leased_route(stack):
    """On a free route (served by Envoy around the filter) and on a paid one alike."""
    r = requests.get(stack.url + "/free", headers={"x-x402-lease": "not-for-you"}, timeout=10)
    assert r.status_code == 200, r.text
    assert "x-x402-lease" not in stack.upstream_seen("/free")
    session, _ = paying_session(PAYER_KEY)
    r = session.get(stack.url + "/api/headers", headers={"x-x402-lease": "not-for-you"}, timeout=60)
    assert r.status_code == 200, r.text
    assert "x-x402-lease" not in stack.upstream_seen("/v1/headers")


def test_unpaid_request_never_reaches_the_upstream(stack):
    before = stack.upstream_hits().get("/v1/headers", 0)
    r = requests.get(stack.url + "/api/headers", headers=SENT, timeout=10)
    assert r.status_code == 402
    assert stack.upstream_hits().get("/v1/headers", 0) == before


def test_response_presets_on_a_free_route(stack):
    """A free route with nothing but `response_headers: [streaming]` (added through the admin
    API) gets the presets on its answers."""
    import time
    import uuid

    name = f"presets-{uuid.uuid4().hex[:8]}"
    path = f"/{name}"
    body = {"path": path, "free": True, "response_headers": ["streaming"]}
    status, answer = stack.admin("PUT", f"/admin/routes/{name}", body)
    assert status == 200, answer
    try:
        deadline = time.monotonic() + 5
        while True:
            r = requests.get(stack.url + path, timeout=10)  # the upstream has no such path: 404
            if r.headers.get("x-accel-buffering") == "no" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 404, r.text
        assert r.headers.get("x-accel-buffering") == "no", dict(r.headers)
        assert r.headers.get("cache-control") == "no-cache"
    finally:
        stack.admin("DELETE", f"/admin/routes/{name}")
