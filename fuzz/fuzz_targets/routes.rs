//! Route matching (`RouteTable::find`) on a fixed 25-route table, and the canonical path a
//! lease is bound to.
//!
//! Input: `host \n method \n path`, read lossily as UTF-8 like the filter does. (What a lookup
//! costs on long paths is pinned by the unit test
//! `routes::tests::lookup_cost_does_not_grow_with_the_route_count`: under coverage
//! instrumentation a 60 KB path costs milliseconds whatever the algorithm, which would starve
//! this target.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollway_fuzz::{fields, route_specs, route_table};
use tollway_protocol::routes::canonical_path;

fuzz_target!(|data: &[u8]| {
    let [host, method, path] = fields::<3>(data);
    let host = String::from_utf8_lossy(host);
    let method = String::from_utf8_lossy(method);
    let path = String::from_utf8_lossy(path);
    let table = route_table();
    let found = table.find(&host, &method, &path);
    if let Some(m) = &found {
        assert!(m.index < table.len());
        let spec = &route_specs()[m.index];
        let params = spec.path.split('/').filter(|s| s.starts_with('[')).count();
        assert_eq!(m.params.len(), params);
        for (_, value) in &m.params {
            assert!(!value.is_empty() && !value.contains('/'));
        }
    }
    // The path a lease binds names the same route, with the same captures.
    let canonical = canonical_path(&path);
    assert!(canonical.starts_with('/'));
    assert_eq!(canonical_path(&canonical), canonical);
    assert_eq!(table.find(&host, &method, &canonical), found);
});
