//! `tollway serve`: wires config, ledger, replay guard, facilitator clients and payments, then
//! runs the gRPC server, the ops HTTP server and (with `verifier.admin`) the admin API until
//! SIGTERM / SIGINT.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::admin::{self, AdminState};
use crate::api::ext_authz::ExtAuthz;
use crate::api::grpc::{self, PaymentsService};
use crate::api::http::{self, OpsState};
use crate::api::rds::Rds;
use crate::config::{Config, ReplayStoreSettings};
use crate::metrics::Metrics;
use crate::payments::Payments;
use crate::rails::facilitator::FacilitatorClient;
use crate::stores::ledger::Ledger;
use crate::stores::replay::{LedgerReplayGuard, MemoryReplayGuard, RedisReplayGuard, ReplayGuard};
use crate::stores::routes_store::{self, RouteStore};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Ledger(#[from] crate::stores::ledger::LedgerError),
    #[error(transparent)]
    Facilitator(#[from] crate::rails::facilitator::FacilitatorError),
    #[error(transparent)]
    Payments(#[from] crate::payments::PaymentsError),
    #[error(transparent)]
    Routes(#[from] crate::stores::routes_store::StoreError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("verifier.tls: {0}")]
    Tls(String),
    #[error(transparent)]
    ReplayStore(#[from] crate::stores::replay::redis::RedisStoreError),
    #[error("start-up task failed: {0}")]
    Task(String),
    #[error("replay store {0} has no persistence (appendonly no, save \"\"): a restart of it would let used credentials be accepted again. Turn on AOF (appendonly yes) or RDB snapshots, or accept the loss with stores.allow_volatile_replay: true")]
    VolatileReplay(String),
}

/// How often pending payments that were never settled or released are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How often unknown settlements due for another attempt are reconciled (each has its own
/// backoff, 2 s up to 30 s).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// How often unfinished payments that no replica works on are looked for.
const ADOPT_INTERVAL: Duration = Duration::from_secs(30);

/// Kinds `(x402Version, scheme, network)` a facilitator must list for our rails.
fn needed_kinds(config: &Config, facilitator: &str) -> Vec<(u32, String, String)> {
    let mut out = Vec::new();
    for rail in config.rails.iter().filter(|r| r.facilitator == facilitator) {
        out.push((2, "exact".to_owned(), rail.network.to_string()));
        let v1 = rail.v1_name.as_deref().or_else(|| rail.network.v1_name());
        if let Some(v1) = v1 {
            out.push((1, "exact".to_owned(), v1.to_owned()));
        }
    }
    out
}

async fn shutdown_signal(tx: watch::Sender<bool>) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
    let _ = tx.send(true);
}

pub async fn wait_for(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Runs the verifier; `config_path` is watched and its `routes:` reloaded when it changes.
pub async fn run(config: Config, config_path: std::path::PathBuf) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    let ledger = Arc::new(Ledger::open(&config.verifier.ledger, metrics.clone())?);
    tracing::info!(ledger = %ledger.location(), shared = ledger.shared(), "ledger open");
    for route in &config.routes {
        match (&route.price, &route.lightning) {
            (None, None) => tracing::info!(route = %route.name, "free route"),
            (price, lightning) => tracing::info!(
                route = %route.name,
                price_usd = ?price.map(|p| p.to_string()),
                rails = ?route.rails,
                price_msat = ?lightning.map(|l| l.amount_msat),
                single_use = lightning.is_some_and(|l| l.single_use),
                "paid route"
            ),
        }
    }

    let mut clients = HashMap::new();
    for (name, settings) in &config.facilitators {
        let client = Arc::new(FacilitatorClient::new(name, settings, metrics.clone())?);
        tracing::info!(facilitator = %name, url = %settings.url, timeout_ms = settings.timeout.as_millis() as u64, "facilitator configured");
        clients.insert(name.clone(), client);
    }
    // Claims: in the ledger database (durable; shared when the ledger is PostgreSQL), in memory
    // (this process, forgotten on restart) or in a Redis every replica shares. An unreachable
    // store does not stop us: claims answer "unavailable" (paid routes 503) until it is back.
    let mut ledger_claims = None;
    let (replay, redis): (Arc<dyn ReplayGuard>, Option<Arc<RedisReplayGuard>>) = match &config
        .stores
        .replay
    {
        ReplayStoreSettings::Ledger => {
            metrics.set_replay_store_up(true);
            tracing::info!(ledger = %ledger.location(), "replay store: the ledger database (claims survive restarts)");
            let guard = Arc::new(LedgerReplayGuard::new(ledger.clone()));
            ledger_claims = Some(guard.clone());
            (guard, None)
        }
        ReplayStoreSettings::Memory => {
            metrics.set_replay_store_up(true);
            tracing::warn!("replay store: memory (this verifier only): used credentials are accepted again after a restart");
            (Arc::new(MemoryReplayGuard::new()), None)
        }
        ReplayStoreSettings::Redis(settings) => {
            let guard = Arc::new(RedisReplayGuard::new(settings, metrics.clone())?);
            // Reachable: the guard logs it. Not: say what happens meanwhile.
            let status = guard.check().await;
            if !status.up {
                tracing::error!(
                    url = %guard.url(),
                    error = status.error.as_deref().unwrap_or(""),
                    "replay store: redis unreachable at start; paid routes answer 503 until it is back (retrying every second)"
                );
            }
            // A Redis that forgets on restart would accept used credentials again.
            match (
                guard.persistent().await,
                config.stores.allow_volatile_replay,
            ) {
                (Some(true), _) => {
                    tracing::info!(url = %guard.url(), "replay store: redis persists its data")
                }
                (Some(false), false) => {
                    return Err(ServeError::VolatileReplay(guard.url().to_owned()))
                }
                (Some(false), true) => {
                    tracing::warn!(url = %guard.url(), "replay store: redis has no persistence (stores.allow_volatile_replay): used credentials are accepted again after it restarts")
                }
                (None, _) => {
                    tracing::warn!(url = %guard.url(), "replay store: cannot tell whether redis persists its data (unreachable, or CONFIG disabled); make sure AOF or RDB snapshots are on")
                }
            }
            (guard.clone(), Some(guard))
        }
    };
    let payments = Arc::new(Payments::new(
        &config,
        clients.clone(),
        replay.clone(),
        ledger.clone(),
        metrics.clone(),
    )?);
    payments.resume();
    for rail in config.rails.iter().filter(|r| r.rpc_url.is_none()) {
        tracing::warn!(rail = %rail.name, "no rpc_url: a settlement whose outcome is unknown can only be retried through the facilitator");
    }
    // The live route table: the file's routes plus the admin API's stored changes.
    let config = Arc::new(config);
    let store = {
        let (config, payments) = (config.clone(), payments.clone());
        let db = config.verifier.ledger.clone();
        let opened =
            tokio::task::spawn_blocking(move || RouteStore::open(config, payments, &db)).await;
        match opened {
            Ok(store) => Arc::new(store?),
            Err(e) => return Err(ServeError::Task(format!("route store: {e}"))),
        }
    };
    match (config.verifier.admin, &config.admin) {
        (Some(addr), _) => tracing::info!(
            admin = %addr,
            tls = config.verifier.tls.is_some(),
            mtls = config.verifier.tls.as_ref().is_some_and(|t| t.mtls()),
            "admin API on /admin/routes (bearer token)"
        ),
        (None, Some(_)) => tracing::warn!(
            "admin.token is set but verifier.admin is not: the admin API is off (it has its own listener)"
        ),
        (None, None) => {}
    }
    // TLS settings first: a certificate that does not load stops us before anything listens.
    let (grpc_tls, admin_tls) = match &config.verifier.tls {
        None => (None, None),
        Some(tls) => {
            let grpc = tls.grpc_config();
            let admin = tls.server_config().transpose().map_err(ServeError::Tls)?;
            if grpc.is_none() || admin.is_none() {
                return Err(ServeError::Tls("certificate and key were not read".into()));
            }
            tracing::info!(
                cert = %tls.cert,
                client_ca = ?tls.client_ca.as_ref().map(|c| c.to_string()),
                "verifier.grpc and verifier.admin serve TLS only{}",
                if tls.mtls() { " (mTLS: clients need a certificate signed by verifier.tls.client_ca)" } else { "" }
            );
            (grpc, admin)
        }
    };
    if let Some(rail) = payments.lightning() {
        tracing::info!(
            backend = rail.node().backend().as_str(),
            network = rail.network().name(),
            service = rail.service(),
            "lightning rail configured (L402 and x402 over bip122)"
        );
        if rail.dev_node().is_some() {
            tracing::warn!(
                "lightning backend is dev: invoices are paid for free with POST /dev/lightning/pay on {}; never expose it",
                config.verifier.http
            );
        }
    }

    let grpc_listener = TcpListener::bind(config.verifier.grpc)
        .await
        .map_err(|source| ServeError::Bind {
            what: "grpc",
            addr: config.verifier.grpc,
            source,
        })?;
    let http_listener = TcpListener::bind(config.verifier.http)
        .await
        .map_err(|source| ServeError::Bind {
            what: "http",
            addr: config.verifier.http,
            source,
        })?;
    let admin_listener = match config.verifier.admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    what: "admin",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };
    let grpc_addr = grpc_listener.local_addr().unwrap_or(config.verifier.grpc);
    let http_addr = http_listener.local_addr().unwrap_or(config.verifier.http);

    // Start-up probes run in the background: a facilitator that is down must not stop us.
    for (name, client) in &clients {
        tokio::spawn(client.clone().probe_supported(needed_kinds(&config, name)));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(shutdown_signal(stop_tx));
    let watcher = tokio::spawn(routes_store::watch_file(
        store.clone(),
        config_path,
        stop_rx.clone(),
    ));

    let redis_watch = redis.map(|g| tokio::spawn(g.watch(stop_rx.clone())));

    let sweeper = {
        let payments = payments.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
            let mut reconcile = tokio::time::interval(RECONCILE_INTERVAL);
            let mut adopt = tokio::time::interval(ADOPT_INTERVAL);
            loop {
                tokio::select! {
                    _ = sweep.tick() => {
                        payments.sweep_expired().await;
                        if let Some(claims) = &ledger_claims {
                            claims.prune(crate::clock::unix_now());
                        }
                    }
                    _ = reconcile.tick() => { payments.reconcile().await; }
                    _ = adopt.tick() => { payments.adopt_orphans().await; }
                    _ = stop.changed() => return,
                }
            }
        })
    };

    let mut facilitator_list: Vec<Arc<FacilitatorClient>> = clients.values().cloned().collect();
    facilitator_list.sort_by(|a, b| a.name().cmp(b.name()));
    let ops = Arc::new(OpsState {
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
        facilitators: facilitator_list,
        payments: payments.clone(),
        store: store.clone(),
        ledger: config.verifier.ledger.to_string(),
        replay,
    });

    let grpc_task = tokio::spawn(grpc::serve(
        grpc_listener,
        PaymentsService::new(payments.clone(), store.clone()),
        ExtAuthz::new(payments.clone(), metrics.clone()),
        Rds::new(store.clone(), stop_rx.clone()),
        grpc_tls,
        wait_for(stop_rx.clone()),
    ));
    let http_task = tokio::spawn(http::serve(
        http_listener,
        ops.clone(),
        wait_for(stop_rx.clone()),
    ));
    let admin_task = admin_listener.map(|listener| {
        let router = admin::router(Arc::new(AdminState {
            store: store.clone(),
            token: config.admin.as_ref().and_then(|a| a.token.clone()),
        }));
        tokio::spawn(crate::api::listener::serve(
            listener,
            router,
            admin_tls,
            wait_for(stop_rx.clone()),
        ))
    });
    ops.ready.store(true, Ordering::Release);
    let table = store.current();
    tracing::info!(
        grpc = %grpc_addr, http = %http_addr, admin = ?config.verifier.admin,
        tls = config.verifier.tls.is_some(),
        routes = table.routes.len(), paid = table.paid_routes(), version = table.version,
        "tollway verifier listening (gRPC: tollway.v1.Payments + envoy ext_authz + RDS; HTTP: /healthz /readyz /metrics; admin: /admin/routes)"
    );

    let grpc_result = grpc_task.await;
    let http_result = http_task.await;
    let admin_result = match admin_task {
        Some(t) => Some(t.await),
        None => None,
    };
    let _ = sweeper.await;
    if let Some(w) = redis_watch {
        let _ = w.await;
    }
    let _ = watcher.await;

    // Pending payments that will never be settled now: record them, then flush the ledger.
    let pending = payments.pending_count();
    if pending > 0 {
        tracing::warn!(
            pending,
            "shutting down with verified payments not yet settled or released"
        );
    }
    if let Err(e) = ledger.flush().await {
        tracing::error!(error = %e, "ledger flush failed at shutdown");
    }
    let l = ledger.clone();
    let _ = tokio::task::spawn_blocking(move || l.close()).await;
    tracing::info!("stopped");

    match grpc_result {
        Ok(Err(e)) => return Err(ServeError::Grpc(e)),
        Err(e) => tracing::error!(error = %e, "gRPC task panicked"),
        Ok(Ok(())) => {}
    }
    for result in [Some(http_result), admin_result].into_iter().flatten() {
        match result {
            Ok(Err(e)) => return Err(ServeError::Http(e)),
            Err(e) => tracing::error!(error = %e, "HTTP task panicked"),
            Ok(Ok(())) => {}
        }
    }
    Ok(())
}
