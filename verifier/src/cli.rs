//! Command line: `tollway check | envoy | filter-keys | serve`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::envoy::Mode;

#[derive(Debug, Parser)]
#[command(
    name = "tollway",
    version,
    about = "HTTP 402 payments (x402) in front of any API behind Envoy",
    after_help = "Logs go to stderr; set the level with RUST_LOG (default: info)."
)]
pub struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate tollway.yaml (secrets included) and report every problem.
    Check {
        #[arg(short, long, env = "TOLLWAY_CONFIG", default_value = "tollway.yaml")]
        config: PathBuf,
    },
    /// Print a complete Envoy v3 bootstrap for this config on stdout.
    Envoy {
        #[arg(short, long, env = "TOLLWAY_CONFIG", default_value = "tollway.yaml")]
        config: PathBuf,
        /// `filter`: the Tollway wasm filter; `ext-authz`: Envoy's ext_authz filter only.
        #[arg(long, value_enum, default_value_t = Mode::Filter)]
        mode: Mode,
        /// Wasm module to load (filter mode); overrides `envoy.wasm`. Made absolute.
        #[arg(long)]
        wasm: Option<PathBuf>,
    },
    /// Print the filter's token keys, the value of TOLLWAY_FILTER_KEYS in Envoy's environment
    /// (derived from the secrets; a key mints L402 tokens and leases: handle it as a secret).
    FilterKeys {
        #[arg(short, long, env = "TOLLWAY_CONFIG", default_value = "tollway.yaml")]
        config: PathBuf,
    },
    /// Run the verifier sidecar (gRPC filter API + ext_authz, ops HTTP).
    Serve {
        #[arg(short, long, env = "TOLLWAY_CONFIG", default_value = "tollway.yaml")]
        config: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::parse_from([
            "tollway",
            "envoy",
            "-c",
            "x.yaml",
            "--mode",
            "ext-authz",
            "--log-format",
            "json",
        ]);
        assert_eq!(cli.log_format, LogFormat::Json);
        match cli.command {
            Command::Envoy { config, mode, wasm } => {
                assert_eq!(config, PathBuf::from("x.yaml"));
                assert_eq!(mode, Mode::ExtAuthz);
                assert!(wasm.is_none());
            }
            other => panic!("{other:?}"),
        }
    }
}
