//! Amounts: USD prices (`UsdPrice`), atomic token amounts (`AtomicAmount`, as clients echo them
//! in x402 payloads) and network names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollway_protocol::amount::{AtomicAmount, UsdPrice, PRICE_SCALE};
use tollway_protocol::network::Network;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(price) = s.parse::<UsdPrice>() {
        let shown = price.to_string();
        assert_eq!(
            shown.parse::<UsdPrice>(),
            Ok(price),
            "{s:?} shown as {shown:?}"
        );
        assert!(shown.len() <= s.len(), "{s:?} shown as {shown:?}");
        let json = serde_json::to_string(&price).unwrap();
        assert_eq!(serde_json::from_str::<UsdPrice>(&json).ok(), Some(price));
        for decimals in [0u8, 2, 6, 8, 18, 19, 24, 38, 255] {
            let Ok(atomic) = price.to_atomic(decimals) else {
                continue;
            };
            // Exact, never rounded.
            if decimals <= PRICE_SCALE {
                let unit = 10u128.pow(u32::from(PRICE_SCALE - decimals));
                assert_eq!(atomic.get().checked_mul(unit), Some(price.scaled()));
            } else {
                let unit = 10u128.pow(u32::from(decimals - PRICE_SCALE));
                assert_eq!(price.scaled().checked_mul(unit), Some(atomic.get()));
            }
        }
    }
    if let Ok(amount) = s.parse::<AtomicAmount>() {
        let shown = amount.to_string();
        assert_eq!(shown.parse::<AtomicAmount>(), Ok(amount));
        let digits = s.trim_start_matches('0');
        assert_eq!(shown, if digits.is_empty() { "0" } else { digits });
        let json = serde_json::to_string(&amount).unwrap();
        assert_eq!(
            serde_json::from_str::<AtomicAmount>(&json).ok(),
            Some(amount)
        );
    }
    if let Ok(network) = s.parse::<Network>() {
        assert_eq!(network.as_str().parse::<Network>().as_ref(), Ok(&network));
        if let Some(name) = network.v1_name() {
            assert_eq!(Network::from_v1_name(name).as_ref(), Some(&network));
        }
    }
    if let Some(network) = Network::from_v1_name(s) {
        let _ = network.evm_chain_id();
    }
});
