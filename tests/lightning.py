"""Lightning-rail helpers for the end-to-end tests: read L402 challenges, derive Tollway's
macaroon keys, mint and re-shape macaroons with pymacaroons (an independent implementation),
and build x402-over-Lightning (`bip122`) payments the way the proposals describe them.

Key derivation (docs/internals.md, "Lightning rail"):
    filter_key = HMAC-SHA256(root_secret, "tollway/l402/v1")
    root_key   = HMAC-SHA256(filter_key, sha256(identifier))       # per token
and the macaroon itself is libmacaroons v2 (pymacaroons derives its signing key from root_key
with "macaroons-key-generator", exactly as gopkg.in/macaroon.v2 and Aperture do).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
from dataclasses import dataclass

from pymacaroons import MACAROON_V2, Macaroon
from pymacaroons.serializers import BinarySerializer

from payments import b64json, decode_b64json

FILTER_KEY_LABEL = b"tollway/l402/v1"
IDENTIFIER_LEN = 66

# -- challenges ----------------------------------------------------------------------------

PARAM = re.compile(r'([A-Za-z0-9_]+)="([^"]*)"')


@dataclass
class Challenge:
    scheme: str  # "LSAT" or "L402" as sent
    params: dict[str, str]
    raw: str

    @property
    def macaroon(self) -> str:
        return self.params["macaroon"]

    @property
    def invoice(self) -> str:
        return self.params["invoice"]


def parse_challenge(value: str) -> Challenge:
    scheme, _, rest = value.strip().partition(" ")
    return Challenge(scheme, dict(PARAM.findall(rest)), value)


def www_authenticate(response) -> list[str]:
    """Every WWW-Authenticate value of an httpx response, in order (never comma-joined)."""
    return response.headers.get_list("www-authenticate")


def challenges(response) -> list[Challenge]:
    return [parse_challenge(v) for v in www_authenticate(response)]


def l402_challenge(response) -> Challenge:
    """The `L402 ...` challenge of a 402."""
    [c] = [c for c in challenges(response) if c.scheme == "L402"]
    return c


def payment_required(response) -> dict:
    """The decoded v2 PAYMENT-REQUIRED header."""
    return decode_b64json(response.headers["payment-required"])


def offers(response, namespace: str) -> list[dict]:
    """The v2 `accepts` entries on one CAIP-2 namespace (`eip155`, `bip122`)."""
    return [a for a in payment_required(response)["accepts"] if a["network"].startswith(namespace + ":")]


# -- macaroons -----------------------------------------------------------------------------


def b64decode_any(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not (what macaroon libraries accept)."""
    text = text.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def deserialize(macaroon_b64: str) -> Macaroon:
    return Macaroon.deserialize(base64.urlsafe_b64encode(b64decode_any(macaroon_b64)).decode())


def serialize(m: Macaroon) -> str:
    """Standard padded base64 of the v2 binary form (Aperture's wire form)."""
    return base64.b64encode(BinarySerializer().serialize_raw(m)).decode()


def filter_key(root_secret: bytes) -> bytes:
    return hmac.new(root_secret, FILTER_KEY_LABEL, hashlib.sha256).digest()


def token_root_key(root_secret: bytes, identifier: bytes) -> bytes:
    return hmac.new(filter_key(root_secret), hashlib.sha256(identifier).digest(), hashlib.sha256).digest()


def split_identifier(identifier: bytes) -> tuple[int, bytes, bytes]:
    """(version, payment_hash, token_id) of a 66-byte L402 identifier."""
    assert len(identifier) == IDENTIFIER_LEN, len(identifier)
    (version,) = struct.unpack(">H", identifier[:2])
    return version, identifier[2:34], identifier[34:]


def new_identifier(payment_hash: bytes, token_id: bytes | None = None) -> bytes:
    return struct.pack(">H", 0) + payment_hash + (token_id or os.urandom(32))


def caveats(m: Macaroon) -> list[str]:
    """First-party caveats as text (pymacaroons gives bytes for a v2 macaroon)."""
    return [c.caveat_id.decode() if isinstance(c.caveat_id, bytes) else c.caveat_id for c in m.first_party_caveats()]


def mint(root_secret: bytes, identifier: bytes, caveat_list: list[str], location: str = "lsat") -> str:
    """A macaroon minted here, with Tollway's key derivation, in Aperture's wire form."""
    m = Macaroon(
        location=location,
        identifier=identifier,
        key=token_root_key(root_secret, identifier),
        version=MACAROON_V2,
    )
    for c in caveat_list:
        m.add_first_party_caveat(c)
    return serialize(m)


def replace_caveat(caveat_list: list[str], condition: str, value: str) -> list[str]:
    """`caveat_list` with the caveat on `condition` set to `value`, in place."""
    assert any(c.split("=", 1)[0] == condition for c in caveat_list), (condition, caveat_list)
    return [f"{condition}={value}" if c.split("=", 1)[0] == condition else c for c in caveat_list]


def authorization(macaroon_b64: str, preimage: str, scheme: str = "L402") -> str:
    return f"{scheme} {macaroon_b64}:{preimage}"


def flip_char(text: str, index: int) -> str:
    """`text` with the base64 character at `index` replaced by a different one."""
    c = text[index]
    return text[:index] + ("B" if c != "B" else "C") + text[index + 1 :]


# -- x402 over Lightning -------------------------------------------------------------------


def bip122_payment(offer: dict, invoice: str | None = None) -> str:
    """A v2 PAYMENT-SIGNATURE paying a `bip122` offer: the invoice is paid out of band first."""
    return b64json(
        {
            "x402Version": 2,
            "accepted": offer,
            "payload": {"invoice": invoice or offer["extra"]["invoice"]},
        }
    )


def sha256_hex(hex_data: str) -> str:
    return hashlib.sha256(bytes.fromhex(hex_data)).hexdigest()
