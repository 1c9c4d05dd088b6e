//! Writes the seed corpora (`fuzz/corpus/<target>/`) from the unit tests' vectors: honest and
//! broken payments, macaroons, leases, paths, amounts, configs and verifier replies.
//!
//! `cd fuzz && cargo run --example seeds` (stable is fine); the files are committed.

use std::fs;
use std::path::Path;

use k256::ecdsa::SigningKey;
use prost::Message;
use serde_json::{json, Value};
use tollway_fuzz::{config_json, l402_key, lease_key, offers, NOW, PREIMAGE, SERVICE};
use tollway_protocol::b64;
use tollway_protocol::evm::{transfer_with_authorization_digest, TransferAuthorization};
use tollway_protocol::l402::{mint, PaymentHash, TokenId};
use tollway_protocol::lease::Lease;
use tollway_protocol::lightning::LightningNetwork;
use tollway_protocol::rpc::{
    ChallengeOutcome, ChallengeResponse, ClaimOutcome, ClaimResponse, ReleaseResponse,
    RoutesResponse, SettleOutcome, SettleResponse, VerifyOutcome, VerifyResponse,
};
use tollway_protocol::x402::{lightning_offer_v2, Offer};

/// The dev key of the unit tests (anvil's first account).
const PAYER_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const PAYER: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
/// The golden macaroon of `protocol/src/l402/tests.rs`.
const GOLDEN_HEX: &str = concat!(
    "0201046c73617402420000425ed4e4a36b30ea21b90e21c712c649e8214c29b7eaf68089d1039c6e55384c",
    "abababababababababababababababababababababababababababababababab00020e73657276696365733d",
    "7376633a300002117376635f6361706162696c69746965733d00021a7376635f76616c69645f756e74696c3d",
    "343130323434343830300000062040c1053547466732697b0d3eb8dd6a924022d73ab47f500bde4612426fe5ad52",
);
const INVOICE: &str = "lnbcrt100n1pxyz";

struct Corpus<'a> {
    dir: &'a Path,
    target: &'static str,
    n: usize,
}

impl Corpus<'_> {
    fn add(&mut self, bytes: impl AsRef<[u8]>) {
        let dir = self.dir.join(self.target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("seed-{:02}", self.n)), bytes).unwrap();
        self.n += 1;
    }

    fn add_with_mode(&mut self, mode: u8, bytes: impl AsRef<[u8]>) {
        let mut v = vec![mode];
        v.extend_from_slice(bytes.as_ref());
        self.add(v);
    }
}

fn authorization(offer: &Offer) -> Value {
    json!({
        "from": PAYER,
        "to": offer.pay_to.to_string(),
        "value": offer.amount.to_string(),
        "validAfter": "0",
        "validBefore": (NOW + 60).to_string(),
        "nonce": format!("0x{}", "ab".repeat(32)),
    })
}

fn signed(offer: &Offer, auth: Value) -> Value {
    let field = |k: &str| auth[k].as_str().unwrap().to_owned();
    let message = TransferAuthorization {
        from: field("from").parse().unwrap(),
        to: field("to").parse().unwrap(),
        value: field("value").parse().unwrap(),
        valid_after: field("validAfter").parse().unwrap(),
        valid_before: field("validBefore").parse().unwrap(),
        nonce: [0xab; 32],
    };
    let digest = transfer_with_authorization_digest(&offer.eip712_domain().unwrap(), &message);
    let key = SigningKey::from_slice(&hex::decode(PAYER_KEY).unwrap()).unwrap();
    let (sig, recid) = key.sign_prehash_recoverable(&digest).unwrap();
    let mut bytes = sig.to_bytes().to_vec();
    bytes.push(27 + recid.to_byte());
    json!({"signature": format!("0x{}", hex::encode(bytes)), "authorization": auth})
}

fn x402(c: &mut Corpus) {
    let o = &offers()[1];
    let v2 = json!({
        "x402Version": 2,
        "resource": {"url": "https://api.example.com/api/quote", "description": "", "mimeType": ""},
        "accepted": o.requirements_v2_value(),
        "payload": signed(o, authorization(o)),
    });
    let v1 = json!({
        "x402Version": 1, "scheme": "exact", "network": "base-sepolia",
        "payload": signed(o, authorization(o)),
    });
    let ln = json!({
        "x402Version": 2,
        "accepted": lightning_offer_v2(LightningNetwork::Regtest, 10_000, INVOICE, 600),
        "payload": {"invoice": INVOICE},
    });
    for payment in [&v2, &v1, &ln] {
        let text = serde_json::to_vec(payment).unwrap();
        c.add_with_mode(0, b64::encode(&text));
        c.add_with_mode(3, &text);
    }
    let mut wrong = v2.clone();
    wrong["payload"]["authorization"]["value"] = json!("9999");
    c.add_with_mode(1, serde_json::to_vec(&wrong).unwrap());
    let mut v3 = v2.clone();
    v3["x402Version"] = json!(3);
    c.add_with_mode(1, serde_json::to_vec(&v3).unwrap());
    for bad in ["", "Zg==", "Zh==", "e30=", "-_8=", "Zm9v YmFy", "bnVsbA=="] {
        c.add_with_mode(0, bad);
    }
}

fn l402(c: &mut Corpus) {
    let m = mint(
        l402_key(),
        &PaymentHash::of_preimage(&PREIMAGE),
        &TokenId([0xab; 32]),
        SERVICE,
        NOW + 3600,
        Some("/api/quote"),
        Some("GET"),
    )
    .encode_std();
    let p = hex::encode(PREIMAGE);
    for value in [
        format!("L402 {m}:{p}"),
        format!("LSAT {m}:{p}, L402 {m}:{p}"),
        format!("Bearer abc,L402 {m}:{p}"),
        format!("Digest a=1, b=2,L402 {m}:{p}"),
        format!("L402 {m}:{p}\nBearer abc\nLSAT {m}:{p}"),
        format!("L402 {m}:{p},\x0cL402 x"),
        "L402 L402 abc".to_owned(),
        format!("l402 {m}:{}", "zz".repeat(32)),
        "Bearer abc".to_owned(),
    ] {
        c.add(value);
    }
}

fn macaroons(c: &mut Corpus) {
    let golden = hex::decode(GOLDEN_HEX).unwrap();
    let ours = mint(
        l402_key(),
        &PaymentHash::of_preimage(&PREIMAGE),
        &TokenId([0xab; 32]),
        SERVICE,
        NOW + 3600,
        Some("/api/quote"),
        Some("GET"),
    );
    let bare = mint(
        l402_key(),
        &PaymentHash::of_preimage(&PREIMAGE),
        &TokenId([1; 32]),
        SERVICE,
        NOW + 60,
        None,
        None,
    );
    c.add_with_mode(0, &golden);
    c.add_with_mode(0, ours.to_bytes());
    c.add_with_mode(2, bare.to_bytes());
    c.add_with_mode(0, ours.encode_std());
    c.add_with_mode(4, &golden[..golden.len() - 5]);
}

fn leases(c: &mut Corpus) {
    let lease = Lease {
        id: [9; 16],
        route: "ticker".into(),
        method: "GET".into(),
        path: "/stream/ticker/BTC".into(),
        expires_at: NOW + 60,
        single_use: false,
    };
    let token = lease.try_mint(lease_key()).unwrap();
    c.add_with_mode(0, &token);
    let (payload, _) = token.split_once('.').unwrap();
    use base64::Engine;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    c.add_with_mode(1, &payload);
    let once = Lease {
        single_use: true,
        expires_at: 1,
        ..lease
    };
    c.add_with_mode(0, once.try_mint(lease_key()).unwrap());
    c.add_with_mode(1, b"\x02junk");
    c.add_with_mode(0, "/stream/ticker/BTC?x=1&t=abc&y=2&t=zz");
    c.add_with_mode(0, "/a?tt=1&t");
}

fn routes(c: &mut Corpus) {
    for (host, method, path) in [
        ("api.example.com", "GET", "/api/quote?x=/free"),
        ("h", "POST", "//api//quote/"),
        ("h", "GET", "/free/%2e%2E/api/./quote"),
        ("h", "HEAD", "/api/users/ada/posts/7"),
        ("h", "GET", "/api/users/ada/x/y"),
        ("a.tenants.example.com", "GET", "/api/x/../y"),
        ("ADMIN.example.com.:8443", "DELETE", "/anything"),
        ("[::1]:8080", "GET", "/local/%41"),
        ("h", "PROPFIND", "/dav/a/b"),
        ("h", "GET", "/a/b/c/d/e/f/g/h/i"),
        ("h", "GET", "/a%20b/x#frag"),
        ("h", "OPTIONS", "/../../x"),
        ("\u{ff}h", "GET", "/"),
    ] {
        c.add(format!("{host}\n{method}\n{path}"));
    }
    c.add(format!("h\nGET\n{}x", "/".repeat(200)));
}

fn templates(c: &mut Corpus) {
    for (template, params, path) in [
        (
            "/v1/agents/[user]/summary",
            "user,x",
            "/v1/agents/bob/summary",
        ),
        ("/lease/ticker/[symbol]", "symbol", "/lease/ticker/BTC"),
        ("/", "", "/"),
        ("/a//b/", "", "/a//b/"),
        ("/v1/[who]", "user", "/v1/x"),
        ("/a[b]", "b", "/a"),
    ] {
        c.add(format!("{template}\n{params}\n{path}"));
    }
}

fn amounts(c: &mut Corpus) {
    for s in [
        "0.001",
        "1.50",
        "007",
        "0.000000000000000001",
        "340282366920938463463",
        "340282366920938463463374607431768211455",
        "1e3",
        "-0.5",
        ".5",
        "10000",
        "eip155:84532",
        "base-sepolia",
        "bip122:0f9188f13cb7b2c71f2a335e3a4fc328",
        "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
    ] {
        c.add(s);
    }
}

fn configs(c: &mut Corpus) {
    let base: Value = serde_json::from_str(&config_json()).unwrap();
    c.add(serde_json::to_vec_pretty(&base).unwrap());
    let mut minimal = base.clone();
    minimal["routes"] = json!([{"name": "free", "path": "/free"}]);
    for key in ["l402", "leases", "public_url"] {
        minimal.as_object_mut().unwrap().remove(key);
    }
    c.add(serde_json::to_vec(&minimal).unwrap());
    // The hang of the issue: a route named like an internal entry, shadowed.
    let mut hang = minimal.clone();
    hang["routes"] = json!([
        {"name": "b~upstream", "path": "/x"},
        {"name": "other", "path": "/x/"},
        {"name": "c", "path": "/c", "upstream_path": "/x"}
    ]);
    c.add(serde_json::to_vec(&hang).unwrap());
    let mut synced = minimal;
    synced["sync_interval_ms"] = json!(1000);
    synced["envoy_strips_context"] = json!(true);
    c.add(serde_json::to_vec(&synced).unwrap());
}

fn replies(c: &mut Corpus) {
    let verify = [
        VerifyResponse {
            outcome: VerifyOutcome::Valid as i32,
            payer: PAYER.into(),
            payment_id: "p-1".into(),
            x402_version: 2,
            ..Default::default()
        },
        VerifyResponse {
            outcome: VerifyOutcome::Invalid as i32,
            reason: "invalid_exact_evm_payload_signature \"\\\u{1}".into(),
            ..Default::default()
        },
    ];
    for r in verify {
        c.add_with_mode(0, r.encode_to_vec());
    }
    c.add_with_mode(
        1,
        SettleResponse {
            outcome: SettleOutcome::Settled as i32,
            payment_response: b64::encode(br#"{"success":true}"#),
            transaction: format!("0x{}", "11".repeat(32)),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let offer = lightning_offer_v2(LightningNetwork::Regtest, 10_000, INVOICE, 600);
    let m = mint(
        l402_key(),
        &PaymentHash::of_preimage(&PREIMAGE),
        &TokenId([0xab; 32]),
        SERVICE,
        NOW + 3600,
        None,
        None,
    );
    for x402_offer in [offer.to_string(), r#"{"a":"\ud800"}"#.to_owned()] {
        c.add_with_mode(
            2,
            ChallengeResponse {
                outcome: ChallengeOutcome::Minted as i32,
                invoice: INVOICE.into(),
                macaroon: m.encode_std(),
                x402_offer,
            }
            .encode_to_vec(),
        );
    }
    c.add_with_mode(
        3,
        ClaimResponse {
            outcome: ClaimOutcome::AlreadyUsed as i32,
        }
        .encode_to_vec(),
    );
    let routes: Value = serde_json::from_str::<Value>(&config_json()).unwrap()["routes"].clone();
    c.add_with_mode(
        4,
        RoutesResponse {
            version: 7,
            routes_json: routes.to_string(),
        }
        .encode_to_vec(),
    );
    c.add_with_mode(5, ReleaseResponse {}.encode_to_vec());
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let _ = fs::remove_dir_all(&dir);
    let make = |target, f: fn(&mut Corpus)| {
        let mut c = Corpus {
            dir: &dir,
            target,
            n: 0,
        };
        f(&mut c);
        println!("{target}: {} seeds", c.n);
    };
    make("x402_payment", x402);
    make("l402_authorization", l402);
    make("macaroon", macaroons);
    make("lease_open", leases);
    make("routes", routes);
    make("path_template", templates);
    make("amount", amounts);
    make("filter_config", configs);
    make("rpc_replies", replies);
}
