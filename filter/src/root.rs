//! Root context: loads and compiles the configuration, defines the metrics, creates one
//! [`Stream`] per HTTP request sharing the compiled configuration. With `sync_interval_ms` the
//! route table comes from the verifier (`Routes`, polled on a tick); a table that does not
//! compile is refused and the last good one keeps serving.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use log::warn;
use prost::Message;
use tollway_protocol::cache::Memo;
use tollway_protocol::filter_config::{CompiledConfig, FilterConfig};
use tollway_protocol::keys::{FilterKeys, ENV_FILTER_KEYS};
use tollway_protocol::l402::cache::VerifiedCache;
use tollway_protocol::lease::Lease;
use tollway_protocol::rpc::{RoutesRequest, RoutesResponse, METHOD_ROUTES, SERVICE};

use crate::abi::BufferType;
use crate::host;
use crate::metrics::{self, Metrics};

/// Everything a request needs, built once per configuration.
pub struct Shared {
    pub config: CompiledConfig,
    pub verifier_cluster: String,
    pub verify_timeout: Duration,
    pub settle_timeout: Duration,
    pub public_url: Option<String>,
    /// See `FilterConfig::envoy_strips_context`.
    pub envoy_strips_context: bool,
    pub metrics: Metrics,
    /// L402 credentials verified in this VM (a reusable token skips the HMAC chain).
    pub l402_cache: RefCell<VerifiedCache>,
    /// Lease tokens whose signature this VM checked (a lease used again skips the HMAC).
    pub lease_cache: RefCell<Memo<String, Lease>>,
    /// Payment hashes of reusable L402 tokens this VM has held for the L402 rail (the first use
    /// per VM asks the verifier; later uses make no call).
    pub l402_held: RefCell<Memo<[u8; 32], ()>>,
}

pub struct Root {
    /// This root's context id (the effective context of its tick).
    id: u32,
    metrics: Option<Metrics>,
    shared: Option<Rc<Shared>>,
    /// Set when the route table comes from the verifier.
    sync: Option<TableSync>,
}

/// Route-table sync state (see `docs/leases.md`, dynamic routes).
struct TableSync {
    /// The plugin configuration; its `routes` are replaced by each table received.
    base: FilterConfig,
    interval: Duration,
    /// Version of the table in `Root::shared` (0: none yet).
    version: u64,
    /// Routes call in flight.
    call: Option<u32>,
}

/// Tick while no table has arrived: short, so a fresh Envoy serves within moments.
const FIRST_TABLE_TICK: Duration = Duration::from_millis(100);
/// Tick of a static configuration: only flushes counters.
const FLUSH_TICK: Duration = Duration::from_secs(1);

impl Root {
    pub fn new(id: u32) -> Root {
        Root {
            id,
            metrics: None,
            shared: None,
            sync: None,
        }
    }

    fn metrics(&mut self) -> Result<Metrics, String> {
        match self.metrics {
            Some(m) => Ok(m),
            None => {
                let m = Metrics::define().ok_or("cannot define metrics")?;
                self.metrics = Some(m);
                Ok(m)
            }
        }
    }

    fn read(&self, size: usize) -> Result<FilterConfig, String> {
        let bytes = match host::buffer(BufferType::PluginConfiguration, size) {
            Some(bytes) if !bytes.is_empty() => bytes,
            _ => {
                return Err(
                    "no plugin configuration (expected the JSON rendered by `tollway envoy`)"
                        .into(),
                )
            }
        };
        let mut config: FilterConfig = serde_json::from_slice(&bytes)
            .map_err(|e| format!("configuration is not valid JSON for the filter: {e}"))?;
        // The token keys are never in the plugin configuration: they come from the VM's
        // environment (`vm_config.environment_variables`), filled from the proxy's own.
        config.keys = match std::env::var(ENV_FILTER_KEYS) {
            Ok(text) => FilterKeys::parse(&text).map_err(|e| e.to_string())?,
            Err(_) => FilterKeys::default(),
        };
        Ok(config)
    }

    fn build(&mut self, config: &FilterConfig) -> Result<Shared, String> {
        let compiled = config
            .compile()
            .map_err(|e| format!("configuration rejected: {e}"))?;
        Ok(Shared {
            config: compiled,
            verifier_cluster: config.verifier_cluster.clone(),
            verify_timeout: Duration::from_millis(config.verifier_timeout_ms),
            settle_timeout: Duration::from_millis(config.settle_timeout_ms),
            public_url: config.public_url.clone(),
            envoy_strips_context: config.envoy_strips_context,
            metrics: self.metrics()?,
            l402_cache: RefCell::default(),
            lease_cache: RefCell::default(),
            l402_held: RefCell::default(),
        })
    }

    fn configure(&mut self, size: usize) -> Result<(), String> {
        let config = self.read(size)?;
        match config.sync_interval_ms {
            None => {
                self.shared = Some(Rc::new(self.build(&config)?));
                self.sync = None;
                host::set_tick_period(FLUSH_TICK);
            }
            Some(ms) => {
                // The static part must be valid on its own; routes come from the verifier.
                let base = FilterConfig {
                    routes: Vec::new(),
                    ..config
                };
                self.build(&base)?;
                // A reconfigured filter keeps serving its last table until the next one.
                let version = self.sync.as_ref().map_or(0, |s| s.version);
                self.sync = Some(TableSync {
                    base,
                    interval: Duration::from_millis(ms),
                    version,
                    call: None,
                });
                host::set_tick_period(FIRST_TABLE_TICK);
                self.poll();
            }
        }
        Ok(())
    }

    /// Asks the verifier for the route table unless a call is in flight.
    fn poll(&mut self) {
        let Some(sync) = self.sync.as_mut() else {
            return;
        };
        if sync.call.is_some() {
            return;
        }
        let request = RoutesRequest {
            known_version: sync.version,
        };
        let timeout = Duration::from_millis(sync.base.verifier_timeout_ms);
        match host::grpc_call(
            &sync.base.verifier_cluster,
            SERVICE,
            METHOD_ROUTES,
            &request.encode_to_vec(),
            timeout,
        ) {
            Ok(token) => sync.call = Some(token),
            Err(status) => warn!("cannot ask the verifier for routes: {status:?}"),
        }
    }

    fn routes_answer(&mut self, status: u32, size: usize) {
        let answer = if status == 0 {
            host::grpc_response_body(size).and_then(|b| RoutesResponse::decode(b.as_slice()).ok())
        } else {
            None
        };
        let Some(answer) = answer else {
            if status != 0 {
                warn!("Routes failed with gRPC status {status}; keeping the current table");
            }
            return;
        };
        let Some(sync) = self.sync.as_ref() else {
            return;
        };
        if answer.version == sync.version || answer.routes_json.is_empty() {
            return;
        }
        let routes = match serde_json::from_str(&answer.routes_json) {
            Ok(routes) => routes,
            Err(e) => {
                warn!(
                    "route table {} is not valid JSON ({e}); keeping the current table",
                    answer.version
                );
                return;
            }
        };
        let config = FilterConfig {
            routes,
            ..sync.base.clone()
        };
        let first = sync.version == 0;
        match self.build(&config) {
            Ok(shared) => {
                self.shared = Some(Rc::new(shared));
                if let Some(sync) = self.sync.as_mut() {
                    sync.version = answer.version;
                    if first {
                        host::set_tick_period(sync.interval);
                    }
                }
            }
            Err(e) => warn!(
                "route table {} refused ({e}); keeping the current table",
                answer.version
            ),
        }
    }
}

/// The callbacks `exports.rs` delivers to the root.
impl Root {
    /// The compiled configuration a new stream works with (`None` until there is one).
    pub fn shared(&self) -> Option<Rc<Shared>> {
        self.shared.clone()
    }

    pub fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if crate::retry::answered(token_id, status_code) {
            return;
        }
        if let Some(shared) = &self.shared {
            let closed = shared.metrics.lease_streams_closed;
            if crate::expiry::answered(self.id, closed, token_id, status_code, response_size) {
                return;
            }
        }
        let ours = self.sync.as_ref().and_then(|s| s.call) == Some(token_id);
        if ours {
            if let Some(sync) = self.sync.as_mut() {
                sync.call = None;
            }
            self.routes_answer(status_code, response_size);
        }
    }

    pub fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        match self.configure(plugin_configuration_size) {
            Ok(()) => true,
            Err(e) => {
                warn!("{e}");
                false
            }
        }
    }

    pub fn on_tick(&mut self) {
        metrics::flush();
        if let Some(shared) = &self.shared {
            crate::retry::send(&shared.verifier_cluster, shared.settle_timeout);
            let now = host::now_unix();
            if now != 0 {
                crate::expiry::tick(
                    self.id,
                    shared.metrics.lease_streams_closed,
                    &shared.verifier_cluster,
                    shared.verify_timeout,
                    now,
                );
            }
        }
        self.poll();
    }
}
