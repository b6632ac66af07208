//! The daemon's loop: grace period, writer scan, baseline, then verification on every event
//! and in full every interval, until an authorised stop.
//!
//! Signals: SIGTERM, SIGINT and SIGHUP are integrity events (someone is trying to stop the
//! guard) unless `signals_are_violations` is off, in which case they stop the daemon cleanly.
//! The only other clean stop is a signed `stop` request on the control socket.
//!
//! Here: the configuration and the loop; the baseline and the verifications in `verify`;
//! signals, control requests and maintenance windows in `requests`.

mod requests;
mod verify;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use policy::TrustedKeys;
use tokio::sync::mpsc;
use tracing::info;

use crate::action::Actuator;
use crate::control::{self, Command, Status};
use crate::manifest::Manifest;
use crate::mounts::Mount;
use crate::protect::Heartbeat;
use crate::walk::RootError;
use crate::watch::{WatchError, WatchEvent, Watchers};

/// What is monitored: a directory tree, or a RAM block device as CHAOS did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Tree,
    Device(PathBuf),
}

#[derive(Debug)]
pub struct Config {
    pub root: PathBuf,
    pub source: Source,
    pub interval: Duration,
    pub grace: Duration,
    /// A verification still running after this long is a loss of certainty. `None`: five
    /// intervals or four baseline durations, whichever is longer.
    pub deadline: Option<Duration>,
    pub actuator: Actuator,
    pub maintenance_keys: TrustedKeys,
    pub max_maintenance: Duration,
    /// Pinned Merkle root (hex), from the policy or `certainty.expect=` on the kernel command line.
    pub expected_root: Option<String>,
    pub cluster: String,
    pub node: String,
    pub signals_are_violations: bool,
    /// Re-hash each file's content every this many verifications (see `walk::Reuse`).
    pub content_every: u32,
    pub socket: Option<PathBuf>,
    pub heartbeat: Heartbeat,
    /// Prometheus metrics rewritten here (a node_exporter textfile) on another filesystem
    /// than the root.
    pub metrics_file: Option<PathBuf>,
}

/// How the daemon ended, when it did not reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Authorised stop (signed request, or a signal when signals are not violations).
    Stopped,
    /// Integrity was lost and the action did not reboot (dry run, or reboot failed).
    IntegrityLost,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Root(#[from] RootError),
    #[error("baseline: {count} entries unreadable: {first}")]
    Unreadable { count: usize, first: String },
    #[error("{0}")]
    Watch(#[from] WatchError),
    #[error("/proc/self/mountinfo: {0}")]
    Mounts(std::io::Error),
    /// Without the kernel command line, a `certainty.expect=` there cannot be honoured.
    #[error("/proc/cmdline: {0}")]
    Cmdline(std::io::Error),
    #[error("{}: cannot bind control socket: {source}", path.display())]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// A maintenance window in force.
#[derive(Debug)]
struct Window {
    until: tokio::time::Instant,
    until_wall: Timestamp,
    rebaseline: bool,
    signer: String,
}

enum Flow {
    Continue,
    Exit(Exit),
}

struct Daemon {
    cfg: Config,
    /// Shared with the verifier thread, which reuses unchanged files' hashes from it.
    baseline: Arc<Manifest>,
    baseline_root: String,
    /// The boot-stable root of the baseline, compared with `expected_root`.
    stable_root: String,
    mounts: Vec<Mount>,
    watchers: Option<Watchers>,
    events_tx: mpsc::UnboundedSender<WatchEvent>,
    status: Arc<Mutex<Status>>,
    window: Option<Window>,
    nonces: HashSet<String>,
    deadline: Duration,
    /// Full verifications done since the baseline: picks whose content is re-hashed.
    pass: u64,
    /// The monitored filesystem's device, for the writer scan.
    dev: u64,
    /// The baseline's regular files by inode: what the writer scan matches against.
    tree_inodes: HashMap<u64, String>,
    /// With `--metrics-file`: what is measured, and where it is written.
    metrics: Option<crate::metrics::Exporter>,
}

impl Daemon {
    /// Rewrites the metrics file from the status.
    fn write_metrics(&mut self) {
        let Some(exporter) = &mut self.metrics else {
            return;
        };
        let text = match self.status.lock() {
            Ok(s) => exporter.metrics.render(&s),
            Err(_) => return,
        };
        exporter.write(&text);
    }
}

fn now_text() -> String {
    Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .unwrap_or(Timestamp::now())
        .to_string()
}

/// Runs the daemon until an authorised stop or a loss of integrity that does not reboot.
/// Runs until a signed stop, or a signal on `signals` (`main` installs them:
/// `signals::install`) when signals are not violations.
pub async fn run(cfg: Config, mut signals: signals::Signals) -> Result<Exit, StartupError> {
    let status = Arc::new(Mutex::new(Status {
        state: crate::control::State::Grace,
        cluster: cfg.cluster.clone(),
        node: cfg.node.clone(),
        root: cfg.root.display().to_string(),
        action: cfg.actuator.action.to_string(),
        ..Status::default()
    }));
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(8);
    if let Some(path) = &cfg.socket {
        let listener = control::bind(path).map_err(|source| StartupError::Socket {
            path: path.clone(),
            source,
        })?;
        tokio::spawn(control::serve(
            listener,
            Arc::clone(&status),
            cmd_tx.clone(),
        ));
    }
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let metrics = cfg.metrics_file.clone().map(crate::metrics::Exporter::new);
    let mut d = Daemon {
        cfg,
        baseline: Arc::new(Manifest::default()),
        baseline_root: String::new(),
        stable_root: String::new(),
        mounts: Vec::new(),
        watchers: None,
        events_tx,
        status,
        window: None,
        nonces: HashSet::new(),
        deadline: Duration::ZERO,
        pass: 0,
        dev: 0,
        tree_inodes: HashMap::new(),
        metrics,
    };
    d.write_metrics();

    info!(grace = %policy::model::duration::format(&d.cfg.grace), root = %d.cfg.root.display(), "grace period before baseline");
    let grace = tokio::time::sleep(d.cfg.grace);
    tokio::pin!(grace);
    loop {
        d.cfg.heartbeat.beat();
        tokio::select! {
            () = &mut grace => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            Some(cmd) = cmd_rx.recv() => {
                if let Flow::Exit(e) = d.command(cmd).await { return Ok(e); }
            }
            Some(s) = signals.recv() => if let Flow::Exit(e) = d.signal(s.name()).await { return Ok(e); },
        }
    }

    if let Flow::Exit(e) = d.establish().await? {
        return Ok(e);
    }

    let mut tick = tokio::time::interval(d.cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let window_end = d.window.as_ref().map(|w| w.until);
        let flow = tokio::select! {
            _ = tick.tick() => d.full_verification().await,
            ev = events_rx.recv() => d.event(ev, &mut events_rx).await,
            Some(cmd) = cmd_rx.recv() => d.command(cmd).await,
            () = sleep_until_opt(window_end) => d.end_window().await?,
            Some(s) = signals.recv() => d.signal(s.name()).await,
        };
        if let Flow::Exit(e) = flow {
            return Ok(e);
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
