"""Helpers for the fault-injection tests (tests/test_faults.py): a stack of their own, payments
built by hand (so the test knows the nonce), paid requests sent in the background (so a process
can be stopped or killed while one is in flight), and the money invariant checked from outside:

- the chain: `AuthorizationUsed(authorizer, nonce)` logs of the token, one per transfer;
- the upstream: its hit counters;
- the client: status, body and the decoded `PAYMENT-RESPONSE` receipt;
- the ledger: the verifier's SQLite file, opened read-only, or the shared PostgreSQL ledger read
  with psql (`payments` and `payment_events`, the same rows with the same Python types either way).

Two ledgers (`LEDGERS`, `fault_stack(ledger=...)`): `sqlite`, one stack with its own SQLite file,
and `postgres-replicas`, a throwaway PostgreSQL cluster and redis-server shared by two replicas
(`stack`, replica A, and `stack.replica_b`: each its own verifier and Envoy).

design.md, "The money invariant": nothing delivered without a settled payment; nothing charged
without delivery; no payment accepted twice; every payment in the ledger.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests
from eth_utils import keccak

from dev.stack import (
    PAYER_KEY,
    SLOW_ROUTE,
    SLOW_WITHHELD_ROUTE,
    Ports,
    PostgresServer,
    RedisServer,
    Stack,
    http_get,
    postgres_binary,
    rpc,
)
from payments import challenge, decode_b64json, sign_payment

# keccak256("AuthorizationUsed(address,bytes32)"), the EIP-3009 event the token emits once per
# transferWithAuthorization (computed with `eth_utils.keccak(text=...)`, checked below).
AUTHORIZATION_USED = "0x98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5"
assert "0x" + keccak(text="AuthorizationUsed(address,bytes32)").hex() == AUTHORIZATION_USED
# authorizationState(address,bytes32) selector: the first 4 bytes of its keccak256.
AUTHORIZATION_STATE = "0x" + keccak(text="authorizationState(address,bytes32)")[:4].hex()

FINAL_EVENTS = ("settled", "settlement_failed", "released")
UNCHARGED_STATES = ("failed", "released")
INVARIANT_TIMEOUT = 40.0  # seconds a payment may take to reach its final state after the fault

# The ledgers the suite runs on (see `fault_stack`).
SQLITE = "sqlite"
POSTGRES_REPLICAS = "postgres-replicas"
LEDGERS = (SQLITE, POSTGRES_REPLICAS)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a stack per test -------------------------------------------------------------------------


class ChainGate:
    """A TCP proxy between the facilitator and anvil. `refuse()` stops listening and cuts every
    connection through it, so the facilitator's chain calls are refused (anvil and its state
    live on); `accept()` listens again on the same port."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = closed_port()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self.accept()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accept(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener, self._stop = listener, threading.Event()
        threading.Thread(target=self._serve, args=(listener, self._stop), daemon=True).start()

    def refuse(self):
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    close = refuse

    def _serve(self, listener: socket.socket, stop: threading.Event):
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def fault_stack(run_dir: Path, chain_gate: bool = False, ledger: str = SQLITE, **options):
    """A whole stack of the test's own (free ports), x402 only, selling SLOW_ROUTE as well as the
    demo routes; `options` go to `Stack` (facilitator_timeout_ms, rail_rpc_url, ledger_path...).
    With `chain_gate`, the facilitator reaches the chain through `stack.chain_gate` (a
    ChainGate). Paused processes are resumed before it stops.

    `ledger`: `sqlite` (the stack's own SQLite file; `stack.replica_b` is None) or
    `postgres-replicas`: a PostgresServer (`stack.postgres`, the ledger: `ledger_url`) and a
    RedisServer (`stack.redis`, the replay store), shared by the yielded stack (replica A, in
    `run_dir`/a) and `stack.replica_b` (another verifier + Envoy, `Stack.replica`, in
    `run_dir`/b). Both are stopped, then the servers, whatever happens."""
    if ledger not in LEDGERS:
        raise ValueError(f"ledger {ledger!r}: one of {LEDGERS}")
    options.setdefault("lightning", False)
    options.setdefault("extra_routes", [SLOW_ROUTE, SLOW_WITHHELD_ROUTE])
    # The recommended config: the verifier reads the chain to decide a settlement whose outcome
    # is unknown. Without it, a settle that timed out (the verifier's own facilitator call can,
    # when it is stalled) stays `unknown` once the facilitator answers "nonce already used":
    # that says "used", not "paid to us" (a cancelled authorization says the same).
    options.setdefault("rail_rpc_url", True)
    with contextlib.ExitStack() as cleanup:
        gate = None
        if chain_gate:
            options["ports"] = options.get("ports") or Ports.free()
            gate = ChainGate(options["ports"].anvil)
            cleanup.callback(gate.close)
            options["facilitator_rpc_url"] = gate.url
        postgres = redis = None
        if ledger == POSTGRES_REPLICAS:
            postgres = cleanup.enter_context(PostgresServer(run_dir / "postgres"))
            redis = cleanup.enter_context(RedisServer(run_dir / "redis"))
            options["ledger_url"] = postgres.url
            options["replay_store"] = redis.url
            run_dir = run_dir / "a"
        stack = cleanup.enter_context(Stack(run_dir, **options))
        stack.chain_gate = gate
        stack.postgres, stack.redis, stack.replica_b = postgres, redis, None
        if ledger == POSTGRES_REPLICAS:
            b = cleanup.enter_context(stack.replica(run_dir.parent / "b"))
            b.chain_gate, b.postgres, b.redis, b.replica_b = gate, postgres, redis, None
            stack.replica_b = b
        yield stack


def filter_timeout_s(stack) -> float:
    """The filter's verify and settle timeouts: the longest facilitator timeout + 1 s (the
    verifier's config.rs; no Lightning node in a fault_stack)."""
    return stack.facilitator_timeout_ms / 1000 + 1.0


@contextlib.contextmanager
def paused(stack, name: str):
    """`name` SIGSTOPped for the block, SIGCONTed whatever happens."""
    stack.pause(name)
    try:
        yield
    finally:
        if name in stack.procs:
            stack.resume(name)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "2m"):
    """A tmpfs of `size` mounted on `path` (needs root), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill_filesystem(directory: Path) -> Path:
    """Writes zeros to `directory/filler` until the filesystem says ENOSPC (big chunks, then
    small ones, so not a page is left). Answers the filler's path (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 16, 1 << 12, 512):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    st = os.statvfs(directory)
    assert st.f_bavail == 0, f"{directory} still has {st.f_bavail} blocks free"
    return filler


# -- payments and requests --------------------------------------------------------------------


@dataclass
class Payment:
    header: str  # PAYMENT-SIGNATURE value
    nonce: str  # 0x-hex, lower case (as in the ledger)
    payer: str
    valid_before: int  # unix seconds: after it, no transfer for this nonce can happen


def new_payment(stack, path: str = "/api/quote", *, valid_seconds: int = 300) -> Payment:
    """A fresh v2 payment for `path` (its 402 challenge, signed by PAYER_KEY), valid for
    `valid_seconds` (a short one lets a test prove "no transfer, ever" by waiting it out)."""
    r = requests.get(stack.url + path, timeout=10)
    assert r.status_code == 402, (r.status_code, r.text)
    valid_before = int(time.time()) + valid_seconds
    header = sign_payment(challenge(r), PAYER_KEY, valid_before=valid_before)
    auth = decode_b64json(header)["payload"]["authorization"]
    return Payment(header=header, nonce=auth["nonce"].lower(), payer=auth["from"], valid_before=valid_before)


@dataclass
class Answer:
    """What the client saw: a response, or the error that ended the request."""

    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: BaseException | None = None

    @property
    def receipt(self) -> dict | None:
        value = self.headers.get("payment-response") or self.headers.get("x-payment-response")
        return decode_b64json(value) if value else None

    def json(self):
        return json.loads(self.body)

    def __str__(self) -> str:
        if self.error is not None:
            return f"no answer ({type(self.error).__name__}: {self.error})"
        shown = {k: v for k, v in self.headers.items() if k in ("retry-after", "payment-response", "content-type")}
        extra = f" receipt={self.receipt}" if self.receipt else ""
        return f"{self.status} {shown}{extra} body={self.body[:300]!r}"


def send(stack, path: str, payment: Payment, timeout: float = 30) -> Answer:
    try:
        r = requests.get(stack.url + path, headers={"PAYMENT-SIGNATURE": payment.header}, timeout=timeout)
    except requests.RequestException as e:
        return Answer(error=e)
    return Answer(status=r.status_code, body=r.content, headers={k.lower(): v for k, v in r.headers.items()})


def race(*calls: Callable):
    """Runs the calls at once (a barrier releases them together); answers their results in order
    (an exception a call raised is its result)."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i, call):
        try:
            barrier.wait(timeout=10)
            results[i] = call()
        except BaseException as e:  # shown by the caller
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


class InFlight:
    """A paid request sent from a thread; `answer()` waits for what the client got."""

    def __init__(self, stack, path: str, payment: Payment, timeout: float = 30):
        self._answer: Answer | None = None
        self._thread = threading.Thread(target=self._run, args=(stack, path, payment, timeout), daemon=True)
        self._thread.start()

    def _run(self, *args):
        self._answer = send(*args)

    def answer(self, timeout: float) -> Answer:
        self._thread.join(timeout)
        assert self._answer is not None, f"the client had no answer after {timeout}s"
        return self._answer


def hits(stack, path: str) -> int:
    return stack.upstream_hits().get(path, 0)


def wait_for_hits(stack, path: str, count: int, timeout: float = 15.0):
    """Until the upstream has served (or started serving) `count` requests on `path`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hits(stack, path) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the upstream saw {hits(stack, path)} requests on {path} after {timeout}s, wanted {count}")


def release_gate(stack, gate: str, timeout: float = 5.0):
    """Opens the upstream's gate once a request waits on it (a release before the request
    reaches the gate would be missed: retried until one request was let go)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.upstream_release(gate) >= 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"no request waited on upstream gate {gate} within {timeout}s")


def verifier_ready(stack) -> tuple[int, dict]:
    status, body = http_get(f"{stack.verifier_http}/readyz")
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, {"raw": body.decode(errors="replace")}


# -- the chain ---------------------------------------------------------------------------------


def transfers(stack, nonce: str) -> int:
    """How many transfers the chain made with this authorization nonce (AuthorizationUsed logs)."""
    logs = rpc(
        stack.rpc_url,
        "eth_getLogs",
        [{"fromBlock": "0x0", "toBlock": "latest", "address": stack.token, "topics": [AUTHORIZATION_USED, None, nonce]}],
    )
    return len(logs)


def authorization_used(stack, authorizer: str, nonce: str) -> bool:
    data = AUTHORIZATION_STATE + authorizer.lower().removeprefix("0x").rjust(64, "0") + nonce.removeprefix("0x")
    return int(rpc(stack.rpc_url, "eth_call", [{"to": stack.token, "data": data}, "latest"]), 16) != 0


# -- the ledger --------------------------------------------------------------------------------


class NoJournal(Exception):
    """The ledger has no `payments` table."""


class LedgerError(Exception):
    """The ledger could not be read (a SQLite error, or psql failed: server down, no table...)."""


# The Python type of each column (SQLite's INTEGER and TEXT columns), so both ledgers give the
# same rows: psql's JSON makes a BIGINT a number and a TEXT a string, and a NUMERIC amount or a
# JSON settlement column would come back as a number or an object otherwise.
COLUMN_TYPES = {
    "payment_events": {
        "id": int,
        "at": int,
        "event": str,
        "route": str,
        "network": str,
        "asset": str,
        "payer": str,
        "amount": str,
        "nonce": str,
        "reason": str,
        "transaction": str,
    },
    "payments": {
        "id": str,
        "state": str,
        "route": str,
        "network": str,
        "asset": str,
        "payer": str,
        "amount": str,
        "nonce": str,
        "transaction": str,
        "reason": str,
        "attempts": int,
        "created_at": int,
        "updated_at": int,
        "expires_at": int,
        "settlement": str,
    },
}


def _normalise(table: str, row: dict) -> dict:
    """`row` with each known column as its SQLite type (None stays None; unknown columns as read)."""
    types = COLUMN_TYPES[table]
    out = {}
    for name, value in row.items():
        kind = types.get(name)
        if value is None or kind is None:
            out[name] = value
        elif kind is int:
            try:  # a BIGINT (a number), or digits in a string; anything else is shown as read
                out[name] = int(value)
            except (TypeError, ValueError):
                out[name] = value
        elif isinstance(value, (dict, list)):
            out[name] = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, float) and value.is_integer():
            out[name] = str(int(value))
        else:
            out[name] = str(value)
    return out


def uses_postgres(stack) -> bool:
    return bool(getattr(stack, "ledger_url", None))


def _sqlite(stack) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(str(stack.ledger_path)) + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=5)
    db.row_factory = sqlite3.Row
    return db


def _sqlite_rows(stack, sql: str, *args) -> list[dict]:
    try:
        db = _sqlite(stack)
        try:
            return [dict(r) for r in db.execute(sql, args)]
        finally:
            db.close()
    except sqlite3.Error as e:
        raise LedgerError(f"sqlite: {e}") from e


def psql(url: str, sql: str, timeout: float = 15, **variables: str) -> str:
    """Runs `sql` (read from stdin, so `:'name'` interpolates `variables` as SQL literals) with
    `psql -At` against `url`; answers its output. LedgerError when psql fails (its message)."""
    argv = [postgres_binary("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]
    for name, value in variables.items():
        argv += ["-v", f"{name}={value}"]
    argv.append(url)
    try:
        done = subprocess.run(
            argv,
            input=sql,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PGCONNECT_TIMEOUT": "3"},
        )
    except subprocess.TimeoutExpired as e:
        raise LedgerError(f"psql: no answer after {timeout}s") from e
    if done.returncode != 0:
        raise LedgerError(f"postgres: {done.stderr.strip() or f'psql exited with {done.returncode}'}")
    return done.stdout


def _postgres_rows(stack, table: str, nonce: str) -> list[dict]:
    """`table`'s rows for `nonce` (by id), as one JSON array (no separator or NULL ambiguity)."""
    out = psql(
        stack.ledger_url,
        f"SELECT coalesce(json_agg(row_to_json(t) ORDER BY t.id), '[]') "
        f"FROM (SELECT * FROM {table} WHERE lower(nonce) = lower(:'nonce')) t;\n",
        nonce=nonce,
    )
    return json.loads(out)


def _postgres_has_table(stack, table: str) -> bool:
    return psql(stack.ledger_url, "SELECT to_regclass(:'table') IS NOT NULL;\n", table=table).strip() == "t"


def ledger_events(stack, nonce: str) -> list[dict]:
    """`payment_events` rows for `nonce`, in order. LedgerError if the ledger cannot be read."""
    if uses_postgres(stack):
        rows = _postgres_rows(stack, "payment_events", nonce)
    else:
        rows = _sqlite_rows(stack, "SELECT * FROM payment_events WHERE lower(nonce) = ? ORDER BY id", nonce.lower())
    return [_normalise("payment_events", r) for r in rows]


def payment_rows(stack, nonce: str) -> list[dict]:
    """`payments` rows for `nonce` (one expected); NoJournal if the table does not exist,
    LedgerError if the ledger cannot be read."""
    if uses_postgres(stack):
        if not _postgres_has_table(stack, "payments"):
            raise NoJournal("the ledger has no `payments` table")
        rows = _postgres_rows(stack, "payments", nonce)
    else:
        tables = {r["name"] for r in _sqlite_rows(stack, "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "payments" not in tables:
            raise NoJournal(f"the ledger has no `payments` table (tables: {sorted(tables)})")
        rows = _sqlite_rows(stack, "SELECT * FROM payments WHERE lower(nonce) = ?", nonce.lower())
    return [_normalise("payments", r) for r in rows]


# -- the invariant -----------------------------------------------------------------------------


@dataclass
class Snapshot:
    transfers: int
    events: list[dict]
    payments: list[dict] | None  # None: no `payments` table
    error: str | None = None  # the ledger could not be read

    def count(self, event: str) -> int:
        return sum(1 for e in self.events if e["event"] == event)

    @property
    def state(self) -> str | None:
        return self.payments[0]["state"] if self.payments else None

    def __str__(self) -> str:
        events = [
            {k: e.get(k) for k in ("event", "route", "reason", "transaction") if e.get(k) is not None} for e in self.events
        ]
        rows = None if self.payments is None else [
            {k: p.get(k) for k in ("id", "state", "route", "reason", "transaction")} for p in self.payments
        ]
        extra = f", ledger error: {self.error}" if self.error else ""
        return f"transfers={self.transfers}, payments={'<no table>' if rows is None else rows}, events={events}{extra}"


def snapshot(stack, nonce: str) -> Snapshot:
    # The ledger first, the chain second: a `settled` row is written after its transfer was
    # mined, so read in this order a settled row always has its transfer in view.
    try:
        events = ledger_events(stack, nonce)
    except LedgerError as e:
        return Snapshot(transfers(stack, nonce), [], [], error=str(e))
    try:
        rows = payment_rows(stack, nonce)
    except NoJournal:
        rows = None
    except LedgerError as e:
        return Snapshot(transfers(stack, nonce), events, [], error=str(e))
    return Snapshot(transfers(stack, nonce), events, rows)


def invariant_problems(s: Snapshot, delivered: bool, quiet: bool) -> list[tuple[str, bool]]:
    """What `s` breaks of the invariant for a payment whose content was (`delivered`) or was not
    delivered, as (problem, waiting may fix it); [] when it holds and is final. `quiet`: no
    transfer can come any more (the authorization expired, or the bound is over)."""
    p: list[tuple[str, bool]] = []

    def bad(message: str, waitable: bool = False):
        p.append((message, waitable))

    if s.error:
        bad(f"ledger unreadable: {s.error}", waitable=True)
    if s.transfers > 1:
        bad(f"{s.transfers} transfers for one nonce (payment accepted twice)")
    if s.count("settled") > 1:
        bad(f"{s.count('settled')} `settled` rows")
    if s.count("verified") > 1:
        bad(f"{s.count('verified')} `verified` rows")
    finals = [e["event"] for e in s.events if e["event"] in FINAL_EVENTS]
    if len(finals) > 1:
        bad(f"more than one final row: {finals}")
    if s.payments is None:
        bad("no `payments` table in the ledger (no journal)")
    elif len(s.payments) > 1:
        bad(f"{len(s.payments)} `payments` rows for one nonce")
    # Rows still moving (the payment is between verified and a final state): worth waiting for.
    moving = s.state in ("verified", "settling", "unknown") or (s.count("verified") == 1 and not finals)

    if s.transfers >= 1:  # charged: it must have been delivered and be in the ledger as settled
        if not delivered:
            bad("charged without delivery: the chain has a transfer")
        if s.count("verified") == 0:
            bad("a transfer but no `verified` row (payment not in the ledger)", waitable=moving)
        for wrong in ("settlement_failed", "released"):
            if s.count(wrong):
                bad(f"a transfer but a `{wrong}` row")
        if s.payments is not None and s.state in UNCHARGED_STATES:
            bad(f"a transfer but payments.state = {s.state!r}")
        elif s.payments is not None and s.state != "settled":
            bad(f"a transfer but payments.state = {s.state!r} (not settled yet)", waitable=True)
        if s.count("settled") == 0 and not any(w in finals for w in ("settlement_failed", "released")):
            bad("a transfer but no `settled` row (yet)", waitable=True)
        return p

    # No transfer (so far).
    if s.count("settled"):
        bad("a `settled` row but no transfer on the chain")
    if s.payments and s.state == "settled":
        bad("payments.state = 'settled' but no transfer on the chain")
    if delivered:
        if s.payments and s.state in UNCHARGED_STATES or any(w in finals for w in ("settlement_failed", "released")):
            bad(f"delivered, but the payment ended {s.state or finals} without a transfer")
        else:
            bad("delivered without a settled payment: no transfer (yet)", waitable=True)
        return p
    if s.payments and s.state not in UNCHARGED_STATES:
        bad(f"not delivered, payments.state = {s.state!r}, not failed/released (yet)", waitable=True)
    elif s.count("verified") and not finals:
        bad("a `verified` row with no final row (yet)", waitable=True)
    elif not quiet:
        bad("no transfer so far (waiting for the authorization to expire)", waitable=True)
    return p


def assert_invariant(stack, payment: Payment | str, delivered: bool, timeout: float = INVARIANT_TIMEOUT) -> Snapshot:
    """Polls (up to `timeout`) until the payment reached a final state that keeps the invariant:
    - `delivered`: exactly one transfer for the nonce, `payments.state == 'settled'`, exactly
      one `settled` row (after one `verified` row) and no `settlement_failed`/`released` row;
    - not `delivered`: no transfer, no `settled` row, and the payment (if it was ever verified)
      `failed` or `released` with one final row. "No transfer ever" is proven by waiting until
      the authorization expired (a Payment's `valid_before`) or, for a bare nonce, the bound.
    Fails early on what waiting cannot fix (two transfers, a final row that contradicts the
    chain, no `payments` table...), after a last look 3 s later so the message shows where
    things went. Answers the last snapshot."""
    nonce = payment.nonce if isinstance(payment, Payment) else payment.lower()
    valid_before = payment.valid_before if isinstance(payment, Payment) else None
    deadline = time.monotonic() + timeout
    while True:
        expired = valid_before is not None and time.time() > valid_before + 2  # + one block's clock
        over = time.monotonic() >= deadline
        s = snapshot(stack, nonce)
        problems = invariant_problems(s, delivered, quiet=expired or over)
        if not problems:
            return s
        if over or not all(waitable for _, waitable in problems):
            if not over:
                time.sleep(3)  # a last look: where did it go from there?
                s = snapshot(stack, nonce)
                problems = invariant_problems(s, delivered, quiet=True) or problems
            raise AssertionError(
                f"money invariant broken for nonce {nonce} (delivered={delivered}): "
                + "; ".join(m for m, _ in problems)
                + f"\n  {s}\n  verifier log tail:\n{log_tail(stack, 'verifier')}"
            )
        time.sleep(0.25)


def log_tail(stack, name: str, lines: int = 12) -> str:
    """The last lines of a process's log, without its start-up chatter."""
    path = stack.run_dir / f"{name}.log"
    if not path.exists():
        return "    <no log>"
    noise = ("tollway::serve: paid route", "tollway::serve: free route")
    text = [line for line in path.read_text(errors="replace").splitlines() if not any(n in line for n in noise)]
    return "\n".join("    " + line[:400] for line in text[-lines:])


class Checks:
    """Collects failed expectations so a test reports all of them (the client's answer and the
    ledger's), not only the first."""

    def __init__(self):
        self.failed: list[str] = []

    def that(self, ok: bool, message: str):
        if not ok:
            self.failed.append(message)

    def invariant(self, stack, payment, delivered: bool, **kwargs):
        try:
            return assert_invariant(stack, payment, delivered, **kwargs)
        except AssertionError as e:
            self.failed.append(str(e))

    def done(self):
        if self.failed:
            raise AssertionError("\n".join(f"[{i + 1}] {m}" for i, m in enumerate(self.failed)))


def expect_pending_receipt(checks: Checks, answer: Answer, what: str):
    """The contract for a settlement whose outcome is not known yet: the upstream's 200 and body,
    with a PAYMENT-RESPONSE whose errorReason is `settlement_pending`."""
    checks.that(answer.status == 200, f"{what}: client got {answer}, wanted 200 with the upstream's body")
    if answer.status == 200:
        checks.that(b'"slow": true' in answer.body or b'"symbol"' in answer.body, f"{what}: not the upstream's body: {answer}")
        receipt = answer.receipt
        checks.that(
            receipt is not None and receipt.get("errorReason") == "settlement_pending",
            f"{what}: PAYMENT-RESPONSE {receipt}, wanted errorReason settlement_pending",
        )


def expect_unavailable(checks: Checks, answer: Answer, what: str):
    """Fail closed: 503 with Retry-After (never a 402 with a payment reason, never a free pass)."""
    reason = None
    if answer.status == 402 and "payment-required" in answer.headers:
        reason = decode_b64json(answer.headers["payment-required"]).get("error")
    checks.that(
        answer.status == 503 and bool(answer.headers.get("retry-after")),
        f"{what}: client got {answer}" + (f" (x402 error {reason!r})" if reason else "") + ", wanted 503 with Retry-After",
    )

