//! Root context: loads and compiles the configuration, defines the metrics, creates one
//! [`Stream`] per HTTP request sharing the compiled configuration.

use std::rc::Rc;
use std::time::Duration;

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use tollway_protocol::filter_config::{CompiledConfig, FilterConfig};

use crate::http::Stream;
use crate::metrics::Metrics;

/// Everything a request needs, built once per configuration.
pub struct Shared {
    pub config: CompiledConfig,
    pub verifier_cluster: String,
    pub verify_timeout: Duration,
    pub settle_timeout: Duration,
    pub public_url: Option<String>,
    pub metrics: Metrics,
}

pub struct Root {
    id: u32,
    metrics: Option<Metrics>,
    shared: Option<Rc<Shared>>,
}

impl Root {
    pub fn new(id: u32) -> Root {
        Root {
            id,
            metrics: None,
            shared: None,
        }
    }

    fn load(&mut self, size: usize) -> Result<Shared, String> {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(Some(bytes)) if !bytes.is_empty() => bytes,
            _ => {
                return Err(
                    "no plugin configuration (expected the JSON rendered by `tollway envoy`)"
                        .into(),
                )
            }
        };
        let config: FilterConfig = serde_json::from_slice(&bytes)
            .map_err(|e| format!("configuration is not valid JSON for the filter: {e}"))?;
        let compiled = config
            .compile()
            .map_err(|e| format!("configuration rejected: {e}"))?;
        let metrics = match self.metrics {
            Some(m) => m,
            None => {
                let m = Metrics::define().ok_or("cannot define metrics")?;
                self.metrics = Some(m);
                m
            }
        };
        Ok(Shared {
            config: compiled,
            verifier_cluster: config.verifier_cluster,
            verify_timeout: Duration::from_millis(config.verifier_timeout_ms),
            settle_timeout: Duration::from_millis(config.settle_timeout_ms),
            public_url: config.public_url,
            metrics,
        })
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        match self.load(plugin_configuration_size) {
            Ok(shared) => {
                self.shared = Some(Rc::new(shared));
                true
            }
            Err(e) => {
                warn!("{e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Must never return None (the SDK panics); an unconfigured stream fails closed.
        Some(Box::new(Stream::new(
            context_id,
            self.id,
            self.shared.clone(),
        )))
    }
}
