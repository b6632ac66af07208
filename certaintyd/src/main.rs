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
use certaintyd::cli::Args;
use certaintyd::daemon::{self, Config, Source};
use certaintyd::protect::{Heartbeat, Watchdog, harden};
use clap::Parser;
use policy::exit::Exit;
use policy::{Action, TrustedKeys};
use tracing::{error, info, warn};

fn init_logging(json: bool) {
    logsetup::init("CERTAINTYD_LOG", json);
}

/// Why certaintyd will not start, with its exit code.
struct Refused(Exit, String);

fn configure(args: &Args) -> Result<(Config, Option<PathBuf>), Refused> {
    let paths = policy::PolicyPaths::new(&args.policy, &args.trust, &args.state);
    let mut in_force = policy::PolicyInForce::open(paths, args.min_serial)
        .map_err(|e| Refused((&e).into(), e.to_string()))?;
    let verified = in_force
        .load_now(jiff::Timestamp::now())
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
    // Opened now: a violation runs this file, not whatever the path names by then.
    let exec = exec
        .map(|p| {
            certaintyd::action::Hook::open(&p)
                .map_err(|e| Refused(Exit::Refused, format!("exec hook {}: {e}", p.display())))
        })
        .transpose()?;
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
            ratchet: args
                .tpm
                .as_ref()
                .filter(|p| p.exists())
                .map(|p| certaintyd::action::Ratchet::new(p.clone())),
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
        metrics_file: args.metrics_file.clone(),
    };
    if let Some(file) = &args.metrics_file {
        metrics_outside_root(file, &config.root)?;
        if policy::fsutil::same_location(file, &args.socket) {
            return Err(Refused(
                Exit::Refused,
                format!(
                    "--metrics-file {} is certaintyd's control socket: it would be overwritten",
                    file.display()
                ),
            ));
        }
    }
    Ok((config, c.watchdog.clone()))
}

/// The metrics file must not be on the monitored root's filesystem: writing it would be a
/// change to the root.
fn metrics_outside_root(file: &std::path::Path, root: &std::path::Path) -> Result<(), Refused> {
    use std::os::unix::fs::MetadataExt;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let dev = |p: &std::path::Path| {
        std::fs::metadata(p).map(|m| m.dev()).map_err(|e| {
            Refused(
                Exit::Refused,
                format!("--metrics-file: {}: {e}", p.display()),
            )
        })
    };
    if dev(dir)? == dev(root)? {
        return Err(Refused(
            Exit::Refused,
            format!(
                "--metrics-file {} is on the monitored root's filesystem ({}): writing it would be a change; put it under /run",
                file.display(),
                root.display()
            ),
        ));
    }
    Ok(())
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
    if let Err(e) = certaintyd::walk::raise_descriptor_limit() {
        // The walk still reports what it cannot open; it never skips it.
        warn!(reason = %e, "cannot raise the open-descriptor limit");
    }
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
    match runtime.block_on(async {
        let signals = signals::install().map_err(daemon::StartupError::Signals)?;
        daemon::run(config, signals).await
    }) {
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
