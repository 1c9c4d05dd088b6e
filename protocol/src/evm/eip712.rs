//! EIP-712 typed-data hashing for EIP-3009 `TransferWithAuthorization`, and signer recovery.
//!
//! This is what the token contract checks at settlement, so computing it here lets the
//! verifier reject a bad signature before spending a facilitator round trip.

use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};

use super::{keccak256, EvmAddress};

pub const EIP712_DOMAIN_TYPE: &str =
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)";
pub const TRANSFER_WITH_AUTHORIZATION_TYPE: &str = "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)";

/// The token's EIP-712 domain: `name`/`version` come from the offer's `extra`, the contract is
/// the asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eip712Domain {
    pub name: String,
    pub version: String,
    pub chain_id: u64,
    pub verifying_contract: EvmAddress,
}

impl Eip712Domain {
    pub fn separator(&self) -> [u8; 32] {
        let mut buf = [0u8; 5 * 32];
        buf[..32].copy_from_slice(&keccak256(EIP712_DOMAIN_TYPE.as_bytes()));
        buf[32..64].copy_from_slice(&keccak256(self.name.as_bytes()));
        buf[64..96].copy_from_slice(&keccak256(self.version.as_bytes()));
        buf[96..128].copy_from_slice(&uint_word(u128::from(self.chain_id)));
        buf[128..].copy_from_slice(&self.verifying_contract.to_word());
        keccak256(&buf)
    }
}

/// The EIP-3009 message a payer signs. `value` is a uint256 on chain; amounts we charge fit
/// in u128, and anything larger cannot equal our price anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferAuthorization {
    pub from: EvmAddress,
    pub to: EvmAddress,
    pub value: u128,
    pub valid_after: u64,
    pub valid_before: u64,
    pub nonce: [u8; 32],
}

impl TransferAuthorization {
    pub fn struct_hash(&self) -> [u8; 32] {
        let mut buf = [0u8; 7 * 32];
        buf[..32].copy_from_slice(&keccak256(TRANSFER_WITH_AUTHORIZATION_TYPE.as_bytes()));
        buf[32..64].copy_from_slice(&self.from.to_word());
        buf[64..96].copy_from_slice(&self.to.to_word());
        buf[96..128].copy_from_slice(&uint_word(self.value));
        buf[128..160].copy_from_slice(&uint_word(u128::from(self.valid_after)));
        buf[160..192].copy_from_slice(&uint_word(u128::from(self.valid_before)));
        buf[192..].copy_from_slice(&self.nonce);
        keccak256(&buf)
    }
}

/// Big-endian uint256 word.
fn uint_word(v: u128) -> [u8; 32] {
    let mut word = [0u8; 32];
    word[16..].copy_from_slice(&v.to_be_bytes());
    word
}

/// `keccak256(0x19 0x01 ‖ domainSeparator ‖ hashStruct(message))`, the hash that is signed.
pub fn transfer_with_authorization_digest(
    domain: &Eip712Domain,
    auth: &TransferAuthorization,
) -> [u8; 32] {
    let mut buf = [0u8; 2 + 32 + 32];
    buf[0] = 0x19;
    buf[1] = 0x01;
    buf[2..34].copy_from_slice(&domain.separator());
    buf[34..].copy_from_slice(&auth.struct_hash());
    keccak256(&buf)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature must be 65 bytes (r ‖ s ‖ v), got {0}")]
    Length(usize),
    #[error("signature recovery byte v must be 27, 28, 0 or 1, got {0}")]
    RecoveryByte(u8),
    #[error("signature r or s is out of range")]
    Malformed,
    #[error("signature s is in the upper half of the curve order (malleable)")]
    HighS,
    #[error("no public key recovers from this signature")]
    Unrecoverable,
}

/// Recovers the address that signed `digest`. Rules are the chain's (OpenZeppelin ECDSA):
/// 65-byte `r ‖ s ‖ v`, `v` 27/28 (0/1 tolerated), `s` in the lower half of the order.
pub fn recover_signer(digest: &[u8; 32], signature: &[u8]) -> Result<EvmAddress, SignatureError> {
    let bytes: &[u8; 65] = signature
        .try_into()
        .map_err(|_| SignatureError::Length(signature.len()))?;
    let v = bytes[64];
    let parity = match v {
        27 | 28 => v - 27,
        0 | 1 => v,
        other => return Err(SignatureError::RecoveryByte(other)),
    };
    let sig = Signature::from_slice(&bytes[..64]).map_err(|_| SignatureError::Malformed)?;
    // normalize_s returns Some only when s was high: the chain rejects those, so do we.
    if sig.normalize_s().is_some() {
        return Err(SignatureError::HighS);
    }
    let recovery_id = RecoveryId::from_byte(parity).ok_or(SignatureError::RecoveryByte(v))?;
    #[cfg(feature = "libsecp256k1")]
    {
        let _ = recovery_id;
        native::recover(digest, &bytes[..64], parity)
    }
    #[cfg(not(feature = "libsecp256k1"))]
    recover_k256(digest, &sig, recovery_id)
}

/// Pure-Rust recovery (the filter's wasm build, and the reference for the native one).
#[cfg_attr(all(feature = "libsecp256k1", not(test)), allow(dead_code))]
fn recover_k256(
    digest: &[u8; 32],
    sig: &Signature,
    recovery_id: RecoveryId,
) -> Result<EvmAddress, SignatureError> {
    let key = VerifyingKey::recover_from_prehash(digest, sig, recovery_id)
        .map_err(|_| SignatureError::Unrecoverable)?;
    Ok(address_of(&key))
}

/// libsecp256k1 (C, constant time, several times faster than k256 on x86_64): the verifier's
/// build, where one recovery per payment is the largest cost. Input already range- and
/// low-s-checked by the caller.
#[cfg(feature = "libsecp256k1")]
mod native {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
    use secp256k1::{Message, SECP256K1};

    use super::{keccak256, EvmAddress, SignatureError};

    pub fn recover(
        digest: &[u8; 32],
        compact: &[u8],
        parity: u8,
    ) -> Result<EvmAddress, SignatureError> {
        let id = RecoveryId::try_from(i32::from(parity))
            .map_err(|_| SignatureError::RecoveryByte(parity))?;
        let sig = RecoverableSignature::from_compact(compact, id)
            .map_err(|_| SignatureError::Malformed)?;
        let key = SECP256K1
            .recover_ecdsa(Message::from_digest(*digest), &sig)
            .map_err(|_| SignatureError::Unrecoverable)?;
        let point = key.serialize_uncompressed();
        let hash = keccak256(&point[1..]);
        let mut bytes = [0u8; 20];
        bytes.copy_from_slice(&hash[12..]);
        Ok(EvmAddress(bytes))
    }
}

/// The address of a public key: the last 20 bytes of keccak256 of its uncompressed x ‖ y.
#[cfg_attr(all(feature = "libsecp256k1", not(test)), allow(dead_code))]
fn address_of(key: &VerifyingKey) -> EvmAddress {
    let point = key.to_encoded_point(false);
    // Uncompressed SEC1 is 0x04 ‖ x ‖ y; the tag is not hashed.
    let hash = keccak256(point.as_bytes().get(1..).unwrap_or_default());
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(&hash[12..]);
    EvmAddress(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::SigningKey;

    /// Whichever backend `recover_signer` uses agrees with k256 on many keys and digests, and
    /// refuses the same corrupted signatures.
    #[test]
    fn backends_agree() {
        for i in 1u8..=40 {
            let key = SigningKey::from_slice(&keccak256(&[i, 7])).unwrap();
            let digest = keccak256(&[i, 9]);
            let (sig, id) = key.sign_prehash_recoverable(&digest).unwrap();
            let mut bytes = sig.to_bytes().to_vec();
            bytes.push(27 + id.to_byte());
            let expected = recover_k256(&digest, &sig, id).unwrap();
            assert_eq!(expected, address_of(key.verifying_key()));
            assert_eq!(recover_signer(&digest, &bytes), Ok(expected));
            // A flipped parity recovers someone else (or nobody), never the signer.
            bytes[64] ^= 1;
            assert_ne!(recover_signer(&digest, &bytes), Ok(expected));
        }
    }

    fn addr(s: &str) -> EvmAddress {
        s.parse().unwrap()
    }

    fn h32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim_start_matches("0x"), &mut out).unwrap();
        out
    }

    const KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const SIGNATURE: &str = "31b0b2c257841128d341f63620c057d174155c2f51630b95bff21858367386af3296f16340309fc845e3eefe6790cc75ca9a36f6ce3aa4619913ef7fd67d7c9c1c";

    fn domain() -> Eip712Domain {
        Eip712Domain {
            name: "USDC".into(),
            version: "2".into(),
            chain_id: 84532,
            verifying_contract: addr("0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
        }
    }

    fn message() -> TransferAuthorization {
        let mut nonce = [0u8; 32];
        nonce[31] = 1;
        TransferAuthorization {
            from: addr("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
            to: addr("0x209693Bc6afc0C5328bA36FaF03C514EF312287C"),
            value: 10_000,
            valid_after: 0,
            valid_before: 1_900_000_000,
            nonce,
        }
    }

    fn vector_digest() -> [u8; 32] {
        h32("0x00af7a33c1c153b511b1e1f642c57b9220b4a5f5f7b3ea9179529d6ec3dbd186")
    }

    #[test]
    fn type_hashes_match_the_spec() {
        assert_eq!(
            keccak256(TRANSFER_WITH_AUTHORIZATION_TYPE.as_bytes()),
            h32("0x7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267")
        );
        assert_eq!(
            keccak256(EIP712_DOMAIN_TYPE.as_bytes()),
            h32("0x8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f")
        );
    }

    #[test]
    fn domain_separator_matches_the_spec() {
        assert_eq!(
            domain().separator(),
            h32("0x71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818")
        );
    }

    #[test]
    fn digest_matches_the_spec() {
        assert_eq!(
            transfer_with_authorization_digest(&domain(), &message()),
            vector_digest()
        );
    }

    #[test]
    fn vector_signature_recovers_the_payer() {
        let sig = hex::decode(SIGNATURE).unwrap();
        assert_eq!(
            recover_signer(&vector_digest(), &sig),
            Ok(addr("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"))
        );
        // v as 0/1 is the same signature.
        let mut sig01 = sig.clone();
        sig01[64] -= 27;
        assert_eq!(
            recover_signer(&vector_digest(), &sig01),
            recover_signer(&vector_digest(), &sig)
        );
    }

    #[test]
    fn signing_with_the_dev_key_reproduces_the_vector() {
        let key = SigningKey::from_slice(&hex::decode(KEY).unwrap()).unwrap();
        let digest = transfer_with_authorization_digest(&domain(), &message());
        let (sig, recid) = key.sign_prehash_recoverable(&digest).unwrap();
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(27 + recid.to_byte());
        assert_eq!(hex::encode(&bytes), SIGNATURE);
        assert_eq!(address_of(key.verifying_key()), message().from);
    }

    #[test]
    fn tampering_changes_the_signer() {
        let sig = hex::decode(SIGNATURE).unwrap();
        let mut m = message();
        m.value = 10_001;
        let digest = transfer_with_authorization_digest(&domain(), &m);
        assert_ne!(recover_signer(&digest, &sig), Ok(message().from));
        let mut d = domain();
        d.chain_id = 8453;
        let digest = transfer_with_authorization_digest(&d, &message());
        assert_ne!(recover_signer(&digest, &sig), Ok(message().from));
    }

    #[test]
    fn rejects_malformed_signatures() {
        let sig = hex::decode(SIGNATURE).unwrap();
        let d = vector_digest();
        assert_eq!(
            recover_signer(&d, &sig[..64]),
            Err(SignatureError::Length(64))
        );
        assert_eq!(recover_signer(&d, &[]), Err(SignatureError::Length(0)));
        let mut long = sig.clone();
        long.push(0);
        assert_eq!(recover_signer(&d, &long), Err(SignatureError::Length(66)));
        let mut bad_v = sig.clone();
        bad_v[64] = 29;
        assert_eq!(
            recover_signer(&d, &bad_v),
            Err(SignatureError::RecoveryByte(29))
        );
        let mut zero_r = sig.clone();
        zero_r[..32].fill(0);
        assert_eq!(recover_signer(&d, &zero_r), Err(SignatureError::Malformed));
        let mut huge_s = sig.clone();
        huge_s[32..64].fill(0xff);
        assert_eq!(recover_signer(&d, &huge_s), Err(SignatureError::Malformed));
    }

    #[test]
    fn rejects_high_s() {
        // (r, n - s, v ^ 1) is the malleable twin of a valid signature; the chain refuses it.
        let sig = hex::decode(SIGNATURE).unwrap();
        let parsed = Signature::from_slice(&sig[..64]).unwrap();
        let (r, s) = parsed.split_scalars();
        let twin = Signature::from_scalars(r, -*s).unwrap();
        let mut bytes = twin.to_bytes().to_vec();
        bytes.push(if sig[64] == 27 { 28 } else { 27 });
        assert_eq!(
            recover_signer(&vector_digest(), &bytes),
            Err(SignatureError::HighS)
        );
    }
}
