"""The Lightning rail end to end: L402 and x402 over `bip122`, through the real Envoy binary, the
real wasm filter (or Envoy's ext_authz filter), the real verifier with its in-process `dev`
Lightning node (real signed BOLT11 invoices, paid through its dev-only pay endpoint), and real
client libraries: l402-requests, l402kit and @getalby/lightning-tools, with pymacaroons as an
independent macaroon implementation."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import time

import httpx
import pytest
from l402_requests.bolt11 import extract_amount_sats
from l402kit import L402Client as L402KitClient
from l402kit import L402Wallet
from pymacaroons import Verifier
from pymacaroons.exceptions import MacaroonInvalidSignatureException

from dev.pay import paying_session, receipt
from dev.pay_l402 import paying_client
from dev.stack import CHAIN, L402_SERVICE, LIGHTNING_NETWORK, NETWORK, PAYER, PAYER_KEY, ROOT, ROUTES
from lightning import (
    authorization,
    bip122_payment,
    caveats,
    deserialize,
    flip_char,
    l402_challenge,
    mint,
    offers,
    parse_challenge,
    payment_required,
    replace_caveat,
    serialize,
    sha256_hex,
    split_identifier,
    filter_key,
    token_root_key,
    www_authenticate,
)
from payments import decode_b64json

PRICE_SATS = {r.path: r.price_sats for r in ROUTES}
QUOTE_SATS = PRICE_SATS["/api/quote"]
SATS_SATS = PRICE_SATS["/api/sats"]
B64_STD = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
SVC = L402_SERVICE


def get(stack, path, method="GET", **kwargs) -> httpx.Response:
    return httpx.request(method, stack.url + path, timeout=30, **kwargs)


def challenged(stack, path="/api/quote", method="GET") -> httpx.Response:
    r = get(stack, path, method)
    assert r.status_code == 402, r.text
    return r


def paid_token(stack, path="/api/quote", method="GET") -> dict:
    """A fresh 402 on `path`, its invoice paid with the dev node: the L402 credential parts."""
    c = l402_challenge(challenged(stack, path, method))
    paid = stack.lightning_pay(c.invoice)
    return {
        "macaroon": c.macaroon,
        "invoice": c.invoice,
        "preimage": paid["preimage"],
        "payment_hash": paid["payment_hash"],
    }


def secret(stack) -> bytes:
    return stack.l402_secret.encode()


def assert_refused(response, reason):
    """402 (auto-paying clients only react to 402), the reason in the body, a fresh challenge."""
    assert response.status_code == 402, (response.status_code, response.text)
    expected = (reason,) if isinstance(reason, str) else reason
    assert response.json()["error"] in expected, response.text
    assert [v.split(" ", 1)[0] for v in www_authenticate(response)] == ["LSAT", "L402"]


def node_ln(script: str, stack, url: str, *args: str) -> dict:
    out = subprocess.run(
        ["node", str(CHAIN / script), url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LN_PAY_URL": stack.lightning_pay_url},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def quote_token(stack) -> dict:
    """One paid, reusable token for GET /api/quote, shared by the tampering cases."""
    return paid_token(stack)


# -- invoices on demand, bounded -------------------------------------------------------------

DEFAULT_INVOICES_PER_CLIENT = 10  # lightning.invoice_limits.per_client (verifier default)


def invoices_created(stack) -> int:
    with sqlite3.connect(stack.ledger_path) as db:
        return db.execute("SELECT count(*) FROM payment_events WHERE event = 'invoice_created'").fetchone()[0]


def test_unpaid_requests_mint_a_bounded_number_of_invoices(stack):
    """1,000 unpaid requests from one client (its own source address) mint at most the per-client
    limit of invoices: the same request gets its open invoice again; past the limit the 402 offers
    x402 alone, and a Lightning-only route answers 429 with Retry-After. Another client is not
    affected, and the ledger grows by the invoices minted, not by the requests."""
    before = invoices_created(stack)
    flood = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.23"), timeout=30)
    seen = {l402_challenge(challenged_by(flood, stack, "/api/sats")).invoice for _ in range(500)}
    assert len(seen) == 1
    lightning, x402_only = 0, 0
    for i in range(500):
        r = flood.post(stack.url + f"/lease/ticker/FLOOD{i}")
        assert r.status_code == 402, r.text
        if "www-authenticate" in r.headers:
            lightning += 1
        else:
            x402_only += 1
            assert {o["network"].split(":")[0] for o in payment_required(r)["accepts"]} == {"eip155"}
    assert lightning == DEFAULT_INVOICES_PER_CLIENT - 1  # one is the /api/sats invoice
    assert x402_only == 500 - lightning
    limited = flood.get(stack.url + "/api/once")  # Lightning only: nothing else to offer
    assert limited.status_code == 429, limited.text
    assert limited.json()["error"] == "invoice_limit"
    assert 500 <= int(limited.headers["retry-after"]) <= 600
    assert invoices_created(stack) - before == DEFAULT_INVOICES_PER_CLIENT
    # Someone else still gets a Lightning challenge.
    l402_challenge(challenged(stack, "/lease/ticker/FLOOD0", "POST"))


def challenged_by(client: httpx.Client, stack, path: str) -> httpx.Response:
    r = client.get(stack.url + path)
    assert r.status_code == 402, r.text
    return r


# -- the 402: both rails in one answer -----------------------------------------------------


def test_402_offers_x402_and_l402_together(stack):
    before = stack.upstream_hits().get("/api/quote", 0)
    r = challenged(stack, "/api/quote?symbol=TOLL")
    assert r.headers["cache-control"] == "no-store"
    assert "www-authenticate" in r.headers["access-control-expose-headers"].lower()

    # x402: the EVM rail and the Lightning rail in PAYMENT-REQUIRED.
    [evm] = offers(r, "eip155")
    assert evm["network"] == NETWORK and evm["amount"] == "1000"
    [ln] = offers(r, "bip122")
    assert ln["scheme"] == "exact"
    assert ln["network"] == LIGHTNING_NETWORK
    assert ln["amount"] == str(QUOTE_SATS * 1000)  # millisatoshis
    assert ln["asset"] == "BTC"
    assert ln["extra"]["paymentMethod"] == "lightning"
    assert ln["extra"]["invoice"].startswith("lnbcrt")

    # L402: two WWW-Authenticate values, LSAT first, then L402 with version/token after invoice.
    values = www_authenticate(r)
    assert len(values) == 2, values
    lsat, l402 = (parse_challenge(v) for v in values)
    assert lsat.scheme == "LSAT" and l402.scheme == "L402"
    assert re.fullmatch(r'LSAT macaroon="[^"]+", invoice="[^"]+"', values[0]), values[0]
    assert re.fullmatch(r'L402 macaroon="[^"]+", invoice="[^"]+", version="0", token="[^"]+"', values[1]), values[1]
    assert lsat.macaroon == l402.macaroon == l402.params["token"]
    assert lsat.invoice == l402.invoice
    assert B64_STD.match(l402.macaroon), "standard padded base64 (Aperture decodes strictly)"
    assert l402.invoice.startswith("lnbcrt")
    assert extract_amount_sats(l402.invoice) == QUOTE_SATS  # as a real client reads the BOLT11 amount
    assert stack.upstream_hits().get("/api/quote", 0) == before, "a 402 must not reach the upstream"


def test_lightning_only_route_offers_no_evm_rail(stack):
    r = challenged(stack, "/api/sats")
    assert offers(r, "eip155") == []
    [ln] = offers(r, "bip122")
    assert ln["amount"] == str(SATS_SATS * 1000)
    assert extract_amount_sats(l402_challenge(r).invoice) == SATS_SATS


def test_python_x402_client_pays_evm_rail_of_a_dual_rail_route(stack):
    r = challenged(stack)
    assert "payment-required" in r.headers and len(www_authenticate(r)) == 2
    payer0 = stack.balance(PAYER)
    session, client = paying_session(PAYER_KEY)
    paid = session.get(stack.url + "/api/quote", timeout=60)
    assert paid.status_code == 200, paid.text
    assert paid.json()["symbol"] == "TOLL"
    settle = receipt(client, paid)
    assert settle["success"] is True and settle["network"] == NETWORK
    assert stack.balance(PAYER) == payer0 - 1000


# -- real L402 clients pay -------------------------------------------------------------


def test_l402_requests_pays_and_reuses_its_token(stack):
    client, wallet = paying_client(stack.lightning_pay_url)
    r = client.get(stack.url + "/api/quote")
    assert r.status_code == 200, r.text
    assert r.json()["symbol"] == "TOLL"
    [payment] = wallet.payments
    assert sha256_hex(payment["preimage"]) == payment["payment_hash"]
    assert "authorization" not in stack.upstream_seen("/api/quote")

    # The token is reusable until it expires: the client's cached credential passes, no new payment.
    hits = stack.upstream_hits()["/api/quote"]
    again = client.get(stack.url + "/api/quote")
    assert again.status_code == 200, again.text
    assert len(wallet.payments) == 1
    assert stack.upstream_hits()["/api/quote"] == hits + 1


def test_l402_requests_pays_a_post(stack):
    client, wallet = paying_client(stack.lightning_pay_url)
    r = client.post(stack.url + "/api/echo", json={"hello": "lightning"})
    assert r.status_code == 200, r.text
    seen = r.json()
    assert json.loads(seen["body"]) == {"hello": "lightning"}
    assert "authorization" not in seen["headers"], "the L402 credential must be stripped"
    assert len(wallet.payments) == 1


class DevNodeKitWallet(L402Wallet):
    def __init__(self, stack):
        self.stack = stack
        self.paid: list[dict] = []

    def pay_invoice(self, bolt11: str) -> str:
        paid = self.stack.lightning_pay(bolt11)
        self.paid.append(paid)
        return paid["preimage"]


def test_l402kit_pays_a_lightning_only_route(stack):
    wallet = DevNodeKitWallet(stack)
    with L402KitClient(wallet=wallet) as client:
        r = client.get(stack.url + "/api/sats")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["paid_in"] == "sats"
    assert "authorization" not in body["headers"]
    assert len(wallet.paid) == 1


def test_getalby_fetch_with_l402_pays(stack):
    out = node_ln("pay-l402-alby.mjs", stack, stack.url + "/api/sats")
    assert out["status"] == 200, out
    body = json.loads(out["body"])
    assert body["paid_in"] == "sats"
    assert "authorization" not in body["headers"]
    payment = out["payment"]
    assert payment["paid"] is True and payment["amountSat"] == SATS_SATS
    # lightning-tools answers in the scheme of the first challenge: our LSAT line.
    assert payment["credentials"]["value"].startswith("LSAT ")


def test_getalby_fetch_with_x402_pays_the_lightning_offer(stack):
    """@getalby/lightning-tools' x402 helper pays the bip122 entry (`extra.paymentMethod`)."""
    before = stack.upstream_hits().get("/api/sats", 0)
    out = node_ln("pay-l402-alby.mjs", stack, stack.url + "/api/sats", "--x402")
    assert out["status"] == 200, out
    assert out["receipt"]["success"] is True
    assert out["receipt"]["network"] == LIGHTNING_NETWORK
    assert out["receipt"]["transaction"] == sha256_hex(out["payment"]["preimage"])
    assert stack.upstream_hits()["/api/sats"] == before + 1


# -- the macaroon, checked by an independent implementation ----------------------------


def test_pymacaroons_parses_and_verifies_our_macaroon(stack):
    r = challenged(stack)
    c = l402_challenge(r)
    m = deserialize(c.macaroon)
    assert m.location == "lsat"
    version, payment_hash, token_id = split_identifier(m.identifier_bytes)
    assert version == 0 and len(token_id) == 32
    paid = stack.lightning_pay(c.invoice)  # BOLT11 payment hash, as the node reports it
    assert payment_hash.hex() == paid["payment_hash"]
    assert sha256_hex(paid["preimage"]) == paid["payment_hash"]

    now = int(time.time())
    seen = []

    def ours(caveat: str) -> bool:
        seen.append(caveat)
        condition, _, value = caveat.partition("=")
        if condition == "services":
            return value == f"{SVC}:0"
        if condition == f"{SVC}_capabilities":
            return value == ""
        if condition == f"{SVC}_valid_until":
            return now < int(value) <= now + 3600 + 60
        if condition == f"{SVC}_path":
            return value == "/api/quote"
        if condition == f"{SVC}_method":
            return value == "GET"
        if condition == f"{SVC}_key":  # which filter key minted it: sha256(key)[:4], hex
            return value == hashlib.sha256(filter_key(secret(stack))).digest()[:4].hex()
        return False

    v = Verifier()
    v.satisfy_general(ours)
    assert v.verify(m, token_root_key(secret(stack), m.identifier_bytes)) is True
    assert seen == caveats(m), seen
    assert seen[:2] == [f"services={SVC}:0", f"{SVC}_capabilities="], "Aperture's caveats, in its order"
    assert f"{SVC}_path=/api/quote" in seen and f"{SVC}_method=GET" in seen, "bound to the request"

    # Another root secret derives another key: the signature must not verify.
    with pytest.raises(MacaroonInvalidSignatureException):
        other = Verifier()
        other.satisfy_general(lambda _: True)
        other.verify(m, token_root_key(os.urandom(32).hex().encode(), m.identifier_bytes))

    # And the token it verified is the one Envoy accepts.
    ok = get(stack, "/api/quote", headers={"Authorization": authorization(c.macaroon, paid["preimage"])})
    assert ok.status_code == 200, ok.text


def test_token_minted_by_pymacaroons_with_the_derived_key_is_accepted(stack, quote_token):
    """Key compatibility: Python derives the key and mints; the filter accepts the token."""
    m = deserialize(quote_token["macaroon"])
    ours = mint(secret(stack), m.identifier_bytes, caveats(m))
    assert ours == quote_token["macaroon"], "same identifier, key and caveats: byte-identical token"
    fresh = mint(secret(stack), m.identifier_bytes, replace_caveat(caveats(m), f"{SVC}_valid_until", str(int(time.time()) + 120)))
    r = get(stack, "/api/quote", headers={"Authorization": authorization(fresh, quote_token["preimage"])})
    assert r.status_code == 200, r.text


# -- refused credentials: a reason, a fresh challenge, never the upstream ---------------


def third_party(token: dict) -> str:
    m = deserialize(token["macaroon"])
    m.add_third_party_caveat("https://auth.example", os.urandom(32), "discharge-me")
    return serialize(m)


def attenuated(token: dict, caveat: str) -> str:
    m = deserialize(token["macaroon"])
    m.add_first_party_caveat(caveat)
    return serialize(m)


def reminted(stack, token: dict, condition: str, value: str) -> str:
    m = deserialize(token["macaroon"])
    return mint(secret(stack), m.identifier_bytes, replace_caveat(caveats(m), condition, value))


# name -> (path, method, build the Authorization value from (stack, token), expected reason(s))
BAD_CREDENTIALS = {
    "tampered_signature": (
        "/api/quote",
        "GET",
        lambda s, t: authorization(flip_char(t["macaroon"], len(t["macaroon"].rstrip("=")) - 10), t["preimage"]),
        "l402_bad_signature",
    ),
    "tampered_caveat": (
        "/api/quote",
        "GET",
        lambda s, t: authorization(
            serialize_with(t["macaroon"], f"{SVC}_valid_until=", f"{SVC}_valid_until=9"), t["preimage"]
        ),
        "l402_bad_signature",
    ),
    "wrong_preimage": (
        "/api/quote",
        "GET",
        lambda s, t: authorization(t["macaroon"], os.urandom(32).hex()),
        "l402_wrong_preimage",
    ),
    "expired_minted_with_derived_key": (
        "/api/quote",
        "GET",
        lambda s, t: authorization(reminted(s, t, f"{SVC}_valid_until", str(int(time.time()) - 60)), t["preimage"]),
        "l402_expired",
    ),
    "expired_by_attenuation": (
        "/api/quote",
        "GET",
        lambda s, t: authorization(attenuated(t, f"{SVC}_valid_until={int(time.time()) - 1}"), t["preimage"]),
        "l402_expired",
    ),
    "other_service": (
        "/api/quote",
        "GET",
        lambda s, t: authorization(reminted(s, t, "services", "otherservice:0"), t["preimage"]),
        "l402_wrong_service",
    ),
    "other_path": (
        "/api/sats",
        "GET",
        lambda s, t: authorization(t["macaroon"], t["preimage"]),
        "l402_wrong_path",
    ),
    "other_route_and_method": (
        "/api/echo",
        "POST",
        lambda s, t: authorization(t["macaroon"], t["preimage"]),
        ("l402_wrong_path", "l402_wrong_method"),
    ),
    "garbage": ("/api/quote", "GET", lambda s, t: "L402 this-is-not-a-macaroon", "l402_bad_header"),
    "garbage_base64": (
        "/api/quote",
        "GET",
        lambda s, t: authorization(base64.b64encode(b"\x02garbage").decode(), t["preimage"]),
        "l402_bad_macaroon",
    ),
    "third_party_caveat": (
        "/api/quote",
        "GET",
        lambda s, t: authorization(third_party(t), t["preimage"]),
        "l402_third_party_caveat",
    ),
}


def serialize_with(macaroon_b64: str, old: str, new: str) -> str:
    """The macaroon's binary form with one caveat's bytes edited (same length), re-encoded:
    the signature no longer covers what the caveat says."""
    raw = base64.b64decode(macaroon_b64)
    i = raw.index(old.encode())
    j = raw.index(b"\x00", i)  # the caveat packet ends before its EOS
    value = raw[i + len(old) : j]
    edited = new.encode() + value[len(new) - len(old) :]
    assert len(edited) == j - i and edited != raw[i:j]
    return base64.b64encode(raw[:i] + edited + raw[j:]).decode()


@pytest.mark.parametrize("case", sorted(BAD_CREDENTIALS))
def test_bad_l402_credential_is_refused_with_its_reason(stack, quote_token, case):
    path, method, build, reason = BAD_CREDENTIALS[case]
    header = build(stack, quote_token)
    hits = stack.upstream_hits()
    r = get(stack, path, method, headers={"Authorization": header})
    assert_refused(r, reason)
    assert stack.upstream_hits() == hits, "a refused credential must never reach the upstream"


def test_conflicting_lsat_and_l402_credentials_are_refused(stack, quote_token):
    other = paid_token(stack)
    hits = stack.upstream_hits()
    r = get(
        stack,
        "/api/quote",
        headers=[
            ("Authorization", authorization(quote_token["macaroon"], quote_token["preimage"], "LSAT")),
            ("Authorization", authorization(other["macaroon"], other["preimage"], "L402")),
        ],
    )
    assert_refused(r, "l402_conflicting_credentials")
    assert stack.upstream_hits() == hits


def test_aperture_style_double_authorization_is_accepted(stack, quote_token):
    """Aperture's SetHeader sends the same credential as LSAT then L402: one credential."""
    r = get(
        stack,
        "/api/quote",
        headers=[
            ("Authorization", authorization(quote_token["macaroon"], quote_token["preimage"], "LSAT")),
            ("Authorization", authorization(quote_token["macaroon"], quote_token["preimage"], "L402")),
        ],
    )
    assert r.status_code == 200, r.text


def test_other_authorization_schemes_are_just_unpaid(stack):
    hits = stack.upstream_hits()
    r = get(stack, "/api/quote", headers={"Authorization": "Bearer abc.def.ghi"})
    assert r.status_code == 402
    assert len(www_authenticate(r)) == 2
    assert stack.upstream_hits() == hits


# -- single-use routes -----------------------------------------------------------------


def test_single_use_token_is_accepted_once(stack):
    token = paid_token(stack, "/api/once")
    header = {"Authorization": authorization(token["macaroon"], token["preimage"])}
    before = stack.upstream_hits().get("/api/once", 0)
    first = get(stack, "/api/once", headers=header)
    assert first.status_code == 200, first.text
    second = get(stack, "/api/once", headers=header)
    assert_refused(second, "l402_token_already_used")
    assert stack.upstream_hits()["/api/once"] == before + 1


# -- one Lightning payment, one purchase, whichever rail presents it -------------------------


def both_rails(stack, path: str) -> tuple[dict, dict]:
    """One 402 on `path` and its invoice paid once: the L402 header and the x402 `bip122` header
    presenting that same payment."""
    r = challenged(stack, path)
    c = l402_challenge(r)
    [offer] = offers(r, "bip122")
    assert offer["extra"]["invoice"] == c.invoice
    paid = stack.lightning_pay(c.invoice)
    return {"Authorization": authorization(c.macaroon, paid["preimage"])}, {"PAYMENT-SIGNATURE": bip122_payment(offer)}


@pytest.mark.parametrize("first", ["l402", "bip122"])
def test_a_single_use_payment_buys_one_request_on_either_rail(stack, first):
    l402, x402 = both_rails(stack, "/api/once")
    spend, again = (l402, x402) if first == "l402" else (x402, l402)
    before = stack.upstream_hits().get("/api/once", 0)
    assert get(stack, "/api/once", headers=spend).status_code == 200
    second = get(stack, "/api/once", headers=again)
    assert second.status_code == 402, second.text
    assert stack.upstream_hits()["/api/once"] == before + 1


def test_a_reusable_tokens_payment_buys_nothing_over_bip122(stack):
    l402, x402 = both_rails(stack, "/api/quote")
    before = stack.upstream_hits().get("/api/quote", 0)
    for _ in range(3):  # reusable: every request until it expires
        assert get(stack, "/api/quote", headers=l402).status_code == 200
    r = get(stack, "/api/quote", headers=x402)
    assert r.status_code == 402, r.text
    assert payment_required(r)["error"] == "invoice_already_used"
    assert stack.upstream_hits()["/api/quote"] == before + 3


def test_an_invoice_spent_over_bip122_makes_its_l402_token_worthless(stack):
    l402, x402 = both_rails(stack, "/api/quote")
    before = stack.upstream_hits().get("/api/quote", 0)
    assert get(stack, "/api/quote", headers=x402).status_code == 200
    r = get(stack, "/api/quote", headers=l402)
    assert_refused(r, "l402_token_already_used")
    assert stack.upstream_hits()["/api/quote"] == before + 1


def test_one_payment_buys_one_lease_on_either_rail(stack):
    l402, x402 = both_rails(stack, "/lease/ticker/ETH")
    first = get(stack, "/lease/ticker/ETH", headers=l402)
    assert first.status_code == 200, first.text
    second = get(stack, "/lease/ticker/ETH", headers=x402)
    assert second.status_code == 402, second.text


def test_an_invoice_buys_the_path_it_was_sold_for_only(stack):
    r = challenged(stack, "/lease/ticker/ETH")
    [offer] = offers(r, "bip122")
    stack.lightning_pay(offer["extra"]["invoice"])
    other = get(stack, "/lease/ticker/BTC", headers={"PAYMENT-SIGNATURE": bip122_payment(offer)})
    assert other.status_code == 402, other.text
    assert payment_required(other)["error"] == "invoice_other_path"
    # Still good where it was sold.
    own = get(stack, "/lease/ticker/ETH", headers={"PAYMENT-SIGNATURE": bip122_payment(offer)})
    assert own.status_code == 200, own.text


# -- x402 over Lightning (bip122), with our own client ------------------------------------


def test_x402_over_lightning_pays_once(stack):
    [offer] = offers(challenged(stack, "/api/sats"), "bip122")
    paid = stack.lightning_pay(offer["extra"]["invoice"])
    header = {"PAYMENT-SIGNATURE": bip122_payment(offer)}
    before = stack.upstream_hits().get("/api/sats", 0)

    r = get(stack, "/api/sats", headers=header)
    assert r.status_code == 200, r.text
    assert "payment-signature" not in r.json()["headers"]
    settle = decode_b64json(r.headers["payment-response"])
    assert settle["success"] is True
    assert settle["transaction"] == paid["payment_hash"]
    assert settle["network"] == LIGHTNING_NETWORK
    assert settle["payer"] == "anonymous"

    again = get(stack, "/api/sats", headers=header)
    assert again.status_code == 402, again.text
    assert payment_required(again)["error"] == "invoice_already_used"
    assert stack.upstream_hits()["/api/sats"] == before + 1

    with sqlite3.connect(stack.ledger_path) as db:
        settled = db.execute(
            'select network, asset, amount, payer from payment_events where event = ? and "transaction" = ?',
            ("settled", paid["payment_hash"]),
        ).fetchall()
    assert settled == [(LIGHTNING_NETWORK, "BTC", str(SATS_SATS * 1000), "anonymous")]


def test_x402_over_lightning_refuses_an_unpaid_invoice(stack):
    [offer] = offers(challenged(stack, "/api/sats"), "bip122")
    hits = stack.upstream_hits()
    r = get(stack, "/api/sats", headers={"PAYMENT-SIGNATURE": bip122_payment(offer)})
    assert r.status_code == 402, r.text
    assert payment_required(r)["error"] == "invoice_not_paid"
    assert stack.upstream_hits() == hits


def test_x402_over_lightning_refuses_another_routes_invoice(stack):
    """A paid invoice minted for /api/quote (10 sats) does not buy /api/sats (21 sats)."""
    [offer] = offers(challenged(stack, "/api/quote"), "bip122")
    stack.lightning_pay(offer["extra"]["invoice"])
    [sats_offer] = offers(challenged(stack, "/api/sats"), "bip122")
    forged = {**sats_offer, "extra": {**sats_offer["extra"], "invoice": offer["extra"]["invoice"]}}
    hits = stack.upstream_hits()
    for accepted in (offer, forged):
        r = get(stack, "/api/sats", headers={"PAYMENT-SIGNATURE": bip122_payment(accepted)})
        assert r.status_code == 402, r.text
        assert payment_required(r)["error"] == "invoice_amount_mismatch"
    assert stack.upstream_hits() == hits


# -- verifier down: L402 still verified in the filter, the 402 degrades to x402 ----------


def test_verifier_down_l402_still_passes_and_402_degrades_to_x402(stack):
    token = paid_token(stack)
    header = {"Authorization": authorization(token["macaroon"], token["preimage"])}
    stack.stop_verifier()
    try:
        before = stack.upstream_hits().get("/api/quote", 0)
        r = get(stack, "/api/quote", headers=header)
        assert r.status_code == 200, r.text
        assert stack.upstream_hits()["/api/quote"] == before + 1

        unpaid = get(stack, "/api/quote")
        assert unpaid.status_code == 402
        assert "payment-required" in unpaid.headers
        assert www_authenticate(unpaid) == []
        assert offers(unpaid, "bip122") == [] and len(offers(unpaid, "eip155")) == 1

        # A Lightning-only route has nothing to offer without the verifier: 503, never a free pass.
        sats_hits = stack.upstream_hits().get("/api/sats", 0)
        down = get(stack, "/api/sats")
        assert down.status_code == 503 and down.headers.get("retry-after"), down.text
        assert stack.upstream_hits().get("/api/sats", 0) == sats_hits
    finally:
        stack.start_verifier()
    client, _ = paying_client(stack.lightning_pay_url)
    assert client.get(stack.url + "/api/quote").status_code == 200


# -- ext_authz-only mode -------------------------------------------------------------------


def test_ext_authz_mode_l402_requests_pays(authz_stack):
    r = challenged(authz_stack)
    assert [v.split(" ", 1)[0] for v in www_authenticate(r)] == ["LSAT", "L402"]
    assert len(offers(r, "eip155")) == 1 and len(offers(r, "bip122")) == 1
    client, wallet = paying_client(authz_stack.lightning_pay_url)
    paid = client.get(authz_stack.url + "/api/quote")
    assert paid.status_code == 200, paid.text
    assert paid.json()["symbol"] == "TOLL"
    assert len(wallet.payments) == 1
    assert "authorization" not in authz_stack.upstream_seen("/api/quote")


def test_ext_authz_mode_refuses_bad_tokens_and_reuse(authz_stack):
    hits = authz_stack.upstream_hits()
    token = paid_token(authz_stack)
    bad = get(authz_stack, "/api/quote", headers={"Authorization": authorization(token["macaroon"], os.urandom(32).hex())})
    assert_refused(bad, "l402_wrong_preimage")
    assert authz_stack.upstream_hits() == hits

    once = paid_token(authz_stack, "/api/once")
    header = {"Authorization": authorization(once["macaroon"], once["preimage"])}
    assert get(authz_stack, "/api/once", headers=header).status_code == 200
    assert_refused(get(authz_stack, "/api/once", headers=header), "l402_token_already_used")

    [offer] = offers(challenged(authz_stack, "/api/sats"), "bip122")
    paid = authz_stack.lightning_pay(offer["extra"]["invoice"])
    r = get(authz_stack, "/api/sats", headers={"PAYMENT-SIGNATURE": bip122_payment(offer)})
    assert r.status_code == 200, r.text
    assert decode_b64json(r.headers["payment-response"])["transaction"] == paid["payment_hash"]


# -- the helpers themselves (no stack) --------------------------------------------------


def test_macaroon_helpers_match_the_cross_verified_vector():
    """tests/lightning.py against the fact sheet's vector (Go, Rust and pymacaroons agree)."""
    from pymacaroons import MACAROON_V2, Macaroon

    preimage = bytes([0x42]) * 32
    identifier = b"\x00\x00" + hashlib.sha256(preimage).digest() + bytes([0xAB]) * 32
    m = Macaroon(location="lsat", identifier=identifier, key=bytes([0x5A]) * 32, version=MACAROON_V2)
    for c in ["services=svc:0", "svc_capabilities=", "svc_valid_until=4102444800"]:
        m.add_first_party_caveat(c)
    wire = serialize(m)
    assert wire.startswith("AgEEbHNhdAJCAABCXtTko2sw6iG5") and wire.endswith("EkJv5a1S")
    assert deserialize(wire).signature == "40c1053547466732697b0d3eb8dd6a924022d73ab47f500bde4612426fe5ad52"
    assert split_identifier(identifier)[1].hex() == "425ed4e4a36b30ea21b90e21c712c649e8214c29b7eaf68089d1039c6e55384c"
    c = parse_challenge('L402 macaroon="bWFj", invoice="lnbcrt1", version="0", token="bWFj"')
    assert (c.scheme, c.macaroon, c.invoice, c.params["token"]) == ("L402", "bWFj", "lnbcrt1", "bWFj")
