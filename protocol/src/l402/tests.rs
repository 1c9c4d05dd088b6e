//! Golden vector (fact sheet §2.5, cross-checked with Go, Rust and Python) and the refusal cases.

use std::borrow::Cow;

use super::*;
use crate::hmac::{hmac_sha256, sha256};
use crate::keys::KeySet;

const ROOT_KEY: [u8; 32] = [0x5a; 32];
const PREIMAGE: [u8; 32] = [0x42; 32];
const TOKEN_ID: TokenId = TokenId([0xab; 32]);
const GOLDEN_HEX: &str = concat!(
    "0201046c73617402420000425ed4e4a36b30ea21b90e21c712c649e8214c29b7eaf68089d1039c6e55384c",
    "abababababababababababababababababababababababababababababababab00020e73657276696365733d",
    "7376633a300002117376635f6361706162696c69746965733d00021a7376635f76616c69645f756e74696c3d",
    "343130323434343830300000062040c1053547466732697b0d3eb8dd6a924022d73ab47f500bde4612426fe5ad52",
);
const GOLDEN_CAVEATS: [&str; 3] = [
    "services=svc:0",
    "svc_capabilities=",
    "svc_valid_until=4102444800",
];

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn golden_identifier() -> Identifier {
    Identifier::new(PaymentHash::of_preimage(&PREIMAGE), TOKEN_ID)
}

fn golden() -> Macaroon {
    let mut m = Macaroon::new(
        &ROOT_KEY,
        golden_identifier().to_bytes().to_vec(),
        Some(b"lsat".to_vec()),
    );
    for c in GOLDEN_CAVEATS {
        m.add_first_party_caveat(c);
    }
    m
}

#[test]
fn golden_vector_byte_for_byte() {
    let id = golden_identifier();
    assert_eq!(
        id.payment_hash.to_hex(),
        "425ed4e4a36b30ea21b90e21c712c649e8214c29b7eaf68089d1039c6e55384c"
    );
    assert_eq!(
        hex::encode(sha256(&id.to_bytes())),
        "e7b152919aee02037ac7eb9463c5341770dadf5ce67065b8579b0eaddd09711f"
    );
    let k = hmac_sha256(b"macaroons-key-generator", &[&ROOT_KEY]);
    assert_eq!(
        hex::encode(k),
        "f5827a0d706ca05f148e604a20bc0da4d4b10782fc2e9ff05ec0dd071ba0da07"
    );

    let mut m = Macaroon::new(&ROOT_KEY, id.to_bytes().to_vec(), Some(b"lsat".to_vec()));
    let sigs = [
        "64d19371d8f59282b40f09f4712bcddb74c98b5897e731b72e9d0b34cb0fc17a",
        "9374fdef354f5684a609b2385967b89c7efdbbc633b721a730502b6718a691b2",
        "50cab2068b718de81bf2ea8007ab58ce299f4653ad0852ebd3558d45b3d49897",
        "40c1053547466732697b0d3eb8dd6a924022d73ab47f500bde4612426fe5ad52",
    ];
    assert_eq!(hex::encode(m.signature), sigs[0]);
    for (caveat, sig) in GOLDEN_CAVEATS.iter().zip(&sigs[1..]) {
        m.add_first_party_caveat(*caveat);
        assert_eq!(hex::encode(m.signature), *sig);
    }

    let bytes = m.to_bytes();
    assert_eq!(bytes.len(), 177);
    assert_eq!(hex::encode(&bytes), GOLDEN_HEX);
    let b64 = m.encode_std();
    assert!(b64.starts_with("AgEEbHNhdAJCAABCXtTko2sw6iG5"), "{b64}");
    assert!(b64.ends_with("EkJv5a1S"), "{b64}");
    assert_eq!(b64.len(), 236);

    let parsed = Macaroon::from_bytes(&h(GOLDEN_HEX)).unwrap();
    assert_eq!(parsed, m);
    assert_eq!(Identifier::from_bytes(&parsed.identifier).unwrap(), id);
    assert_eq!(Macaroon::decode_lenient(&b64).unwrap(), m);
    assert_eq!(parsed.verify_signature(&ROOT_KEY), Ok(()));
    assert!(parsed.verify_signature(&[0x5b; 32]).is_err());
}

// ---- our tokens: mint / verify ----

const SERVICE: &str = "tollway";
const NOW: u64 = 1_800_000_000;
const UNTIL: u64 = NOW + 3600;
const PATH: &str = "/api/quote";
const METHOD: &str = "GET";

fn key() -> KeySet<FilterKey> {
    KeySet::new(filter_key(b"a root secret of at least thirty-two bytes"))
}

fn hash() -> PaymentHash {
    PaymentHash::of_preimage(&PREIMAGE)
}

fn minted() -> Macaroon {
    mint(
        key().current(),
        &hash(),
        &TOKEN_ID,
        SERVICE,
        UNTIL,
        Some(PATH),
        Some(METHOD),
    )
}

fn credential(macaroon: Macaroon) -> Credential {
    Credential {
        macaroon,
        preimage: PREIMAGE,
    }
}

fn check(macaroon: Macaroon) -> Result<VerifiedToken, L402Error> {
    verify_credential(&key(), &credential(macaroon), SERVICE, NOW, PATH, METHOD)
}

fn reason(r: Result<VerifiedToken, L402Error>) -> &'static str {
    r.unwrap_err().reason()
}

/// A macaroon signed with the right key but with caveats of our choosing (what a leaked filter
/// key, or the verifier, could mint): exercises the caveat rules past the signature.
fn with_caveats(caveats: &[&str]) -> Macaroon {
    let id = Identifier::new(hash(), TOKEN_ID);
    let root = token_root_key(key().current().1, &id);
    let mut m = Macaroon::new(&root.0, id.to_bytes().to_vec(), Some(LOCATION.to_vec()));
    for c in caveats {
        m.add_first_party_caveat(*c);
    }
    m
}

#[test]
fn key_derivation_is_as_documented() {
    let secret = b"a root secret of at least thirty-two bytes";
    assert_eq!(
        key().current().1.as_bytes(),
        &hmac_sha256(secret, &[b"tollway/l402/v1"])
    );
    let id = Identifier::new(hash(), TOKEN_ID);
    assert_eq!(
        token_root_key(key().current().1, &id).0,
        hmac_sha256(key().current().1.as_bytes(), &[&sha256(&id.to_bytes())])
    );
    assert_eq!(
        FilterKey::from_hex(&key().current().1.to_hex()).unwrap(),
        *key().current().1
    );
    assert!(FilterKey::from_hex("abcd").is_err());
    assert!(FilterKey::from_hex(&"zz".repeat(32)).is_err());
    assert_eq!(format!("{:?}", key().current().1), "FilterKey(..)");
}

#[test]
fn minted_token_verifies() {
    let m = minted();
    assert_eq!(m.location.as_deref(), Some(&b"lsat"[..]));
    let caveats: Vec<&[u8]> = m.caveats.iter().map(|c| c.id.as_slice()).collect();
    assert_eq!(
        caveats,
        [
            &b"services=tollway:0"[..],
            b"tollway_capabilities=",
            b"tollway_valid_until=1800003600",
            format!("tollway_key={}", key().current().0).as_bytes(),
            b"tollway_path=/api/quote",
            b"tollway_method=GET",
        ]
    );
    assert_eq!(
        check(m.clone()).unwrap(),
        VerifiedToken {
            payment_hash: hash(),
            token_id: TOKEN_ID,
            valid_until: UNTIL,
        }
    );
    // Survives the wire (both alphabets) unchanged.
    let back = Macaroon::decode_lenient(&m.encode_std()).unwrap();
    assert_eq!(back, m);
    // Unbound tokens are valid on any path and method of the service.
    let unbound = mint(
        key().current(),
        &hash(),
        &TOKEN_ID,
        SERVICE,
        UNTIL,
        None,
        None,
    );
    assert_eq!(unbound.caveats.len(), 4);
    assert!(verify_credential(&key(), &credential(unbound), SERVICE, NOW, "/x", "POST").is_ok());
}

#[test]
fn tokens_minted_before_a_rotation_verify_until_the_window_ends() {
    let old = key();
    let rotated = KeySet::new(filter_key(b"the next root secret, also long enough"))
        .with_previous(old.current().1.clone(), NOW + 10);
    let cred = credential(minted());
    assert!(verify_credential(&rotated, &cred, SERVICE, NOW, PATH, METHOD).is_ok());
    assert_eq!(
        verify_credential(&rotated, &cred, SERVICE, NOW + 10, PATH, METHOD),
        Err(L402Error::BadSignature)
    );
    // A token naming one key cannot claim another: the signature decides.
    let mut forged = minted();
    let other = rotated.current().0;
    forged.caveats[3].id = format!("{SERVICE}_key={other}").into_bytes();
    assert!(verify_credential(&rotated, &credential(forged), SERVICE, NOW, PATH, METHOD).is_err());
}

#[test]
fn request_mismatches_are_refused() {
    let cred = credential(minted());
    let v = |service, now, path, method| {
        verify_credential(&key(), &cred, service, now, path, method)
            .unwrap_err()
            .reason()
    };
    assert_eq!(v(SERVICE, UNTIL, PATH, METHOD), "l402_expired");
    assert_eq!(v(SERVICE, UNTIL + 1, PATH, METHOD), "l402_expired");
    assert!(verify_credential(&key(), &cred, SERVICE, UNTIL - 1, PATH, METHOD).is_ok());
    assert_eq!(v("other", NOW, PATH, METHOD), "l402_unknown_caveat");
    assert_eq!(v(SERVICE, NOW, "/api/quote/2", METHOD), "l402_wrong_path");
    assert_eq!(v(SERVICE, NOW, "/api/quote?x=1", METHOD), "l402_wrong_path");
    assert_eq!(v(SERVICE, NOW, PATH, "POST"), "l402_wrong_method");
    assert_eq!(v(SERVICE, NOW, PATH, "get"), "l402_wrong_method");
    assert!(verify_credential(&key(), &cred, SERVICE, NOW, PATH, "HEAD").is_ok());
    let head = mint(
        key().current(),
        &hash(),
        &TOKEN_ID,
        SERVICE,
        UNTIL,
        Some(PATH),
        Some("HEAD"),
    );
    assert_eq!(
        verify_credential(&key(), &credential(head), SERVICE, NOW, PATH, "GET")
            .unwrap_err()
            .reason(),
        "l402_wrong_method"
    );
    // Other service, minted under the same key: its caveats name another service.
    let other = mint(
        key().current(),
        &hash(),
        &TOKEN_ID,
        "other",
        UNTIL,
        None,
        None,
    );
    assert_eq!(reason(check(other)), "l402_unknown_caveat");
    let other = with_caveats(&["services=other:0", "tollway_valid_until=1800003600"]);
    assert_eq!(reason(check(other)), "l402_wrong_service");
}

#[test]
fn wrong_preimage_and_wrong_key() {
    let mut cred = credential(minted());
    cred.preimage[0] ^= 1;
    assert_eq!(
        verify_credential(&key(), &cred, SERVICE, NOW, PATH, METHOD)
            .unwrap_err()
            .reason(),
        "l402_wrong_preimage"
    );
    let other_key = KeySet::new(filter_key(b"another root secret, also long enough"));
    let cred = credential(minted());
    assert_eq!(
        verify_credential(&other_key, &cred, SERVICE, NOW, PATH, METHOD)
            .unwrap_err()
            .reason(),
        "l402_bad_signature"
    );
}

#[test]
fn tampering_breaks_the_signature() {
    let mut m = minted();
    m.signature[31] ^= 0x01;
    assert_eq!(reason(check(m)), "l402_bad_signature");

    // Loosen a caveat in place.
    let mut m = minted();
    m.caveats[2].id = b"tollway_valid_until=1900000000".to_vec();
    assert_eq!(reason(check(m)), "l402_bad_signature");

    // Drop a caveat (the path binding).
    let mut m = minted();
    m.caveats.remove(3);
    assert_eq!(reason(check(m)), "l402_bad_signature");

    // Another token id (same payment hash, so the preimage still matches).
    let mut m = minted();
    m.identifier[40] ^= 0x01;
    assert_eq!(reason(check(m)), "l402_bad_signature");

    // Flip each byte of the serialized form: never accepted.
    let bytes = minted().to_bytes();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        if let Ok(m) = Macaroon::from_bytes(&b) {
            // Only the (unsigned) location may change and still verify.
            if check(m.clone()).is_ok() {
                assert_ne!(m.location, minted().location, "byte {i}");
            }
        }
    }
}

#[test]
fn third_party_caveats_are_refused_before_hmac() {
    let mut m = minted();
    m.caveats.push(Caveat {
        id: b"third-party-caveat-id".to_vec(),
        location: Some(b"https://auth.example.com".to_vec()),
        vid: Some(vec![7; 72]),
    });
    // Survives the codec (so it is named, not just "malformed").
    let m = Macaroon::from_bytes(&m.to_bytes()).unwrap();
    assert!(m.caveats[6].is_third_party());
    assert_eq!(reason(check(m)), "l402_third_party_caveat");

    // A VID without location is third-party as well.
    let mut m = minted();
    m.caveats.push(Caveat {
        id: b"x".to_vec(),
        location: None,
        vid: Some(vec![1; 72]),
    });
    assert_eq!(reason(check(m)), "l402_third_party_caveat");
}

#[test]
fn unknown_caveats_are_refused() {
    for extra in [
        "preimage=4242",
        "tollway_tier=gold",
        "other_valid_until=1",
        "valid_until=1900000000",
        "no equals sign",
        "tollwayx_path=/api/quote",
    ] {
        // A client may attenuate: the chain stays valid, the condition is unknown.
        let mut m = minted();
        m.add_first_party_caveat(extra);
        assert_eq!(reason(check(m)), "l402_unknown_caveat", "{extra}");
    }
    let mut m = minted();
    m.add_first_party_caveat(vec![0xff, b'=', 0xfe]);
    assert_eq!(reason(check(m)), "l402_unknown_caveat");
}

#[test]
fn caveats_may_only_narrow() {
    let ok = |extra: &str| {
        let mut m = minted();
        m.add_first_party_caveat(extra);
        check(m)
    };
    // Narrowing by the holder is fine.
    assert_eq!(
        ok("tollway_valid_until=1800000100").unwrap().valid_until,
        1_800_000_100
    );
    assert_eq!(reason(ok("tollway_valid_until=1800000000")), "l402_expired");
    assert!(ok("services=tollway:0").is_ok());
    assert!(ok("tollway_capabilities=").is_ok());
    assert!(ok("tollway_path=/api/quote").is_ok());
    assert!(ok("tollway_method=GET").is_ok());
    // Widening is refused, even though the chain is valid.
    assert_eq!(
        reason(ok("tollway_valid_until=1800003601")),
        "l402_widening_caveat"
    );
    assert_eq!(
        reason(ok("services=tollway:0,other:0")),
        "l402_widening_caveat"
    );
    assert_eq!(
        reason(ok("tollway_capabilities=read")),
        "l402_widening_caveat"
    );
    assert_eq!(
        reason(ok("tollway_path=/api/other")),
        "l402_widening_caveat"
    );
    assert_eq!(reason(ok("tollway_method=POST")), "l402_widening_caveat");
    // Narrowing the services list to exclude us.
    let m = with_caveats(&[
        "services=tollway:0,other:0",
        "services=other:0",
        "tollway_valid_until=1800003600",
    ]);
    assert_eq!(reason(check(m)), "l402_wrong_service");
    let m = with_caveats(&[
        "services=tollway:0,other:0",
        "services=tollway:1",
        "tollway_capabilities=a,b",
        "tollway_capabilities=b",
        "tollway_valid_until=1800003600",
    ]);
    assert!(check(m).is_ok());
    // Malformed values of known conditions.
    for bad in [
        "services=tollway",
        "services=tollway:x",
        "services=tollway:256",
        "services=:0",
        "services=tollway:0:1",
        "tollway_valid_until=-1",
        "tollway_valid_until=+5",
        "tollway_valid_until=",
        "tollway_valid_until=99999999999999999999",
        "tollway_path=",
        "tollway_method=",
    ] {
        let m = with_caveats(&["services=tollway:0", "tollway_valid_until=1800003600", bad]);
        assert_eq!(reason(check(m)), "l402_bad_caveat", "{bad}");
    }
    // Required caveats.
    assert_eq!(
        reason(check(with_caveats(&["tollway_valid_until=1800003600"]))),
        "l402_wrong_service"
    );
    assert_eq!(
        reason(check(with_caveats(&["services=tollway:0"]))),
        "l402_missing_caveat"
    );
}

#[test]
fn identifier_is_strict() {
    for (id, what) in [
        (vec![0u8; 65], "short"),
        (vec![0u8; 67], "long"),
        ([&[0u8, 1][..], &[0; 64]].concat(), "version 1"),
    ] {
        assert!(Identifier::from_bytes(&id).is_err(), "{what}");
        let mut m = Macaroon::new(&[1; 32], id, None);
        m.add_first_party_caveat("services=tollway:0");
        assert_eq!(reason(check(m)), "l402_bad_identifier", "{what}");
    }
}

// ---- codec strictness ----

#[test]
fn codec_refuses_malformed_input() {
    let good = h(GOLDEN_HEX);
    let err = |b: &[u8]| Macaroon::from_bytes(b).unwrap_err();
    assert_eq!(err(&[]), MacaroonError::Empty);
    // Trailing bytes after the signature (Go ignores them; we do not).
    assert_eq!(
        err(&[&good[..], &[0]].concat()),
        MacaroonError::TrailingBytes
    );
    // Truncated anywhere.
    for n in 1..good.len() {
        assert!(Macaroon::from_bytes(&good[..n]).is_err(), "len {n}");
    }
    // Signature of 31 bytes.
    let mut short = good[..good.len() - 34].to_vec();
    short.extend_from_slice(&[6, 31]);
    short.extend_from_slice(&[0; 31]);
    assert_eq!(err(&short), MacaroonError::BadSignatureLength);
    // v1 text (base64 of "location ...") and other version bytes.
    assert_eq!(err(b"MDAxY2xvY2F0aW9u"), MacaroonError::Version1);
    assert_eq!(err(&[0x01, 0x00]), MacaroonError::UnknownVersion(1));
    // Header fields out of order (identifier before location).
    let mut b = vec![2, 2, 1, b'i', 1, 1, b'l', 0, 0];
    b.extend_from_slice(&[6, 32]);
    b.extend_from_slice(&[0; 32]);
    assert_eq!(err(&b), MacaroonError::FieldsOutOfOrder);
    // No identifier.
    let mut b = vec![2, 1, 1, b'l', 0, 0];
    b.extend_from_slice(&[6, 32]);
    b.extend_from_slice(&[0; 32]);
    assert_eq!(err(&b), MacaroonError::NoIdentifier);
    // First-party caveat with a location.
    let mut b = vec![2, 2, 1, b'i', 0, 1, 1, b'l', 2, 1, b'c', 0, 0];
    b.extend_from_slice(&[6, 32]);
    b.extend_from_slice(&[0; 32]);
    assert_eq!(err(&b), MacaroonError::FirstPartyLocation);
    // A signature field inside a section.
    let mut b = vec![2, 2, 1, b'i', 6, 1, 0, 0, 0];
    b.extend_from_slice(&[6, 32]);
    b.extend_from_slice(&[0; 32]);
    assert_eq!(err(&b), MacaroonError::UnexpectedField(6));
    // Length beyond the input, and an overlong varint.
    assert_eq!(err(&[2, 2, 0x80, 0x01, b'i']), MacaroonError::Truncated);
    assert_eq!(
        err(&[2, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        MacaroonError::BadVarint
    );
    // Size caps.
    assert_eq!(
        err(&vec![2; MAX_MACAROON_BYTES + 1]),
        MacaroonError::TooLarge
    );
    let mut many = Macaroon::new(&[1; 32], vec![1], None);
    for _ in 0..=macaroon::MAX_CAVEATS {
        many.add_first_party_caveat("a=b");
    }
    assert_eq!(err(&many.to_bytes()), MacaroonError::TooManyCaveats);
}

#[test]
fn codec_accepts_what_go_and_python_write() {
    // pymacaroons with location=None writes an empty location packet.
    let mut m = Macaroon::new(&ROOT_KEY, vec![1, 2, 3], Some(Vec::new()));
    m.add_first_party_caveat("a=b");
    let bytes = m.to_bytes();
    assert_eq!(&bytes[..3], &[2, 1, 0]);
    assert_eq!(Macaroon::from_bytes(&bytes).unwrap(), m);
    // No location at all.
    let m = Macaroon::new(&ROOT_KEY, vec![1, 2, 3], None);
    assert_eq!(Macaroon::from_bytes(&m.to_bytes()).unwrap(), m);
    // A caveat id of 200 bytes needs a two-byte varint length.
    let mut m = Macaroon::new(&ROOT_KEY, vec![1], None);
    m.add_first_party_caveat(vec![b'x'; 200]);
    let back = Macaroon::from_bytes(&m.to_bytes()).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.verify_signature(&ROOT_KEY), Ok(()));
}

#[test]
fn lenient_base64() {
    let m = golden();
    let bytes = m.to_bytes();
    use base64::Engine as _;
    for s in [
        base64::engine::general_purpose::STANDARD.encode(&bytes),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes),
        base64::engine::general_purpose::URL_SAFE.encode(&bytes),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes),
    ] {
        assert_eq!(Macaroon::decode_lenient(&s).unwrap(), m, "{s}");
    }
    // The golden one happens to need no padding; one with padding:
    let mut padded = m.clone();
    padded.add_first_party_caveat("xy=1");
    let std = padded.encode_std();
    assert!(std.ends_with('='), "{std}");
    assert_eq!(
        Macaroon::decode_lenient(std.trim_end_matches('=')).unwrap(),
        padded
    );
    assert!(Macaroon::decode_lenient("AgEE+b_a").is_err()); // mixed alphabets
    assert!(Macaroon::decode_lenient("AgE E").is_err());
    assert!(Macaroon::decode_lenient("").is_err());
    assert_eq!(
        Macaroon::decode_lenient(&"A".repeat(8000)).unwrap_err(),
        MacaroonError::TooLarge
    );
}

// ---- Authorization header ----

fn parse(values: &[&str]) -> Result<Option<Credential>, L402Error> {
    parse_authorization(values.iter().map(|v| v.as_bytes()))
}

fn preimage_hex() -> String {
    hex::encode(PREIMAGE)
}

#[test]
fn authorization_forms() {
    let m = minted();
    let std = m.encode_std();
    let want = Some(credential(m.clone()));
    let p = preimage_hex();
    for value in [
        format!("L402 {std}:{p}"),
        format!("LSAT {std}:{p}"),
        format!("l402 {std}:{p}"),
        format!("L402  {std}:{}", p.to_uppercase()),
        format!("L402 {std}:{p} "),
        format!("L402\t{std}:{p},"),
        format!("Bearer abc, L402 {std}:{p}"),
        format!("Bearer abc,L402 {std}:{p}"),
        format!("L402 {std}:{p}, Bearer abc"),
    ] {
        assert_eq!(parse(&[&value]).unwrap(), want, "{value}");
    }
    // URL-safe unpadded (pymacaroons) is accepted.
    use base64::Engine as _;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.to_bytes());
    assert_eq!(parse(&[&format!("L402 {url}:{p}")]).unwrap(), want);
    // Not ours: ignored.
    assert_eq!(parse(&[]).unwrap(), None);
    assert_eq!(
        parse(&["Bearer abc.def", "Basic dXNlcjpwdw=="]).unwrap(),
        None
    );
    assert_eq!(parse(&["L402"]).unwrap(), None);
    assert_eq!(parse(&["XL402 abc:def"]).unwrap(), None);
    assert!(!carries_l402(b"Bearer x"));
    assert!(carries_l402(format!("LSAT {std}:{p}").as_bytes()));
}

#[test]
fn authorization_duplicates() {
    let std = minted().encode_std();
    let p = preimage_hex();
    let lsat = format!("LSAT {std}:{p}");
    let l402 = format!("L402 {std}:{p}");
    let want = Some(credential(minted()));
    // Aperture's two lines, and ext_authz's comma-joined form.
    assert_eq!(parse(&[&lsat, &l402]).unwrap(), want);
    assert_eq!(parse(&[&format!("{lsat},{l402}")]).unwrap(), want);
    assert_eq!(parse(&[&format!("{lsat}, {l402}")]).unwrap(), want);
    // Same credential in another encoding is still the same credential.
    use base64::Engine as _;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(minted().to_bytes());
    assert_eq!(
        parse(&[&lsat, &format!("L402 {url}:{}", p.to_uppercase())]).unwrap(),
        want
    );
    // Differing credentials.
    let other = mint(
        key().current(),
        &hash(),
        &TOKEN_ID,
        SERVICE,
        UNTIL - 1,
        None,
        None,
    )
    .encode_std();
    assert_eq!(
        parse(&[&lsat, &format!("L402 {other}:{p}")]).unwrap_err(),
        L402Error::ConflictingCredentials
    );
    let other_pre = format!("L402 {std}:{}", "43".repeat(32));
    assert_eq!(
        parse(&[&lsat, &other_pre]).unwrap_err().reason(),
        "l402_conflicting_credentials"
    );
    // Too many.
    let five: Vec<&str> = std::iter::repeat_n(lsat.as_str(), 5).collect();
    assert_eq!(parse(&five).unwrap_err().reason(), "l402_bad_header");
}

#[test]
fn authorization_garbage() {
    let std = minted().encode_std();
    let p = preimage_hex();
    for (value, code) in [
        (format!("L402 {std}"), "l402_bad_header"),
        (format!("L402 {std}:{}", &p[..63]), "l402_bad_header"),
        (format!("L402 {std}:{p}0"), "l402_bad_header"),
        (format!("L402 {std}:{}", "zz".repeat(32)), "l402_bad_header"),
        (format!("L402 :{p}"), "l402_bad_header"),
        (format!("L402 {std},{std}:{p}"), "l402_bad_header"),
        (format!("L402 {std} :{p}"), "l402_bad_header"),
        (format!("L402 !!!!:{p}"), "l402_bad_macaroon"),
        (format!("L402 AAAA:{p}"), "l402_bad_macaroon"),
    ] {
        assert_eq!(parse(&[&value]).unwrap_err().reason(), code, "{value}");
    }
    let non_ascii = [b"L402 \xff\xfe:".as_slice(), p.as_bytes()].concat();
    assert_eq!(
        parse_authorization([non_ascii.as_slice()])
            .unwrap_err()
            .reason(),
        "l402_bad_header"
    );
    let huge = format!("L402 {}:{p}", "A".repeat(MAX_AUTHORIZATION_BYTES));
    assert_eq!(
        parse(&[&huge]).unwrap_err(),
        L402Error::HeaderTooLarge {
            max: MAX_AUTHORIZATION_BYTES
        }
    );
    // A large unrelated value does not count against the cap.
    let bearer = format!("Bearer {}", "x".repeat(MAX_AUTHORIZATION_BYTES));
    assert_eq!(
        parse(&[&bearer, &format!("L402 {std}:{p}")]).unwrap(),
        Some(credential(minted()))
    );
    assert!(L402Error::BadHeader("x").is_malformed());
    assert!(!L402Error::Expired.is_malformed());
}

#[test]
fn credential_debug_hides_the_preimage() {
    let s = format!("{:?}", credential(minted()));
    assert!(!s.contains("66, 66"), "{s}");
}

#[test]
fn stripping_keeps_other_schemes() {
    let std = minted().encode_std();
    let p = preimage_hex();
    let strip =
        |v: &str| without_l402(v.as_bytes()).map(|c| String::from_utf8(c.into_owned()).unwrap());
    assert_eq!(strip("Bearer abc").as_deref(), Some("Bearer abc"));
    assert!(matches!(
        without_l402(b"Bearer abc"),
        Some(Cow::Borrowed(_))
    ));
    assert_eq!(strip(&format!("L402 {std}:{p}")), None);
    assert_eq!(strip(&format!("LSAT {std}:{p},L402 {std}:{p}")), None);
    assert_eq!(
        strip(&format!("Bearer abc,L402 {std}:{p}")).as_deref(),
        Some("Bearer abc")
    );
    assert_eq!(
        strip(&format!("LSAT {std}:{p}, Bearer abc, L402 {std}:{p}")).as_deref(),
        Some("Bearer abc")
    );
    assert_eq!(
        strip(&format!("Digest a=1, b=2,L402 {std}:{p}")).as_deref(),
        Some("Digest a=1, b=2")
    );
}

/// Stripping used to trim parts with `trim_ascii` (CR, LF, form feed too) while the scanner only
/// took space, tab and `,` as boundaries: `L402 tok:pre,\x0cL402 x` forwarded `L402 x` unchecked.
#[test]
fn stripping_and_scanning_share_one_boundary() {
    let std = minted().encode_std();
    let p = preimage_hex();
    for blank in (0u8..=0x20).chain([0x7f]) {
        let blank = char::from(blank);
        // (value, carries a second credential `x` that must be found and refused)
        for (value, refused) in [
            (format!("L402 {std}:{p},{blank}L402 x"), true),
            (
                format!("L402 {std}:{p}, Bearer a,{blank}LSAT x{blank}"),
                true,
            ),
            (format!("Bearer a{blank}L402 {std}:{p}"), false),
            (format!("L402{blank}{std}:{p}{blank},Bearer a"), false),
        ] {
            let name = format!("{value:?}");
            // Whatever is left for the upstream carries no credential, however it trims.
            if let Some(rest) = without_l402(value.as_bytes()) {
                assert!(!carries_l402(&rest), "{name}");
                for part in rest.split(|&b| b == b',') {
                    assert!(!carries_l402(part.trim_ascii()), "{name}");
                    assert!(!carries_l402(part.trim_ascii_start()), "{name}");
                }
            }
            // And every credential that was found is checked: `L402 x` is one of them.
            if refused {
                assert!(parse_authorization([value.as_bytes()]).is_err(), "{name}");
            }
        }
    }
}

#[test]
fn a_scheme_word_as_the_token_is_one_credential_not_two() {
    // The token `L402` is not a second keyword: stripping the one credential leaves the rest.
    assert_eq!(without_l402(b"L402 L402 abc").as_deref(), Some(&b"abc"[..]));
    assert!(matches!(
        parse_authorization([&b"L402 L402 abc"[..]]),
        Err(L402Error::BadHeader(_))
    ));
}

// ---- challenge ----

#[test]
fn challenge_lines_are_the_aperture_form() {
    let m = golden().encode_std();
    let invoice = "lnbcrt100n1pjexample";
    let [lsat, l402] = www_authenticate(&m, invoice).unwrap();
    assert_eq!(
        lsat,
        format!("LSAT macaroon=\"{m}\", invoice=\"{invoice}\"")
    );
    assert_eq!(
        l402,
        format!("L402 macaroon=\"{m}\", invoice=\"{invoice}\", version=\"0\", token=\"{m}\"")
    );
    for (mac, inv) in [
        ("", invoice),
        (m.as_str(), ""),
        ("ab\"c", invoice),
        (m.as_str(), "lnbc1\r\nx"),
        (m.as_str(), "lnbc 1"),
        ("a-b_c", invoice),
    ] {
        assert_eq!(
            www_authenticate(mac, inv).unwrap_err(),
            L402Error::BadChallengeParam
        );
    }
}

#[test]
fn every_error_has_a_distinct_code() {
    let all = [
        L402Error::BadHeader("x"),
        L402Error::HeaderTooLarge { max: 1 },
        L402Error::ConflictingCredentials,
        L402Error::BadMacaroon(MacaroonError::Empty),
        L402Error::BadIdentifier("x"),
        L402Error::WrongPreimage,
        L402Error::ThirdPartyCaveat,
        L402Error::BadSignature,
        L402Error::UnknownCaveat(String::new()),
        L402Error::BadCaveat(String::new()),
        L402Error::WideningCaveat(String::new()),
        L402Error::MissingCaveat("x"),
        L402Error::Expired,
        L402Error::WrongService,
        L402Error::WrongPath,
        L402Error::WrongMethod,
        L402Error::BadChallengeParam,
    ];
    let mut codes: Vec<&str> = all.iter().map(L402Error::reason).collect();
    codes.push(REASON_TOKEN_ALREADY_USED);
    for c in &codes {
        assert!(
            c.starts_with("l402_")
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
            "{c}"
        );
    }
    let n = codes.len();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), n);
}
