"""Build x402 payment headers by hand (for the negative cases the official clients never send).

Signatures are real EIP-712 signatures made with eth_account, so only the field a test changes
is wrong.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import time

from eth_account import Account

TRANSFER_TYPES = {
    "TransferWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ]
}


def b64json(obj) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def decode_b64json(value: str):
    return json.loads(base64.b64decode(value))


def challenge(response) -> dict:
    """The decoded v2 PAYMENT-REQUIRED header of a 402 response."""
    return decode_b64json(response.headers["payment-required"])


def evm_offers(required: dict) -> list[dict]:
    """The `eip155` entries of `accepts` (a route priced in sats also offers a `bip122` one)."""
    return [a for a in required["accepts"] if a["network"].startswith("eip155:")]


def sign_payment(
    required: dict,
    key: str,
    *,
    signer_key: str | None = None,
    value: int | None = None,
    to: str | None = None,
    valid_after: int = 0,
    valid_before: int | None = None,
    accepted_overrides: dict | None = None,
    chain_id: int = 84532,
) -> str:
    """A v2 PAYMENT-SIGNATURE header paying the first EVM offer of `required`, with optional faults."""
    offer = evm_offers(required)[0]
    accepted = copy.deepcopy(offer)
    accepted.update(accepted_overrides or {})
    payer = Account.from_key(key).address
    auth = {
        "from": payer,
        "to": to or offer["payTo"],
        "value": str(value if value is not None else int(offer["amount"])),
        "validAfter": str(valid_after),
        "validBefore": str(valid_before if valid_before is not None else int(time.time()) + 300),
        "nonce": "0x" + os.urandom(32).hex(),
    }
    signed = Account.sign_typed_data(
        signer_key or key,
        domain_data={
            "name": offer["extra"]["name"],
            "version": offer["extra"]["version"],
            "chainId": chain_id,
            "verifyingContract": offer["asset"],
        },
        message_types=TRANSFER_TYPES,
        message_data={
            "from": auth["from"],
            "to": auth["to"],
            "value": int(auth["value"]),
            "validAfter": int(auth["validAfter"]),
            "validBefore": int(auth["validBefore"]),
            "nonce": bytes.fromhex(auth["nonce"][2:]),
        },
    )
    signature = signed.signature.hex()
    if not signature.startswith("0x"):
        signature = "0x" + signature
    return b64json(
        {
            "x402Version": 2,
            "resource": required.get("resource"),
            "accepted": accepted,
            "payload": {"signature": signature, "authorization": auth},
        }
    )
