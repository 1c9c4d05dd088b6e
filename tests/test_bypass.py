"""The bypass regression suite (issue 14): real web frameworks behind Tollway, and no variant of a
paid path may return paid content without payment.

Each framework in FRAMEWORKS (dev/frameworks/) serves the paid routes of dev/stack.py's ROUTES
with its own routing and default settings, and answers them with a marker: an `x-paid-content`
header and a `{"paid_content": "<route>"}` body. A whole stack runs per framework with that app as
its upstream. Every variant of tests/bypass_variants.txt, expanded over every paid route, is sent
unpaid (raw sockets and a raw HTTP/2 connection, so no client library normalises the path on the
way) and must not come back with the marker, whatever its status. All leaks of one framework are
reported in one assertion.

Controls, so a green run means something: the app answers the marker on every paid path when
asked directly, each transport gets the free route through Envoy (h2c: or is refused), and the
canonical request paid (x402 with the official client, L402 with the dev node) gets the marker
through Tollway.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx
import pytest

from dev.pay import paying_session
from dev.stack import PAYER_KEY, ROOT, ROUTES, Stack
from lightning import authorization, l402_challenge

FRAMEWORKS_DIR = ROOT / "dev" / "frameworks"
EXPRESS_APP = FRAMEWORKS_DIR / "express" / "app.js"

# name: the upstream's command (run from the repo root; its port comes in $PORT).
FRAMEWORKS = {
    "express4": ["node", EXPRESS_APP, "--express", "4"],
    "express5": ["node", EXPRESS_APP, "--express", "5"],
    "express4-method-override": ["node", EXPRESS_APP, "--express", "4", "--method-override"],
    "fastapi": [sys.executable, FRAMEWORKS_DIR / "fastapi_app.py"],
    "flask": [sys.executable, FRAMEWORKS_DIR / "flask_app.py"],
}

VARIANTS_FILE = Path(__file__).with_name("bypass_variants.txt")
MARKER_BODY = b"paid_content"
MARKER_HEADER = b"x-paid-content"
PARAM_VALUE = "toll"  # fills every [param] of a route's path
TIMEOUT = 10.0  # seconds for one variant's whole answer

# -- targets: what every variant is expanded over ------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str  # the route, or "<route> (upstream path)"
    methods: tuple[str, ...]
    path: str  # what a client sends
    upstream: str  # the path the app serves it on (after the route's rewrite)


def fill(template: str) -> str:
    return re.sub(r"\[[^\]/]+\]", PARAM_VALUE, template)


def targets() -> list[Target]:
    """Every paid route's path, then the upstream path of every rewritten route, asked for
    directly (not public: it must not serve paid content either)."""
    paid = [r for r in ROUTES if not r.free]
    found = [Target(r.name, tuple(r.methods), fill(r.path), fill(r.upstream_path or r.path)) for r in paid]
    seen = set()
    for r in paid:
        if r.upstream_path and fill(r.upstream_path) not in seen:
            seen.add(fill(r.upstream_path))
            found.append(Target(f"{r.name} (upstream path)", tuple(r.methods), fill(r.upstream_path), fill(r.upstream_path)))
    return found


# -- variants: the data file, expanded -------------------------------------------------------


def _split(path: str) -> tuple[str, str]:
    head, _, leaf = path.rpartition("/")
    return head, leaf


def _enc(c: str, upper_hex: bool = False) -> str:
    code = f"%{ord(c):02x}"
    return code.upper() if upper_hex else code


def _enc_first(path: str, upper: bool) -> str:
    head, leaf = _split(path)
    return f"{head}/{_enc(leaf[0].upper() if upper else leaf[0])}{leaf[1:]}"


def _enc_dir_first(path: str, upper: bool) -> str:
    first = path[1]
    return f"/{_enc(first.upper() if upper else first)}{path[2:]}"


def _enc_last(path: str, upper_hex: bool) -> str:
    head, leaf = _split(path)
    return head + "/" + "".join(_enc(c, upper_hex) for c in leaf)


def _upper_last(path: str) -> str:
    head, leaf = _split(path)
    return f"{head}/{leaf.upper()}"


PATH_FILTERS = {
    "upper": str.upper,
    "title": lambda p: "/".join(s[:1].upper() + s[1:] for s in p.split("/")),
    "upper_last": _upper_last,
    "double_slashes": lambda p: p.replace("/", "//"),
    "enc_first": lambda p: _enc_first(p, upper=False),
    "enc_first_upper": lambda p: _enc_first(p, upper=True),
    "enc_dir_first": lambda p: _enc_dir_first(p, upper=False),
    "enc_dir_first_upper": lambda p: _enc_dir_first(p, upper=True),
    "enc_last_lower_hex": lambda p: _enc_last(p, upper_hex=False),
    "enc_last_upper_hex": lambda p: _enc_last(p, upper_hex=True),
}
METHOD_FILTERS = {"lower": str.lower}
TRANSPORTS = ("h1", "abs", "h2c")
PLACEHOLDER = re.compile(r"\{(\w+)(?::(\w+))?\}")


@dataclass(frozen=True)
class Variant:
    line: int
    text: str  # the line as written
    transport: str
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]


def load_variants() -> list[Variant]:
    variants = []
    for n, raw in enumerate(VARIANTS_FILE.read_text().splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        request, *header_fields = text.split(" | ")
        fields = request.split()
        assert len(fields) == 3, f"{VARIANTS_FILE.name}:{n}: want TRANSPORT METHOD TARGET, got {text!r}"
        transport, method, target = fields
        assert transport in TRANSPORTS, f"{VARIANTS_FILE.name}:{n}: transport {transport!r} not in {TRANSPORTS}"
        headers = []
        for h in header_fields:
            name, sep, value = h.partition(":")
            assert sep and name.strip(), f"{VARIANTS_FILE.name}:{n}: header {h!r} is not 'Name: value'"
            headers.append((name.strip(), value.strip()))
        variants.append(Variant(n, " ".join(text.split()), transport, method, target, tuple(headers)))
    return variants


@dataclass(frozen=True)
class Probe:
    """One concrete unpaid request: a variant expanded for one target."""

    variant: Variant
    target: Target
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        extra = "".join(f" | {k}: {v}" for k, v in self.headers)
        return f"{self.variant.transport} {self.method} {self.path!r}{extra}"


def expand(variant: Variant, target: Target, port: int) -> list[Probe]:
    uses_method = "{method" in variant.method + variant.target + repr(variant.headers)
    if not uses_method:
        methods = [target.methods[0]]
    elif "{" in variant.method:
        methods = list(target.methods)
    else:  # a fixed method standing in for the route's: an override to itself is no variant
        methods = [m for m in target.methods if m.upper() != variant.method.upper()]
    head, leaf = _split(target.path)

    def sub(text: str, method: str) -> str:
        def one(m: re.Match) -> str:
            name, flt = m.group(1), m.group(2)
            if name == "path":
                return PATH_FILTERS[flt](target.path) if flt else target.path
            if name == "method":
                return METHOD_FILTERS[flt](method) if flt else method
            if flt is None and name in ("dir", "leaf", "port"):
                return {"dir": head, "leaf": leaf, "port": str(port)}[name]
            raise KeyError(f"{VARIANTS_FILE.name}:{variant.line}: unknown placeholder {m.group(0)}")

        return PLACEHOLDER.sub(one, text)

    return [
        Probe(
            variant,
            target,
            sub(variant.method, m),
            sub(variant.target, m),
            tuple((sub(k, m), sub(v, m)) for k, v in variant.headers),
        )
        for m in methods
    ]


# -- transports: exact bytes on the wire ---------------------------------------------------


@dataclass
class Outcome:
    status: str  # "200", "402", ..., or what happened instead ("closed", "h2c refused: ...")
    leaked: bool
    excerpt: str = ""  # the answer's start (status line, headers, body)


def has_marker(raw: bytes) -> bool:
    low = raw.lower()
    return MARKER_BODY in low or MARKER_HEADER + b":" in low


def h1_complete(raw: bytes, method: str) -> bool:
    """An HTTP/1.1 response in `raw` is whole (by its framing; without any, only EOF ends it)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if method.upper() == "HEAD" or status in (204, 304):
        return True
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if b"chunked" in fields.get(b"transfer-encoding", b""):
        return body.endswith(b"0\r\n\r\n")
    if fields.get(b"content-length", b"").isdigit():
        return len(body) >= int(fields[b"content-length"])
    return False


def send_h1(port: int, method: str, target: str, headers, absolute: bool = False) -> Outcome:
    request_target = f"http://127.0.0.1:{port}{target}" if absolute else target
    lines = [f"{method} {request_target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if method.upper() not in ("GET", "HEAD", "OPTIONS"):
        lines.append("Content-Length: 0")
    lines.append("Connection: close")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    raw = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(data)
            # Read until the answer is complete: Envoy keeps a connection it closes open for
            # its delayed-close timeout (1 s) waiting for the client to close first.
            while time.monotonic() < deadline and not h1_complete(raw, method):
                s.settimeout(max(0.1, deadline - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    break
                raw += chunk
    except (TimeoutError, socket.timeout):
        pass
    except OSError as e:  # reset by the peer: whatever came before it still counts
        if not raw:
            return Outcome(f"connection error: {e}", False)
    if not raw:
        return Outcome("closed without an answer", False)
    first = raw.split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split(" ", 2)
    status = parts[1] if len(parts) > 1 and first.startswith("HTTP/") else f"not HTTP: {first[:40]!r}"
    return Outcome(status, has_marker(raw), raw[:600].decode("latin-1"))


def send_h2c(port: int, method: str, target: str, headers) -> Outcome:
    """One request over a fresh HTTP/2 connection with prior knowledge (no Upgrade). A listener
    that does not speak h2c answers the preface with HTTP/1.1 or closes: "h2c refused"."""
    config = h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    status, hdrs, body, raw_seen = None, [], b"", b""
    deadline = time.monotonic() + TIMEOUT
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            conn.initiate_connection()
            s.sendall(conn.data_to_send())
            stream = conn.get_next_available_stream_id()
            request = [
                (b":method", method.encode()),
                (b":scheme", b"http"),
                (b":authority", f"127.0.0.1:{port}".encode()),
                (b":path", target.encode("latin-1")),
            ]
            request += [(k.lower().encode(), v.encode()) for k, v in headers]
            conn.send_headers(stream, request, end_stream=True)
            s.sendall(conn.data_to_send())
            done = False
            while not done and time.monotonic() < deadline:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                data = s.recv(65536)
                if not data:
                    break
                raw_seen += data
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                        hdrs = list(event.headers)
                        status = dict(hdrs).get(b":status", b"?").decode()
                    elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                        body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, stream)
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                        done = True
                    elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                        status = status or f"stream reset ({event.error_code!r})"
                        done = True
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        status = status or f"connection terminated ({event.error_code!r})"
                        done = True
                if out := conn.data_to_send():
                    s.sendall(out)
    except h2.exceptions.ProtocolError as e:
        return Outcome(f"h2c refused: {type(e).__name__} ({raw_seen[:40]!r})", has_marker(raw_seen))
    except (TimeoutError, socket.timeout):
        pass
    except OSError as e:
        if status is None:
            return Outcome(f"h2c refused: {e}", has_marker(raw_seen))
    if status is None:
        return Outcome(f"h2c refused: no response ({raw_seen[:40]!r})", has_marker(raw_seen))
    flat = b"\r\n".join(k + b": " + v for k, v in hdrs) + b"\r\n\r\n" + body
    return Outcome(status, has_marker(flat), flat[:600].decode("latin-1"))


def send(probe: Probe, port: int) -> Outcome:
    transport = probe.variant.transport
    if transport == "h2c":
        return send_h2c(port, probe.method, probe.path, probe.headers)
    return send_h1(port, probe.method, probe.path, probe.headers, absolute=transport == "abs")


# -- one stack per framework -----------------------------------------------------------------


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def framework(request, tmp_path_factory):
    name = request.param
    command = FRAMEWORKS[name]
    if command[0] == "node":
        assert (EXPRESS_APP.parent / "node_modules").is_dir(), "run `make deps` (installs dev/frameworks/express)"
    with Stack(tmp_path_factory.mktemp(f"bypass-{name}"), upstream_cmd=command) as stack:
        yield name, stack


def test_upstream_serves_paid_content_on_every_paid_path(framework):
    """Control: asked directly, the app answers the marker on every target's upstream path (so a
    variant without the marker was refused by Tollway or by the framework, not missing)."""
    name, stack = framework
    missing = []
    for t in targets():
        for method in t.methods:
            outcome = send_h1(stack.ports.upstream, method, t.upstream, ())
            if not (outcome.status == "200" and outcome.leaked):
                missing.append(f"{method} {t.upstream} ({t.name}): {outcome.status}")
    assert not missing, f"{name} does not serve paid content on: " + "; ".join(missing)


def test_transports_reach_the_free_route(framework):
    """Control: the raw clients work through Envoy (h2c: answered, or refused as a whole)."""
    name, stack = framework
    for transport in ("h1", "abs"):
        outcome = send_h1(stack.ports.envoy, "GET", "/free", (), absolute=transport == "abs")
        assert outcome.status == "200" and b'"free"' in outcome.excerpt.encode("latin-1"), (transport, outcome)
    outcome = send_h2c(stack.ports.envoy, "GET", "/free", ())
    assert outcome.status == "200" or outcome.status.startswith("h2c refused"), outcome


def test_paid_request_gets_paid_content(framework):
    """Control: the canonical request paid with the official x402 client gets the app's answer."""
    name, stack = framework
    session, _ = paying_session(PAYER_KEY)
    r = session.get(stack.url + "/api/quote", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"paid_content": "quote"}
    assert r.headers["x-paid-content"] == "quote"
    assert r.headers.get("payment-response") or r.headers.get("x-payment-response")


def test_paid_lightning_request_gets_paid_content(framework):
    """Control: a Lightning-only route paid with L402 (the dev node pays the invoice)."""
    name, stack = framework
    r = httpx.get(stack.url + "/api/sats", timeout=30)
    assert r.status_code == 402, r.text
    challenge = l402_challenge(r)
    paid = stack.lightning_pay(challenge.invoice)
    r = httpx.get(
        stack.url + "/api/sats",
        headers={"authorization": authorization(challenge.macaroon, paid["preimage"])},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"paid_content": "sats"}


def test_no_variant_returns_paid_content_unpaid(framework):
    name, stack = framework
    port = stack.ports.envoy
    probes = [p for v in load_variants() for t in targets() for p in expand(v, t, port)]
    outcomes = [send(p, port) for p in probes]

    report = [
        {"line": p.variant.line, "variant": p.variant.text, "target": p.target.name, "request": p.describe(), **asdict(o)}
        for p, o in zip(probes, outcomes)
    ]
    (stack.run_dir / "bypass-report.json").write_text(json.dumps(report, indent=1))

    leaks: dict[Variant, list[str]] = {}
    for p, o in zip(probes, outcomes):
        if o.leaked:
            leaks.setdefault(p.variant, []).append(f"{p.target.name}: {p.describe()} -> {o.status}")
    count = sum(map(len, leaks.values()))
    message = [f"{name}: {count} of {len(probes)} unpaid variants returned paid content through Tollway:"]
    for v, lines in sorted(leaks.items(), key=lambda kv: kv[0].line):
        message.append(f"  {VARIANTS_FILE.name}:{v.line}  {v.text}")
        message += [f"      {line}" for line in lines]
    assert not leaks, "\n".join(message)
