//! clusterd: passes the signed policy between members, spreads each node's own heartbeat,
//! and quarantines nodes that lost integrity (netguard enforces the list).
//!
//! Signals: SIGTERM and SIGINT stop it; the quarantine list it wrote stays in force.
//! Exit codes: the shared set (`policy::exit`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clusterd::cli::Args;
use clusterd::daemon::{self, Config, StartupError};
use clusterd::probe::Sources;
use policy::exit::Exit;
use tracing::error;

fn main() -> ExitCode {
    let args = Args::parse();
    logsetup::init("CLUSTERD_LOG", args.log_json);
    for dir in [
        args.state.parent(),
        args.quarantine.parent(),
        args.view.parent(),
    ]
    .into_iter()
    .flatten()
    {
        let _ = std::fs::create_dir_all(dir);
    }
    let cfg = Config {
        policy: args.policy,
        trust: args.trust,
        key: args.key,
        state: args.state,
        min_serial: args.min_serial,
        sources: Sources {
            certainty_socket: args.certainty_socket.path().map(PathBuf::from),
            boot_id: args.boot_id,
            proc_root: PathBuf::from("/proc"),
        },
        quarantine: args.quarantine,
        view: args.view,
        tpm: args.tpm.path().map(PathBuf::from),
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
    match rt.block_on(async {
        let signals = signals::install()?;
        daemon::run(cfg, signals).await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(reason = %e, "refusing to start");
            match e {
                StartupError::Key(_) => Exit::KeyFile,
                StartupError::Store(e) => (&e).into(),
                StartupError::Io(_) => Exit::Runtime,
            }
            .into()
        }
    }
}
