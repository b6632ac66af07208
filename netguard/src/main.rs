//! netguard: keeps WireGuard peers and the `inet netguard` nftables table in step with the
//! signed node map.
//!
//! Signals: SIGHUP re-reads the policy and reconciles; SIGTERM and SIGINT stop netguard and
//! leave the firewall table (and tunnels) in place.
//!
//! Exit codes: the shared set (`policy::exit`): 0 stopped by signal, 1 runtime failure,
//! 2 usage, 5 refused to start (rollback state), 6 key file unusable.

use std::process::ExitCode;

use clap::Parser;
use netguard::cli::Args;
use netguard::daemon::{self, Config, StartupError};
use policy::exit::Exit;
use tracing::error;

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
        metrics_file: args.metrics_file,
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
    // The signals first, so that none kills the process once the daemon runs.
    match rt.block_on(async {
        let signals = signals::install().map_err(StartupError::Signals)?;
        daemon::run(cfg, signals).await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(reason = %e, "refusing to start");
            match e {
                StartupError::Key(_) => Exit::KeyFile,
                StartupError::Store(e) => (&e).into(),
                StartupError::Signals(_) => Exit::Runtime,
                StartupError::MetricsFile(..) => Exit::Refused,
            }
            .into()
        }
    }
}
