//! netguard: keeps WireGuard peers and the `inet netguard` nftables table in step with the
//! signed node map.
//!
//! Signals: SIGHUP re-reads the policy and reconciles; SIGTERM and SIGINT stop netguard and
//! leave the firewall table (and tunnels) in place.
//!
//! Exit codes: the shared set (`policy::exit`): 0 stopped by signal, 1 runtime failure,
//! 2 usage, 5 refused to start (rollback state), 6 key file unusable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use netguard::daemon::{self, Config, StartupError};
use netguard::wg::Kind;
use policy::exit::{EXIT_CODES_HELP, Exit};
use tracing::error;

#[derive(Debug, Parser)]
#[command(
    name = "netguard",
    version,
    about,
    after_help = format!("SIGHUP reloads; SIGTERM/SIGINT stop, leaving the firewall and tunnels in place.\n\n{EXIT_CODES_HELP}")
)]
struct Args {
    #[arg(long, default_value = "/etc/tyd/cluster.toml")]
    policy: PathBuf,
    #[arg(long, default_value = "/etc/tyd/operator.pub")]
    trust: PathBuf,
    /// This node's WireGuard private key (mode 0600).
    #[arg(long, default_value = "/etc/tyd/node.key")]
    key: PathBuf,
    /// Anti-rollback state: the last accepted serial and digest.
    #[arg(long, default_value = "/var/lib/tyd/accepted.json")]
    state: PathBuf,
    /// Refuse policies with a lower serial (for nodes that keep no state across boots).
    #[arg(long, default_value_t = 0)]
    min_serial: u64,
    /// Override the policy's interface name.
    #[arg(long)]
    interface: Option<String>,
    /// kernel or userspace (default: kernel if the module is there).
    #[arg(long, value_parser = parse_backend)]
    backend: Option<Kind>,
    /// How often to check for and repair drift, e.g. "5s".
    #[arg(long, default_value = "5s", value_parser = policy::model::duration::parse)]
    drift: Duration,
    /// clusterd's quarantine list (nodes that keep their tunnel but not the services).
    #[arg(long, default_value = "/run/tyd/quarantine.json")]
    quarantine: PathBuf,
    #[arg(long)]
    log_json: bool,
}

fn parse_backend(s: &str) -> Result<Kind, String> {
    match s {
        "kernel" | "userspace" => Ok(Kind::detect(Some(s))),
        _ => Err("expected kernel or userspace".into()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    logsetup::init("NETGUARD_LOG", args.log_json);
    if let Some(dir) = args.state.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let cfg = Config {
        policy: args.policy,
        trust: args.trust,
        key: args.key,
        state: args.state,
        min_serial: args.min_serial,
        interface: args.interface,
        backend: args.backend,
        drift: args.drift,
        quarantine: args.quarantine,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(cause = %e, "cannot start runtime");
            return Exit::Runtime.into();
        }
    };
    match rt.block_on(daemon::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(reason = %e, "refusing to start");
            match e {
                StartupError::Key(_) => Exit::KeyFile,
                StartupError::Store(e) => (&e).into(),
                StartupError::Signals(_) => Exit::Runtime,
            }
            .into()
        }
    }
}
