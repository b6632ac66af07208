//! certaintyd: watches a RAM-resident root filesystem and reboots the node if it changes.
//!
//! Signals: SIGTERM, SIGINT and SIGHUP are integrity events (the node's action follows)
//! unless `--stop-on-signal` is given. A clean stop is a signed `stop` request on the
//! control socket (`tyd certainty stop`).
//!
//! Exit codes: the shared set (`policy::exit`): 0 stopped on request; 1 runtime failure
//! (unreadable baseline, watchdog); 2 usage; 3 invalid policy; 4 bad signature; 5 refused to
//! start (unsafe action, root not in RAM); 8 integrity lost and the action did not reboot (dry
//! run, alert that could not continue, reboot failure).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use certaintyd::action::{Actuator, check_allowed};
use certaintyd::daemon::{self, Config, Source};
use certaintyd::protect::{Heartbeat, Watchdog, harden};
use clap::Parser;
use policy::exit::{EXIT_CODES_HELP, Exit};
use policy::{Action, TrustedKeys};
use tracing::{error, info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "certaintyd",
    version,
    about,
    after_help = format!("SIGTERM/SIGINT/SIGHUP are integrity events unless --stop-on-signal.\n\n{EXIT_CODES_HELP}")
)]
struct Args {
    /// The signed cluster policy (its signature is POLICY.sig).
    #[arg(long, default_value = "/etc/tyd/cluster.toml")]
    policy: PathBuf,
    /// Trusted operator public keys, one base64 key a line.
    #[arg(long, default_value = "/etc/tyd/operator.pub")]
    trust: PathBuf,
    /// This node's name in the policy (default: the host name).
    #[arg(long)]
    node: Option<String>,
    /// Override the policy's monitored root.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Override the policy's interval, e.g. "500ms".
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
    /// Override the policy's grace period, e.g. "0s" for tests.
    #[arg(long, value_parser = parse_duration)]
    grace: Option<Duration>,
    /// Loss of certainty if a full verification takes longer than this.
    #[arg(long, value_parser = parse_duration)]
    deadline: Option<Duration>,
    /// Override the policy's action: reboot, poweroff, exec or alert.
    #[arg(long, value_parser = parse_action)]
    action: Option<Action>,
    /// Override the policy's exec hook.
    #[arg(long)]
    exec: Option<PathBuf>,
    /// Override the policy's content_every: re-hash file content every N verifications.
    #[arg(long)]
    content_every: Option<u32>,
    /// Do everything except reboot or power off; exit 3 instead.
    #[arg(long)]
    dry_run: bool,
    /// Allow reboot, poweroff and exec although the root is not a RAM filesystem.
    #[arg(long)]
    force_disk_root: bool,
    /// Treat SIGTERM, SIGINT and SIGHUP as a request to stop, not as integrity events.
    #[arg(long)]
    stop_on_signal: bool,
    /// Control socket (root only): status, maintenance windows, authorised stop.
    #[arg(long, default_value = "/run/certaintyd.sock")]
    socket: PathBuf,
    /// Skip mlockall, undumpable and OOM protection (development only).
    #[arg(long)]
    no_harden: bool,
    /// Take one snapshot of --root, print its hashes and coverage as JSON, and exit (no
    /// policy needed). The `stable_root` it prints is what `certainty.expected_root` pins.
    #[arg(long, requires = "root")]
    hash_only: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    policy::model::duration::parse(s)
}

fn parse_action(s: &str) -> Result<Action, String> {
    match s {
        "reboot" => Ok(Action::Reboot),
        "poweroff" => Ok(Action::Poweroff),
        "exec" => Ok(Action::Exec),
        "alert" => Ok(Action::Alert),
        _ => Err(format!("unknown action {s:?}")),
    }
}

fn init_logging(json: bool) {
    logsetup::init("CERTAINTYD_LOG", json);
}

/// Why certaintyd will not start, with its exit code.
struct Refused(Exit, String);

fn configure(args: &Args) -> Result<(Config, Option<PathBuf>), Refused> {
    let verified = policy::load_verified(&args.policy, &args.trust, jiff::Timestamp::now())
        .map_err(|e| Refused((&e).into(), e.to_string()))?;
    let c = &verified.certainty;
    let root = args.root.clone().unwrap_or_else(|| c.root.clone());
    let source = match c.source.strip_prefix("device:") {
        Some(dev) => Source::Device(PathBuf::from(dev)),
        None => Source::Tree,
    };
    let action = args.action.unwrap_or(c.action);
    let exec = args.exec.clone().or_else(|| c.exec.clone());
    if action == Action::Exec && exec.is_none() {
        return Err(Refused(
            Exit::Refused,
            "action exec needs a hook (--exec or certainty.exec)".into(),
        ));
    }
    check_allowed(action, &root, args.dry_run, args.force_disk_root)
        .map_err(|e| Refused(Exit::Refused, e.to_string()))?;
    let node = match &args.node {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let config = Config {
        root,
        source,
        interval: args.interval.unwrap_or(c.interval),
        grace: args.grace.unwrap_or(c.grace),
        deadline: args.deadline,
        actuator: Actuator {
            action,
            exec,
            exec_deadline: c.exec_deadline,
            dry_run: args.dry_run,
        },
        maintenance_keys: TrustedKeys::new(c.maintenance_keys.clone()),
        max_maintenance: c.max_maintenance,
        expected_root: c.expected_root.clone(),
        cluster: verified.cluster.name.clone(),
        node,
        signals_are_violations: !args.stop_on_signal,
        content_every: args.content_every.unwrap_or(c.content_every).max(1),
        socket: Some(args.socket.clone()),
        heartbeat: Heartbeat::new(),
    };
    Ok((config, c.watchdog.clone()))
}

/// `--hash-only`: one full snapshot, timed.
fn hash_only(root: &std::path::Path) -> ExitCode {
    let started = std::time::Instant::now();
    match certaintyd::walk::snapshot(root) {
        Ok(snap) => {
            let took = started.elapsed();
            let m = &snap.manifest;
            let out = serde_json::json!({
                "root": root.display().to_string(),
                "root_hash": m.root_hash().to_hex().to_string(),
                "stable_root": m.stable_root().to_hex().to_string(),
                "entries": m.entries.len(),
                "files": m.files(),
                "bytes": m.bytes(),
                "unreadable": snap.problems.len(),
                "seconds": took.as_secs_f64(),
            });
            println!("{out}");
            if snap.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                Exit::Runtime.into()
            }
        }
        Err(e) => {
            error!(reason = %e, "cannot snapshot");
            Exit::Runtime.into()
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_json);
    if args.hash_only
        && let Some(root) = &args.root
    {
        return hash_only(root);
    }
    let (config, watchdog_dev) = match configure(&args) {
        Ok(c) => c,
        Err(Refused(exit, why)) => {
            error!(reason = %why, "refusing to start");
            return exit.into();
        }
    };
    if !args.no_harden {
        for failure in harden() {
            warn!(what = %failure, "self-protection step failed");
        }
    }
    let watchdog = match &watchdog_dev {
        Some(dev) => {
            let stale = config.interval * 10 + config.grace + Duration::from_secs(30);
            match Watchdog::start(
                dev,
                Duration::from_secs(10),
                config.heartbeat.clone(),
                stale,
            ) {
                Ok(w) => Some(w),
                Err(e) => {
                    error!(reason = %e, "refusing to start");
                    return Exit::Runtime.into();
                }
            }
        }
        None => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!(cause = %e, "cannot start runtime");
            return Exit::Runtime.into();
        }
    };
    info!(
        root = %config.root.display(),
        action = %config.actuator.action,
        dry_run = config.actuator.dry_run,
        interval = %policy::model::duration::format(&config.interval),
        "certaintyd starting"
    );
    match runtime.block_on(daemon::run(config)) {
        Ok(daemon::Exit::Stopped) => {
            if let Some(w) = watchdog {
                w.disarm();
            }
            info!("stopped");
            ExitCode::SUCCESS
        }
        Ok(daemon::Exit::IntegrityLost) => Exit::IntegrityLost.into(),
        Err(e) => {
            error!(reason = %e, "refusing to start");
            Exit::Runtime.into()
        }
    }
}
