"""Dynamic routes end to end (docs/leases.md, "Dynamic routes"): changes made through the
verifier's admin API reach the running Envoy's filter (it polls the verifier for the route table)
within a few seconds, invalid changes are refused with the field named and the old table keeps
serving, and the API wants the admin bearer token.

Every test works on its own route (fresh name and path) and deletes it afterwards, so the
session-wide stack keeps its configured table."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from payments import challenge, evm_offers

SYNC_TIMEOUT = 5.0  # the filter polls every second (sync_interval_ms 1000)


def poll(check, timeout: float = SYNC_TIMEOUT, interval: float = 0.2):
    """Calls `check()` until it answers a `Response` (not False/None; a 4xx `Response` is falsy,
    so truthiness will not do); answers it, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if isinstance(last, requests.Response):
            return last
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


def route_body(path: str, price: str = "0.003") -> dict:
    return {
        "path": path,
        "methods": ["GET"],
        "price": price,
        "description": "Added at run time",
        "mime_type": "application/json",
    }


def get(stack, path: str) -> requests.Response:
    return requests.get(stack.url + path, timeout=10)


def amount_of(r: requests.Response) -> str | None:
    if r.status_code != 402:
        return None
    return evm_offers(challenge(r))[0]["amount"]


def serves_price(stack, path: str, amount: str):
    """A check for `poll`: the route answers a 402 for `amount` atomic units."""
    return lambda: (r := get(stack, path)).status_code == 402 and amount_of(r) == amount and r


@pytest.fixture
def dyn(stack):
    """A fresh route name and path; the route is deleted (if it exists) after the test."""
    suffix = uuid.uuid4().hex[:10]
    name, path = f"dyn-{suffix}", f"/dyn/{suffix}"
    yield name, path
    stack.admin("DELETE", f"/admin/routes/{name}")


def add(stack, name: str, path: str, price: str = "0.003") -> int:
    status, body = stack.admin("PUT", f"/admin/routes/{name}", route_body(path, price))
    assert status == 200, (status, body)
    assert isinstance(body["version"], int)
    return body["version"]


def version(stack) -> int:
    status, body = stack.admin("GET", "/admin/routes")
    assert status == 200, (status, body)
    return body["version"]


def route_names(stack) -> set[str]:
    status, body = stack.admin("GET", "/admin/routes")
    assert status == 200, (status, body)
    return {r["name"] for r in body["routes"]}


def test_admin_lists_the_configured_routes(stack):
    status, body = stack.admin("GET", "/admin/routes")
    assert status == 200, body
    assert isinstance(body["version"], int)
    by_name = {r["name"]: r for r in body["routes"]}
    assert {"free", "quote", "ticker", "chat", "headers"} <= by_name.keys()
    assert by_name["quote"]["path"] == "/api/quote" and by_name["quote"]["price"] == "0.001"


def test_put_adds_a_paid_route_to_the_running_envoy(stack, dyn):
    name, path = dyn
    before = get(stack, path)
    # No route yet: the gateway's default for unmatched requests (deny) answers, not the upstream.
    assert before.status_code == 404 and before.json()["error"] == "no_route"
    v0 = version(stack)
    v1 = add(stack, name, path, "0.003")
    assert v1 != v0
    assert name in route_names(stack)
    r = poll(serves_price(stack, path, "3000"))
    assert r is not None, f"{path} did not answer a 402 for 0.003 within {SYNC_TIMEOUT}s: {get(stack, path).status_code}"
    assert challenge(r)["resource"]["url"] == stack.url + path
    hits = stack.upstream_hits().get(path, 0)  # the probes before the filter had the new table
    assert get(stack, path).status_code == 402
    assert stack.upstream_hits().get(path, 0) == hits


def test_patch_price_reprices_the_402(stack, dyn):
    name, path = dyn
    add(stack, name, path, "0.003")
    assert poll(serves_price(stack, path, "3000")) is not None
    status, body = stack.admin("PATCH", f"/admin/routes/{name}", {"price": "0.005"})
    assert status == 200, (status, body)
    assert poll(serves_price(stack, path, "5000")) is not None, amount_of(get(stack, path))


def test_patch_disabled_answers_route_disabled(stack, dyn):
    name, path = dyn
    add(stack, name, path)
    assert poll(serves_price(stack, path, "3000")) is not None
    hits = stack.upstream_hits().get(path, 0)
    status, body = stack.admin("PATCH", f"/admin/routes/{name}", {"disabled": True})
    assert status == 200, (status, body)
    r = poll(lambda: (r := get(stack, path)).status_code == 404 and r)
    assert r is not None, get(stack, path).status_code
    assert r.json()["error"] == "route_disabled"
    assert stack.upstream_hits().get(path, 0) == hits
    assert name in route_names(stack)  # disabled, not removed


def test_delete_removes_the_route(stack, dyn):
    name, path = dyn
    add(stack, name, path)
    assert poll(serves_price(stack, path, "3000")) is not None
    status, body = stack.admin("DELETE", f"/admin/routes/{name}")
    assert status == 200, (status, body)
    assert name not in route_names(stack)
    # No route any more: the gateway's default for unmatched requests (deny) answers.
    r = poll(lambda: (r := get(stack, path)).status_code != 402 and r)
    assert r is not None and r.status_code == 404 and r.json()["error"] == "no_route", r
    status, _ = stack.admin("DELETE", f"/admin/routes/{name}")
    assert status == 404
    status, _ = stack.admin("PATCH", f"/admin/routes/{name}", {"price": "0.004"})
    assert status == 404


@pytest.mark.parametrize(
    "method, change, field",
    [
        ("PUT", {"path": "no-slash", "methods": ["GET"], "price": "0.003"}, "path"),
        ("PUT", {"path": "/dyn/bad-price", "methods": ["GET"], "price": "abc"}, "price"),
        ("PATCH", {"price": "abc"}, "price"),
        ("PATCH", {"path": "no-slash"}, "path"),
    ],
    ids=["put-path", "put-price", "patch-price", "patch-path"],
)
def test_invalid_change_is_refused_and_the_old_table_keeps_serving(stack, dyn, method, change, field):
    name, path = dyn
    add(stack, name, path, "0.003")
    assert poll(serves_price(stack, path, "3000")) is not None
    v = version(stack)
    status, body = stack.admin(method, f"/admin/routes/{name}", change)
    assert status == 400, (status, body)
    assert isinstance(body.get("error"), str) and body["error"], body
    assert field in json.dumps(body), f"the refusal does not name `{field}`: {body}"
    assert version(stack) == v
    time.sleep(1.5)  # more than one sync interval: the filter would have picked up a new table
    r = get(stack, path)
    assert r.status_code == 402 and amount_of(r) == "3000", (r.status_code, r.text)


def test_admin_api_wants_the_bearer_token(stack, dyn):
    name, path = dyn
    for token in (None, "wrong-" + "x" * 40):
        status, _ = stack.admin("GET", "/admin/routes", token=token)
        assert status == 401
        status, _ = stack.admin("PUT", f"/admin/routes/{name}", route_body(path), token=token)
        assert status == 401
        status, _ = stack.admin("PATCH", "/admin/routes/quote", {"price": "0.5"}, token=token)
        assert status == 401
        status, _ = stack.admin("DELETE", "/admin/routes/quote", token=token)
        assert status == 401
    assert name not in route_names(stack)
    r = get(stack, "/api/quote")
    assert r.status_code == 402 and amount_of(r) == "1000"


def test_a_fresh_envoy_fails_closed_until_its_first_route_table(stack, tmp_path):
    """Envoy starts before its verifier: with no route table yet nothing is known to be free,
    so no request is answered from the upstream (Envoy routes nothing until the verifier's
    first RDS answer, and the filter answers 503 until its own first table). Once the verifier
    is up, the routes are served as configured."""
    r = stack.replica(tmp_path)
    r.write_config()
    try:
        r.start_envoy(wait_for_table=False)  # its verifier is not running
        hits = stack.upstream_hits()
        for path in ["/free", "/api/quote", "/stream/ticker/BTC"]:
            try:
                resp = requests.get(r.url + path, timeout=2)
            except requests.RequestException:
                continue  # not listening yet, or holding the connection: fine, nothing served
            assert resp.status_code == 503, (path, resp.status_code, resp.text)
            assert resp.headers["retry-after"] == "1"
        assert stack.upstream_hits() == hits
        r.start_verifier()

        def served():
            try:
                resp = requests.get(r.url + "/free", timeout=2)
            except requests.RequestException:
                return None
            return resp if resp.status_code == 200 else None

        assert poll(served, timeout=45) is not None, "the first table never arrived"
        assert requests.get(r.url + "/api/quote", timeout=10).status_code == 402
    finally:
        r.stop()


FLUSH = 1.2  # the filter adds its counts to Envoy's counters once a second


def test_a_free_route_skips_the_filter_until_it_is_priced(stack, dyn):
    """A free route with one literal path gets an Envoy route (from the verifier's RDS) with the
    filter disabled: its requests never reach the filter (its free-request counter stays put).
    Pricing it takes that route away at once, so the filter answers 402."""
    name, path = dyn
    status, body = stack.admin("PUT", f"/admin/routes/{name}", {"path": path, "methods": ["GET"], "free": True})
    assert status == 200, (status, body)
    bypass = f"free:{name}:GET"
    assert poll(lambda: bypass in stack.envoy_routes() and get(stack, path), timeout=10) is not None, "no filter-free route"
    free = lambda: stack.envoy_counter("wasmcustom.tollway.requests_free")  # noqa: E731
    time.sleep(2 * FLUSH)
    counted = free()
    for _ in range(3):
        assert get(stack, path).status_code == 404  # the upstream's own 404 for a path it does not know
    time.sleep(2 * FLUSH)
    assert free() == counted
    # The same route spelled with a trailing slash is not Envoy's exact path: the filter counts it.
    assert get(stack, path + "/").status_code == 404
    assert stack.envoy_counter_moved("wasmcustom.tollway.requests_free", counted) == counted + 1

    status, body = stack.admin("PATCH", f"/admin/routes/{name}", {"free": None, "price": "0.003"})
    assert status == 200, (status, body)
    # Removals are pushed at once (new bypasses wait 2 s).
    assert poll(lambda: bypass not in stack.envoy_routes() and get(stack, path), timeout=1.5) is not None
    assert poll(serves_price(stack, path, "3000")) is not None, get(stack, path).status_code
    hits = stack.upstream_hits().get(path, 0)
    assert get(stack, path).status_code == 402
    assert stack.upstream_hits().get(path, 0) == hits
