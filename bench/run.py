"""`make bench`: Tollway against bare Envoy and against the reference x402 middleware, on one
machine, in one invocation, and BENCHMARKS.md written from the results.

Layout (2 cores): every Envoy runs with `--concurrency 1` pinned to core 0; the load generator
(wrk, one thread) and everything around the gateway (static upstream, instant facilitator,
tollway verifier) are pinned to core 1. The peer (Node + @x402/express) is the gateway in its
scenarios, so it gets Envoy's core 0. All gateways run at once (idle ones cost nothing) and the
scenarios are measured in alternation, repetition after repetition, so slow drift of the machine
hits baselines and scenarios alike.

Scenarios (ids as in BENCHMARKS.md):
  B1  bare Envoy → router → static upstream           B2  bare Envoy, direct_response 200
  B1w B1 plus a proxy-wasm filter that does nothing (bench/noop-filter) and exports the same
      per-request callbacks as Tollway's: the price of entering the VM at all
  B1n B1 plus an Envoy dynamic module (native shared library, bench/noop-module) whose HTTP filter
      does nothing: the same floor for a native filter
  S1  Tollway filter mode, free route                 S1e same through ext_authz-only mode
      (filter mode serves `/free` on the verifier's RDS route with the filter disabled, and
      answers S2's unpaid requests from Envoy: see the report's Method)
  S2  Tollway filter mode, unpaid → 402 challenge     S2e same through ext_authz-only mode
  S3  Tollway filter mode, a valid (reusable) L402 token, checked in the filter
  S4  Tollway filter mode, a valid lease token on an http-stream route, checked in the filter
  S5  Tollway filter mode, x402 payment, instant facilitator       S5e ext_authz-only mode
  P2  @x402/express, unpaid → 402                     P5  @x402/express, x402 payment
  L-B1, L-B1w, L-S1, L-S3, L-S4: again with one connection, for the added-latency goal (no
      queueing).

`.venv/bin/python bench/run.py [--duration 5] [--warmup 2] [--connections 32] [--reps 3]`
`--smoke`: 1 rep of 2 s, no warm-up, writes a temporary report; exits non-zero only when a
scenario answers the wrong status (or cannot start). `--scenarios B1,B2,P2,P5` runs a subset.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dev.stack import (  # noqa: E402
    BUILD,
    FILTER_KEYS_ENV,
    NETWORK,
    PAY_TO,
    Ports,
    envoy_binary,
    lightning_pay,
    render_config,
    wait_until,
)

BENCH = ROOT / "bench"
PEER = BENCH / "peer"
LUA = BENCH / "payments.lua"
REPORT = ROOT / "BENCHMARKS.md"

# Must equal BODY in bench/src/bin/upstream.rs: both baselines move the same bytes.
BODY = '{"quote":"42.00","currency":"USD","source":"bench-upstream"}'

# The paid route of dev/stack.py's config ("quote", GET /api/quote, 0.001 USD) on Base Sepolia
# USDC (6 decimals): 1000 atomic units. The facilitator double never touches a chain.
ASSET = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
AMOUNT = "1000"
FREE_PATH = "/free"
PAID_PATH = "/api/quote"
# The 402 scenarios use "fail" (x402 only, quote's price): quote also sells Lightning here, and its
# 402 would mint an invoice at the verifier.
CHALLENGE_PATH = "/api/fail"
L402_PATH = "/api/sats"  # Lightning only, reusable tokens
LEASE_PATH = "/stream/ticker/BENCH"  # http-stream, bought at /lease/ticker/BENCH
LEASE_SALE_PATH = "/lease/ticker/BENCH"
LEASE_AMOUNT = "10000"  # the ticker lease: 0.01 USD
MAX_TIMEOUT = 300

# bench/noop-module's library name: Envoy loads `lib<name>.so` (scenario B1n).
NOOP_MODULE = "tollway_bench_noop_module"

ENVOY_CORE = "0"
LOAD_CORE = "1"

# First guess of paid requests/s, per scenario, to size the first pool of signed payments; every
# run then refines it from what it measured.
RATE_GUESS = {"S5": 3000.0, "S5e": 3000.0, "P5": 1500.0}
MIN_POOL = 5000
MAX_POOL = 500_000
# A measured run during which other processes took more than this share of the machine is
# measured again (up to --noisy-retries times) and the quietest attempt kept.
NOISY_PERCENT = 5.0
MAX_NOISY_RETRIES = 12  # per bench, so a busy machine cannot stretch it past ~10 minutes


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    target: str  # gateway key: b1, b2, filter, extauthz, peer
    path: str
    status: int  # what every request must answer
    paid: bool = False
    baseline: str | None = None  # id whose same-rep run this one is divided by
    connections: int | None = None  # None: --connections
    credential: str | None = None  # "l402" or "lease": sent in a header on every request


SCENARIOS = [
    Scenario("B1", "bare Envoy, router → static upstream", "b1", FREE_PATH, 200),
    Scenario("B1w", "B1 + a no-op proxy-wasm filter (V8, Tollway's callbacks), the VM's own cost", "b1w", FREE_PATH, 200, baseline="B1"),
    Scenario("B1n", "B1 + a no-op Envoy dynamic module (native), a native filter's own cost", "b1n", FREE_PATH, 200, baseline="B1"),
    Scenario("S1", "filter mode, free route", "filter", FREE_PATH, 200, baseline="B1"),
    Scenario("S1e", "ext_authz-only mode, free route", "extauthz", FREE_PATH, 200, baseline="B1"),
    Scenario("S3", "filter mode, valid L402 token", "filter", L402_PATH, 200, baseline="B1", credential="l402"),
    Scenario("S4", "filter mode, valid lease token (http-stream)", "filter", LEASE_PATH, 200, baseline="B1", credential="lease"),
    Scenario("S5", "filter mode, x402 payment (instant facilitator)", "filter", PAID_PATH, 200, True, "B1"),
    Scenario("S5e", "ext_authz-only mode, x402 payment", "extauthz", PAID_PATH, 200, True, "B1"),
    Scenario("P5", "@x402/express 2.27, x402 payment", "peer", PAID_PATH, 200, True, "S5"),
    Scenario("B2", "bare Envoy, direct_response 200", "b2", FREE_PATH, 200),
    Scenario("S2", "filter mode, unpaid → 402 challenge", "filter", CHALLENGE_PATH, 402, baseline="B2"),
    Scenario("S2e", "ext_authz-only mode, unpaid → 402", "extauthz", CHALLENGE_PATH, 402, baseline="B2"),
    Scenario("P2", "@x402/express 2.27, unpaid → 402", "peer", PAID_PATH, 402, baseline="S2"),
    Scenario("L-B1", "B1 with 1 connection (latency)", "b1", FREE_PATH, 200, connections=1),
    Scenario("L-B1w", "B1w with 1 connection (latency)", "b1w", FREE_PATH, 200, baseline="L-B1", connections=1),
    Scenario("L-S1", "S1 with 1 connection (latency)", "filter", FREE_PATH, 200, baseline="L-B1", connections=1),
    Scenario("L-S3", "S3 with 1 connection (latency)", "filter", L402_PATH, 200, baseline="L-B1", connections=1, credential="l402"),
    Scenario("L-S4", "S4 with 1 connection (latency)", "filter", LEASE_PATH, 200, baseline="L-B1", connections=1, credential="lease"),
]
BY_ID = {s.id: s for s in SCENARIOS}
TOLLWAY_TARGETS = {"filter", "extauthz"}


# -- processes ---------------------------------------------------------------------------------
class Procs:
    """Child processes in their own sessions, killed as groups on exit."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, argv: list, core: str, env: dict | None = None, cwd: Path = ROOT) -> tuple[subprocess.Popen, Path]:
        log = self.run_dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["taskset", "-c", core, *[str(a) for a in argv]],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc, log

    def cpu_seconds(self) -> dict[str, float]:
        """utime + stime of every live process (all its threads), from /proc/<pid>/stat."""
        hz = os.sysconf("SC_CLK_TCK")
        out = {}
        for name, proc in self.procs.items():
            try:
                stat = Path(f"/proc/{proc.pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / hz
        return out

    def pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return proc.pid if proc and proc.poll() is None else None

    def check_alive(self):
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.run_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}\n{tail}")

    def stop_all(self):
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def request(url: str, headers: dict | None = None, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def up(url: str) -> bool:
    return request(url, timeout=1.0)[0] == 200


# -- configuration -----------------------------------------------------------------------------
@dataclass
class TollwayFacts:
    """What dev/stack.py's render_config reads from a Stack."""

    ports: Ports
    ledger_path: Path
    l402_secret_path: Path
    lease_secret_path: Path
    token: str = ASSET
    lightning: bool = True


def hcm(stat_prefix: str, routes: list[dict]) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
            "upgrade_configs": [{"upgrade_type": "websocket"}],
            "route_config": {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }
            ],
        },
    }


def noop_wasm_filter(path: Path) -> dict:
    """bench/noop-filter loaded the way `tollway envoy` loads ours (V8, same plugin settings)."""
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "noop",
                "root_id": "noop",
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{}"},
                "failure_policy": "FAIL_RELOAD",
                "vm_config": {"vm_id": "noop", "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(path)}}},
            },
        },
    }


def noop_module_filter(name: str) -> dict:
    """bench/noop-module as an HTTP filter (`envoy.filters.http.dynamic_modules`)."""
    return {
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"name": name, "do_not_close": True},
            "filter_name": "noop",
        },
    }


def baseline_bootstrap(listen: int, admin: int, upstream: int, direct: bool, wasm: Path | None = None, module: str | None = None) -> dict:
    """B1 (router → static upstream) or B2 (direct_response with the upstream's body): the
    listener, connection manager, route and cluster settings `tollway envoy` renders, without any
    Tollway filter (and without the verifier cluster)."""
    if direct:
        route = {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": BODY}},
            "response_headers_to_add": [
                {
                    "header": {"key": "content-type", "value": "application/json"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
        }
    else:
        route = {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "30s"}}
    clusters = [
        {
            "name": "upstream",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "upstream",
                "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}
                ],
            },
        }
    ]
    manager = hcm("ingress_http", [route])
    if wasm:
        manager["typed_config"]["http_filters"].insert(0, noop_wasm_filter(wasm))
    if module:
        manager["typed_config"]["http_filters"].insert(0, noop_module_filter(module))
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "main",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [{"filters": [manager]}],
                }
            ],
            "clusters": [] if direct else clusters,
        },
    }


# -- wrk ---------------------------------------------------------------------------------------
@dataclass
class Run:
    scenario: str
    rep: int
    rps: float
    p50_us: float
    p99_us: float
    requests: int
    non2xx: int
    errors: dict
    used: int | None = None
    exhausted: int | None = None
    problems: list = field(default_factory=list)
    foreign: float = 0.0  # % of all cores other processes used during the run
    cpu: dict = field(default_factory=dict)  # CPU seconds per process during the run


UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def to_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    def find(pattern, cast=float, default=None):
        m = re.search(pattern, out, re.M)
        return cast(m.group(1)) if m else default

    errors = {}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors = {k: int(v) for k, v in zip(["connect", "read", "write", "timeout"], m.groups()) if int(v)}
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)[ \t]*$", out, re.M))
    if "50" not in lat or "99" not in lat:
        raise RuntimeError(f"wrk printed no latency distribution:\n{out}")
    used = re.search(r"bench: used (\d+) exhausted (\d+)", out)
    return {
        "rps": find(r"^Requests/sec:\s+([\d.]+)"),
        "requests": find(r"^\s+(\d+) requests in", int, 0),
        "non2xx": find(r"Non-2xx or 3xx responses: (\d+)", int, 0),
        "errors": errors,
        "p50_us": to_us(lat["50"]),
        "p99_us": to_us(lat["99"]),
        "used": int(used.group(1)) if used else None,
        "exhausted": int(used.group(2)) if used else None,
    }


def wrk(url: str, seconds: float, connections: int, script_args: list | None = None, headers: dict | None = None) -> dict:
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    if script_args:
        argv += ["-s", str(LUA), url, "--", *[str(a) for a in script_args]]
    else:
        argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    return parse_wrk(done.stdout)


# -- the bench ---------------------------------------------------------------------------------
class Bench:
    def __init__(self, args, run_dir: Path):
        self.args = args
        self.run_dir = run_dir
        self.procs = Procs(run_dir)
        ids = [s.strip() for s in args.scenarios.split(",")] if args.scenarios else [s.id for s in SCENARIOS]
        unknown = [i for i in ids if i not in BY_ID]
        if unknown:
            raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(BY_ID)}")
        self.scenarios = [s for s in SCENARIOS if s.id in ids]
        self.targets = {s.target for s in self.scenarios}
        p = free_ports(17)
        self.port = {
            "b1": p[0], "b1_admin": p[1], "b2": p[2], "b2_admin": p[3],
            "filter": p[4], "filter_admin": p[5], "extauthz": p[6], "extauthz_admin": p[7],
            "upstream": p[8], "facilitator": p[9], "grpc": p[10], "http": p[11], "peer": p[12],
            "b1w": p[13], "b1w_admin": p[14], "b1n": p[15], "b1n_admin": p[16],
        }  # fmt: skip
        self.rate = dict(RATE_GUESS)
        self.pool_serial = 0
        self.runs: list[Run] = []
        self.notes: list[str] = []
        self.check_failures: list[str] = []
        self.rss: dict[str, int] = {}
        self.foreign = {"other": 0.0, "steal": 0.0}
        self.retried = 0
        self.credentials: dict[str, dict] = {}

    def url(self, target: str, path: str) -> str:
        return f"http://127.0.0.1:{self.port[target]}{path}"

    # -- start ---------------------------------------------------------------------------
    def tool(self, name: str) -> Path:
        path = BUILD / name
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `make bench` (it builds the bench tools)")
        return path

    def start(self):
        self.start_upstream_and_facilitator()
        if "b1" in self.targets:
            self.start_envoy("b1", self.write_json("envoy-b1.json", baseline_bootstrap(self.port["b1"], self.port["b1_admin"], self.port["upstream"], False)))
        if "b1w" in self.targets:
            noop = self.tool("bench_noop_filter.wasm")
            self.start_envoy("b1w", self.write_json("envoy-b1w.json", baseline_bootstrap(self.port["b1w"], self.port["b1w_admin"], self.port["upstream"], False, noop)))
        if "b1n" in self.targets:
            module = self.tool(f"lib{NOOP_MODULE}.so")
            bootstrap = baseline_bootstrap(self.port["b1n"], self.port["b1n_admin"], self.port["upstream"], False, module=NOOP_MODULE)
            # Envoy looks a module up as `lib<name>.so` in this directory.
            self.start_envoy("b1n", self.write_json("envoy-b1n.json", bootstrap), {"ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(module.parent)})
        if "b2" in self.targets:
            self.start_envoy("b2", self.write_json("envoy-b2.json", baseline_bootstrap(self.port["b2"], self.port["b2_admin"], self.port["upstream"], True)))
        if self.targets & TOLLWAY_TARGETS:
            self.start_tollway()
        if "peer" in self.targets:
            self.start_peer()

    def write_json(self, name: str, doc: dict) -> Path:
        path = self.run_dir / name
        path.write_text(json.dumps(doc, indent=1))
        return path

    def start_upstream_and_facilitator(self):
        for name in ["upstream", "facilitator"]:
            proc, log = self.procs.spawn(name, [self.tool(f"bench-{name}"), "--port", self.port[name], "--threads", 1], LOAD_CORE)
            check = f"http://127.0.0.1:{self.port[name]}" + ("/healthz" if name == "facilitator" else "/")
            wait_until(name, lambda: up(check), proc=proc, log=log)

    def start_envoy(self, target: str, bootstrap: Path, env: dict | None = None):
        argv = [envoy_binary(), "-c", bootstrap, "--concurrency", 1, "--disable-hot-restart", "--log-level", "warn"]
        proc, log = self.procs.spawn(f"envoy-{target}", argv, ENVOY_CORE, env)
        admin = f"http://127.0.0.1:{self.port[target + '_admin']}/ready"
        wait_until(f"envoy ({target})", lambda: up(admin), timeout=60, proc=proc, log=log)

    def tollway_config(self, target: str) -> Path:
        """dev/stack.py's tollway.yaml (routes free / quote / echo / fail), our ports and rail."""
        ports = Ports(
            envoy=self.port[target], admin=self.port[target + "_admin"], anvil=0,
            facilitator=self.port["facilitator"], upstream=self.port["upstream"],
            grpc=self.port["grpc"], http=self.port["http"],
        )  # fmt: skip
        path = self.run_dir / f"tollway-{target}.yaml"
        secrets = {name: self.run_dir / name for name in ("l402-secret", "lease-secret")}
        for file in secrets.values():
            if not file.exists():
                file.write_text(os.urandom(32).hex())
        facts = TollwayFacts(ports, self.run_dir / "ledger.db", secrets["l402-secret"], secrets["lease-secret"])
        path.write_text(render_config(facts))
        return path

    # -- credentials ----------------------------------------------------------------------
    def credential(self, s: Scenario) -> dict:
        """The header a credential scenario sends: an L402 token bought once (valid an hour), or a
        lease bought now (60 s, longer than one run) with a real x402 payment."""
        if s.credential == "l402":
            if "l402" not in self.credentials:
                self.credentials["l402"] = self.buy_l402(s)
            return self.credentials["l402"]
        if s.credential == "lease":
            return self.buy_lease(s)
        return {}

    def buy_l402(self, s: Scenario) -> dict:
        status, h, body = request(self.url(s.target, s.path))
        line = h.get("www-authenticate", "")  # LSAT or L402: the same parameters
        if status != 402 or 'macaroon="' not in line:
            raise RuntimeError(f"{s.id}: expected a 402 with an L402 challenge, got {status} {h}")
        macaroon = re.search(r'macaroon="([^"]+)"', line).group(1)
        invoice = re.search(r'invoice="([^"]+)"', line).group(1)
        paid = lightning_pay(f"http://127.0.0.1:{self.port['http']}/dev/lightning/pay", invoice)
        return {"Authorization": f"L402 {macaroon}:{paid['preimage']}"}

    def buy_lease(self, s: Scenario) -> dict:
        pool = self.payments(1, LEASE_AMOUNT)
        payment = pool.read_text().strip()
        pool.unlink()
        req = urllib.request.Request(self.url(s.target, LEASE_SALE_PATH), method="POST", headers={"PAYMENT-SIGNATURE": payment})
        with urllib.request.urlopen(req, timeout=10) as r:
            return {"x-x402-lease": json.loads(r.read())["lease"]}

    def start_tollway(self):
        tollway = self.tool("tollway")
        self.tool("tollway_filter.wasm")
        configs = {t: self.tollway_config(t) for t in ["filter", "extauthz"]}
        proc, log = self.procs.spawn("verifier", [tollway, "serve", "-c", configs["filter"]], LOAD_CORE)
        wait_until("verifier", lambda: up(f"http://127.0.0.1:{self.port['http']}/readyz"), timeout=30, proc=proc, log=log)
        for target, mode in [("filter", "filter"), ("extauthz", "ext-authz")]:
            if target not in self.targets:
                continue
            rendered = subprocess.run(
                [tollway, "envoy", "-c", configs[target], "--mode", mode, "--wasm", BUILD / "tollway_filter.wasm"],
                cwd=ROOT, check=True, capture_output=True, text=True,
            )  # fmt: skip
            bootstrap = self.run_dir / f"envoy-{target}.yaml"
            bootstrap.write_text(rendered.stdout)
            keys = subprocess.run(
                [tollway, "filter-keys", "-c", configs[target]], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout.strip()
            self.start_envoy(target, bootstrap, env={FILTER_KEYS_ENV: keys})

    def start_peer(self):
        if not (PEER / "node_modules" / "@x402" / "express").exists():
            raise SystemExit("bench/peer/node_modules is missing: run `make bench` (it runs npm ci there)")
        argv = [
            "node", PEER / "server.mjs", "--port", self.port["peer"],
            "--upstream", f"http://127.0.0.1:{self.port['upstream']}",
            "--facilitator", f"http://127.0.0.1:{self.port['facilitator']}",
            "--network", NETWORK, "--asset", ASSET, "--pay-to", PAY_TO, "--amount", AMOUNT,
            "--max-timeout", MAX_TIMEOUT, "--path", PAID_PATH,
        ]  # fmt: skip
        proc, log = self.procs.spawn("peer", argv, ENVOY_CORE, env={"NODE_ENV": "production"}, cwd=PEER)
        wait_until("peer", lambda: up(self.url("peer", "/healthz")), timeout=30, proc=proc, log=log)

    # -- payments ------------------------------------------------------------------------
    def payments(self, count: int, amount: str = AMOUNT) -> Path:
        self.pool_serial += 1
        out = self.run_dir / f"payments-{self.pool_serial}.txt"
        argv = [
                self.tool("bench-payments"), "--count", count, "--out", out, "--network", NETWORK,
                "--asset", ASSET, "--pay-to", PAY_TO, "--amount", amount, "--max-timeout", MAX_TIMEOUT,
                # What clients sign: validBefore = now + maxTimeoutSeconds (the gateway refuses
                # an authorization valid for longer than its offer asks).
                "--valid-seconds", MAX_TIMEOUT,
        ]  # fmt: skip
        subprocess.run([str(a) for a in argv], check=True, capture_output=True)
        return out

    def pool_size(self, scenario: str, seconds: float) -> int:
        return int(min(MAX_POOL, max(MIN_POOL, self.rate[scenario] * seconds * 2)))

    # -- checks --------------------------------------------------------------------------
    def check(self, s: Scenario):
        """One request by hand: the scenario must answer what it is meant to before it is timed."""
        headers = self.credential(s)
        if s.paid:
            pool = self.payments(1)
            headers["PAYMENT-SIGNATURE"] = pool.read_text().strip()
            pool.unlink()
        status, h, body = request(self.url(s.target, s.path), headers)
        problems = []
        if status != s.status:
            problems.append(f"answered {status}, expected {s.status}: {body[:200]!r}")
        elif status == 200 and body.decode(errors="replace") != BODY:
            problems.append(f"200 with an unexpected body {body[:200]!r}")
        elif status == 402 and "payment-required" not in h:
            problems.append("402 without a PAYMENT-REQUIRED header")
        if s.paid and status == 200 and "payment-response" not in h:
            problems.append("paid 200 without a PAYMENT-RESPONSE header")
        if problems:
            self.check_failures += [f"{s.id}: {p}" for p in problems]
            return False
        return True

    # -- runs ----------------------------------------------------------------------------
    def measure(self, s: Scenario, seconds: float, rep: int, warmup: bool = False) -> Run:
        conns = s.connections or self.args.connections
        url = self.url(s.target, s.path)
        for attempt in range(3):
            pool = None
            script = None
            if s.paid:
                pool = self.payments(self.pool_size(s.id, seconds))
                script = [pool, 1]
            headers = self.credential(s)
            before, machine_before = self.procs.cpu_seconds(), cpu_snapshot()
            r = wrk(url, seconds, conns, script, headers)
            after, machine_after = self.procs.cpu_seconds(), cpu_snapshot()
            if pool:
                pool.unlink()
            if s.paid:
                # Size later pools from the fastest rate seen (an exhausted run over-counts fast
                # 402s, which only makes the next pool bigger).
                self.rate[s.id] = max(self.rate[s.id], r["rps"])
                if r["exhausted"] and not warmup and attempt < 2:
                    self.notes.append(f"{s.id} rep {rep}: the pool of signed payments ran out ({r['exhausted']} unpaid requests); measured again with a bigger pool")
                    self.rate[s.id] *= 2
                    continue
            break
        run = Run(s.id, rep, r["rps"], r["p50_us"], r["p99_us"], r["requests"], r["non2xx"], r["errors"], r["used"], r["exhausted"])
        run.cpu = {name: after[name] - before[name] for name in after if name in before}
        # Our reaped children in the window are wrk (and nothing else: pools are signed before).
        run.cpu["wrk"] = machine_after["children"] - machine_before["children"]
        own = sum(run.cpu.values()) + machine_after["self"] - machine_before["self"]
        wall = (machine_after["at"] - machine_before["at"]) * (os.cpu_count() or 1)
        run.foreign = max(0.0, (machine_after["busy"] - machine_before["busy"]) - own) / wall * 100 if wall else 0.0
        if s.status == 200 and run.non2xx:
            run.problems.append(f"{run.non2xx} non-2xx answers")
        if s.status != 200 and run.non2xx != run.requests:
            run.problems.append(f"{run.requests - run.non2xx} answers were not {s.status}")
        if run.errors:
            run.problems.append(f"socket errors {run.errors}")
        if run.exhausted:
            run.problems.append(f"payment pool exhausted ({run.exhausted} unpaid)")
        return run

    def run(self):
        a = self.args
        live = []
        for s in self.scenarios:
            if self.check(s):
                live.append(s)
            else:
                print(f"  {s.id}: wrong answer, not measured", flush=True)
        for rep in range(1, a.reps + 1):
            for s in live:
                self.procs.check_alive()
                if a.warmup > 0:
                    self.measure(s, a.warmup, rep, warmup=True)
                run = self.measure(s, a.duration, rep)
                # Other work on the machine (builds, tests) steals CPU from whichever run it
                # overlaps: measure such a run again, keep the quietest.
                for _ in range(a.noisy_retries):
                    if run.foreign <= NOISY_PERCENT or self.retried >= MAX_NOISY_RETRIES:
                        break
                    print(f"  rep {rep} {s.id:>4}: other processes took {run.foreign:.0f}% of the machine, measuring again", flush=True)
                    again = self.measure(s, a.duration, rep)
                    self.retried += 1
                    run = again if again.foreign < run.foreign else run
                self.runs.append(run)
                flag = f"  !! {'; '.join(run.problems)}" if run.problems else ""
                print(f"  rep {rep} {s.id:>4}: {run.rps:10.0f} req/s  p50 {fmt_us(run.p50_us):>8}  p99 {fmt_us(run.p99_us):>8}  other CPU {run.foreign:3.0f}%{flag}", flush=True)
        self.rss = {name: rss_kib(pid) for name in self.procs.procs if (pid := self.procs.pid(name))}


def cpu_snapshot() -> dict:
    """Machine-wide busy and steal CPU seconds (/proc/stat) and our own (self + reaped children)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    hz = os.sysconf("SC_CLK_TCK")
    me, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {
        "busy": (user + nice + system + irq + softirq) / hz,
        "steal": steal / hz,
        "self": me.ru_utime + me.ru_stime,
        "children": children.ru_utime + children.ru_stime,
        "own": me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime,
        "at": time.monotonic(),
    }


def foreign_cpu(start: dict, end: dict) -> dict:
    """CPU other processes (other builds, tests) took while we ran, as a share of all cores."""
    wall = (end["at"] - start["at"]) * (os.cpu_count() or 1)
    other = max(0.0, (end["busy"] - start["busy"]) - (end["own"] - start["own"]))
    return {"other": other / wall * 100 if wall else 0.0, "steal": (end["steal"] - start["steal"]) / wall * 100 if wall else 0.0}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fmt_us(us: float | None) -> str:
    if us is None:
        return "–"
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


# -- statistics and report -----------------------------------------------------------------
def summarize(runs: list[Run]) -> dict[str, dict]:
    out = {}
    for sid in dict.fromkeys(r.scenario for r in runs):
        rs = [r for r in runs if r.scenario == sid]
        rps = [r.rps for r in rs]
        med = statistics.median(rps)
        out[sid] = {
            "rps": med,
            "min": min(rps),
            "max": max(rps),
            "spread": (max(rps) - min(rps)) / med * 100 if med else 0.0,
            "p50": statistics.median(r.p50_us for r in rs),
            "p99": statistics.median(r.p99_us for r in rs),
            "n": len(rs),
            "problems": sorted({p for r in rs for p in r.problems}),
        }
    return out


def paired(runs: list[Run], a: str, b: str, key=lambda r: r.rps) -> list[float]:
    """Per-repetition values of a / b (same rep, so drift cancels)."""
    by = {(r.scenario, r.rep): r for r in runs}
    return [key(by[(a, rep)]) / key(by[(b, rep)]) for (sid, rep) in by if sid == a and (b, rep) in by and key(by[(b, rep)])]


def ratio_text(vals: list[float]) -> str:
    if not vals:
        return "–"
    med = statistics.median(vals)
    return f"{med:.2f}" if len(vals) == 1 else f"{med:.2f} ({min(vals):.2f}–{max(vals):.2f})"


def host() -> dict:
    """CPU, cores, kernel and Envoy version: what every report (bench, soak) names first."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    envoy = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version: (\S+)", envoy)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "envoy": m.group(1) if m else envoy.strip(),
    }


def machine() -> dict:
    wrk_v = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    node_v = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {**host(), "wrk": (wrk_v.split(" [")[0] or "wrk").strip(), "node": node_v}


GOALS = [
    # (text, measured fn → (value, text), passes fn)
    ("S1 ≥ 0.95 × B1 throughput", ("S1", "B1"), 0.95),
    ("S3 ≥ 0.85 × B1 throughput", ("S3", "B1"), 0.85),
    ("S4 ≥ 0.90 × B1 throughput", ("S4", "B1"), 0.90),
    ("S2 ≥ 0.90 × B2 throughput", ("S2", "B2"), 0.90),
    ("S5 ≥ 0.50 × B1 throughput", ("S5", "B1"), 0.50),
    ("S5 ≥ 3 × P5 throughput", ("S5", "P5"), 3.0),
    ("S2 ≥ 5 × P2 throughput", ("S2", "P2"), 5.0),
    ("S1 > S1e throughput", ("S1", "S1e"), None),
    ("S2 > S2e throughput", ("S2", "S2e"), None),
]


def goal_rows(runs: list[Run], summary: dict) -> list[tuple[str, str, str]]:
    rows = []
    for text, (a, b), floor in GOALS:
        vals = paired(runs, a, b)
        if not vals:
            rows.append((text, "not measured", "–"))
            continue
        med = statistics.median(vals)
        ok = med >= floor if floor is not None else med > 1.0
        rows.append((text, f"{a}/{b} = {ratio_text(vals)}", "pass" if ok else "**miss**"))
    # How far S3 and S4 are from the floor any request through the V8 filter has: B1w enters the
    # VM with Tollway's callbacks and does nothing.
    for sid in ("S3", "S4"):
        vals = paired(runs, sid, "B1w")
        if vals:
            rows.append((f"(for information) {sid} against the VM's own cost", f"{sid}/B1w = {ratio_text(vals)}", "–"))
    # Added latency: p99 of L-Sx minus p99 of L-B1 with one connection (no queueing, so the
    # difference is the filter's own time per request), per rep.
    for sid in ("S1", "S3", "S4"):
        goal = f"filter adds ≤ 50 µs at p99 on {sid} (1 connection)"
        deltas = [x - y for x, y in zip(*(sorted_by_rep(runs, i, "p99_us") for i in (f"L-{sid}", "L-B1")))]
        if not deltas:
            rows.append((goal, "not measured", "–"))
            continue
        med = statistics.median(deltas)
        base = sorted_by_rep(runs, "L-B1", "p99_us")
        rows.append((
            goal,
            f"p99(L-{sid}) − p99(L-B1) = {med:+.0f} µs ({min(deltas):+.0f}…{max(deltas):+.0f}); p99(L-B1) alone varies "
            f"{fmt_us(min(base))}–{fmt_us(max(base))} between repetitions",
            "pass" if med <= 50 else "**miss**",
        ))
        p50 = [x - y for x, y in zip(*(sorted_by_rep(runs, i, "p50_us") for i in (f"L-{sid}", "L-B1")))]
        rows.append((f"(for information) the same at p50 on {sid}", f"p50(L-{sid}) − p50(L-B1) = {statistics.median(p50):+.0f} µs ({min(p50):+.0f}…{max(p50):+.0f})", "–"))
    if "S1" in summary and "B1" in summary:
        d = summary["S1"]["p99"] - summary["B1"]["p99"]
        rows.append(("(for information) the same at full load", f"p99(S1) − p99(B1) = {d:+.0f} µs", "–"))
    return rows


def sorted_by_rep(runs: list[Run], sid: str, attr: str) -> list[float]:
    return [getattr(r, attr) for r in sorted((r for r in runs if r.scenario == sid), key=lambda r: r.rep)]


CPU_COLUMNS = [("gateway", "gateway (Envoy or peer), core 0"), ("verifier", "verifier"), ("upstream", "upstream"), ("facilitator", "facilitator"), ("wrk", "wrk")]


def cpu_table(bench: Bench, runs: list[Run], summary: dict) -> list[str]:
    """CPU time per request by process (median over reps), to show where a scenario's time goes."""
    if not runs:
        return []
    lines = [
        "",
        "## CPU per request (µs, all threads of each process, median over repetitions)",
        "| id | " + " | ".join(label for _, label in CPU_COLUMNS) + " | total |",
        "|---|" + "---:|" * (len(CPU_COLUMNS) + 1),
    ]
    for s in SCENARIOS:
        rs = [r for r in runs if r.scenario == s.id and r.requests]
        if not rs or s.connections:
            continue
        gateway = "peer" if s.target == "peer" else f"envoy-{s.target}"
        cells, total = [], 0.0
        for key, _ in CPU_COLUMNS:
            name = gateway if key == "gateway" else key
            vals = [r.cpu.get(name, 0.0) / r.requests * 1e6 for r in rs]
            v = statistics.median(vals)
            total += v
            cells.append(f"{v:.0f}" if v >= 0.5 else "–")
        lines.append(f"| {s.id} | " + " | ".join(cells) + f" | {total:.0f} |")
    return lines


def noise_text(bench: Bench) -> str:
    if not bench.runs:
        return "–"
    f = [r.foreign for r in bench.runs]
    noisy = sum(1 for x in f if x > NOISY_PERCENT)
    text = f"median {statistics.median(f):.1f}%, max {max(f):.1f}% of all cores; {bench.retried} runs measured again because of it"
    if noisy:
        text += f"; **{noisy} kept runs still above {NOISY_PERCENT:g}%: rerun on an idle machine**"
    return text + f"; hypervisor steal over the whole bench {bench.foreign['steal']:.1f}%"


def write_report(path: Path, bench: Bench, started: dt.datetime, elapsed: float):
    a = bench.args
    runs = bench.runs
    summary = summarize(runs)
    m = machine()
    wasm = BUILD / "tollway_filter.wasm"
    lines = [
        "# Tollway benchmarks",
        "",
        f"Written by `make bench` (`bench/run.py`) on {started:%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} min. "
        "Regenerate with `make bench`; do not edit by hand.",
        "",
        "## Machine",
        "| | |",
        "|---|---|",
        f"| CPU | {m['cpu']}, {m['cores']} cores |",
        f"| kernel | {m['kernel']} |",
        f"| Envoy | {m['envoy']} |",
        f"| load generator | {m['wrk']} |",
        f"| peer runtime | node {m['node']}, `@x402/express` 2.27.0 |",
        f"| CPU other processes took during the measured runs | {noise_text(bench)} |",
        "",
        "## Method",
        f"- Every Envoy runs `--concurrency 1` pinned to core {ENVOY_CORE} (`taskset -c {ENVOY_CORE}`). wrk (1 thread), "
        f"the static upstream (`bench-upstream`, Rust/hyper), the instant facilitator double (`bench-facilitator`) and "
        f"the tollway verifier are pinned to core {LOAD_CORE}. The peer (Node, `@x402/express`) is the gateway in "
        f"P2/P5, so it takes Envoy's core {ENVOY_CORE}.",
        f"- wrk `-t1 -c{a.connections} -d{a.duration:g}s --latency` per measured run (the L- rows use 1 connection), "
        + (f"after a {a.warmup:g} s warm-up run of the same scenario; " if a.warmup > 0 else "no warm-up; ")
        + f"{a.reps} repetitions; each repetition runs every scenario once in the order of the table, so baselines "
        "and scenarios alternate.",
        "- Cells are medians over the repetitions; spread is (max − min) / median of requests/s. A ratio is the "
        "median of the per-repetition ratios (same repetition, so drift cancels), range in brackets.",
        "- Baselines use the same Envoy binary, listener and upstream as Tollway's bootstraps (rendered by "
        "`tollway envoy`), without any Tollway filter. B2 answers the upstream's exact body itself.",
        "- Filter mode runs the bootstrap `tollway envoy` renders: its routes come from the verifier over RDS, "
        "which gives free routes reached by one literal path (S1's `/free`) an Envoy route with the wasm "
        "filter disabled and, since the config sets `public_url` (the URL clients use), answers unpaid "
        "requests on x402-only routes (S2's `/api/fail`) with the route's 402 from Envoy itself; S3, S4 and "
        "S5 go through the filter. B1w's no-op filter exports the same per-request callbacks as Tollway's "
        "(context create, request and response headers, delete). B1n's no-op filter is native: an Envoy "
        "dynamic module (`bench/noop-module`, a Rust shared library Envoy loads with `dlopen`), so B1w/B1 "
        "against B1n/B1 is what running a filter in V8 costs by itself.",
        "- Paid scenarios send pre-signed x402 v2 payments (`bench-payments`: real EIP-712 signatures, a unique "
        "nonce each; `bench/payments.lua` sends each once). The facilitator double answers /verify and /settle "
        "at once, so only the gateway's own work is timed. The verifier does check every signature (EIP-712 "
        "recovery) and records every payment in its ledger; `@x402/express` leaves both to the facilitator.",
        "- S3 sends one reusable L402 token on every request (bought once through the verifier's dev Lightning "
        "node on `/api/sats`); S4 one lease token on `/stream/ticker/BENCH` (bought with a real x402 payment "
        "before each run; the route rewrites the path and adds the `streaming` response presets). Both are "
        "checked in the filter with no verifier call. The 402 scenarios use `/api/fail`, an x402-only route "
        "with quote's price (quote also sells Lightning, whose 402 would mint an invoice).",
        "- Before timing, each scenario is checked by hand (S1 200 with the upstream's body, S2 402 with "
        "PAYMENT-REQUIRED, S5 200 with PAYMENT-RESPONSE, …) and wrk's non-2xx count must match "
        "(all 402 for S2/S2e/P2, none elsewhere).",
        "",
        "## Results",
        "| id | scenario | answers | req/s | spread | p50 | p99 | ratio |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for s in SCENARIOS:
        conns = s.connections or a.connections
        if s.id not in summary:
            why = "wrong answer (see below)" if any(f.startswith(s.id + ":") for f in bench.check_failures) else "not run"
            lines.append(f"| {s.id} | {s.title} | {s.status} | {why} | | | | |")
            continue
        x = summary[s.id]
        ratio = f"{ratio_text(paired(runs, s.id, s.baseline))} × {s.baseline}" if s.baseline and s.baseline in summary else ""
        flag = " ⚠" if x["problems"] else ""
        lines.append(
            f"| {s.id} | {s.title}{'' if conns == a.connections else f' ({conns} conn)'} | {s.status} | {x['rps']:,.0f}{flag} | "
            f"{x['spread']:.1f}% | {fmt_us(x['p50'])} | {fmt_us(x['p99'])} | {ratio} |"
        )
    lines += [
        "",
        "Mode comparisons (filter mode / ext_authz-only mode, same repetition): "
        + ", ".join(f"{x}/{y} = {ratio_text(paired(runs, x, y))}" for x, y in [("S1", "S1e"), ("S2", "S2e"), ("S5", "S5e")] if paired(runs, x, y))
        + ".",
        "",
        "## Goals",
        "| goal | measured | result |",
        "|---|---|---|",
    ]
    lines += [f"| {g} | {v} | {r} |" for g, v, r in goal_rows(runs, summary)]
    lines += [
        "",
        "The latency goal is judged with one connection: at full load p99 is mostly queueing, which grows "
        "with any throughput loss and is already judged by the throughput goals.",
        "",
        "## Size and memory (resident set after the runs)",
        "| | |",
        "|---|---|",
        f"| wasm filter `.build/tollway_filter.wasm` | {wasm.stat().st_size / 1024:,.0f} KiB |" if wasm.exists() else "| wasm filter | not built |",
    ]
    for name, label in [
        ("envoy-b1", "Envoy without Tollway (B1)"),
        ("envoy-filter", "Envoy with the Tollway filter (filter mode)"),
        ("envoy-extauthz", "Envoy in ext_authz-only mode"),
        ("verifier", "tollway verifier"),
        ("peer", "peer (node + @x402/express)"),
    ]:
        if name in bench.rss:
            lines.append(f"| {label} | {bench.rss[name] / 1024:,.1f} MiB |")
    lines += cpu_table(bench, runs, summary)
    problems = [(r, p) for r in runs for p in r.problems]
    if bench.check_failures or problems or bench.notes:
        lines += ["", "## Problems"]
        lines += [f"- check {f}" for f in bench.check_failures]
        lines += [f"- {r.scenario} rep {r.rep}: {p}" for r, p in problems]
        lines += [f"- {n}" for n in bench.notes]
    lines += [
        "",
        "## Every measured run",
        "| rep | id | req/s | p50 | p99 | requests | non-2xx | payments used | other processes' CPU |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r.rep, [s.id for s in SCENARIOS].index(r.scenario))):
        lines.append(
            f"| {r.rep} | {r.scenario} | {r.rps:,.0f} | {fmt_us(r.p50_us)} | {fmt_us(r.p99_us)} | {r.requests:,} | {r.non2xx:,} | "
            + (f"{r.used:,}" if r.used is not None else "")
            + f" | {r.foreign:.1f}% |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured run (default 5)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each measured run (default 2)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions, at least 3 (default 3)")
    ap.add_argument("--scenarios", help="comma-separated subset, e.g. B1,B2,P2,P5")
    ap.add_argument("--smoke", action="store_true", help="1 rep of 2 s, no warm-up, report to a temp file; fails only on wrong answers")
    ap.add_argument("--out", type=Path, help=f"report path (default {REPORT.name}, or a temp file with --smoke)")
    ap.add_argument("--noisy-retries", type=int, default=2, help=f"re-measure a run when other processes took > {NOISY_PERCENT:g}%% of the machine (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (configs, logs)")
    a = ap.parse_args()
    if a.smoke:
        a.reps, a.duration, a.warmup, a.noisy_retries = 1, min(a.duration, 2.0), 0.0, 0
    elif a.reps < 3:
        ap.error("--reps must be at least 3 (use --smoke for a quick check)")
    if (os.cpu_count() or 1) < 2:
        ap.error("needs at least 2 cores (Envoy on core 0, load on core 1)")
    if not shutil.which("wrk"):
        ap.error("wrk is not installed (`apt-get install -y wrk`; `make bench` does it)")
    out = a.out or (Path(tempfile.gettempdir()) / "tollway-BENCHMARKS.smoke.md" if a.smoke else REPORT)

    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so every child process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_dir = Path(tempfile.mkdtemp(prefix="tollway-bench-"))
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    cpu0 = cpu_snapshot()
    bench = Bench(a, run_dir)
    print(f"bench: {', '.join(s.id for s in bench.scenarios)}; {a.reps} × {a.duration:g} s, {a.connections} connections; logs in {run_dir}", flush=True)
    try:
        bench.start()
        bench.run()
    finally:
        bench.procs.stop_all()
    bench.foreign = foreign_cpu(cpu0, cpu_snapshot())
    noisy = [r for r in bench.runs if r.foreign > NOISY_PERCENT]
    if noisy:
        print(f"bench: WARNING {len(noisy)} of {len(bench.runs)} runs shared the machine with other work (> {NOISY_PERCENT:g}% of it): those numbers are noisy", file=sys.stderr)
    write_report(out, bench, started, time.monotonic() - t0)
    print(f"bench: report written to {out}")
    if not a.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    wrong = bench.check_failures + [f"{r.scenario} rep {r.rep}: {p}" for r in bench.runs for p in r.problems if "non-2xx" in p or "answers were not" in p]
    for w in wrong:
        print(f"bench: WRONG ANSWER {w}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
