//! `tollway envoy`: renders a complete Envoy v3 bootstrap from `tollway.yaml`, built as a
//! `serde_json::Value` and printed as YAML (no string templates).
//!
//! Filter mode (default): HCM → wasm filter (its configuration: the filter config, with
//! `sync_interval_ms` so the route table comes live from the verifier's `Routes`) → router.
//! ext_authz mode: HCM → ext_authz (gRPC to the verifier, which also settles) → router.
//!
//! Both modes upgrade WebSockets and never cut a stream: the upstream route has no overall
//! timeout (`timeout: 0s`; Envoy's default is 15 s) and a generous per-stream idle timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use tollway_protocol::filter_config::FilterConfig;
use tollway_protocol::headers::{CONTEXT_PREFIX, METHOD_OVERRIDE_HEADERS};
use tollway_protocol::keys::ENV_FILTER_KEYS;

use crate::config::tls::EnvoyVerifierTls;
use crate::config::{Config, HostPort, SYNC_INTERVAL_MS, VERIFIER_CLUSTER};

pub const UPSTREAM_CLUSTER: &str = "upstream";

/// Header removals before any route or filter: `remove_on_match` by prefix for the context,
/// `remove` by name for the method overrides.
fn early_removals() -> serde_json::Value {
    let mut mutations =
        vec![json!({ "remove_on_match": { "key_matcher": { "prefix": CONTEXT_PREFIX } } })];
    for name in METHOD_OVERRIDE_HEADERS {
        mutations.push(json!({ "remove": name }));
    }
    serde_json::Value::Array(mutations)
}
/// The wasm filter's name in the connection manager (per-route configs refer to it).
pub const WASM_FILTER: &str = "envoy.filters.http.wasm";
/// The route configuration the verifier serves over RDS in filter mode (see `api/rds.rs`).
pub const ROUTE_CONFIG_NAME: &str = "tollway";
/// Upstream route timeout (`RouteAction.timeout`): disabled, streams and WebSockets last as long
/// as they last.
const ROUTE_TIMEOUT: &str = "0s";
/// `RouteAction.idle_timeout`: a stream with no bytes either way for this long is closed.
pub const ROUTE_IDLE_TIMEOUT_S: i64 = 300;
/// Minimum ext_authz deadline: the Check verifies *and* settles.
const EXT_AUTHZ_MIN_TIMEOUT_MS: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The Tollway wasm filter calls the verifier (settles after the upstream answered).
    Filter,
    /// Envoy's native ext_authz filter calls the verifier's Check (settles before forwarding).
    ExtAuthz,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvoyConfigError {
    #[error("tollway.yaml has no `envoy:` section (hint: add envoy: {{ listen: 0.0.0.0:10000, admin: 127.0.0.1:9901, upstream: 127.0.0.1:8080 }})")]
    NoEnvoySection,
    #[error("no wasm module path (hint: pass --wasm PATH or set envoy.wasm)")]
    NoWasm,
    #[error("cannot resolve the current directory: {0}")]
    Cwd(std::io::Error),
    #[error("cannot serialise: {0}")]
    Serialize(String),
}

fn socket_address(address: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": address, "port_value": port } })
}

fn load_assignment(cluster: &str, address: &str, port: u16) -> Value {
    json!({
        "cluster_name": cluster,
        "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(address, port) } }] }]
    })
}

/// Where Envoy reaches the verifier: its gRPC address, with a wildcard bind turned into loopback.
fn verifier_target(addr: SocketAddr) -> (String, u16) {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    (ip.to_string(), addr.port())
}

fn upstream_cluster(up: &HostPort) -> Value {
    let mut c = json!({
        "name": UPSTREAM_CLUSTER,
        "type": if up.is_ip() { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "load_assignment": load_assignment(UPSTREAM_CLUSTER, &up.host, up.port),
    });
    if !up.is_ip() {
        c["dns_lookup_family"] = json!("V4_PREFERRED");
    }
    c
}

/// The verifier's gRPC (filter API, ext_authz, RDS): HTTP/2, over TLS when `verifier.tls` is
/// set (see [`verifier_tls_socket`]).
fn verifier_cluster(
    addr: SocketAddr,
    tls: Option<&EnvoyVerifierTls>,
) -> Result<Value, EnvoyConfigError> {
    let (host, port) = verifier_target(addr);
    let mut c = json!({
        "name": VERIFIER_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        },
        "load_assignment": load_assignment(VERIFIER_CLUSTER, &host, port),
    });
    if let Some(tls) = tls {
        c["transport_socket"] = verifier_tls_socket(tls)?;
    }
    Ok(c)
}

/// `UpstreamTlsContext` of the verifier cluster: Envoy asks for `server_name` (SNI), trusts only
/// the configured CA and checks that name in the verifier's certificate; with mTLS it presents
/// its own certificate. Files by absolute path only: no key material in the bootstrap.
fn verifier_tls_socket(tls: &EnvoyVerifierTls) -> Result<Value, EnvoyConfigError> {
    let file = |p: &Path| -> Result<Value, EnvoyConfigError> {
        Ok(json!({ "filename": absolute(p)?.display().to_string() }))
    };
    let is_ip = tls.server_name.parse::<IpAddr>().is_ok();
    let mut common = json!({
        "alpn_protocols": ["h2"],
        "tls_params": { "tls_minimum_protocol_version": "TLSv1_2" },
        "validation_context": {
            "trusted_ca": file(&tls.trusted_ca)?,
            "match_typed_subject_alt_names": [{
                "san_type": if is_ip { "IP_ADDRESS" } else { "DNS" },
                "matcher": { "exact": tls.server_name },
            }],
        },
    });
    if let Some((cert, key)) = &tls.client_cert {
        common["tls_certificates"] = json!([{
            "certificate_chain": file(cert)?,
            "private_key": file(key)?,
        }]);
    }
    let mut context = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    });
    // SNI carries host names only.
    if !is_ip {
        context["sni"] = json!(tls.server_name);
    }
    Ok(json!({ "name": "envoy.transport_sockets.tls", "typed_config": context }))
}

fn router_filter() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    })
}

/// The wasm plugin's configuration: the filter config, its routes (for reading; the filter
/// serves the verifier's table) and the sync interval.
pub fn plugin_config(config: &Config) -> FilterConfig {
    FilterConfig {
        sync_interval_ms: Some(SYNC_INTERVAL_MS),
        // The bootstrap's early header mutation removes them (see `render`).
        envoy_strips_context: true,
        ..config.filter.clone()
    }
}

fn wasm_filter(config: &Config, wasm: &Path) -> Result<Value, EnvoyConfigError> {
    let filter_json = serde_json::to_string(&plugin_config(config))
        .map_err(|e| EnvoyConfigError::Serialize(e.to_string()))?;
    Ok(json!({
        "name": WASM_FILTER,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "tollway",
                "root_id": "tollway",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": filter_json,
                },
                "failure_policy": "FAIL_RELOAD",
                "vm_config": {
                    "vm_id": "tollway",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": wasm.display().to_string() } },
                    // The token keys: from Envoy's own environment, never in this file
                    // (`tollway filter-keys` prints the value).
                    "environment_variables": { "host_env_keys": [ENV_FILTER_KEYS] }
                }
            }
        }
    }))
}

/// The Check verifies and settles, so its deadline covers two facilitator calls.
fn ext_authz_timeout_ms(config: &Config) -> u64 {
    let facilitator_max = config
        .facilitators
        .iter()
        .map(|(_, f)| u64::try_from(f.timeout.as_millis()).unwrap_or(u64::MAX))
        .max()
        .unwrap_or(0);
    (facilitator_max.saturating_mul(2).saturating_add(1_000)).max(EXT_AUTHZ_MIN_TIMEOUT_MS)
}

/// Deliberately without `allowed_headers`: Envoy then sends the Check every request header
/// (gRPC service), which it needs: the credentials (`payment-signature`, `x-payment`,
/// `authorization`, `x-x402-lease`) and, for a route's allow-list, the names of all the others.
/// Without `with_request_body` (nothing priced reads the body) and without
/// `decoder_header_mutation_rules`: with rules set, Envoy would check the Check's `:path`
/// rewrite (`upstream_path`) against them.
fn ext_authz_filter(config: &Config) -> Value {
    let ms = ext_authz_timeout_ms(config);
    json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {
                "envoy_grpc": { "cluster_name": VERIFIER_CLUSTER },
                "timeout": format!("{}.{:03}s", ms / 1000, ms % 1000),
            },
            "failure_mode_allow": false,
            "status_on_error": { "code": 503 }
        }
    })
}

/// ext_authz mode, verifier unreachable: Envoy's own 503 (`status_on_error`) gets what the
/// filter's 503 has, `Retry-After` and a JSON reason (the verifier's own 503s say the same).
fn ext_authz_unavailable_reply() -> Value {
    json!({
        "mappers": [{
            "filter": { "and_filter": { "filters": [
                { "status_code_filter": { "comparison": {
                    "op": "EQ",
                    "value": { "default_value": 503, "runtime_key": "tollway.ext_authz.unavailable_status" }
                } } },
                { "response_flag_filter": { "flags": ["UAEX"] } }
            ] } },
            "headers_to_add": [{
                "header": { "key": "retry-after", "value": "1" },
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"
            }],
            "body": { "inline_string": EXT_AUTHZ_UNAVAILABLE_BODY },
            "body_format_override": {
                "text_format": "%LOCAL_REPLY_BODY%",
                "content_type": "application/json"
            }
        }]
    })
}

/// The body of a 503 while the verifier cannot be asked (ext_authz mode).
pub const EXT_AUTHZ_UNAVAILABLE_BODY: &str = r#"{"error":"payment verifier unavailable","retry":"the gateway cannot check payments right now; retry shortly"}"#;

fn absolute(path: &Path) -> Result<PathBuf, EnvoyConfigError> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let cwd = std::env::current_dir().map_err(EnvoyConfigError::Cwd)?;
    Ok(cwd.join(path))
}

/// The bootstrap as a JSON value. `wasm` overrides `envoy.wasm` (filter mode only).
pub fn bootstrap(
    config: &Config,
    mode: Mode,
    wasm: Option<&Path>,
) -> Result<Value, EnvoyConfigError> {
    let envoy = config
        .envoy
        .as_ref()
        .ok_or(EnvoyConfigError::NoEnvoySection)?;
    let auth_filter = match mode {
        Mode::Filter => {
            let path = wasm
                .or(envoy.wasm.as_deref())
                .ok_or(EnvoyConfigError::NoWasm)?;
            wasm_filter(config, &absolute(path)?)?
        }
        Mode::ExtAuthz => ext_authz_filter(config),
    };
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "tollway",
            "codec_type": "AUTO",
            // Route matching must see the path the upstream will see: no `//`, `.`/`..` or
            // encoded slashes that could make a paid path look free.
            "normalize_path": true,
            "merge_slashes": true,
            "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
            "upgrade_configs": [{ "upgrade_type": "websocket" }],
            // Client copies of the trusted payment context go before any filter or route sees
            // the request, on every route (the filter sets them only on paid requests).
            "early_header_mutation_extensions": [{
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                    // Client copies of the trusted context, and method overrides (a framework would
                    // read `POST` + `X-HTTP-Method-Override: GET` as an unpriced GET).
                    "mutations": early_removals(),
                }
            }],
            "http_filters": [auth_filter, router_filter()]
        }
    });
    let mut hcm = hcm;
    hcm["typed_config"][routes_key(mode)] = routes(mode);
    if mode == Mode::ExtAuthz {
        hcm["typed_config"]["local_reply_config"] = ext_authz_unavailable_reply();
    }
    Ok(json!({
        // xDS (RDS in filter mode) needs a node identity.
        "node": { "id": "tollway", "cluster": "tollway" },
        "admin": { "address": socket_address(&envoy.admin.ip().to_string(), envoy.admin.port()) },
        "static_resources": {
            "listeners": [{
                "name": "tollway",
                "address": socket_address(&envoy.listen.ip().to_string(), envoy.listen.port()),
                "filter_chains": [{ "filters": [hcm] }]
            }],
            "clusters": [
                upstream_cluster(&envoy.upstream),
                verifier_cluster(config.verifier.grpc, envoy.verifier_tls.as_ref())?,
            ]
        }
    }))
}

fn routes_key(mode: Mode) -> &'static str {
    match mode {
        Mode::Filter => "rds",
        Mode::ExtAuthz => "route_config",
    }
}

/// Filter mode: the verifier's RDS (free routes bypass the filter, see `api/rds.rs`); Envoy waits
/// for the first answer before it listens, so nothing is routed before the table is known.
/// ext_authz-only mode: one static catch-all route (its filter must see every request).
fn routes(mode: Mode) -> Value {
    match mode {
        Mode::Filter => json!({
            "route_config_name": ROUTE_CONFIG_NAME,
            "config_source": {
                "resource_api_version": "V3",
                "initial_fetch_timeout": "0s",
                "api_config_source": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "set_node_on_first_message_only": true,
                    "grpc_services": [{ "envoy_grpc": { "cluster_name": VERIFIER_CLUSTER } }]
                }
            }
        }),
        Mode::ExtAuthz => json!({
            "name": ROUTE_CONFIG_NAME,
            "virtual_hosts": [{
                "name": "upstream",
                "domains": ["*"],
                "routes": [{
                    "name": "upstream",
                    "match": { "prefix": "/" },
                    "route": {
                        "cluster": UPSTREAM_CLUSTER,
                        "timeout": ROUTE_TIMEOUT,
                        "idle_timeout": format!("{ROUTE_IDLE_TIMEOUT_S}s"),
                    }
                }]
            }]
        }),
    }
}

/// Keys printed first in every mapping (the rest follow alphabetically), so each block reads
/// like Envoy's docs: what it is, then its settings.
const LEADING_KEYS: &[&str] = &["@type", "name", "type", "address"];

/// JSON → YAML value with readable key order.
fn to_yaml(value: &Value) -> serde_yaml::Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| {
                let rank = LEADING_KEYS
                    .iter()
                    .position(|l| l == k)
                    .unwrap_or(LEADING_KEYS.len());
                (rank, k.as_str())
            });
            let mut out = serde_yaml::Mapping::new();
            for k in keys {
                out.insert(
                    serde_yaml::Value::String(k.clone()),
                    to_yaml(&map[k.as_str()]),
                );
            }
            serde_yaml::Value::Mapping(out)
        }
        Value::Array(items) => serde_yaml::Value::Sequence(items.iter().map(to_yaml).collect()),
        Value::String(s) => serde_yaml::Value::String(s.clone()),
        Value::Bool(b) => serde_yaml::Value::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => serde_yaml::Value::Number(u.into()),
            (None, Some(i), _) => serde_yaml::Value::Number(i.into()),
            (None, None, Some(f)) => serde_yaml::Value::Number(f.into()),
            _ => serde_yaml::Value::Null,
        },
        Value::Null => serde_yaml::Value::Null,
    }
}

/// The bootstrap as YAML text, with a header comment naming its source.
pub fn render(
    config: &Config,
    mode: Mode,
    wasm: Option<&Path>,
    source: &Path,
) -> Result<String, EnvoyConfigError> {
    let value = bootstrap(config, mode, wasm)?;
    let yaml = serde_yaml::to_string(&to_yaml(&value))
        .map_err(|e| EnvoyConfigError::Serialize(e.to_string()))?;
    let mode = match mode {
        Mode::Filter => "filter",
        Mode::ExtAuthz => "ext-authz",
    };
    Ok(format!(
        "# Envoy bootstrap rendered by `tollway envoy --mode {mode}` from {}. Do not edit: re-render.\n{yaml}",
        source.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secrets;

    fn example() -> Config {
        let dir = tempfile::tempdir().expect("tmp");
        crate::testkit::example_config(dir.path(), Secrets::Skip)
    }

    fn parse(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).expect("valid YAML")
    }

    /// Header name prefixes the connection manager removes before any filter or route sees the
    /// request.
    fn early_removals(hcm: &serde_yaml::Value) -> Vec<&str> {
        hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
            .as_sequence()
            .expect("mutations")
            .iter()
            .filter_map(|m| m["remove_on_match"]["key_matcher"]["prefix"].as_str())
            .collect()
    }

    fn early_removed_names(hcm: &serde_yaml::Value) -> Vec<&str> {
        hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
            .as_sequence()
            .expect("mutations")
            .iter()
            .filter_map(|m| m["remove"].as_str())
            .collect()
    }

    #[test]
    fn filter_mode() {
        let c = example();
        let text = render(&c, Mode::Filter, None, Path::new("tollway.yaml")).expect("render");
        let y = parse(&text);
        let hcm = &y["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert_eq!(hcm["codec_type"], "AUTO");
        assert_eq!(hcm["normalize_path"], true);
        assert_eq!(hcm["merge_slashes"], true);
        assert_eq!(hcm["upgrade_configs"][0]["upgrade_type"], "websocket");
        assert_eq!(early_removals(hcm), [CONTEXT_PREFIX]);
        assert_eq!(early_removed_names(hcm), METHOD_OVERRIDE_HEADERS);
        // Routes come from the verifier's RDS (their shape is tested in api/rds.rs), and Envoy
        // routes nothing until the first answer.
        assert!(hcm["route_config"].is_null());
        let rds = &hcm["rds"];
        assert_eq!(rds["route_config_name"], ROUTE_CONFIG_NAME);
        assert_eq!(rds["config_source"]["initial_fetch_timeout"], "0s");
        let api = &rds["config_source"]["api_config_source"];
        assert_eq!(api["api_type"], "GRPC");
        assert_eq!(
            api["grpc_services"][0]["envoy_grpc"]["cluster_name"],
            VERIFIER_CLUSTER
        );
        assert_eq!(y["node"]["id"], "tollway");
        let filters = hcm["http_filters"].as_sequence().expect("filters");
        assert_eq!(filters.len(), 2);
        assert_eq!(filters[1]["name"], "envoy.filters.http.router");
        let wasm = &filters[0]["typed_config"]["config"];
        assert_eq!(filters[0]["name"], "envoy.filters.http.wasm");
        assert_eq!(wasm["name"], "tollway");
        assert_eq!(wasm["root_id"], "tollway");
        assert_eq!(wasm["failure_policy"], "FAIL_RELOAD");
        assert_eq!(wasm["vm_config"]["vm_id"], "tollway");
        assert_eq!(wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        let file = wasm["vm_config"]["code"]["local"]["filename"]
            .as_str()
            .expect("filename");
        assert!(Path::new(file).is_absolute(), "{file}");
        assert!(file.ends_with(".build/tollway_filter.wasm"), "{file}");
        // The configuration is the FilterConfig, verbatim.
        let json = wasm["configuration"]["value"]
            .as_str()
            .expect("StringValue");
        let fc: FilterConfig = serde_json::from_str(json).expect("FilterConfig");
        // The filter config, plus the sync with the verifier's live route table.
        assert_eq!(fc.sync_interval_ms, Some(1000));
        assert_eq!(
            fc,
            FilterConfig {
                sync_interval_ms: Some(1000),
                envoy_strips_context: true,
                // Never rendered (the filter reads them from its environment).
                keys: Default::default(),
                ..c.filter.clone()
            }
        );
        // No secret and no key derived from one is rendered: the filter reads its keys from
        // the environment variable the VM is given.
        assert!(fc.l402.is_some());
        assert!(!text.contains(crate::testkit::L402_SECRET));
        let derived = tollway_protocol::l402::filter_key(crate::testkit::L402_SECRET.as_bytes());
        assert!(!text.contains(&derived.to_hex()));
        assert!(!text.contains(&c.filter.keys.render()));
        assert_eq!(
            wasm["vm_config"]["environment_variables"]["host_env_keys"][0],
            tollway_protocol::keys::ENV_FILTER_KEYS
        );
        assert_eq!(fc.verifier_cluster, "tollway_verifier");
        // With the keys from its environment, the filter compiles it; without, it refuses.
        assert!(fc.compile().is_err());
        let with_keys = FilterConfig {
            keys: c.filter.keys.clone(),
            ..fc.clone()
        };
        assert!(with_keys.compile().is_ok());

        let clusters = y["static_resources"]["clusters"]
            .as_sequence()
            .expect("clusters");
        assert_eq!(clusters[0]["name"], "upstream");
        assert_eq!(clusters[0]["type"], "STATIC");
        assert_eq!(clusters[1]["name"], "tollway_verifier");
        assert_eq!(clusters[1]["connect_timeout"], "0.25s");
        assert!(clusters[1]["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
            ["http2_protocol_options"]
            .is_mapping());
        let ep = &clusters[1]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["socket_address"];
        assert_eq!(ep["address"], "127.0.0.1");
        assert_eq!(ep["port_value"], 50051);
        assert_eq!(y["admin"]["address"]["socket_address"]["port_value"], 9901);
    }

    #[test]
    fn wasm_flag_overrides_and_is_made_absolute() {
        let c = example();
        let v = bootstrap(&c, Mode::Filter, Some(Path::new("x/f.wasm"))).expect("render");
        let file = v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"][0]["typed_config"]["config"]["vm_config"]["code"]
            ["local"]["filename"]
            .as_str()
            .expect("filename")
            .to_owned();
        assert_eq!(
            PathBuf::from(file),
            std::env::current_dir().expect("cwd").join("x/f.wasm")
        );
    }

    #[test]
    fn ext_authz_mode() {
        let c = example();
        let y = parse(&render(&c, Mode::ExtAuthz, None, Path::new("t.yaml")).expect("render"));
        let filters = &y["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"];
        let authz = &filters[0];
        assert_eq!(authz["name"], "envoy.filters.http.ext_authz");
        let t = &authz["typed_config"];
        assert_eq!(t["transport_api_version"], "V3");
        assert_eq!(
            t["grpc_service"]["envoy_grpc"]["cluster_name"],
            "tollway_verifier"
        );
        // Two facilitator calls of 10 s each fit in the deadline.
        assert_eq!(t["grpc_service"]["timeout"], "21.000s");
        assert_eq!(t["failure_mode_allow"], false);
        assert_eq!(t["status_on_error"]["code"], 503);
        // That 503 carries Retry-After and a JSON reason.
        let hcm = &y["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
        let mapper = &hcm["typed_config"]["local_reply_config"]["mappers"][0];
        assert_eq!(mapper["headers_to_add"][0]["header"]["key"], "retry-after");
        assert_eq!(
            mapper["body_format_override"]["content_type"],
            "application/json"
        );
        // Every request header reaches the Check (credentials, and every name for a route's
        // allow-list); no body; no mutation rules (they would vet the `:path` rewrite).
        for absent in [
            "allowed_headers",
            "disallowed_headers",
            "with_request_body",
            "decoder_header_mutation_rules",
            "clear_route_cache",
        ] {
            assert!(t.get(absent).is_none(), "{absent}");
        }
        assert_eq!(filters[1]["name"], "envoy.filters.http.router");
        // WebSockets and streams (leases) pass in this mode too.
        let hcm = &y["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        // Client copies of the trusted context go before ext_authz runs, as in filter mode.
        assert_eq!(early_removals(hcm), [CONTEXT_PREFIX]);
        assert_eq!(early_removed_names(hcm), METHOD_OVERRIDE_HEADERS);
        assert_eq!(hcm["upgrade_configs"][0]["upgrade_type"], "websocket");
        let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
        assert_eq!(route["timeout"], "0s");
        assert_eq!(route["idle_timeout"], "300s");
    }

    #[test]
    fn dns_upstream_and_wildcard_verifier() {
        let dir = tempfile::tempdir().expect("tmp");
        let text = crate::testkit::example_text(dir.path())
            .replace("upstream: 127.0.0.1:18080", "upstream: api.internal:8080")
            .replace("grpc: 127.0.0.1:50051", "grpc: 0.0.0.0:50051");
        let c = Config::parse(&text, Secrets::Skip).expect("valid");
        let v = bootstrap(&c, Mode::ExtAuthz, None).expect("render");
        let clusters = &v["static_resources"]["clusters"];
        assert_eq!(clusters[0]["type"], "STRICT_DNS");
        assert_eq!(
            clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"]["address"],
            "api.internal"
        );
        assert_eq!(
            clusters[1]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
    }

    /// With `verifier.tls`, both bootstraps reach the verifier over TLS (HTTP/2 kept explicit),
    /// check its name against the CA, present Envoy's client certificate, and carry file paths
    /// only: no key or certificate material.
    #[test]
    fn verifier_cluster_over_tls() {
        use crate::config::tls::test_pki::{with_lines, Pki};
        let dir = tempfile::tempdir().expect("tmp");
        let pki = Pki::new(dir.path());
        let text = with_lines(
            &crate::testkit::example_text(dir.path()),
            &pki.verifier_yaml(true),
            &pki.envoy_yaml(true),
        );
        let c = Config::parse(&text, Secrets::Skip).expect("valid");
        for mode in [Mode::Filter, Mode::ExtAuthz] {
            let rendered = render(&c, mode, None, Path::new("tollway.yaml")).expect("render");
            for marker in ["-----BEGIN", "PRIVATE KEY", "CERTIFICATE-----"] {
                assert!(!rendered.contains(marker), "{marker} in the bootstrap");
            }
            for file in [
                &pki.key,
                &pki.cert,
                &pki.client_key,
                &pki.client_cert,
                &pki.ca,
            ] {
                let pem = String::from_utf8(Pki::read(file)).expect("utf8");
                let line = pem.lines().nth(1).expect("base64 line");
                assert!(
                    !rendered.contains(line),
                    "{} content in the bootstrap",
                    file.display()
                );
            }
            let y = parse(&rendered);
            let cluster = &y["static_resources"]["clusters"][1];
            assert_eq!(cluster["name"], VERIFIER_CLUSTER);
            assert!(cluster["typed_extension_protocol_options"]
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
                ["http2_protocol_options"]
                .is_mapping());
            let socket = &cluster["transport_socket"];
            assert_eq!(socket["name"], "envoy.transport_sockets.tls");
            let ctx = &socket["typed_config"];
            assert_eq!(
                ctx["@type"],
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
            );
            assert_eq!(ctx["sni"], "localhost");
            let common = &ctx["common_tls_context"];
            assert_eq!(common["alpn_protocols"][0], "h2");
            let validation = &common["validation_context"];
            let path = |v: &serde_yaml::Value| v["filename"].as_str().expect("filename").to_owned();
            assert_eq!(
                path(&validation["trusted_ca"]),
                pki.ca.display().to_string()
            );
            assert_eq!(
                validation["match_typed_subject_alt_names"][0]["san_type"],
                "DNS"
            );
            assert_eq!(
                validation["match_typed_subject_alt_names"][0]["matcher"]["exact"],
                "localhost"
            );
            let identity = &common["tls_certificates"][0];
            assert_eq!(
                path(&identity["certificate_chain"]),
                pki.client_cert.display().to_string()
            );
            assert_eq!(
                path(&identity["private_key"]),
                pki.client_key.display().to_string()
            );
        }

        // Without TLS the cluster is plaintext HTTP/2, as before.
        let v = bootstrap(&example(), Mode::Filter, None).expect("render");
        assert!(v["static_resources"]["clusters"][1]["transport_socket"].is_null());

        // An IP name: no SNI, the address checked as an IP SAN; no client certificate without
        // mTLS.
        let verifier = pki.verifier_yaml(false) + "    server_name: 127.0.0.1\n";
        let text = with_lines(
            &crate::testkit::example_text(dir.path()),
            &verifier,
            &pki.envoy_yaml(false),
        );
        let c = Config::parse(&text, Secrets::Skip).expect("valid");
        let v = bootstrap(&c, Mode::ExtAuthz, None).expect("render");
        let ctx = &v["static_resources"]["clusters"][1]["transport_socket"]["typed_config"];
        assert!(ctx["sni"].is_null());
        let common = &ctx["common_tls_context"];
        assert_eq!(
            common["validation_context"]["match_typed_subject_alt_names"][0]["san_type"],
            "IP_ADDRESS"
        );
        assert!(common["tls_certificates"].is_null());
    }

    #[test]
    fn missing_pieces() {
        let mut c = example();
        c.envoy.as_mut().expect("envoy").wasm = None;
        assert!(matches!(
            bootstrap(&c, Mode::Filter, None),
            Err(EnvoyConfigError::NoWasm)
        ));
        assert!(bootstrap(&c, Mode::ExtAuthz, None).is_ok());
        c.envoy = None;
        assert!(matches!(
            bootstrap(&c, Mode::ExtAuthz, None),
            Err(EnvoyConfigError::NoEnvoySection)
        ));
    }
}
