"""Lease helpers for the end-to-end tests (docs/leases.md): buy a lease with the official x402
Python client or with L402 through the dev Lightning node, read server-sent events off a raw HTTP
connection one event at a time (so a test can prove the first event arrived while the upstream
was still streaming), and open WebSockets with the `websockets` sync client.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid

import httpx
import requests
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from dev.pay import paying_session, receipt
from dev.stack import PAYER_KEY
from lightning import authorization, l402_challenge

LEASE_HEADER = "x-x402-lease"
LEASE_QUERY = "t"
LEASE_FIELDS = {"lease", "expires_at", "expires_in", "resource", "method", "path", "url", "single_use", "renewable"}


def unique(prefix: str) -> str:
    """A fresh path segment (symbol, room): tests never share upstream gates or counters."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


# -- buying -----------------------------------------------------------------------------------


def pay_lease(stack, lease_path: str, *, key: str = PAYER_KEY, current: str | None = None) -> requests.Response:
    """POSTs the lease path with the official x402 client, which pays the 402 challenge. With
    `current` (a lease token) this is a renewal. Answers the final response, whatever it is."""
    session, client = paying_session(key)
    headers = {LEASE_HEADER: current} if current else {}
    r = session.post(stack.url + lease_path, headers=headers, timeout=60)
    r.x402_receipt = receipt(client, r)  # None when nothing was settled
    return r


def buy_lease(stack, lease_path: str, **kwargs) -> dict:
    """A lease paid over x402: the 200 JSON (checked against the response header and receipt)."""
    r = pay_lease(stack, lease_path, **kwargs)
    assert r.status_code == 200, (r.status_code, r.text)
    lease = r.json()
    assert LEASE_FIELDS <= lease.keys(), lease
    assert r.headers[LEASE_HEADER] == lease["lease"]
    assert r.x402_receipt and r.x402_receipt["success"] is True, r.headers
    return lease


def buy_lease_l402(stack, lease_path: str) -> tuple[dict, dict]:
    """A lease paid over L402: the 402's invoice is paid with the dev node, then the lease path is
    POSTed again with `Authorization: L402 <macaroon>:<preimage>`. Answers (lease JSON, the
    credential parts) so a test can try the same L402 token again."""
    challenged = httpx.post(stack.url + lease_path, timeout=30)
    assert challenged.status_code == 402, challenged.text
    c = l402_challenge(challenged)
    paid = stack.lightning_pay(c.invoice)
    credential = {"macaroon": c.macaroon, "preimage": paid["preimage"], "payment_hash": paid["payment_hash"]}
    r = httpx.post(
        stack.url + lease_path,
        headers={"authorization": authorization(c.macaroon, paid["preimage"])},
        timeout=30,
    )
    assert r.status_code == 200, (r.status_code, r.text)
    lease = r.json()
    assert LEASE_FIELDS <= lease.keys(), lease
    assert r.headers[LEASE_HEADER] == lease["lease"]
    return lease, credential


def wait_until_epoch(t: float):
    """Sleeps until the wall clock (what `expires_at` is measured in) reaches `t`."""
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def tamper(token: str, part: int = 0) -> str:
    """`token` with one base64url character changed in the middle of its payload (part 0) or its
    MAC (part 1): still well-formed, no longer authentic."""
    pieces = token.split(".")
    assert len(pieces) == 2, token
    piece = pieces[part]
    i = len(piece) // 2
    pieces[part] = piece[:i] + ("A" if piece[i] != "A" else "B") + piece[i + 1 :]
    return ".".join(pieces)


def error_of(body: bytes | bytearray | str) -> str | None:
    """The JSON `error` of a refusal body (None if it is not JSON)."""
    try:
        return json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None


# -- server-sent events -----------------------------------------------------------------------


class SSE:
    """A GET through Envoy read one event at a time off the socket (http.client, no buffering
    beyond the current line). `status` and `headers` are known on construction; a non-200's body
    is read at once into `body`. A read that waits longer than `timeout` raises TimeoutError, so
    a proxy that buffers the stream fails the test instead of hanging it."""

    def __init__(self, stack, path: str, *, lease: str | None = None, headers: dict | None = None, timeout=5.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", stack.ports.envoy, timeout=timeout)
        sent = {"accept": "text/event-stream", **(headers or {})}
        if lease is not None:
            sent[LEASE_HEADER] = lease
        self.conn.request("GET", path, headers=sent)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers  # case-insensitive
        self.body = b""
        if self.status != 200:
            self.body = self.response.read()
            self.close()

    @property
    def error(self) -> str | None:
        return error_of(self.body)

    def json(self):
        return json.loads(self.body)

    def next_event(self) -> dict | None:
        """The next event as {"id", "event", "data"} (fields present as sent), or None at the end
        of the stream. Comment lines are skipped."""
        event: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                return event or None
            line = line.decode().rstrip("\r\n")
            if not line:
                if event:
                    return event
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            event[name] = event[name] + "\n" + value if name == "data" and name in event else value

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def event_data(event: dict | None) -> dict:
    assert event is not None, "the stream ended early"
    return json.loads(event["data"])


# -- WebSockets -------------------------------------------------------------------------------


def ws_url(stack, path: str) -> str:
    return f"ws://127.0.0.1:{stack.ports.envoy}{path}"


def open_ws(stack, path: str, *, lease: str | None = None, headers: dict | None = None) -> ClientConnection:
    """A WebSocket through Envoy (the lease in `x-x402-lease` if given; put it in the path as
    `?t=` for the query fallback). Raises websockets' InvalidStatus if the upgrade is refused."""
    sent = dict(headers or {})
    if lease is not None:
        sent[LEASE_HEADER] = lease
    return ws_connect(
        ws_url(stack, path),
        additional_headers=sent,
        proxy=None,  # loopback, never through a proxy from the environment
        compression=None,
        open_timeout=10,
        close_timeout=5,
    )


def ws_refused(stack, path: str, **kwargs):
    """The handshake response of an upgrade that must be refused (websockets' http11.Response:
    status_code, headers, body)."""
    try:
        ws = open_ws(stack, path, **kwargs)
    except InvalidStatus as e:
        return e.response
    ws.close()
    raise AssertionError(f"the WebSocket upgrade on {path} was accepted")


def ws_echoes(ws: ClientConnection) -> None:
    """Text and binary messages come back unchanged."""
    ws.send("hello tollway")
    assert ws.recv(timeout=5) == "hello tollway"
    blob = bytes(range(256)) * 4
    ws.send(blob)
    assert ws.recv(timeout=5) == blob
