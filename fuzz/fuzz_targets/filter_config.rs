//! The filter's plugin configuration: JSON → `FilterConfig` → `compile` (route table, offers,
//! challenges, leases, rewrites, header policies) → bypass rules and a few lookups. A config
//! that hangs or panics here hangs or kills the filter's configure step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollway_protocol::b64;
use tollway_protocol::filter_config::FilterConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(mut config) = serde_json::from_slice::<FilterConfig>(data) else {
        return;
    };
    // Keys come from the environment, not the JSON: give every config the fixture's.
    config.keys = tollway_fuzz::filter_keys();
    let value = serde_json::to_value(&config).unwrap();
    let mut back = serde_json::from_value::<FilterConfig>(value).unwrap();
    back.keys = config.keys.clone();
    assert_eq!(back, config);
    let Ok(compiled) = config.compile() else {
        return;
    };
    assert!(compiled.routes.len() >= config.routes.len());
    assert_eq!(compiled.table.len(), compiled.routes.len());
    for bypass in compiled.bypass(true, config.public_url.as_deref()) {
        let m = compiled
            .table
            .find("", bypass.method, &bypass.path)
            .unwrap();
        assert_eq!(compiled.routes[m.index].name, bypass.route);
        if let Some(answer) = bypass.answer {
            serde_json::from_str::<Value>(&answer.body).unwrap();
        }
    }
    for (i, route) in compiled.routes.iter().enumerate() {
        if let Some(paid) = &route.paid {
            let rendered = paid
                .challenge
                .render("https://h/x?y=\"z\"", Some("e\u{1}\\"));
            serde_json::from_str::<Value>(&rendered.body).unwrap();
            let header = b64::decode_strict(&rendered.payment_required_header, 1 << 20).unwrap();
            serde_json::from_slice::<Value>(&header).unwrap();
        }
        if let Some(lease) = &route.lease {
            let params: Vec<(String, String)> = lease
                .resource
                .params()
                .map(|p| (p.to_owned(), "v".to_owned()))
                .collect();
            assert!(lease.sale.can_render(&lease.sale.render(&params)));
        }
        let _ = compiled.table.exact_path(i);
    }
    for path in [
        "/",
        "/api/quote",
        "/stream/ticker/BTC",
        "/lease/ticker/BTC",
        "/a/b/c",
    ] {
        for method in ["GET", "POST"] {
            if let Some(m) = compiled.table.find("api.example.com", method, path) {
                assert!(m.index < compiled.routes.len());
            }
        }
    }
});
