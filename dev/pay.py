"""Pay for a Tollway route with the official Python x402 client (x402 2.25, sync `requests`).

    python dev/pay.py URL [--method POST] [--data '{"hello":"world"}'] [--key 0x...]

The key defaults to $DEMO_PAYER_KEY (written by `make demo` to .demo/env). Prints the status, the
decoded settlement receipt and the body. Exit code 0 only for a 2xx answer.
"""

import argparse
import json
import os
import sys

import requests
from eth_account import Account
from x402 import x402ClientSync
from x402.http import x402HTTPClientSync
from x402.http.clients import wrapRequestsWithPayment
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact import register_exact_evm_client


def paying_session(key: str) -> tuple[requests.Session, x402ClientSync]:
    client = x402ClientSync()
    register_exact_evm_client(client, EthAccountSigner(Account.from_key(key)))
    # Our local test token is not one of the SDK's known assets: opt out of its spend controls.
    client.set_spend_controls(False)
    return wrapRequestsWithPayment(requests.Session(), client), client


def receipt(client: x402ClientSync, response: requests.Response):
    if not (response.headers.get("payment-response") or response.headers.get("x-payment-response")):
        return None
    settle = x402HTTPClientSync(client).get_payment_settle_response(lambda name: response.headers.get(name))
    return settle.model_dump(by_alias=True, exclude_none=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--method", default="GET")
    p.add_argument("--data")
    p.add_argument("--key", default=os.environ.get("DEMO_PAYER_KEY"))
    a = p.parse_args()
    if not a.key:
        p.error("no payer key: pass --key or source .demo/env")
    session, client = paying_session(a.key)
    headers = {"content-type": "application/json"} if a.data else {}
    r = session.request(a.method, a.url, data=a.data, headers=headers, timeout=60)
    print(f"HTTP {r.status_code}")
    print("receipt:", json.dumps(receipt(client, r)))
    print(r.text)
    return 0 if 200 <= r.status_code < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
