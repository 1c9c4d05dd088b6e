//! `bench-payments`: pre-signs N x402 v2 payments for one offer and writes their
//! `PAYMENT-SIGNATURE` header values, one per line. Each is a real EIP-3009
//! `TransferWithAuthorization` signed with EIP-712 (k256) and carries its own random nonce,
//! because the verifier's replay guard accepts an authorization once.
//!
//! Signing happens before a measured run, on all cores, so the load generator only reads lines.

use std::io::{BufWriter, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use k256::ecdsa::SigningKey;
use rand::RngCore;
use serde_json::{json, Value};
use tollway_bench::{fail, Args};
use tollway_protocol::amount::AtomicAmount;
use tollway_protocol::evm::{
    keccak256, transfer_with_authorization_digest, Eip712Domain, EvmAddress, TransferAuthorization,
};
use tollway_protocol::x402::Offer;

const USAGE: &str =
    "usage: bench-payments --count N --out FILE --asset 0x.. --pay-to 0x.. --amount ATOMIC
    [--network eip155:84532] [--name USDC] [--version 2] [--max-timeout 300]
    [--key 0x<payer private key>] [--valid-seconds 3600] [--resource URL] [--threads N]
Writes N base64 PAYMENT-SIGNATURE values (x402 v2, exact/EIP-3009), one per line, each with a
unique random nonce, validAfter = now - 600 and validBefore = now + valid-seconds.";

/// anvil's second well-known dev account (a public test key, worthless outside a local chain).
const DEFAULT_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

fn main() {
    let args = Args::parse(USAGE);
    let count: usize = args.number("count", 0);
    if count == 0 {
        fail(USAGE, "--count must be at least 1");
    }
    let out = args.required("out");
    let parse_addr = |name: &str| -> EvmAddress {
        args.required(name)
            .parse()
            .unwrap_or_else(|e| fail(USAGE, &format!("--{name}: {e}")))
    };
    let offer = Offer {
        network: args
            .get("network", "eip155:84532")
            .parse()
            .unwrap_or_else(|e| fail(USAGE, &format!("--network: {e}"))),
        asset: parse_addr("asset"),
        pay_to: parse_addr("pay-to"),
        amount: AtomicAmount(args.number("amount", 0u128)),
        max_timeout_seconds: args.number("max-timeout", 300u32),
        eip712_name: args.get("name", "USDC"),
        eip712_version: args.get("version", "2"),
        v1_name: None,
    };
    let domain = offer
        .eip712_domain()
        .unwrap_or_else(|| fail(USAGE, "--network must be an eip155 chain"));
    let key_hex = args.get("key", DEFAULT_KEY);
    let key_bytes = hex::decode(key_hex.trim_start_matches("0x"))
        .unwrap_or_else(|_| fail(USAGE, "--key: not hex"));
    let key = SigningKey::from_slice(&key_bytes)
        .unwrap_or_else(|_| fail(USAGE, "--key: not a secp256k1 key"));
    let payer = address_of(&key);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let template = Template {
        domain,
        accepted: offer.requirements_v2_value(),
        resource: args
            .values_opt("resource")
            .map(|url| json!({"url": url, "description": "", "mimeType": "application/json"})),
        payer,
        pay_to: offer.pay_to,
        value: offer.amount.get(),
        valid_after: now.saturating_sub(600),
        valid_before: now + args.number("valid-seconds", 3600u64),
        key,
    };

    let threads = args
        .number(
            "threads",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        )
        .clamp(1, count);
    let chunks: Vec<usize> = (0..threads)
        .map(|i| count / threads + usize::from(i < count % threads))
        .collect();
    let template = &template;
    let lines: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|&n| s.spawn(move || (0..n).map(|_| template.sign_one()).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| fail(USAGE, "a signing thread panicked"))
            })
            .collect()
    });

    let file =
        std::fs::File::create(&out).unwrap_or_else(|e| fail(USAGE, &format!("--out {out}: {e}")));
    let mut w = BufWriter::new(file);
    for line in lines.iter().flatten() {
        writeln!(w, "{line}").unwrap_or_else(|e| fail(USAGE, &format!("writing {out}: {e}")));
    }
    w.flush()
        .unwrap_or_else(|e| fail(USAGE, &format!("writing {out}: {e}")));
    eprintln!("bench-payments: {count} payments from {payer} written to {out}");
}

struct Template {
    domain: Eip712Domain,
    accepted: Value,
    resource: Option<Value>,
    payer: EvmAddress,
    pay_to: EvmAddress,
    value: u128,
    valid_after: u64,
    valid_before: u64,
    key: SigningKey,
}

impl Template {
    fn sign_one(&self) -> String {
        let mut nonce = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce);
        let auth = TransferAuthorization {
            from: self.payer,
            to: self.pay_to,
            value: self.value,
            valid_after: self.valid_after,
            valid_before: self.valid_before,
            nonce,
        };
        let digest = transfer_with_authorization_digest(&self.domain, &auth);
        let (sig, recid) = self
            .key
            .sign_prehash_recoverable(&digest)
            .unwrap_or_else(|e| fail(USAGE, &format!("signing failed: {e}")));
        let mut signature = sig.to_bytes().to_vec();
        signature.push(27 + recid.to_byte());
        let mut payload = json!({
            "x402Version": 2,
            "accepted": self.accepted,
            "payload": {
                "signature": format!("0x{}", hex::encode(signature)),
                "authorization": {
                    "from": self.payer.to_string(),
                    "to": self.pay_to.to_string(),
                    "value": self.value.to_string(),
                    "validAfter": self.valid_after.to_string(),
                    "validBefore": self.valid_before.to_string(),
                    "nonce": format!("0x{}", hex::encode(nonce)),
                },
            },
        });
        if let Some(resource) = &self.resource {
            payload["resource"] = resource.clone();
        }
        tollway_protocol::b64::encode(payload.to_string().as_bytes())
    }
}

/// The address of a key: the last 20 bytes of keccak256 of the uncompressed public point.
fn address_of(key: &SigningKey) -> EvmAddress {
    let point = key.verifying_key().to_encoded_point(false);
    let hash = keccak256(&point.as_bytes()[1..]);
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(&hash[12..]);
    EvmAddress(bytes)
}
