//! BOLT11 invoices with `lightning-invoice` 0.34: the networks we run on, signing (the dev node
//! and the test doubles make real invoices) and decoding (every invoice a node or a client
//! hands us is parsed, signature included, before it is trusted).

use std::str::FromStr;
use std::time::Duration;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use lightning_invoice::{Bolt11Invoice, Currency, InvoiceBuilder, PaymentSecret};
use tollway_protocol::lightning::LightningNetwork;

/// Longest invoice string accepted (real ones are well under 1 KiB; the crate allows 7089).
pub const MAX_INVOICE_LEN: usize = 4096;
/// BOLT11 default `min_final_cltv_expiry_delta`.
const MIN_FINAL_CLTV_EXPIRY_DELTA: u64 = 18;

fn currency(network: LightningNetwork) -> Currency {
    match network {
        LightningNetwork::Mainnet => Currency::Bitcoin,
        LightningNetwork::Testnet => Currency::BitcoinTestnet,
        LightningNetwork::Signet => Currency::Signet,
        LightningNetwork::Regtest => Currency::Regtest,
    }
}

fn network_of(c: Currency) -> Option<LightningNetwork> {
    Some(match c {
        Currency::Bitcoin => LightningNetwork::Mainnet,
        Currency::BitcoinTestnet => LightningNetwork::Testnet,
        Currency::Signet => LightningNetwork::Signet,
        Currency::Regtest => LightningNetwork::Regtest,
        Currency::Simnet => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Bolt11Error {
    #[error("invoice is longer than {MAX_INVOICE_LEN} characters")]
    TooLong,
    #[error("not a valid BOLT11 invoice: {0}")]
    Parse(String),
    #[error("cannot build the invoice: {0}")]
    Build(String),
}

/// What the verifier reads from an invoice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedInvoice {
    pub payment_hash: [u8; 32],
    /// `None`: an amountless ("any amount") invoice.
    pub amount_msat: Option<u64>,
    /// `None`: a currency we do not run on (simnet).
    pub network: Option<LightningNetwork>,
    /// Unix seconds.
    pub timestamp: u64,
    /// Unix seconds: timestamp + expiry (3600 s when the invoice has no expiry field).
    pub expires_at: u64,
}

/// Parses and checks (checksum, signature, mandatory fields) an invoice.
pub fn decode(s: &str) -> Result<DecodedInvoice, Bolt11Error> {
    if s.len() > MAX_INVOICE_LEN {
        return Err(Bolt11Error::TooLong);
    }
    let invoice =
        Bolt11Invoice::from_str(s.trim()).map_err(|e| Bolt11Error::Parse(e.to_string()))?;
    let timestamp = invoice.duration_since_epoch().as_secs();
    Ok(DecodedInvoice {
        payment_hash: invoice.payment_hash().to_byte_array(),
        amount_msat: invoice.amount_milli_satoshis(),
        network: network_of(invoice.currency()),
        timestamp,
        expires_at: timestamp.saturating_add(invoice.expiry_time().as_secs()),
    })
}

/// The fields of an invoice we sign.
#[derive(Clone, Debug)]
pub struct InvoiceFields<'a> {
    pub amount_msat: u64,
    pub payment_hash: [u8; 32],
    pub payment_secret: [u8; 32],
    pub description: &'a str,
    pub expiry_secs: u64,
    /// Unix seconds.
    pub timestamp: u64,
}

/// A signed BOLT11 invoice from `key` (the payee node key).
pub fn sign(
    key: &SecretKey,
    network: LightningNetwork,
    fields: &InvoiceFields<'_>,
) -> Result<String, Bolt11Error> {
    let secp = Secp256k1::signing_only();
    let invoice = InvoiceBuilder::new(currency(network))
        .description(fields.description.to_owned())
        .payment_hash(sha256::Hash::from_byte_array(fields.payment_hash))
        .payment_secret(PaymentSecret(fields.payment_secret))
        .amount_milli_satoshis(fields.amount_msat)
        .duration_since_epoch(Duration::from_secs(fields.timestamp))
        .expiry_time(Duration::from_secs(fields.expiry_secs))
        .min_final_cltv_expiry_delta(MIN_FINAL_CLTV_EXPIRY_DELTA)
        .build_signed(|msg| secp.sign_ecdsa_recoverable(msg, key))
        .map_err(|e| Bolt11Error::Build(e.to_string()))?;
    Ok(invoice.to_string())
}

/// A random node key.
pub fn random_key() -> SecretKey {
    loop {
        // All but a negligible fraction of 32-byte strings are valid keys.
        if let Ok(k) = SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            return k;
        }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    sha256::Hash::hash(data).to_byte_array()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(amount_msat: u64) -> InvoiceFields<'static> {
        InvoiceFields {
            amount_msat,
            payment_hash: sha256(&[0x42; 32]),
            payment_secret: [1; 32],
            description: "tollway quote",
            expiry_secs: 600,
            timestamp: 1_800_000_000,
        }
    }

    #[test]
    fn sign_and_decode_round_trip() {
        let key = random_key();
        for network in LightningNetwork::ALL {
            let s = sign(&key, network, &fields(10_000)).expect("sign");
            assert!(
                s.starts_with(&format!("{}100n1", network.bolt11_prefix())),
                "{s}"
            );
            let d = decode(&s).expect("decode");
            assert_eq!(d.network, Some(network));
            assert_eq!(d.amount_msat, Some(10_000));
            assert_eq!(
                hex::encode(d.payment_hash),
                "425ed4e4a36b30ea21b90e21c712c649e8214c29b7eaf68089d1039c6e55384c"
            );
            assert_eq!(d.timestamp, 1_800_000_000);
            assert_eq!(d.expires_at, 1_800_000_600);
        }
    }

    #[test]
    fn tampered_or_oversized_invoices_fail() {
        let s = sign(&random_key(), LightningNetwork::Regtest, &fields(10_000)).expect("sign");
        // One changed data character breaks the checksum.
        let mut chars: Vec<char> = s.chars().collect();
        let i = chars.len() - 20;
        chars[i] = if chars[i] == 'q' { 'p' } else { 'q' };
        let bad: String = chars.into_iter().collect();
        assert!(matches!(decode(&bad), Err(Bolt11Error::Parse(_))));
        assert_eq!(decode(&"a".repeat(5000)), Err(Bolt11Error::TooLong));
        assert!(decode("").is_err());
    }
}
