//! The few `lnrpc` messages of LND's `lightning.proto` we use, hand-written with prost. Field
//! numbers are LND's wire contract (fact sheet §4.2); fields we never read are left out (prost
//! skips unknown fields when decoding).

pub const PATH_ADD_INVOICE: &str = "/lnrpc.Lightning/AddInvoice";
pub const PATH_LOOKUP_INVOICE: &str = "/lnrpc.Lightning/LookupInvoice";

/// `lnrpc.Invoice`: the AddInvoice request and the LookupInvoice answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Invoice {
    #[prost(string, tag = "1")]
    pub memo: String,
    #[prost(bytes = "vec", tag = "3")]
    pub r_preimage: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub r_hash: Vec<u8>,
    /// Satoshis; mutually exclusive with `value_msat`.
    #[prost(int64, tag = "5")]
    pub value: i64,
    /// Deprecated in favour of `state`.
    #[prost(bool, tag = "6")]
    pub settled: bool,
    #[prost(int64, tag = "7")]
    pub creation_date: i64,
    #[prost(int64, tag = "8")]
    pub settle_date: i64,
    #[prost(string, tag = "9")]
    pub payment_request: String,
    #[prost(bytes = "vec", tag = "10")]
    pub description_hash: Vec<u8>,
    /// Seconds; LND's default is 86 400.
    #[prost(int64, tag = "11")]
    pub expiry: i64,
    #[prost(uint64, tag = "13")]
    pub cltv_expiry: u64,
    #[prost(bool, tag = "15")]
    pub private: bool,
    #[prost(uint64, tag = "16")]
    pub add_index: u64,
    #[prost(uint64, tag = "17")]
    pub settle_index: u64,
    #[prost(int64, tag = "20")]
    pub amt_paid_msat: i64,
    #[prost(enumeration = "InvoiceState", tag = "21")]
    pub state: i32,
    #[prost(int64, tag = "23")]
    pub value_msat: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum InvoiceState {
    Open = 0,
    Settled = 1,
    Canceled = 2,
    Accepted = 3,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AddInvoiceResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub r_hash: Vec<u8>,
    #[prost(string, tag = "2")]
    pub payment_request: String,
    #[prost(uint64, tag = "16")]
    pub add_index: u64,
    #[prost(bytes = "vec", tag = "17")]
    pub payment_addr: Vec<u8>,
}

/// LookupInvoice request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PaymentHash {
    /// Deprecated hex form.
    #[prost(string, tag = "1")]
    pub r_hash_str: String,
    #[prost(bytes = "vec", tag = "2")]
    pub r_hash: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn field_numbers_on_the_wire() {
        // value_msat = 23 (varint): key (23 << 3) | 0 = 184 = 0xb8 0x01.
        let bytes = Invoice {
            value_msat: 10_000,
            ..Invoice::default()
        }
        .encode_to_vec();
        assert_eq!(bytes, [0xb8, 0x01, 0x90, 0x4e]);
        // r_hash = 2 (bytes): key 0x12.
        let bytes = PaymentHash {
            r_hash: vec![0xaa; 2],
            ..PaymentHash::default()
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x12, 0x02, 0xaa, 0xaa]);
        // add_index = 16 (varint): key (16 << 3) = 128 = 0x80 0x01.
        let bytes = AddInvoiceResponse {
            add_index: 5,
            ..AddInvoiceResponse::default()
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x80, 0x01, 0x05]);
        // state = 21 (enum): key (21 << 3) = 168 = 0xa8 0x01.
        let bytes = Invoice {
            state: InvoiceState::Settled as i32,
            ..Invoice::default()
        }
        .encode_to_vec();
        assert_eq!(bytes, [0xa8, 0x01, 0x01]);
    }
}
