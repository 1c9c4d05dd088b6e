"""Leases end to end (docs/leases.md): server-sent events and WebSockets sold as leases, through
the real Envoy binary, the real wasm filter and the real verifier, paid with the official x402
Python client (and once over L402 with the dev Lightning node). The upstream (dev/upstream.py)
holds each ticker stream open after its first event until the test releases it, so reading that
event first proves nothing on the way buffers the stream."""

from __future__ import annotations

import http.client
import threading
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import requests
from websockets.exceptions import ConnectionClosed

from dev.stack import PAY_TO, PAYER, SHORT_LEASE_SECONDS, SHORT_RENEWAL_WINDOW
from leases import (
    LEASE_HEADER,
    SSE,
    buy_lease,
    buy_lease_l402,
    error_of,
    event_data,
    open_ws,
    pay_lease,
    tamper,
    unique,
    wait_until_epoch,
    ws_echoes,
    ws_refused,
)
from lightning import authorization, l402_challenge
from payments import challenge, decode_b64json, evm_offers

LEASE_ATOMIC = 10_000  # every leased route costs 0.01 USD (6 decimals)


def hits(stack, path: str) -> int:
    return stack.upstream_hits().get(path, 0)


def assert_lease_refusal(status, headers, body, stack, lease_path: str, reason: str):
    """402, the JSON `error`, and the lease route's x402 challenge for the concrete lease URL."""
    assert status == 402, (status, body)
    assert error_of(body) == reason, body
    required = decode_b64json(headers["payment-required"])
    assert required["resource"]["url"] == stack.url + lease_path, required["resource"]
    [offer] = evm_offers(required)
    assert offer["amount"] == str(LEASE_ATOMIC)


def stream_refused(stack, path: str, lease_path: str, reason: str, **kwargs):
    with SSE(stack, path, **kwargs) as s:
        assert_lease_refusal(s.status, s.headers, s.body, stack, lease_path, reason)


def upgrade_refused(stack, path: str, lease_path: str, reason: str, **kwargs):
    r = ws_refused(stack, path, **kwargs)
    assert_lease_refusal(r.status_code, r.headers, r.body, stack, lease_path, reason)


def stream_two_events(stack, symbol: str, path: str, **kwargs):
    """Opens the stream, gets event 1 while the upstream still holds the stream open, releases
    it, gets event 2 and the end. Answers the response headers."""
    with SSE(stack, path, **kwargs) as s:
        assert s.status == 200, (s.status, s.body)
        assert s.headers["content-type"].startswith("text/event-stream")
        assert s.headers.get("content-length") is None
        first = event_data(s.next_event())
        assert first["symbol"] == symbol and first["seq"] == 1
        assert stack.upstream_release(symbol) == 1, "the upstream had to be still inside the stream"
        second = event_data(s.next_event())
        assert second["seq"] == 2
        assert s.next_event() is None
        return s.headers


# -- server-sent events -------------------------------------------------------------------


def test_sse_lease_streams_first_event_before_the_upstream_finishes(stack):
    symbol = unique("BTC")
    payer0, pay_to0 = stack.balance(PAYER), stack.balance(PAY_TO)
    lease = buy_lease(stack, f"/lease/ticker/{symbol}")
    assert (stack.balance(PAYER), stack.balance(PAY_TO)) == (payer0 - LEASE_ATOMIC, pay_to0 + LEASE_ATOMIC)
    assert lease["resource"] == "ticker"
    assert lease["method"] == "GET"
    assert lease["path"] == f"/stream/ticker/{symbol}"
    assert lease["url"] == stack.url + lease["path"]
    assert lease["expires_in"] == 60
    assert abs(lease["expires_at"] - (time.time() + 60)) < 5
    assert lease["single_use"] is False and lease["renewable"] is True

    upstream = f"/v1/ticker/{symbol}"
    headers = stream_two_events(stack, symbol, lease["path"], lease=lease["lease"])
    assert headers["cache-control"] == "no-cache"  # the route's `streaming` preset
    assert headers["x-accel-buffering"] == "no"
    seen = stack.upstream_seen(upstream)
    assert LEASE_HEADER not in seen
    assert seen["x-tollway-rail"] == "lease"
    assert seen["x-tollway-resource"] == "ticker"

    # Not single-use: the same lease streams again until it expires, with no new payment.
    payer1 = stack.balance(PAYER)
    stream_two_events(stack, symbol, lease["path"], lease=lease["lease"])
    assert hits(stack, upstream) == 2
    assert stack.balance(PAYER) == payer1


def test_sse_without_lease_is_402_lease_required_and_never_reaches_upstream(stack):
    symbol = unique("ETH")
    stream_refused(stack, f"/stream/ticker/{symbol}", f"/lease/ticker/{symbol}", "lease_required")
    assert hits(stack, f"/v1/ticker/{symbol}") == 0


def test_lease_path_without_payment_is_the_usual_402(stack):
    symbol = unique("SOL")
    r = requests.post(stack.url + f"/lease/ticker/{symbol}", timeout=10)
    assert r.status_code == 402, r.text
    required = challenge(r)
    assert required["resource"]["url"] == stack.url + f"/lease/ticker/{symbol}"
    assert evm_offers(required)[0]["amount"] == str(LEASE_ATOMIC)


# -- WebSockets -----------------------------------------------------------------------------


def test_websocket_with_lease_echoes(stack):
    room = unique("room")
    lease = buy_lease(stack, f"/lease/chat/{room}")
    assert lease["resource"] == "chat" and lease["path"] == f"/ws/chat/{room}"
    with open_ws(stack, lease["path"], lease=lease["lease"]) as ws:
        ws_echoes(ws)
        ws.send("still open")
        assert ws.recv(timeout=5) == "still open"
    assert hits(stack, f"/v1/ws/{room}") == 1
    seen = stack.upstream_seen(f"/v1/ws/{room}")
    assert seen["upgrade"].lower() == "websocket"
    assert LEASE_HEADER not in seen
    assert seen["x-tollway-rail"] == "lease"


def test_websocket_without_lease_is_refused(stack):
    room = unique("room")
    upgrade_refused(stack, f"/ws/chat/{room}", f"/lease/chat/{room}", "lease_required")
    assert hits(stack, f"/v1/ws/{room}") == 0


def test_websocket_lease_for_another_room_is_refused(stack):
    room, other = unique("room"), unique("room")
    lease = buy_lease(stack, f"/lease/chat/{room}")
    upgrade_refused(stack, f"/ws/chat/{other}", f"/lease/chat/{other}", "lease_invalid", lease=lease["lease"])
    upgrade_refused(stack, f"/ws/chat/{other}?t={lease['lease']}", f"/lease/chat/{other}", "lease_invalid")
    assert hits(stack, f"/v1/ws/{other}") == 0


def test_websocket_expired_lease_is_refused(stack):
    room = unique("room")
    lease = buy_lease(stack, f"/lease/short/{room}")
    assert lease["resource"] == "short" and lease["expires_in"] == SHORT_LEASE_SECONDS
    with open_ws(stack, lease["path"], lease=lease["lease"]) as ws:  # valid while it lasts
        ws_echoes(ws)
    wait_until_epoch(lease["expires_at"] + 1.2)
    upgrade_refused(stack, lease["path"], f"/lease/short/{room}", "lease_expired", lease=lease["lease"])
    assert hits(stack, f"/v1/ws/{room}") == 1


# -- the `t` query parameter ----------------------------------------------------------------


def test_query_token_fallback_and_the_upstream_never_sees_the_token(stack):
    symbol, room = unique("ADA"), unique("room")
    stream = buy_lease(stack, f"/lease/ticker/{symbol}")
    token = stream["lease"]
    stream_two_events(stack, symbol, f"{stream['path']}?a=1&t={token}&b=2")
    seen = stack.upstream_seen(f"/v1/ticker/{symbol}")
    target = urlsplit(seen[":path"])
    assert target.path == f"/v1/ticker/{symbol}"
    assert parse_qs(target.query) == {"a": ["1"], "b": ["2"]}, seen[":path"]
    assert LEASE_HEADER not in seen
    assert not any(token in value for value in seen.values()), seen

    chat = buy_lease(stack, f"/lease/chat/{room}")
    with open_ws(stack, f"{chat['path']}?t={chat['lease']}") as ws:
        ws_echoes(ws)
    seen = stack.upstream_seen(f"/v1/ws/{room}")
    assert "t" not in parse_qs(urlsplit(seen[":path"]).query), seen[":path"]
    assert LEASE_HEADER not in seen
    assert not any(chat["lease"] in value for value in seen.values()), seen


# -- single use -----------------------------------------------------------------------------


def test_single_use_lease_used_twice_concurrently_succeeds_once(stack):
    symbol = unique("ONE")
    lease = buy_lease(stack, f"/lease/once/{symbol}")
    assert lease["single_use"] is True and lease["path"] == f"/stream/once/{symbol}"
    upstream = f"/v1/ticker/{symbol}"

    barrier = threading.Barrier(2)
    streams: list[SSE] = []
    errors: list[BaseException] = []

    def attempt():
        try:
            barrier.wait(timeout=10)
            streams.append(SSE(stack, lease["path"], lease=lease["lease"]))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    try:
        assert sorted(s.status for s in streams) == [200, 402], [(s.status, s.body) for s in streams]
        [won] = [s for s in streams if s.status == 200]
        [lost] = [s for s in streams if s.status == 402]
        assert_lease_refusal(lost.status, lost.headers, lost.body, stack, f"/lease/once/{symbol}", "lease_already_used")
        assert event_data(won.next_event())["seq"] == 1
        assert stack.upstream_release(symbol) == 1
        assert event_data(won.next_event())["seq"] == 2
    finally:
        for s in streams:
            s.close()
    assert hits(stack, upstream) == 1
    # And after the race, it stays used.
    stream_refused(stack, lease["path"], f"/lease/once/{symbol}", "lease_already_used", lease=lease["lease"])
    assert hits(stack, upstream) == 1


def test_used_single_use_credentials_stay_used_after_the_verifier_is_killed(stack):
    """Claims live in the ledger database: a single-use lease and a single-use L402 token used
    before the verifier was killed (SIGKILL) and started again are still refused after."""
    symbol = unique("RST")
    lease = buy_lease(stack, f"/lease/once/{symbol}")
    first = SSE(stack, lease["path"], lease=lease["lease"])
    try:
        assert first.status == 200, first.body
    finally:
        first.close()
    r = httpx.get(stack.url + "/api/once", timeout=30)
    [line] = [v for v in r.headers.get_list("www-authenticate") if v.startswith("L402 ")]
    macaroon = line.split('macaroon="', 1)[1].split('"', 1)[0]
    invoice = line.split('invoice="', 1)[1].split('"', 1)[0]
    paid = stack.lightning_pay(invoice)
    token = {"Authorization": authorization(macaroon, paid["preimage"])}
    assert httpx.get(stack.url + "/api/once", headers=token, timeout=30).status_code == 200

    stack.kill9("verifier")
    stack.start_verifier()

    stream_refused(stack, lease["path"], f"/lease/once/{symbol}", "lease_already_used", lease=lease["lease"])
    again = httpx.get(stack.url + "/api/once", headers=token, timeout=30)
    assert again.status_code == 402, again.text
    assert again.json()["error"] == "l402_token_already_used"
    assert hits(stack, f"/v1/ticker/{symbol}") == 1


def test_a_lease_whose_token_would_be_refused_is_not_sold(stack):
    """A lease path so long its token would exceed the lease token limit: refused before any
    payment (it used to be paid for, then refused as lease_invalid)."""
    symbol = "X" * 3000
    r = httpx.get(stack.url + f"/lease/ticker/{symbol}", timeout=30)
    assert r.status_code == 414, (r.status_code, r.text)
    assert r.json()["error"] == "lease_path_too_long"
    assert "payment-required" not in r.headers


# -- renewal --------------------------------------------------------------------------------


def test_renewal_outside_the_window_is_409_and_not_charged(stack):
    symbol = unique("DOT")
    lease = buy_lease(stack, f"/lease/ticker/{symbol}")  # 60 s, renewable in its last 30 s
    payer0, pay_to0 = stack.balance(PAYER), stack.balance(PAY_TO)
    r = pay_lease(stack, f"/lease/ticker/{symbol}", current=lease["lease"])
    assert r.status_code == 409, (r.status_code, r.text)
    assert r.json()["error"] == "lease_renewal_outside_window"
    assert r.x402_receipt is None
    assert (stack.balance(PAYER), stack.balance(PAY_TO)) == (payer0, pay_to0)
    stream_two_events(stack, symbol, lease["path"], lease=lease["lease"])  # the old lease still works


def test_renewal_inside_the_window_extends_expiry(stack):
    room = unique("room")
    lease_path = f"/lease/short/{room}"
    old = buy_lease(stack, lease_path)
    # Into the window (its last SHORT_RENEWAL_WINDOW seconds) by a whole second, whichever way the
    # verifier rounds the clock, and still with seconds left to pay before expiry.
    wait_until_epoch(old["expires_at"] - SHORT_RENEWAL_WINDOW + 1.05)
    payer0 = stack.balance(PAYER)
    r = pay_lease(stack, lease_path, current=old["lease"])
    assert r.status_code == 200, (r.status_code, r.text)
    new = r.json()
    assert r.x402_receipt and r.x402_receipt["success"] is True
    assert stack.balance(PAYER) == payer0 - LEASE_ATOMIC
    assert new["expires_at"] == old["expires_at"] + SHORT_LEASE_SECONDS
    assert (new["path"], new["resource"], new["method"]) == (old["path"], old["resource"], old["method"])
    assert new["lease"] != old["lease"]
    assert r.headers[LEASE_HEADER] == new["lease"]

    # Past the old expiry the renewed token still opens the room; the old one is expired.
    wait_until_epoch(old["expires_at"] + 1.2)
    assert time.time() < new["expires_at"] - 1
    with open_ws(stack, new["path"], lease=new["lease"]) as ws:
        ws_echoes(ws)
    upgrade_refused(stack, old["path"], lease_path, "lease_expired", lease=old["lease"])


def test_a_repeated_renewal_charges_once(stack):
    """A client that renews again with the same (now superseded) token, as after a timeout,
    gets the lease it already bought and pays nothing: x402 (the official client signs a fresh
    payment, which is not taken) and L402 (no second invoice is minted; the same credential is
    not used up twice)."""
    room = unique("again")
    lease_path = f"/lease/short/{room}"
    old = buy_lease(stack, lease_path)
    wait_until_epoch(old["expires_at"] - SHORT_RENEWAL_WINDOW + 1.05)
    payer0 = stack.balance(PAYER)
    first = pay_lease(stack, lease_path, current=old["lease"])
    assert first.status_code == 200, (first.status_code, first.text)
    assert stack.balance(PAYER) == payer0 - LEASE_ATOMIC
    again = pay_lease(stack, lease_path, current=old["lease"])
    assert again.status_code == 200, (again.status_code, again.text)
    assert again.json()["lease"] == first.json()["lease"]
    assert again.json()["expires_at"] == first.json()["expires_at"] == old["expires_at"] + SHORT_LEASE_SECONDS
    assert again.x402_receipt is None  # nothing settled
    assert stack.balance(PAYER) == payer0 - LEASE_ATOMIC

    # L402: renew another lease, then ask again, with and without the credential.
    room = unique("again")
    lease_path = f"/lease/short/{room}"
    old = buy_lease(stack, lease_path)
    wait_until_epoch(old["expires_at"] - SHORT_RENEWAL_WINDOW + 1.05)
    current = {LEASE_HEADER: old["lease"]}
    challenged = httpx.post(stack.url + lease_path, headers=current, timeout=30)
    assert challenged.status_code == 402, challenged.text
    c = l402_challenge(challenged)
    paid = stack.lightning_pay(c.invoice)
    credential = {"authorization": authorization(c.macaroon, paid["preimage"])}
    renewed = httpx.post(stack.url + lease_path, headers=current | credential, timeout=30)
    assert renewed.status_code == 200, (renewed.status_code, renewed.text)
    assert renewed.json()["expires_at"] == old["expires_at"] + SHORT_LEASE_SECONDS
    for headers in (current | credential, current):
        again = httpx.post(stack.url + lease_path, headers=headers, timeout=30)
        assert again.status_code == 200, (again.status_code, again.text)
        assert "www-authenticate" not in again.headers  # no invoice to pay
        assert again.json()["lease"] == renewed.json()["lease"]
    with open_ws(stack, renewed.json()["path"], lease=renewed.json()["lease"]) as ws:
        ws_echoes(ws)


# -- open streams end with their lease --------------------------------------------------------


def closed_at(deadline: float, step) -> float | None:
    """Calls `step()` (which raises once the connection is closed) until it does; answers when,
    or None if it still works at `deadline`."""
    while time.time() < deadline:
        try:
            step()
        except (OSError, http.client.HTTPException, ConnectionClosed, TimeoutError):
            return time.time()
        time.sleep(0.2)
    return None


def test_an_expired_lease_closes_its_open_stream_and_websocket(stack):
    # Server-sent events: the upstream holds the stream open after its first event.
    symbol = unique("EXP")
    lease = buy_lease(stack, f"/lease/flash/{symbol}")
    with SSE(stack, lease["path"], lease=lease["lease"], timeout=20) as s:
        assert s.status == 200, (s.status, s.body)
        assert event_data(s.next_event())["seq"] == 1

        def read():
            if s.next_event() is None:
                raise ConnectionError("stream ended")

        ended = closed_at(lease["expires_at"] + 6, read)
    assert ended is not None, "the stream outlived its lease"
    assert lease["expires_at"] - 1 <= ended <= lease["expires_at"] + 3, (ended, lease["expires_at"])

    # A WebSocket session.
    room = unique("exp")
    lease = buy_lease(stack, f"/lease/short/{room}")
    with open_ws(stack, lease["path"], lease=lease["lease"]) as ws:
        ws_echoes(ws)
        ended = closed_at(lease["expires_at"] + 6, lambda: ws_echoes(ws))
    assert ended is not None, "the WebSocket outlived its lease"
    assert lease["expires_at"] - 1 <= ended <= lease["expires_at"] + 3, (ended, lease["expires_at"])


def test_a_renewal_keeps_the_open_websocket_open_until_the_new_expiry(stack):
    room = unique("keep")
    lease_path = f"/lease/short/{room}"
    old = buy_lease(stack, lease_path)
    with open_ws(stack, old["path"], lease=old["lease"]) as ws:
        ws_echoes(ws)
        wait_until_epoch(old["expires_at"] - SHORT_RENEWAL_WINDOW + 1.05)
        renewed = buy_lease(stack, lease_path, current=old["lease"])
        assert renewed["expires_at"] == old["expires_at"] + SHORT_LEASE_SECONDS
        # Past the old expiry (and the tick that would have closed it) the session goes on.
        assert closed_at(old["expires_at"] + 2.5, lambda: ws_echoes(ws)) is None
        ended = closed_at(renewed["expires_at"] + 6, lambda: ws_echoes(ws))
    assert ended is not None, "the WebSocket outlived its renewed lease"
    assert renewed["expires_at"] - 1 <= ended <= renewed["expires_at"] + 3


# -- L402 -----------------------------------------------------------------------------------


def test_lease_bought_with_l402(stack):
    symbol = unique("LN")
    lease, credential = buy_lease_l402(stack, f"/lease/ticker/{symbol}")
    assert lease["resource"] == "ticker" and lease["path"] == f"/stream/ticker/{symbol}"
    stream_two_events(stack, symbol, lease["path"], lease=lease["lease"])
    seen = stack.upstream_seen(f"/v1/ticker/{symbol}")
    assert "authorization" not in seen and LEASE_HEADER not in seen

    # One lease per L402 token: the same credential does not buy a second one.
    again = httpx.post(
        stack.url + f"/lease/ticker/{symbol}",
        headers={"authorization": authorization(credential["macaroon"], credential["preimage"])},
        timeout=30,
    )
    assert 400 <= again.status_code < 500, (again.status_code, again.text)
    assert LEASE_HEADER not in again.headers


# -- bad tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize("part", [0, 1], ids=["payload", "mac"])
def test_tampered_token_is_lease_invalid(stack, part):
    symbol = unique("XMR")
    lease = buy_lease(stack, f"/lease/ticker/{symbol}")
    bad = tamper(lease["lease"], part)
    stream_refused(stack, lease["path"], f"/lease/ticker/{symbol}", "lease_invalid", lease=bad)
    stream_refused(stack, f"{lease['path']}?t={bad}", f"/lease/ticker/{symbol}", "lease_invalid")
    assert hits(stack, f"/v1/ticker/{symbol}") == 0


def test_garbage_token_is_lease_invalid(stack):
    symbol = unique("BAD")
    for garbage in ["not-a-lease", "a.b"]:
        stream_refused(stack, f"/stream/ticker/{symbol}", f"/lease/ticker/{symbol}", "lease_invalid", lease=garbage)
    assert hits(stack, f"/v1/ticker/{symbol}") == 0


def test_ticker_lease_on_chat_is_lease_invalid(stack):
    name = unique("X")
    ticker = buy_lease(stack, f"/lease/ticker/{name}")
    upgrade_refused(stack, f"/ws/chat/{name}", f"/lease/chat/{name}", "lease_invalid", lease=ticker["lease"])
    # ... and a ticker lease for one symbol does not stream another.
    other = unique("Y")
    stream_refused(stack, f"/stream/ticker/{other}", f"/lease/ticker/{other}", "lease_invalid", lease=ticker["lease"])
    assert hits(stack, f"/v1/ws/{name}") == 0 and hits(stack, f"/v1/ticker/{other}") == 0


def test_the_upstream_path_of_a_rewritten_route_is_not_public(stack):
    # /stream/ticker/[symbol] is sent upstream as /v1/ticker/[symbol]: asking Envoy for the
    # upstream path directly must not stream for free.
    symbol = unique("PRIV")
    r = requests.get(stack.url + f"/v1/ticker/{symbol}", timeout=10)
    assert r.status_code == 404, r.text
    assert r.json()["error"] == "not_found"
    assert hits(stack, f"/v1/ticker/{symbol}") == 0
