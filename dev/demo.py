"""`make demo`: the whole stack on the usual ports, with a copy-paste paying request."""

import shlex
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dev.stack import NETWORK, PAY_TO, PAYER_KEY, ROOT, Ports, Stack  # noqa: E402


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
    }
    (run_dir / "env").write_text("".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in facts.items()))
    print(
        f"""
Tollway demo is up (logs and config in .demo/):
  Envoy           {stack.url}        (admin {stack.admin_url})
  verifier        {stack.verifier_http}/metrics
  facilitator     http://127.0.0.1:{stack.ports.facilitator}   chain {stack.rpc_url} (anvil, {NETWORK})
  routes          GET /free (free), GET /api/quote (0.001 USD), POST /api/echo (0.002 USD)

Try it from another terminal in this folder:
  curl -i {stack.url}/free
  curl -i {stack.url}/api/quote          # 402 with PAYMENT-REQUIRED
  . .demo/env && .venv/bin/python dev/pay.py "$DEMO_URL/api/quote"
  . .demo/env && .venv/bin/python dev/pay.py "$DEMO_URL/api/echo" --method POST --data '{{"hello":"tollway"}}'

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
