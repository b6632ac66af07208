//! clusterd: passes the signed policy between members, spreads each node's own heartbeat,
//! and quarantines nodes that lost integrity (netguard enforces the list).
//!
//! Signals: SIGTERM and SIGINT stop it; the quarantine list it wrote stays in force.
//! Exit codes: the shared set (`policy::exit`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clusterd::daemon::{self, Config, StartupError};
use clusterd::probe::Sources;
use policy::exit::{EXIT_CODES_HELP, Exit};
use tracing::error;

#[derive(Debug, Parser)]
#[command(
    name = "clusterd",
    version,
    about,
    after_help = format!("SIGTERM/SIGINT stop; the quarantine list stays in force.\n\n{EXIT_CODES_HELP}")
)]
struct Args {
    /// The policy netguard and certaintyd read; a newer one fetched from a peer is written here.
    #[arg(long, default_value = "/etc/tyd/cluster.toml")]
    policy: PathBuf,
    #[arg(long, default_value = "/etc/tyd/operator.pub")]
    trust: PathBuf,
    /// This node's WireGuard private key (mode 0600): who this node is in the map.
    #[arg(long, default_value = "/etc/tyd/node.key")]
    key: PathBuf,
    /// clusterd's own anti-rollback state.
    #[arg(long, default_value = "/var/lib/tyd/clusterd.json")]
    state: PathBuf,
    /// Refuse policies with a lower serial (for nodes that keep no state across boots).
    #[arg(long, default_value_t = 0)]
    min_serial: u64,
    /// certaintyd's control socket; "none" when this node runs no certaintyd.
    #[arg(long, default_value = "/run/certaintyd.sock")]
    certainty_socket: String,
    #[arg(long, default_value = "/proc/sys/kernel/random/boot_id")]
    boot_id: PathBuf,
    /// Where the quarantine list for netguard is written.
    #[arg(long, default_value = "/run/tyd/quarantine.json")]
    quarantine: PathBuf,
    /// Where the cluster view for `tyd status --cluster` is written.
    #[arg(long, default_value = "/run/tyd/cluster-status.json")]
    view: PathBuf,
    #[arg(long)]
    log_json: bool,
}

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
            certainty_socket: (args.certainty_socket != "none")
                .then(|| PathBuf::from(&args.certainty_socket)),
            boot_id: args.boot_id,
            proc_root: PathBuf::from("/proc"),
        },
        quarantine: args.quarantine,
        view: args.view,
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
                StartupError::Io(_) => Exit::Runtime,
            }
            .into()
        }
    }
}
