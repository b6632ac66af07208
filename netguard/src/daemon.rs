//! netguard's loop: reconcile on start, when the policy directory changes (atomic renames
//! included), on SIGHUP, and every drift interval. SIGTERM and SIGINT stop it; the firewall
//! table stays in place (only an operator removes it), so stopping never opens anything.
//!
//! Fail closed: a policy that is missing, unverifiable, expired or rolled back is refused and
//! the last verified state stays in force; with none, the protective ruleset (no service
//! ports, no peers) is installed.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use policy::{NodeMap, NodeMapDiff, Policy, RollbackStore, Verified, WgPublicKey};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use wireguard_control::{DeviceUpdate, Key};

use crate::desired::{Desired, desired};
use crate::reconcile::{reconcile, sync_ruleset};
use crate::ruleset::RulesetSpec;
use crate::wg::{Interface, Kind};

#[derive(Debug, Clone)]
pub struct Config {
    pub policy: PathBuf,
    pub trust: PathBuf,
    /// This node's WireGuard private key (base64, mode 0600).
    pub key: PathBuf,
    /// Where the last accepted serial is kept (anti-rollback).
    pub state: PathBuf,
    /// Serial floor from the boot media, for nodes that keep no state.
    pub min_serial: u64,
    /// Overrides the policy's interface name (several nodes on one test host).
    pub interface: Option<String>,
    /// "kernel" or "userspace"; detected when absent.
    pub backend: Option<String>,
    pub drift: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Store(#[from] policy::StoreError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

enum Mode {
    /// No verified policy yet, or this node is not in it.
    Protective,
    Member(Box<Desired>),
}

struct Node {
    cfg: Config,
    private: Key,
    public: WgPublicKey,
    store: RollbackStore,
    policy: Option<Verified<Policy>>,
    mode: Mode,
    kind: Kind,
    iface: Option<Interface>,
    /// What the last successful pass converged to: lets a policy change edit the sets
    /// without reading the table back first.
    converged: Option<Box<Desired>>,
}

fn load_key(path: &std::path::Path) -> Result<Key, StartupError> {
    let text = policy::fsutil::read_secret(path).map_err(|e| StartupError::Key(e.to_string()))?;
    let bytes = policy::keys::decode_key32(&text)
        .map_err(|e| StartupError::Key(format!("{}: {e}", path.display())))?;
    Ok(Key(bytes))
}

impl Node {
    fn load(&mut self) -> Result<Verified<Policy>, String> {
        let now = Timestamp::now();
        let v = policy::load_verified(&self.cfg.policy, &self.cfg.trust, now)
            .map_err(|e| e.to_string())?;
        self.store.accept(&v, now).map_err(|e| e.to_string())?;
        Ok(v)
    }

    /// Loads the policy; on any refusal the state in force stays as it is. With `quiet`, a
    /// refusal is only logged at debug level (the signature may still be on its way) and
    /// `false` is returned so the caller can check again shortly.
    fn reload_quietly(&mut self, quiet: bool) -> bool {
        let v = match self.load() {
            Ok(v) => v,
            Err(reason) => {
                let serial = self.policy.as_ref().map(|p| p.cluster.serial);
                if quiet {
                    tracing::debug!(reason = %reason, "policy not (yet) acceptable; checking again shortly");
                } else {
                    error!(reason = %reason, in_force = ?serial, "policy refused; the last verified state stays in force");
                }
                return false;
            }
        };
        if let Some(old) = &self.policy {
            if old.digest_hex() == v.digest_hex() {
                return true;
            }
            let diff = NodeMapDiff::new(&NodeMap::from(&**old), &NodeMap::from(&*v));
            for line in diff.to_string().lines() {
                info!(change = %line, serial = v.cluster.serial, "node map change");
            }
        }
        info!(cluster = %v.cluster.name, serial = v.cluster.serial, nodes = v.nodes.len(), signer = %v.signer().key_id(), "policy accepted");
        self.mode = match desired(&v, &self.public, self.cfg.interface.as_deref()) {
            Ok(d) => Mode::Member(Box::new(d)),
            Err(e) => {
                error!(reason = %e, "not a member: dropping all peers, protective ruleset");
                Mode::Protective
            }
        };
        self.policy = Some(v);
        true
    }

    fn reload(&mut self) {
        self.reload_quietly(false);
    }

    /// One pass; `why` says what prompted it (a drift check logs what it had to repair).
    fn reconcile(&mut self, why: &str) {
        let result = match &self.mode {
            Mode::Protective => self.protective(),
            Mode::Member(d) => {
                if self.iface.as_ref().is_none_or(|i| i.name != d.interface) {
                    match Interface::new(&d.interface, self.kind.clone()) {
                        Ok(i) => self.iface = Some(i),
                        Err(e) => {
                            error!(reason = %e, "cannot manage interface");
                            return;
                        }
                    }
                }
                let Some(iface) = self.iface.as_mut() else {
                    return;
                };
                // Drift checks always read everything back; policy changes may trust the past.
                let previous = if why == "drift check" {
                    None
                } else {
                    self.converged.as_deref()
                };
                let r = reconcile(iface, &self.private, d, previous).map_err(|e| e.to_string());
                self.converged = r.as_ref().ok().map(|_| d.clone());
                r
            }
        };
        match result {
            Ok(changes) if changes.is_empty() => {}
            Ok(changes) if why == "drift check" => {
                warn!(changes = %changes.join("; "), "drift found and repaired")
            }
            Ok(changes) => info!(trigger = why, changes = %changes.join("; "), "reconciled"),
            Err(reason) => error!(trigger = why, reason = %reason, "reconcile failed; will retry"),
        }
    }

    fn protective(&mut self) -> Result<Vec<String>, String> {
        let mut changes = sync_ruleset(&RulesetSpec::protective()).map_err(|e| e.to_string())?;
        if let Some(iface) = &self.iface
            && let Ok(dev) = iface.read()
            && !dev.peers.is_empty()
        {
            let mut u = DeviceUpdate::new();
            for p in &dev.peers {
                u = u.remove_peer_by_key(&p.config.public_key);
            }
            iface.apply(u).map_err(|e| e.to_string())?;
            changes.push(format!("{} peers removed", dev.peers.len()));
        }
        Ok(changes)
    }
}

/// Watches the policy's directory; a change to the policy or its signature (written in place,
/// created, renamed over, deleted) is reported.
fn watch_policy(cfg: &Config, tx: mpsc::UnboundedSender<()>) -> std::io::Result<()> {
    use inotify::{Inotify, WatchMask};
    let dir = cfg
        .policy
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let names: Vec<Vec<u8>> = [cfg.policy.clone(), policy::signature_path(&cfg.policy)]
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.as_bytes().to_vec()))
        .collect();
    let mut inotify = Inotify::init()?;
    inotify.watches().add(
        &dir,
        WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::DELETE,
    )?;
    std::thread::Builder::new()
        .name("policy-watch".into())
        .spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok(events) = inotify.read_events_blocking(&mut buf) else {
                    return;
                };
                let relevant = events.into_iter().any(|e| {
                    e.name
                        .is_some_and(|n| names.iter().any(|x| x.as_slice() == n.as_bytes()))
                });
                if relevant && tx.send(()).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

pub async fn run(cfg: Config) -> Result<(), StartupError> {
    let private = load_key(&cfg.key)?;
    let public = WgPublicKey::from_bytes(private.get_public().0);
    let store = RollbackStore::open(&cfg.state, cfg.min_serial)?;
    let kind = Kind::detect(cfg.backend.as_deref());
    let mut sigterm = signal(SignalKind::terminate()).map_err(StartupError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(StartupError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(StartupError::Signals)?;
    info!(public_key = %public, backend = ?kind, "netguard starting");
    let (tx, mut changed) = mpsc::unbounded_channel();
    if let Err(e) = watch_policy(&cfg, tx) {
        warn!(reason = %e, "cannot watch the policy directory; relying on SIGHUP and the drift timer");
    }
    let mut node = Node {
        cfg,
        private,
        public,
        store,
        policy: None,
        mode: Mode::Protective,
        kind,
        iface: None,
        converged: None,
    };
    node.reload();
    node.reconcile("start");
    let mut drift = tokio::time::interval(node.cfg.drift);
    drift.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    drift.tick().await;
    // The policy and its signature are written one after the other: a pair that does not
    // verify right after a change is checked again a moment later before it is an error.
    let mut recheck: Option<tokio::time::Instant> = None;
    loop {
        let recheck_at = recheck;
        tokio::select! {
            Some(()) = changed.recv() => {
                while changed.try_recv().is_ok() {}
                if node.reload_quietly(true) {
                    recheck = None;
                    node.reconcile("policy change");
                } else {
                    recheck = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            }
            () = async { match recheck_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                recheck = None;
                node.reload();
                node.reconcile("policy change");
            }
            _ = sighup.recv() => {
                node.reload();
                node.reconcile("SIGHUP");
            }
            _ = drift.tick() => {
                // The drift timer also re-reads the policy: a missed inotify event costs one interval.
                node.reload();
                node.reconcile("drift check");
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!("stopping; the firewall table stays in place");
    Ok(())
}
