"""`make demo`: the whole stack on the usual ports, with copy-paste paying requests for both
rails (x402 on the local chain, Lightning through the verifier's dev node), leased streams and
WebSockets, and the admin API."""

import shlex
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dev.stack import LIGHTNING_NETWORK, NETWORK, PAY_TO, PAYER_KEY, ROOT, ROUTES, Ports, Stack  # noqa: E402


def describe(route) -> str:
    prices = []
    if route.price is not None:
        prices.append(f"{route.price} USD")
    if route.price_sats is not None:
        prices.append(f"{route.price_sats} sats" + (", one request per token" if route.single_use else ""))
    price = " or ".join(prices) or "free"
    if route.lease is not None:
        kind = "WebSocket" if route.kind == "websocket" else "stream"
        terms = f"{route.lease.seconds} s" + (", one use" if route.lease.single_use else "")
        return f"{'/'.join(route.methods)} {route.path} ({kind}; lease {price} for {terms} at {route.lease.path})"
    return f"{'/'.join(route.methods)} {route.path} ({price})"


def main() -> int:
    run_dir = ROOT / ".demo"
    stack = Stack(run_dir, Ports.demo())
    print("starting anvil, token, facilitator, upstream, verifier and Envoy ...", flush=True)
    stack.start()
    facts = {
        "DEMO_URL": stack.url,
        "DEMO_PAYER_KEY": PAYER_KEY,
        "DEMO_RPC_URL": stack.rpc_url,
        "DEMO_TOKEN": stack.token,
        "DEMO_PAY_TO": PAY_TO,
        "DEMO_NETWORK": NETWORK,
        "DEMO_LN_PAY_URL": stack.lightning_pay_url,
        "DEMO_WS_URL": stack.url.replace("http://", "ws://", 1),
        "DEMO_UPSTREAM_URL": stack.upstream_url,
        "DEMO_VERIFIER_URL": stack.verifier_http,
        "DEMO_ADMIN_URL": stack.verifier_admin_url,
        # curl's options for the admin API: trust the demo's CA, present its client certificate.
        "DEMO_ADMIN_TLS": f"--cacert {stack.pki.ca} --cert {stack.pki.client_cert} --key {stack.pki.client_key}",
    }
    (run_dir / "env").write_text("".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in facts.items()))
    shown = [r for r in ROUTES if r.name not in ("fail", "short", "flash")]  # these exist for the tests
    routes = "\n".join(f"  {'routes' if i == 0 else '':<16}{describe(r)}" for i, r in enumerate(shown))
    print(
        f"""
Tollway demo is up (logs and config in .demo/):
  Envoy           {stack.url}        (admin {stack.admin_url})
  verifier        {stack.verifier_http}/metrics   gRPC 127.0.0.1:{stack.ports.grpc} (TLS, mTLS: certificates in {stack.tls_dir.relative_to(ROOT)}/)
  admin API       {stack.verifier_admin_url}/admin/routes   (TLS, client certificate + bearer token)
  facilitator     http://127.0.0.1:{stack.ports.facilitator}   chain {stack.rpc_url} (anvil, {NETWORK})
  lightning       the verifier's dev node (regtest, {LIGHTNING_NETWORK}); pays via {stack.lightning_pay_url}
{routes}

Try it from another terminal in this folder:
  curl -i {stack.url}/free
  curl -i {stack.url}/api/quote          # 402: PAYMENT-REQUIRED (USDC and Lightning) + WWW-Authenticate (LSAT, L402)

x402 on the local chain (the official Python x402 client):
  . .demo/env && .venv/bin/python dev/pay.py "$DEMO_URL/api/quote"
  . .demo/env && .venv/bin/python dev/pay.py "$DEMO_URL/api/echo" --method POST --data '{{"hello":"tollway"}}'

Lightning (the wallet is the dev node: it pays each invoice through {stack.lightning_pay_url}):
  . .demo/env && .venv/bin/python dev/pay_l402.py "$DEMO_URL/api/sats"                 # L402, l402-requests
  . .demo/env && .venv/bin/python dev/pay_l402.py "$DEMO_URL/api/echo" --method POST --data '{{"hello":"sats"}}'
  . .demo/env && node dev/chain/pay-l402-alby.mjs "$DEMO_URL/api/sats"                # L402, @getalby/lightning-tools
  . .demo/env && node dev/chain/pay-l402-alby.mjs "$DEMO_URL/api/sats" --x402         # x402 over Lightning (bip122)

Streams and WebSockets are sold as leases: pay once at the lease URL, then use the token until it expires.
  curl -i {stack.url}/stream/ticker/BTC  # 402 lease_required; the challenge's resource is /lease/ticker/BTC
  . .demo/env && .venv/bin/python dev/lease.py "$DEMO_URL/lease/ticker/BTC"   # pays 0.01 USD: the lease JSON
  . .demo/env && LEASE=$(.venv/bin/python dev/lease.py "$DEMO_URL/lease/ticker/BTC" --token)
  curl -N -H "x-x402-lease: $LEASE" "$DEMO_URL/stream/ticker/BTC"    # event 1 at once, event 2 on release (or after 10 s)
  curl -X POST "{stack.upstream_url}/__release?symbol=BTC"         # (another terminal) the upstream sends event 2 and ends
  curl -N "$DEMO_URL/stream/ticker/BTC?t=$LEASE"                     # the token as ?t= (what EventSource can send)
  .venv/bin/python dev/lease.py "$DEMO_URL/lease/ticker/BTC" --renew "$LEASE"   # renew in the last 30 s (409 before)
  . .demo/env && CHAT=$(.venv/bin/python dev/lease.py "$DEMO_URL/lease/chat/lobby" --token)
  .venv/bin/python -m websockets "$DEMO_WS_URL/ws/chat/lobby?t=$CHAT"  # an echo room; type a line, get it back

Routes at run time (the verifier's admin API; the filter picks changes up within a second or so,
and they are kept in .demo/ledger.db across demo restarts):
  . .demo/env && curl -s $DEMO_ADMIN_TLS -H "authorization: Bearer $(cat .demo/admin-token)" "$DEMO_ADMIN_URL/admin/routes"
  . .demo/env && curl -s $DEMO_ADMIN_TLS -X PUT -H "authorization: Bearer $(cat .demo/admin-token)" -H "content-type: application/json" \\
      -d '{{"path":"/api/new","methods":["GET"],"price":"0.005"}}' "$DEMO_ADMIN_URL/admin/routes/new"
  curl -i {stack.url}/api/new            # 402 for 0.005 USD; PATCH '{{"disabled":true}}' or DELETE the same URL

Ctrl-C stops everything.""",
        flush=True,
    )
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        while not stopping:
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; see .demo/{name}.log", file=sys.stderr)
                    stopping.append(1)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping ...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
