"""`make soak` (and the second half of `make bench`): a flood of unpaid requests against the whole
stack for an hour, to show that the verifier's memory and the ledger stay bounded
(README, Lightning, "Invoices on demand, bounded").

It starts a full `dev.stack.Stack` (anvil, facilitator, upstream, `tollway serve` with its
in-process `dev` Lightning node, Envoy with the filter) and floods Envoy for `--seconds` from
`--clients` clients, each its own loopback source address (127.0.0.2, 127.0.0.3, ...: the verifier
limits open invoices per client address), served round-robin by `--workers` threads over
keep-alive connections. Each client cycles over Lightning-priced requests: `POST
/lease/ticker/SOAK<n>` (n over `--paths` distinct paths; x402 + Lightning), `GET /api/sats`
(Lightning only), `GET /api/once` (Lightning only, single use) and `GET /api/quote` (x402 +
Lightning), so both the reuse of a client's open invoices and the per-client limit are hit. Every
answer must be 402 (with an invoice, or x402 only past the limit) or 429 (`invoice_limit`, a
Lightning-only route past the limit); anything else, or a failed connection, fails the run.

Every `--sample` seconds it records the verifier's and Envoy's resident set (VmRSS), the ledger's
size (SQLite file + WAL), its `invoice_created` rows, `tollway_lightning_invoices_open` and the
requests done. The report (a Markdown section between `<!-- soak:begin -->` and
`<!-- soak:end -->`, replaced in place or appended to BENCHMARKS.md, so it runs after
`bench/run.py`, which rewrites that file) gives requests/s, invoices minted per second, the RSS
growth extrapolated from the second half only (start-up allocation is not growth) and the
verdict.

`.venv/bin/python bench/soak.py [--seconds 3600] [--clients 64] [--workers 3] [--rate R]
[--paths 1000] [--invoice-expiry S] [--sample S] [--out PATH] [--keep]`; `--out` writes (or
replaces) the section in another file, e.g. a trial's. Exits non-zero on a wrong answer or a dead process; the
verdict is in the report (and on stderr when it is not "bounded").
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import ipaddress
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dev.stack import Stack  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from run import host  # noqa: E402  (bench/run.py: the machine facts every report names)

REPORT = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"

# The verdict: the verifier's RSS grows by less than this over the second half (least-squares
# slope, per hour), or by less than NOISE_KIB in all (a short run: extrapolating a few seconds to
# an hour turns allocator noise into a "rate").
RSS_GROWTH_LIMIT_KIB_PER_HOUR = 2 * 1024
NOISE_KIB = 1024

# lightning.invoice_limits defaults (verifier/src/rails/invoices.rs), used when the config sets none.
DEFAULT_PER_CLIENT, DEFAULT_TOTAL = 10, 10_000

KINDS = ("lease", "sats", "once", "quote")
FIRST_CLIENT = ipaddress.IPv4Address("127.0.0.2")


# -- load ----------------------------------------------------------------------------------
@dataclass
class Client:
    ip: str
    conn: http.client.HTTPConnection
    i: int = 0  # requests sent
    used: bool = False  # the connection has carried a request (a reset may then be an idle close)


class Worker(threading.Thread):
    """Sends requests for its clients, one each in turn, until `stop` is set."""

    def __init__(self, n: int, ips: list[str], port: int, paths: int, interval: float, stop: threading.Event):
        super().__init__(name=f"soak-{n}", daemon=True)
        self.port, self.paths, self.interval, self.stop = port, paths, interval, stop
        self.clients = [Client(ip, self.connect(ip)) for ip in ips]
        self.done = 0
        self.answers: Counter = Counter()  # (kind, outcome) → count
        self.wrong: list[str] = []  # first few wrong answers, for the report
        self.errors: Counter = Counter()  # transport errors by exception type

    def connect(self, ip: str) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10, source_address=(ip, 0))

    def target(self, c: Client) -> tuple[str, str, str]:
        kind = KINDS[c.i % len(KINDS)]
        if kind == "lease":
            n = c.i // len(KINDS)
            return kind, "POST", f"/lease/ticker/SOAK{n % self.paths if self.paths else n}"
        return kind, "GET", f"/api/{kind}"

    def send(self, c: Client, method: str, path: str) -> tuple[int, bool, bytes]:
        for attempt in (0, 1):
            try:
                c.conn.request(method, path, body=b"" if method == "POST" else None)
                r = c.conn.getresponse()
                body = r.read()
                c.used = True
                return r.status, r.getheader("www-authenticate") is not None, body
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the server closed meanwhile: once more on a fresh one.
                c.conn.close()
                c.conn = self.connect(c.ip)
                if attempt or not c.used:
                    raise
                c.used = False
        raise AssertionError("unreachable")

    def run(self):
        next_at = time.monotonic()
        while not self.stop.is_set():
            for c in self.clients:
                if self.stop.is_set():
                    break
                if self.interval:
                    next_at += self.interval
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    elif delay < -1:
                        next_at = time.monotonic()  # do not burst to catch up
                kind, method, path = self.target(c)
                c.i += 1
                try:
                    status, lightning, body = self.send(c, method, path)
                except Exception as e:  # noqa: BLE001 - any transport failure fails the run
                    self.errors[type(e).__name__] += 1
                    c.conn.close()
                    c.conn = self.connect(c.ip)
                    continue
                if status == 402:
                    outcome = "402 L402" if lightning else "402 x402"
                elif status == 429 and b"invoice_limit" in body:
                    outcome = "429"
                else:
                    outcome = f"{status} other"
                    if len(self.wrong) < 5:
                        self.wrong.append(f"{c.ip} {method} {path} → {status} {body[:200]!r}")
                self.answers[(kind, outcome)] += 1
                self.done += 1
        for c in self.clients:
            c.conn.close()


# -- samples -------------------------------------------------------------------------------
@dataclass
class Sample:
    t: float
    requests: int
    verifier_kib: int
    envoy_kib: int
    verifier_cpu: float  # seconds
    verifier_fds: int
    verifier_written: int  # bytes the verifier caused to be written to storage (/proc/<pid>/io)
    ledger_db: int  # bytes of the SQLite file
    ledger_wal: int  # bytes of its write-ahead log
    invoices: int  # invoice_created rows
    ledger_rows: int  # payment_events rows
    claims: int  # claims rows (the replay store in the ledger)
    open: int | None  # tollway_lightning_invoices_open
    minted_metric: int | None  # tollway_lightning_challenges_total{outcome="minted"}
    own_cpu: float = 0.0  # this script + every stack process, seconds
    busy_cpu: float = 0.0  # the whole machine, seconds
    steal_cpu: float = 0.0

    @property
    def ledger_bytes(self) -> int:
        return self.ledger_db + self.ledger_wal


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def ledger_counts(path: Path) -> tuple[int, int, int]:
    """(invoice_created rows, all rows) of payment_events and the claims rows, read-only."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        invoices, rows = db.execute(
            "SELECT coalesce(sum(event = 'invoice_created'), 0), count(*) FROM payment_events"
        ).fetchone()
        return invoices, rows, db.execute("SELECT count(*) FROM claims").fetchone()[0]
    finally:
        db.close()


def written_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def take_sample(stack: Stack, t: float, workers: list[Worker]) -> Sample:
    v, e = stack.procs["verifier"], stack.procs["envoy"]
    for name, p in (("verifier", v), ("envoy", e)):
        if p.poll() is not None:
            raise RuntimeError(f"{name} exited with {p.returncode} (logs in {stack.run_dir})")
    m = metrics(stack.verifier_http)
    invoices, rows, claims = ledger_counts(stack.ledger_path)
    lp = stack.ledger_path
    me = resource.getrusage(resource.RUSAGE_SELF)
    busy, steal = machine_cpu()
    opened = m.get("tollway_lightning_invoices_open")
    minted = m.get('tollway_lightning_challenges_total{outcome="minted"}')
    return Sample(
        t=t,
        requests=sum(w.done for w in workers),
        verifier_kib=proc_status(v.pid, "VmRSS"),
        envoy_kib=proc_status(e.pid, "VmRSS"),
        verifier_cpu=proc_cpu(v.pid),
        verifier_fds=len(os.listdir(f"/proc/{v.pid}/fd")),
        verifier_written=written_bytes(v.pid),
        ledger_db=file_size(lp),
        ledger_wal=file_size(lp.with_name(lp.name + "-wal")),
        invoices=invoices,
        ledger_rows=rows,
        claims=claims,
        open=None if opened is None else int(opened),
        minted_metric=None if minted is None else int(minted),
        own_cpu=me.ru_utime + me.ru_stime + sum(proc_cpu(p.pid) for p in stack.procs.values()),
        busy_cpu=busy,
        steal_cpu=steal,
    )


# -- config facts ----------------------------------------------------------------------------
class SoakStack(Stack):
    """The dev stack, optionally with a shorter invoice life (`--invoice-expiry`): a shorter run
    then covers as many expiries as an hour does."""

    def __init__(self, run_dir: Path, invoice_expiry: int | None = None):
        super().__init__(run_dir)
        self.invoice_expiry = invoice_expiry

    def write_config(self):
        super().write_config()
        if self.invoice_expiry is not None:
            text = self.config_path.read_text()
            text, n = re.subn(r"(?m)^(\s*invoice_expiry_seconds:\s*)\d+", rf"\g<1>{self.invoice_expiry}", text)
            if n != 1:
                raise RuntimeError(f"no invoice_expiry_seconds in {self.config_path} to change")
            self.config_path.write_text(text)


@dataclass
class Limits:
    per_client: int
    total: int
    expiry: int  # lightning.invoice_expiry_seconds


def config_limits(config: Path) -> Limits:
    text = config.read_text()
    per_client, total = DEFAULT_PER_CLIENT, DEFAULT_TOTAL
    block = re.search(r"^\s*invoice_limits:\s*(\{[^}]*\}|(?:\n\s{4,}.*)+)", text, re.M)
    if block:
        if m := re.search(r"per_client:\s*(\d+)", block.group(1)):
            per_client = int(m.group(1))
        if m := re.search(r"total:\s*(\d+)", block.group(1)):
            total = int(m.group(1))
    m = re.search(r"invoice_expiry_seconds:\s*(\d+)", text)
    return Limits(per_client, total, int(m.group(1)) if m else 3600)


# -- report --------------------------------------------------------------------------------
@dataclass
class Result:
    args: argparse.Namespace
    started: dt.datetime
    samples: list[Sample]
    limits: Limits
    answers: Counter
    errors: Counter
    wrong: list[str]
    warmup: float
    run_dir: Path
    verifier_hwm_kib: int = 0
    envoy_hwm_kib: int = 0
    notes: list[str] = field(default_factory=list)


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 2 or len({t for t, _ in points}) < 2:
        return None
    return statistics.linear_regression([t for t, _ in points], [v for _, v in points]).slope * 3600


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def signed_mib(kib: float) -> str:
    return f"{kib / 1024:+.2f} MiB"


def kib_text(b: float) -> str:
    return f"{b / 1024:,.0f} KiB"


def machine_rows() -> list[str]:
    h = host()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return [
        f"| CPU | {h['cpu']}, {h['cores']} cores |",
        f"| kernel | {h['kernel']} |",
        f"| Envoy | {h['envoy'] or 'unknown'} |",
        f"| commit | {commit or 'unknown'} |",
    ]


def analyse(r: Result) -> dict:
    s = r.samples
    first, last = s[0], s[-1]
    secs = last.t - first.t
    half = r.args.seconds / 2
    second = [x for x in s if x.t >= half - 1e-6]
    mid = second[0]
    after = next((x for x in s if x.t >= r.warmup - 1e-6), last)
    lim = r.limits
    clients = r.args.clients
    cap_open = min(lim.total, clients * lim.per_client)
    # Each client holds at most per_client open invoices, each open for `expiry` seconds (no one
    # pays): in `secs` seconds, at most per_client × (⌊secs / expiry⌋ + 1) minted per client
    # (2 s of slack: expiry is counted in whole seconds).
    ceiling = cap_open * (int((secs + 2) // lim.expiry) + 1)
    minted = last.invoices - first.invoices
    half_secs = last.t - mid.t
    half_minted = last.invoices - mid.invoices
    half_requests = last.requests - mid.requests
    v_slope = slope_per_hour([(x.t, x.verifier_kib) for x in second])
    e_slope = slope_per_hour([(x.t, x.envoy_kib) for x in second])
    l_slope = slope_per_hour([(x.t, x.ledger_db) for x in second])
    v_half_growth = last.verifier_kib - mid.verifier_kib
    opens = [x.open for x in s if x.open is not None]
    max_open = max(opens) if opens else None
    rss_ok = v_slope is not None and (v_slope < RSS_GROWTH_LIMIT_KIB_PER_HOUR or abs(v_half_growth) < NOISE_KIB)
    open_ok = max_open is not None and max_open <= cap_open
    mint_ok = minted <= ceiling
    wall = secs * (os.cpu_count() or 1)
    other = max(0.0, (last.busy_cpu - first.busy_cpu) - (last.own_cpu - first.own_cpu)) / wall * 100 if wall else 0.0
    return dict(
        secs=secs, after=after, mid=mid, first=first, last=last, cap_open=cap_open, ceiling=ceiling,
        minted=minted, half_secs=half_secs, half_minted=half_minted, half_requests=half_requests,
        v_slope=v_slope, e_slope=e_slope, l_slope=l_slope, v_half_growth=v_half_growth, max_open=max_open,
        rss_ok=rss_ok, open_ok=open_ok, mint_ok=mint_ok, bounded=rss_ok and open_ok and mint_ok,
        rps=(last.requests - first.requests) / secs if secs else 0.0,
        half_rps=half_requests / half_secs if half_secs else 0.0,
        other=other, steal=(last.steal_cpu - first.steal_cpu) / wall * 100 if wall else 0.0,
        steady_rate=cap_open / lim.expiry,
    )


def render(r: Result, a: dict) -> str:
    args, lim = r.args, r.limits
    first, last, after, mid = a["first"], a["last"], a["after"], a["mid"]
    by_outcome = Counter()
    for (_, outcome), n in r.answers.items():
        by_outcome[outcome] += n
    written = last.verifier_written - first.verifier_written
    statuses = ", ".join(f"{o}: {n:,}" for o, n in sorted(by_outcome.items())) or "none"
    v_slope, e_slope, l_slope = a["v_slope"], a["e_slope"], a["l_slope"]
    per_request = (
        f"{v_slope / 3600 * 1024 / a['half_rps']:.3f} B per request"
        if v_slope is not None and a["half_rps"]
        else "–"
    )
    if v_slope is not None and a["half_minted"]:
        per_request += f", {v_slope / 3600 * a['half_secs'] * 1024 / a['half_minted']:,.0f} B per invoice minted"

    def rate(x):
        return "–" if x is None else f"{x / 1024:+.2f} MiB/h"

    verdict = "bounded" if a["bounded"] else "NOT bounded"
    max_open_text = "–" if a["max_open"] is None else f"{a['max_open']:,}"
    why = []
    why.append(
        f"verifier RSS {rate(v_slope)} over the second half ({signed_mib(a['v_half_growth'])} in all; limit "
        f"{RSS_GROWTH_LIMIT_KIB_PER_HOUR / 1024:g} MiB/h, or under {NOISE_KIB / 1024:g} MiB in all)"
        + ("" if a["rss_ok"] else " **over the limit**")
    )
    why.append(
        f"open invoices at most {max_open_text} (limit "
        f"min(total {lim.total:,}, {args.clients} clients × per_client {lim.per_client}) = {a['cap_open']:,})"
        + ("" if a["open_ok"] else " **over the limit**")
    )
    why.append(
        f"{a['minted']:,} invoices minted (at most {a['ceiling']:,}: each client holds {lim.per_client} open "
        f"invoices for {lim.expiry} s)" + ("" if a["mint_ok"] else " **more than possible**")
    )
    short = args.seconds < 1800
    lines = [
        BEGIN,
        "## Soak: a flood of unpaid requests",
        "",
        f"Written by `bench/soak.py` (`make bench` after `bench/run.py`, or `make soak`) on "
        f"{r.started:%Y-%m-%d %H:%M} UTC: {a['secs']:,.0f} s of unpaid requests. Regenerate with `make soak`; do not edit by hand.",
        "",
        f"**Verdict: {verdict}.** " + "; ".join(why) + ".",
    ]
    if short:
        lines += ["", f"_A {args.seconds:g} s trial, not the one-hour soak: rates extrapolated to an hour are rough._"]
    lines += [
        "",
        "### Machine and method",
        "| | |",
        "|---|---|",
        *machine_rows(),
        f"| CPU other processes took | {a['other']:.1f}% of all cores (hypervisor steal {a['steal']:.1f}%) |",
        f"| stack | `dev.stack.Stack`: Envoy (`--concurrency 2`) with the wasm filter, `tollway serve` with the in-process `dev` Lightning node, SQLite ledger, anvil + facilitator + demo upstream; nothing pinned |",
        f"| invoice limits | per_client {lim.per_client}, total {lim.total:,}; invoices expire after {lim.expiry} s (handed out again while more than a quarter of that is left) |",
        f"| load | {args.clients} clients (source addresses {FIRST_CLIENT}–{FIRST_CLIENT + args.clients - 1}), "
        f"{args.workers} threads of Python `http.client`, keep-alive, "
        + (f"capped at {args.rate:g} requests/s" if args.rate else "no rate cap")
        + " |",
        f"| requests | each client in turn: `POST /lease/ticker/SOAK<n>` (n over "
        + (f"{args.paths:,} paths" if args.paths else "ever new paths")
        + "), `GET /api/sats` (Lightning only), `GET /api/once` (Lightning only, single use), `GET /api/quote` |",
        f"| samples | every {args.sample:g} s; warm-up {r.warmup:g} s; growth rates are least-squares slopes over the samples of the second half (from {mid.t:.0f} s) |",
        "",
        "### Results",
        "| | |",
        "|---|---|",
        f"| requests | {last.requests - first.requests:,} ({a['rps']:,.0f}/s; second half {a['half_rps']:,.0f}/s) |",
        f"| answers | {statuses}" + (f"; transport errors: {dict(r.errors)}" if r.errors else "") + " |",
        f"| invoices minted (ledger `invoice_created`) | {a['minted']:,}: {a['minted'] / a['secs'] if a['secs'] else 0:.2f}/s overall, "
        f"{a['half_minted'] / a['half_secs'] if a['half_secs'] else 0:.2f}/s in the second half "
        f"(steady state at most {a['steady_rate']:.2f}/s: {a['cap_open']:,} open / {lim.expiry} s) |",
        f"| invoices minted (`tollway_lightning_challenges_total{{outcome=\"minted\"}}`) | "
        + (f"{last.minted_metric - (first.minted_metric or 0):,}" if last.minted_metric is not None else "–")
        + " |",
        f"| open invoices (`tollway_lightning_invoices_open`, refreshed every 5 s) | max {max_open_text}, at the end {last.open if last.open is not None else '–'} |",
        f"| verifier RSS | {mib(first.verifier_kib)} before the flood, {mib(after.verifier_kib)} after warm-up ({after.t:.0f} s), "
        f"{mib(last.verifier_kib)} at the end (peak {mib(r.verifier_hwm_kib)}); second half {rate(v_slope)} ({per_request}) |",
        f"| Envoy RSS | {mib(first.envoy_kib)} before, {mib(after.envoy_kib)} after warm-up, {mib(last.envoy_kib)} at the end "
        f"(peak {mib(r.envoy_hwm_kib)}); second half {rate(e_slope)} |",
        f"| ledger (SQLite file) | {kib_text(first.ledger_db)} before, {kib_text(after.ledger_db)} after warm-up, {kib_text(last.ledger_db)} at the end; "
        f"second half {'–' if l_slope is None else f'{l_slope / 1024:+,.0f} KiB/h'}; `payment_events` +{last.ledger_rows - first.ledger_rows:,} rows "
        f"({last.invoices - first.invoices:,} `invoice_created`; second half {(last.ledger_rows - mid.ledger_rows) / a['half_secs'] * 3600 if a['half_secs'] else 0:,.0f} rows/h), `claims` at most {max(x.claims for x in r.samples):,} rows, "
        f"for {last.requests - first.requests:,} requests |",
        f"| ledger write-ahead log | at most {kib_text(max(x.ledger_wal for x in r.samples))} (reused after each checkpoint, so its size stops growing once it reaches the checkpoint size) |",
        f"| verifier disk writes | {written / 2**20:,.1f} MiB ({written / 1024 / a['secs'] if a['secs'] else 0:,.0f} KiB/s, "
        f"{written / (last.requests - first.requests) if last.requests > first.requests else 0:,.0f} B per request) |",
        f"| verifier CPU, file descriptors | {(last.verifier_cpu - first.verifier_cpu) / a['secs'] * 100 if a['secs'] else 0:.0f}% of a core; "
        f"{first.verifier_fds} open files before, {last.verifier_fds} at the end, at most {max(x.verifier_fds for x in r.samples)} |",
        "",
        "### Answers by request",
        "| request | 402 with an invoice (L402) | 402 x402 only | 429 invoice_limit | other |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        row = {o: n for (k, o), n in r.answers.items() if k == kind}
        other = sum(n for o, n in row.items() if o not in ("402 L402", "402 x402", "429"))
        name = "POST /lease/ticker/SOAK<n>" if kind == "lease" else f"GET /api/{kind}"
        lines.append(f"| `{name}` | {row.get('402 L402', 0):,} | {row.get('402 x402', 0):,} | {row.get('429', 0):,} | {other:,} |")
    lines += [
        "",
        "### Samples",
        "| t (s) | requests | req/s | verifier RSS | verifier CPU | verifier disk writes | Envoy RSS | ledger file | WAL | `invoice_created` | `claims` | open invoices |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    prev = None
    for x in r.samples:
        dt_ = x.t - prev.t if prev is not None else 0
        if dt_:
            rps = f"{(x.requests - prev.requests) / dt_:,.0f}"
            cpu = f"{(x.verifier_cpu - prev.verifier_cpu) / dt_ * 100:.0f}%"
            disk = f"{(x.verifier_written - prev.verifier_written) / 1024 / dt_:,.0f} KiB/s"
        else:
            rps = cpu = disk = "–"
        lines.append(
            f"| {x.t:.0f} | {x.requests:,} | {rps} | {mib(x.verifier_kib)} | {cpu} | {disk} | {mib(x.envoy_kib)} | "
            f"{kib_text(x.ledger_db)} | {kib_text(x.ledger_wal)} | {x.invoices:,} | {x.claims:,} | {x.open if x.open is not None else '–'} |"
        )
        prev = x
    if r.wrong:
        lines += ["", "### Wrong answers (first few)", *[f"- `{w}`" for w in r.wrong]]
    if r.notes:
        lines += ["", *[f"- {n}" for n in r.notes]]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str):
    """Replaces the soak section of `path` (between the markers), or appends it."""
    text = path.read_text() if path.exists() else ""
    start, end = text.find(BEGIN), text.find(END)
    if start != -1 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(END):]
        if not text.endswith("\n"):
            text += "\n"
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    path.write_text(text)


# -- main ----------------------------------------------------------------------------------
def bindable(ip: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3600.0, help="length of the flood (default 3600)")
    ap.add_argument("--clients", type=int, default=64, help="clients, one loopback source address each (default 64)")
    ap.add_argument("--workers", type=int, default=3, help="load threads (default 3)")
    ap.add_argument("--rate", type=float, default=0.0, help="requests/s at most, all clients together (default: no cap)")
    ap.add_argument("--paths", type=int, default=1000, help="distinct lease paths each client cycles over (0: a new one every time; default 1000)")
    ap.add_argument("--invoice-expiry", type=int, help="lightning.invoice_expiry_seconds, 60..86400 (default: the dev stack's, 600); shorter: more expiries per run")
    ap.add_argument("--sample", type=float, help="seconds between samples (default 60; shorter runs: seconds / 12, at least 2)")
    ap.add_argument("--out", type=Path, help=f"file to write the section into (default {REPORT.name})")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (config, logs, ledger)")
    a = ap.parse_args()
    if a.seconds <= 0 or a.clients < 1 or a.workers < 1 or a.rate < 0 or a.paths < 0:
        ap.error("--seconds, --clients and --workers must be positive; --rate and --paths not negative")
    if a.clients > 60000:
        ap.error("--clients: at most 60000")
    if a.invoice_expiry is not None and not 60 <= a.invoice_expiry <= 86400:
        ap.error("--invoice-expiry: 60..86400 seconds")
    a.workers = min(a.workers, a.clients)
    if a.sample is None:
        a.sample = min(60.0, max(2.0, a.seconds / 12))
    out = a.out or REPORT
    ips = [str(FIRST_CLIENT + n) for n in range(a.clients)]
    if not bindable(ips[-1]):
        ap.error(f"cannot bind {ips[-1]}: the soak needs the loopback range 127.0.0.0/8")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_dir = Path(tempfile.mkdtemp(prefix="tollway-soak-"))
    started = dt.datetime.now(dt.timezone.utc)
    warmup = max(a.sample, a.seconds / 10)
    print(
        f"soak: {a.seconds:g} s, {a.clients} clients, {a.workers} threads"
        + (f", at most {a.rate:g} req/s" if a.rate else "")
        + f"; sample every {a.sample:g} s; logs in {run_dir}",
        flush=True,
    )
    stop = threading.Event()
    workers: list[Worker] = []
    samples: list[Sample] = []
    failure = None
    stack = SoakStack(run_dir, a.invoice_expiry)
    try:
        stack.start()
        limits = config_limits(stack.config_path)
        interval = a.workers / a.rate if a.rate else 0.0
        for n in range(a.workers):
            workers.append(Worker(n, ips[n :: a.workers], stack.ports.envoy, a.paths, interval, stop))
        samples.append(take_sample(stack, 0.0, workers))
        t0 = time.monotonic()
        for w in workers:
            w.start()
        k = 1
        while True:
            t = min(k * a.sample, a.seconds)
            time.sleep(max(0.0, t0 + t - time.monotonic()))
            s = take_sample(stack, time.monotonic() - t0, workers)
            samples.append(s)
            prev = samples[-2]
            print(
                f"  {s.t:7.0f} s  {s.requests:>10,} requests ({(s.requests - prev.requests) / max(s.t - prev.t, 1e-9):6,.0f}/s)"
                f"  verifier {s.verifier_kib / 1024:6.1f} MiB  envoy {s.envoy_kib / 1024:6.1f} MiB"
                f"  invoices {s.invoices:>6,}  open {s.open}  ledger {s.ledger_db / 1024:,.0f} KiB + WAL {s.ledger_wal / 1024:,.0f} KiB",
                flush=True,
            )
            if t >= a.seconds:
                break
            k += 1
            if any(not w.is_alive() for w in workers):
                raise RuntimeError("a load thread died")
        stop.set()
        for w in workers:
            w.join(timeout=30)
        vhwm = proc_status(stack.procs["verifier"].pid, "VmHWM")
        ehwm = proc_status(stack.procs["envoy"].pid, "VmHWM")
    except Exception as e:  # noqa: BLE001 - reported, then the stack is stopped
        failure = e
    finally:
        stop.set()
        stack.stop()
    if failure is not None or len(samples) < 3:
        print(f"soak: FAILED {failure or 'too few samples'} (logs in {run_dir})", file=sys.stderr)
        return 1

    answers, errors, wrong = Counter(), Counter(), []
    for w in workers:
        answers.update(w.answers)
        errors.update(w.errors)
        wrong += w.wrong
    result = Result(a, started, samples, limits, answers, errors, wrong, warmup, run_dir, vhwm, ehwm)
    analysis = analyse(result)
    write_section(out, render(result, analysis))
    print(f"soak: report written to {out}")
    if not a.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    bad = sum(n for (_, o), n in answers.items() if o.endswith(" other"))
    if not analysis["bounded"]:
        print("soak: WARNING the verdict is NOT bounded (see the report)", file=sys.stderr)
    if bad or errors:
        for w in wrong:
            print(f"soak: WRONG ANSWER {w}", file=sys.stderr)
        print(f"soak: {bad} wrong answers, transport errors {dict(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
