//! netguard's loop: reconcile on start, when the policy directory changes (atomic renames
//! included), on SIGHUP, every drift interval, and at the instant a node (or the policy)
//! expires. SIGTERM and SIGINT stop it; the firewall table and the tunnels stay in place (only
//! an operator removes them), so stopping never opens anything, and a restart adopts them.
//!
//! Fail closed: a policy that is missing, unverifiable, expired or rolled back is refused and
//! the last verified state stays in force (across a restart too: a copy of it is kept beside
//! the rollback state); with none, the protective ruleset (no service ports, no peers) is
//! installed. A policy in force that reaches its own `expires` opens nothing any more.
//!
//! Here: the configuration, the event loop and the file watch; the node's state and its
//! reactions in `node`; what it logs in `report`.

mod node;
mod report;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::mpsc;
use tracing::{info, warn};
use wireguard_control::Key;

use crate::wg::Kind;
pub use node::Node;

#[derive(Debug, Clone)]
pub struct Config {
    pub policy: PathBuf,
    pub trust: PathBuf,
    /// This node's WireGuard private key (base64, mode 0600).
    pub key: PathBuf,
    /// Where the last accepted serial is kept (anti-rollback); the copy of the policy in
    /// force is kept beside it.
    pub state: PathBuf,
    /// Serial floor from the boot media, for nodes that keep no state.
    pub min_serial: u64,
    /// Overrides the policy's interface name (several nodes on one test host).
    pub interface: Option<String>,
    /// Forced backend; detected when absent.
    pub backend: Option<Kind>,
    pub drift: Duration,
    /// clusterd's quarantine list: these nodes keep their tunnels but not the services.
    pub quarantine: PathBuf,
    /// Prometheus metrics rewritten here after every pass (a node_exporter textfile).
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Store(#[from] policy::StoreError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// `--metrics-file` names a file netguard reads or keeps: writing it would destroy it.
    #[error("--metrics-file {0} is netguard's {1}: it would be overwritten")]
    MetricsFile(PathBuf, &'static str),
}

/// What prompted a reconciliation pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Start,
    PolicyChange,
    Sighup,
    /// The drift timer: everything is read back, nothing taken on trust.
    DriftCheck,
    /// A node, or the policy in force, reached its `expires`.
    Expiry,
    /// clusterd changed the quarantine list.
    Quarantine,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::Start => "start",
            Trigger::PolicyChange => "policy change",
            Trigger::Sighup => "SIGHUP",
            Trigger::DriftCheck => "drift check",
            Trigger::Expiry => "expiry",
            Trigger::Quarantine => "quarantine",
        })
    }
}

/// What one accepted policy change cost, step by step: logged at debug level, and printed by
/// the convergence benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeTimes {
    /// Reading and verifying the files, and recording the policy in the rollback store.
    pub load: Duration,
    /// Adopting it: this node's desired state.
    pub adopt: Duration,
    /// The pass: plan and apply, until the kernel holds the new state.
    pub pass: Duration,
    /// After convergence: the node-map log, the copy in force, the metrics file.
    pub after: Duration,
}

impl ChangeTimes {
    /// From the files in place to the kernel holding the new state.
    pub fn converged(&self) -> Duration {
        self.load + self.adopt + self.pass
    }
}

fn load_key(path: &std::path::Path) -> Result<Key, StartupError> {
    let secret = policy::keys::read_secret_key(path, policy::keys::KeyKind::NodeSecret)
        .map_err(|e| StartupError::Key(e.to_string()))?;
    Ok(Key(*secret))
}

/// What a watched file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Policy,
    Quarantine,
}

/// Watches the directories of the policy (its signature, the masters' memberships) and of
/// the quarantine list; a change to one of them (written in place, created, renamed over,
/// deleted) is reported.
fn watch_files(cfg: &Config, tx: mpsc::UnboundedSender<Watched>) -> std::io::Result<()> {
    let [policy, signature] = policy::watch::policy_files(&cfg.policy, Watched::Policy);
    let files = [
        policy,
        signature,
        policy::watch::membership_files(&cfg.policy, Watched::Policy),
        (cfg.quarantine.clone(), Watched::Quarantine),
    ];
    policy::watch::watch_files(&files, move |what| tx.send(what).is_ok())
}

/// A tokio instant for a wall-clock timestamp (now, if it has passed).
fn instant_of(t: Timestamp) -> tokio::time::Instant {
    let wait = Timestamp::now()
        .duration_until(t)
        .try_into()
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + wait
}

/// `--metrics-file` must not name a file netguard reads or keeps.
fn check_metrics_file(cfg: &Config) -> Result<(), StartupError> {
    if let Some(metrics) = &cfg.metrics_file {
        let in_force = policy::load::in_force_path(&cfg.state);
        let own = [
            (cfg.policy.clone(), "policy"),
            (policy::signature_path(&cfg.policy), "policy signature"),
            (cfg.trust.clone(), "trusted keys"),
            (cfg.key.clone(), "key"),
            (cfg.state.clone(), "rollback state"),
            (policy::signature_path(&in_force), "copy in force"),
            (in_force, "copy in force"),
            (cfg.quarantine.clone(), "quarantine list"),
        ];
        if let Some((_, what)) = own
            .iter()
            .find(|(p, _)| policy::fsutil::same_location(metrics, p))
        {
            return Err(StartupError::MetricsFile(metrics.clone(), what));
        }
    }
    Ok(())
}

/// Runs until SIGTERM or SIGINT arrives on `signals` (`main` installs them:
/// `signals::install`); SIGHUP re-reads the policy and reconciles.
pub async fn run(cfg: Config, mut signals: signals::Signals) -> Result<(), StartupError> {
    check_metrics_file(&cfg)?;
    // Watched before the first load, so a change while starting is not missed.
    let (tx, mut changed) = mpsc::unbounded_channel();
    if let Err(e) = watch_files(&cfg, tx) {
        warn!(reason = %e, "cannot watch the policy directory; relying on SIGHUP and the drift timer");
    }
    let mut node = Node::start(cfg)?;
    let mut drift = tokio::time::interval(node.cfg.drift);
    drift.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    drift.tick().await;
    // The policy and its signature are written one after the other: a pair that does not
    // verify right after a change is checked again a moment later before it is an error.
    let mut recheck: Option<tokio::time::Instant> = None;
    loop {
        let recheck_at = recheck;
        let expiry = node.next_expiry();
        tokio::select! {
            Some(what) = changed.recv() => {
                let mut policy_changed = what == Watched::Policy;
                let mut quarantine_changed = what == Watched::Quarantine;
                while let Ok(w) = changed.try_recv() {
                    policy_changed |= w == Watched::Policy;
                    quarantine_changed |= w == Watched::Quarantine;
                }
                if quarantine_changed && !policy_changed {
                    node.quarantine_changed();
                } else if quarantine_changed {
                    // The policy's pass below covers the new list too.
                    node.reload_quarantine();
                }
                if policy_changed {
                    recheck = if node.policy_changed().is_some() {
                        None
                    } else {
                        Some(tokio::time::Instant::now() + Duration::from_secs(1))
                    };
                }
            }
            () = async { match recheck_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                recheck = None;
                node.reload_quietly(false);
                node.reconcile(Trigger::PolicyChange);
            }
            () = async { match expiry { Some(t) => tokio::time::sleep_until(instant_of(t)).await, None => std::future::pending().await } } => {
                node.expire(Timestamp::now());
                node.reconcile(Trigger::Expiry);
            }
            signal = signals.recv() => match signal {
                Some(signals::Signal::Hangup) => {
                    node.reload_quietly(false);
                    node.reconcile(Trigger::Sighup);
                }
                // SIGTERM, SIGINT, or no one left to send any: stop.
                Some(signals::Signal::Terminate | signals::Signal::Interrupt) | None => break,
            },
            _ = drift.tick() => {
                // The drift timer also re-reads the policy: a missed inotify event costs one
                // interval. The mode is derived again too, in case the clock jumped past an
                // expiry.
                node.reload_quietly(false);
                node.reload_quarantine();
                node.derive_mode(Timestamp::now());
                node.reconcile(Trigger::DriftCheck);
            }
        }
    }
    info!("stopping; the firewall table and the tunnels stay in place");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_read_as_words() {
        assert_eq!(Trigger::DriftCheck.to_string(), "drift check");
        assert_eq!(Trigger::Expiry.to_string(), "expiry");
    }
}
