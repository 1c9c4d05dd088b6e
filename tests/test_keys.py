"""The filter's token keys (whoever holds them can mint L402 tokens and leases) never appear where
operators and meshes read configuration, and a key rotation keeps tokens minted before it working
through its window, and only that long. Through the real Envoy, filter and verifier."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from dev.stack import Stack, http_get
from leases import buy_lease, error_of, open_ws, unique, ws_echoes, ws_refused
from lightning import authorization, l402_challenge


def key_material(stack) -> list[str]:
    """Every key and secret an Envoy-side reader must not find: the filter keys and the root
    secrets they derive from."""
    keys = [entry.split(":")[1] for entry in stack.filter_keys().split(",") if entry]
    assert len(keys) == 2, keys  # one L402 key, one lease key
    return keys + [stack.l402_secret, stack.lease_secret]


def test_no_key_in_the_rendered_bootstrap_or_envoy_config_dump(stack):
    bootstrap = (stack.run_dir / f"envoy-{stack.mode}.yaml").read_text()
    status, raw = http_get(f"{stack.admin_url}/config_dump", timeout=10)
    assert status == 200
    dump = raw.decode()
    assert "TOLLWAY_FILTER_KEYS" in bootstrap  # the variable is named, its value is not there
    for secret in key_material(stack):
        assert secret not in bootstrap
        assert secret not in dump
    # Nothing key-shaped is left for a reader to try either: no 64-hex-character value at all.
    assert not re.search(r"\b[0-9a-fA-F]{64}\b", bootstrap)


@pytest.fixture(scope="module")
def rotating(tmp_path_factory):
    """A stack of its own: the rotation restarts its verifier and Envoy."""
    with Stack(tmp_path_factory.mktemp("stack-rotation"), mode="filter") as s:
        yield s


def l402_token(stack, path="/api/quote") -> str:
    c = l402_challenge(httpx.get(stack.url + path, timeout=30))
    paid = stack.lightning_pay(c.invoice)
    return authorization(c.macaroon, paid["preimage"])


def test_tokens_minted_before_a_rotation_work_through_the_window_and_stop_after(rotating):
    stack = rotating
    token = l402_token(stack)
    assert httpx.get(stack.url + "/api/quote", headers={"authorization": token}, timeout=30).status_code == 200
    room = unique("rot")
    lease = buy_lease(stack, f"/lease/chat/{room}")

    window = 20
    until = int(time.time()) + window
    stack.rotate_secrets(until)
    assert time.time() < until - 2, "the restart took the whole window"

    # Inside the window: the old token and the old lease still work (through the new keys).
    r = httpx.get(stack.url + "/api/quote", headers={"authorization": token}, timeout=30)
    assert r.status_code == 200, r.text
    with open_ws(stack, lease["path"], lease=lease["lease"]) as ws:
        ws_echoes(ws)
    # New tokens and leases are minted with the new key and work too.
    fresh = l402_token(stack)
    assert httpx.get(stack.url + "/api/quote", headers={"authorization": fresh}, timeout=30).status_code == 200
    fresh_lease = buy_lease(stack, f"/lease/chat/{unique('rot')}")

    # After the window: the old ones are refused, the new ones still work.
    while time.time() < until + 0.5:
        time.sleep(0.2)
    r = httpx.get(stack.url + "/api/quote", headers={"authorization": token}, timeout=30)
    assert r.status_code == 402, r.text
    assert r.json()["error"] == "l402_bad_signature", r.text
    refused = ws_refused(stack, lease["path"], lease=lease["lease"])
    # Refused: as expired where the filter had it open already (a lease ends with its key), as
    # invalid where it is opened anew (its key is gone).
    assert refused.status_code == 402
    assert error_of(refused.body) in ("lease_expired", "lease_invalid"), refused.body
    assert httpx.get(stack.url + "/api/quote", headers={"authorization": fresh}, timeout=30).status_code == 200
    with open_ws(stack, fresh_lease["path"], lease=fresh_lease["lease"]) as ws:
        ws_echoes(ws)
