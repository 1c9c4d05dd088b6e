"""Pay for a Tollway route over Lightning (L402) with the `l402-requests` client (0.9.0).

    python dev/pay_l402.py URL [--method POST] [--data '{"hello":"world"}'] [--pay-url URL]

The wallet is the verifier's dev node: it POSTs each invoice to the dev-only pay endpoint
(`POST /dev/lightning/pay` on `verifier.http`, `lightning.backend: dev` only) and hands the
preimage back to the client, which retries with `Authorization: L402 <macaroon>:<preimage>`.
The endpoint defaults to $DEMO_LN_PAY_URL (written by `make demo` to .demo/env). Prints the
status, what was paid and the body. Exit code 0 only for a 2xx answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from l402_requests import L402Client, WalletBase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dev.stack import lightning_pay  # noqa: E402


class DevNodeWallet(WalletBase):
    """An l402-requests wallet that pays through the Tollway verifier's dev Lightning node."""

    def __init__(self, pay_url: str):
        self.pay_url = pay_url
        self.payments: list[dict] = []  # {"invoice", "preimage", "payment_hash"} per payment

    async def pay_invoice(self, bolt11: str) -> str:
        return self.pay_invoice_sync(bolt11)

    def pay_invoice_sync(self, bolt11: str) -> str:  # the sync client calls this one
        paid = lightning_pay(self.pay_url, bolt11)
        self.payments.append({"invoice": bolt11, **paid})
        return paid["preimage"]


def paying_client(pay_url: str) -> tuple[L402Client, DevNodeWallet]:
    wallet = DevNodeWallet(pay_url)
    return L402Client(wallet=wallet, timeout=30), wallet


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--method", default="GET")
    p.add_argument("--data")
    p.add_argument("--pay-url", default=os.environ.get("DEMO_LN_PAY_URL"))
    a = p.parse_args()
    if not a.pay_url:
        p.error("no dev pay endpoint: pass --pay-url or source .demo/env")
    client, wallet = paying_client(a.pay_url)
    headers = {"content-type": "application/json"} if a.data else {}
    r = client.request(a.method.upper(), a.url, content=a.data, headers=headers)
    print(f"HTTP {r.status_code}")
    for paid in wallet.payments:
        print("paid:", json.dumps({"payment_hash": paid["payment_hash"], "preimage": paid["preimage"]}))
    print(r.text)
    return 0 if 200 <= r.status_code < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
