"""`make demo`: the whole stack on the usual ports, with copy-paste paying requests for both
rails (x402 on the local chain, Lightning through the verifier's dev node)."""

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
    return f"{'/'.join(route.methods)} {route.path} ({' or '.join(prices) or 'free'})"


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
    }
    (run_dir / "env").write_text("".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in facts.items()))
    shown = [r for r in ROUTES if r.name != "fail"]  # /api/fail exists for the tests
    routes = "\n".join(f"  {'routes' if i == 0 else '':<16}{describe(r)}" for i, r in enumerate(shown))
    print(
        f"""
Tollway demo is up (logs and config in .demo/):
  Envoy           {stack.url}        (admin {stack.admin_url})
  verifier        {stack.verifier_http}/metrics
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
