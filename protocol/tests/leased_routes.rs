//! Compiling leased routes, rewrites and header policies from the filter config.

use serde_json::{json, Value};
use tollway_protocol::filter_config::{ConfigError, FilterConfig, ResourceKind};
use tollway_protocol::keys::KeySet;
use tollway_protocol::lease::LeaseKey;

fn offer() -> Value {
    json!({
        "network": "eip155:84532",
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "pay_to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        "amount": "10000",
        "max_timeout_seconds": 300,
        "eip712_name": "USDC",
        "eip712_version": "2"
    })
}

fn ticker() -> Value {
    json!({
        "name": "ticker",
        "kind": "http-stream",
        "methods": ["GET"],
        "path": "/stream/ticker/[symbol]",
        "paid": {"offers": [offer()]},
        "lease": {"path": "/lease/ticker/[symbol]", "seconds": 60, "renew_window_seconds": 30},
        "upstream_path": "/v1/ticker/[symbol]",
        "request_headers": ["api-auth", "x-client-id"],
        "response_headers": ["streaming"]
    })
}

fn config(routes: Vec<Value>) -> Value {
    json!({
        "verifier_cluster": "tollway_verifier",
        "verifier_timeout_ms": 2000,
        "settle_timeout_ms": 10000,
        "routes": routes
    })
}

/// A named change to the `ticker` route.
type Mutation = (&'static str, Box<dyn Fn(&mut Value)>);

/// Compiled with a lease key (as the filter would get it from its environment).
fn compile(v: Value) -> Result<tollway_protocol::filter_config::CompiledConfig, ConfigError> {
    let mut c = serde_json::from_value::<FilterConfig>(v).unwrap();
    c.keys.lease = Some(KeySet::new(LeaseKey::derive(&[1; 32])));
    c.compile()
}

#[test]
fn a_leased_route_has_a_resource_and_a_sale_entry() {
    let free = json!({"name": "all", "path": "/**"});
    let c = compile(config(vec![ticker(), free])).unwrap();
    let resource = c.table.find("h", "GET", "/stream/ticker/BTC").unwrap();
    let entry = &c.routes[resource.index];
    assert_eq!(entry.name, "ticker");
    assert_eq!(entry.kind, ResourceKind::HttpStream);
    assert!(!entry.sells_lease);
    let lease = entry.lease.as_ref().unwrap();
    assert_eq!(lease.method, "GET");
    assert_eq!(lease.renew_window_seconds, Some(30));
    assert_eq!(lease.sale.render(&resource.params), "/lease/ticker/BTC");
    assert_eq!(
        entry
            .upstream_path
            .as_ref()
            .unwrap()
            .render(&resource.params),
        "/v1/ticker/BTC"
    );
    assert!(entry.headers.allows("x-client-id") && !entry.headers.allows("cookie"));

    for method in ["GET", "POST"] {
        let sale = c.table.find("h", method, "/lease/ticker/ETH").unwrap();
        let entry = &c.routes[sale.index];
        assert!(entry.sells_lease, "{method}");
        assert_eq!(entry.name, "ticker");
        assert_eq!(
            entry.lease.as_ref().unwrap().resource.render(&sale.params),
            "/stream/ticker/ETH"
        );
    }
    // The gRPC name lookup finds the resource entry; both carry the price.
    assert!(!c.route("ticker").unwrap().sells_lease);
    // The rewrite target is not public: it has its own entry, answered 404 by the filter.
    let internal = c.table.find("h", "GET", "/v1/ticker/BTC").unwrap();
    assert!(c.routes[internal.index].internal);
    assert!(c.routes[internal.index].paid.is_none());
    // Other requests still reach the catch-all.
    let other = c.table.find("h", "GET", "/other").unwrap();
    assert_eq!(c.routes[other.index].name, "all");
}

#[test]
fn refuses_leases_that_cannot_work() {
    let cases: Vec<Mutation> = vec![
        (
            "a lease needs kind",
            Box::new(|r| r["kind"] = json!("http")),
        ),
        (
            "sold as a lease",
            Box::new(|r| {
                r.as_object_mut().unwrap().remove("lease");
            }),
        ),
        (
            "must have a price",
            Box::new(|r| {
                r.as_object_mut().unwrap().remove("paid");
            }),
        ),
        (
            "literal and [name]",
            Box::new(|r| r["path"] = json!("/stream/*/[symbol]")),
        ),
        (
            "same [name]s",
            Box::new(|r| r["lease"]["path"] = json!("/lease/ticker")),
        ),
        (
            "at most one method",
            Box::new(|r| r["methods"] = json!(["GET", "POST"])),
        ),
        (
            "opened with GET",
            Box::new(|r| {
                r["kind"] = json!("websocket");
                r["methods"] = json!(["POST"]);
            }),
        ),
        (
            "greater than 0",
            Box::new(|r| r["lease"]["seconds"] = json!(0)),
        ),
        (
            "renewal window",
            Box::new(|r| r["lease"]["renew_window_seconds"] = json!(61)),
        ),
        (
            "cannot be renewed",
            Box::new(|r| r["lease"]["single_use"] = json!(true)),
        ),
        (
            "not captured",
            Box::new(|r| r["upstream_path"] = json!("/v1/[user]")),
        ),
        (
            "not a header name",
            Box::new(|r| r["request_headers"] = json!(["bad header"])),
        ),
        (
            "not a response preset",
            Box::new(|r| r["response_headers"] = json!(["gzip"])),
        ),
    ];
    for (expected, mutate) in cases {
        let mut route = ticker();
        mutate(&mut route);
        let err = compile(config(vec![route])).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected:?} not in {err:?}");
    }
    let no_key = serde_json::from_value::<FilterConfig>(config(vec![ticker()])).unwrap();
    assert_eq!(
        no_key.compile().unwrap_err(),
        ConfigError::NoLeaseKey {
            route: "ticker".into()
        }
    );
}

#[test]
fn a_configured_route_on_the_upstream_path_wins_over_the_internal_entry() {
    let same = json!({"name": "v1", "methods": ["GET"], "path": "/v1/ticker/[sym]"});
    let c = compile(config(vec![ticker(), same])).unwrap();
    let m = c.table.find("h", "GET", "/v1/ticker/BTC").unwrap();
    assert_eq!(c.routes[m.index].name, "v1");
    assert!(!c.routes.iter().any(|r| r.internal));
}

#[test]
fn sync_interval_and_disabled_routes() {
    let mut v = config(vec![ticker()]);
    v["sync_interval_ms"] = json!(50);
    assert_eq!(compile(v).unwrap_err(), ConfigError::BadSyncInterval);
    let mut route = ticker();
    route["disabled"] = json!(true);
    let c = compile(config(vec![route])).unwrap();
    assert!(c.routes.iter().filter(|r| !r.internal).all(|r| r.disabled));
    // Round trip: the JSON the verifier sends the filter is what it compiles.
    let back: FilterConfig = serde_json::from_value(config(vec![ticker()])).unwrap();
    let again: FilterConfig = serde_json::from_value(serde_json::to_value(&back).unwrap()).unwrap();
    assert_eq!(again, back);
}
