//! `tollway`: the Tollway verifier sidecar and CLI.

mod api;
mod cli;
mod clock;
mod config;
mod metrics;
mod payments;
mod rails;
mod serve;
mod stores;
#[cfg(test)]
mod testkit;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat};
use crate::config::{Config, Secrets};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load(path: &std::path::Path, secrets: Secrets) -> Result<Config, ExitCode> {
    Config::load(path, secrets).map_err(|errors| {
        eprintln!("{}: {} problem(s)", path.display(), errors.0.len());
        for p in &errors.0 {
            eprintln!("{p}");
        }
        ExitCode::from(1)
    })
}

/// `tollway check`'s lines about the verifier's channels: TLS, and where the admin API is.
fn check_channels(c: &Config) {
    let v = &c.verifier;
    match &v.tls {
        Some(tls) => println!(
            "verifier.grpc: TLS on {} (certificate {}, key {}{}){}",
            v.grpc,
            tls.cert,
            tls.key,
            tls.client_ca
                .as_ref()
                .map(|ca| format!("; mTLS: clients need a certificate signed by {ca}"))
                .unwrap_or_default(),
            tls.server_name
                .as_ref()
                .map(|n| format!("; Envoy asks for {n:?}"))
                .unwrap_or_default(),
        ),
        None if !v.grpc.ip().is_loopback() => println!(
            "warning: verifier.grpc listens on {} in plaintext: anyone who reaches it can call the filter's API; set verifier.tls (and client_ca for mTLS)",
            v.grpc
        ),
        None => {}
    }
    let scheme = if v.tls.is_some() { "https" } else { "http" };
    match (v.admin, &c.admin) {
        (Some(addr), _) => {
            println!(
                "admin API: on {scheme}://{addr}/admin/routes{}",
                match &v.tls {
                    Some(t) if t.mtls() => " (TLS, client certificate required)",
                    Some(_) => " (TLS)",
                    None => "",
                }
            );
            if v.tls.is_none() && !addr.ip().is_loopback() {
                println!("warning: verifier.admin listens on {addr} in plaintext: the bearer token crosses the network in the clear; set verifier.tls");
            }
        }
        (None, Some(_)) => println!(
            "admin API: off (admin.token is set, but verifier.admin is not: the admin API has its own listener, e.g. verifier: {{ admin: 127.0.0.1:9091 }})"
        ),
        (None, None) => println!("admin API: off (no verifier.admin)"),
    }
    println!(
        "verifier.http: http://{}/healthz, /readyz, /metrics (plaintext){}",
        v.http,
        if c.lightning
            .as_ref()
            .is_some_and(|l| l.node.backend() == rails::lightning::Backend::Dev)
        {
            ", and the dev wallet POST /dev/lightning/pay (lightning.backend: dev; never expose it)"
        } else {
            ""
        }
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => match load(&config, Secrets::Resolve) {
            Ok(c) => {
                println!("ok: {} routes ({} paid)", c.routes.len(), c.paid_routes());
                if let Some(l) = &c.lightning {
                    let lightning_routes =
                        c.routes.iter().filter(|r| r.lightning.is_some()).count();
                    println!(
                        "lightning: {} on {} ({lightning_routes} routes sell Lightning)",
                        l.node.backend().as_str(),
                        l.network.name()
                    );
                }
                for rail in &c.rails {
                    if rail.rpc_url.is_none() {
                        println!(
                            "warning: rails.{}: no rpc_url, so a settlement whose outcome is unknown (facilitator timeout, restart) can only be retried through the facilitator; set rpc_url to let the verifier read the chain",
                            rail.name
                        );
                    }
                }
                if let Ok(compiled) = c.filter.compile() {
                    for (route, method, path, through) in compiled.method_gaps() {
                        println!(
                            "warning: route {route:?} is not priced for {method}, and {method} {path} reaches the upstream unpaid through {through}; list every method the upstream serves there in `methods`, or deny them (unmatched: deny)"
                        );
                    }
                }
                if c.leases.is_some() {
                    let leased = c.filter.routes.iter().filter(|r| r.lease.is_some()).count();
                    println!("leases: {leased} routes sold as a lease");
                }
                check_channels(&c);
                if let config::ReplayStoreSettings::Redis(r) = &c.stores.replay {
                    // The URL never holds a password; `check` does not connect.
                    println!("replay store: {} (shared by every replica)", r.url);
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Envoy { config, mode, wasm } => {
            let c = match load(&config, Secrets::Skip) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if mode == config::envoy::Mode::Filter {
                let path = wasm
                    .as_deref()
                    .or(c.envoy.as_ref().and_then(|e| e.wasm.as_deref()));
                if let Some(p) = path.filter(|p| !p.exists()) {
                    eprintln!("warning: wasm module {} does not exist (yet)", p.display());
                }
            }
            match config::envoy::render(&c, mode, wasm.as_deref(), &config) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    ExitCode::from(1)
                }
            }
        }
        Command::FilterKeys { config } => match load(&config, Secrets::Resolve) {
            Ok(c) => {
                println!("{}", c.filter.keys.render());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve { config } => {
            let c = match load(&config, Secrets::Resolve) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let result = runtime.block_on(serve::run(c, config));
            // Everything that matters (ledger) is flushed by now; do not wait for idle tasks.
            runtime.shutdown_timeout(std::time::Duration::from_millis(250));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "verifier failed");
                    ExitCode::from(1)
                }
            }
        }
    }
}
