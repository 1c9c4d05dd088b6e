"""Buy (or renew) a Tollway lease with the official Python x402 client (docs/leases.md).

    python dev/lease.py URL [--token] [--renew TOKEN] [--key 0x...]

URL is a lease path, e.g. "$DEMO_URL/lease/ticker/BTC". The client POSTs it, pays the 402 and
prints the lease JSON (token, expiry, the path it is good for), or with --token only the token,
for a shell variable:

    LEASE=$(python dev/lease.py "$DEMO_URL/lease/ticker/BTC" --token)
    curl -N -H "x-x402-lease: $LEASE" "$DEMO_URL/stream/ticker/BTC"

--renew TOKEN renews that lease (inside its renewal window; outside it nothing is charged and the
answer is 409). The key defaults to $DEMO_PAYER_KEY (written by `make demo` to .demo/env).
Exit code 0 only for a 2xx answer; errors go to stderr.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dev.pay import paying_session, receipt  # noqa: E402

LEASE_HEADER = "x-x402-lease"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="the lease URL, e.g. http://127.0.0.1:10000/lease/ticker/BTC")
    p.add_argument("--token", action="store_true", help="print only the lease token")
    p.add_argument("--renew", metavar="TOKEN", help="renew this lease instead of buying a new one")
    p.add_argument("--key", default=os.environ.get("DEMO_PAYER_KEY"))
    a = p.parse_args()
    if not a.key:
        p.error("no payer key: pass --key or source .demo/env")
    session, client = paying_session(a.key)
    headers = {LEASE_HEADER: a.renew} if a.renew else {}
    r = session.post(a.url, headers=headers, timeout=60)
    if not 200 <= r.status_code < 300:
        print(f"HTTP {r.status_code}: {r.text}", file=sys.stderr)
        return 1
    lease = r.json()
    if a.token:
        print(lease["lease"])
    else:
        print(json.dumps({**lease, "receipt": receipt(client, r)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
