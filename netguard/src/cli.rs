//! The command line, apart from `main` so the man page and completions are made from it
//! (`gendocs`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use policy::exit::EXIT_CODES_HELP;

use crate::wg::Kind;

#[derive(Debug, Parser)]
#[command(
    name = "netguard",
    version,
    about,
    after_help = format!("SIGHUP reloads; SIGTERM/SIGINT stop, leaving the firewall and tunnels in place.\n\n{EXIT_CODES_HELP}")
)]
pub struct Args {
    /// The signed cluster policy (its signature is POLICY.sig).
    #[arg(long, default_value = proto::paths::POLICY)]
    pub policy: PathBuf,
    /// The operator public keys the policy must be signed by, one base64 key a line.
    #[arg(long, default_value = proto::paths::TRUST)]
    pub trust: PathBuf,
    /// This node's WireGuard private key (mode 0600).
    #[arg(long, default_value = proto::paths::NODE_KEY)]
    pub key: PathBuf,
    /// Anti-rollback state: the last accepted serial and digest.
    #[arg(long, default_value = proto::paths::NETGUARD_STATE)]
    pub state: PathBuf,
    /// Refuse policies with a lower serial (for nodes that keep no state across boots).
    #[arg(long, default_value_t = 0)]
    pub min_serial: u64,
    /// Override the policy's interface name.
    #[arg(long)]
    pub interface: Option<String>,
    /// kernel or userspace (default: kernel if the module is there).
    #[arg(long, value_parser = parse_backend)]
    pub backend: Option<Kind>,
    /// How often to check for and repair drift, e.g. "5s".
    #[arg(long, default_value = "5s", value_parser = policy::model::duration::parse)]
    pub drift: Duration,
    /// clusterd's quarantine list (nodes that keep their tunnel but not the services).
    #[arg(long, default_value = proto::paths::QUARANTINE)]
    pub quarantine: PathBuf,
    /// Write Prometheus metrics here after every pass (for node_exporter's textfile
    /// collector, e.g. /var/lib/prometheus/node-exporter/netguard.prom).
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

/// A `--backend` that is neither.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected kernel or userspace")]
pub struct BackendError;

pub fn parse_backend(s: &str) -> Result<Kind, BackendError> {
    match s {
        "kernel" | "userspace" => Ok(Kind::detect(Some(s))),
        _ => Err(BackendError),
    }
}
