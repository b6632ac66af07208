//! netguard's loop: reconcile on start, when the policy directory changes (atomic renames
//! included), on SIGHUP, every drift interval, and at the instant a node (or the policy)
//! expires. SIGTERM and SIGINT stop it; the firewall table and the tunnels stay in place (only
//! an operator removes them), so stopping never opens anything, and a restart adopts them.
//!
//! Fail closed: a policy that is missing, unverifiable, expired or rolled back is refused and
//! the last verified state stays in force (across a restart too: a copy of it is kept beside
//! the rollback state); with none, the protective ruleset (no service ports, no peers) is
//! installed. A policy in force that reaches its own `expires` opens nothing any more.

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use policy::{NodeMap, NodeMapDiff, Policy, RollbackStore, SignedFiles, Verified, WgPublicKey};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use wireguard_control::{DeviceUpdate, Key};

use crate::desired::{Desired, desired};
use crate::nfnl::SetEditor;
use crate::reconcile::{reconcile, sync_ruleset};
use crate::ruleset::RulesetSpec;
use crate::wg::{Interface, Kind};

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
enum Trigger {
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

enum Mode {
    /// No verified policy yet, this node is not (or no longer) in it, or it expired.
    Protective,
    /// Shared with `converged` after a pass, not copied (10,000 peers take milliseconds).
    Member(Arc<Desired>),
}

/// The daemon's state and how it reacts to each event, without the event loop: [`run`] drives
/// it, and so does the convergence benchmark (`examples/converge.rs`), so what is measured is
/// what runs.
pub struct Node {
    cfg: Config,
    private: Key,
    public: WgPublicKey,
    store: RollbackStore,
    policy: Option<Verified<Policy>>,
    mode: Mode,
    kind: Kind,
    iface: Option<Interface>,
    /// What the last successful pass converged to: lets a policy change edit the sets
    /// without reading the table back first. Only ever a member's state.
    converged: Option<Arc<Desired>>,
    /// Set-element edits over a netlink socket kept open.
    sets: SetEditor,
    /// The `[[node]]` blocks of the last policy verified, so the next is parsed by its
    /// changed blocks only.
    blocks: policy::NodeBlocks,
    /// The last refusal logged, so a file refused every drift interval is logged once, and
    /// again only when the reason changes or clears.
    refusal: Option<String>,
    /// Why this node is protective, as last logged (same idea).
    protective_reason: Option<String>,
    /// The nodes clusterd has quarantined: no services for them here.
    quarantined: std::collections::BTreeSet<policy::NodeId>,
    /// With `--metrics-file`: what is measured, and where it is written.
    metrics: Option<crate::metrics::Exporter>,
    /// How long the last load (read, verify, rollback store) took.
    last_load: Duration,
    /// What adopting a policy leaves until its pass is done.
    adopted: Option<Adopted>,
    /// The state the last pass replaced, dropped after it.
    retired: Option<Arc<Desired>>,
    /// This node's desired state before the quarantine, and the instant it was derived for:
    /// a quarantine change applies the new list to it instead of deriving it again.
    unquarantined: Option<(Arc<Desired>, Timestamp)>,
}

/// What adopting a policy leaves for after its pass, so that neither delays convergence: the
/// node-map log (against the policy before), the copy in force (two synced writes of the
/// whole policy), and dropping the policy before.
struct Adopted {
    previous: Option<Verified<Policy>>,
    policy: Vec<u8>,
    signature: Vec<u8>,
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

/// How many per-node lines a node-map change logs at info level; a larger change logs one
/// summary line (the details go to debug).
const DETAILED_CHANGES: usize = 8;

impl Node {
    fn load(&mut self, path: &std::path::Path) -> Result<SignedFiles, String> {
        let started = Instant::now();
        let now = Timestamp::now();
        let files = policy::load_signed_reusing(path, &self.cfg.trust, now, &mut self.blocks)
            .map_err(|e| e.to_string())?;
        self.store
            .accept(&files.verified, now)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.last_load = started.elapsed();
        Ok(files)
    }

    /// Loads the policy; on any refusal the state in force stays as it is. With `quiet`, a
    /// refusal is only logged at debug level (the signature may still be on its way) and
    /// `false` is returned so the caller can check again shortly. Returns whether the policy
    /// on disk is the one in force.
    fn reload_quietly(&mut self, quiet: bool) -> bool {
        let path = self.cfg.policy.clone();
        let files = match self.load(&path) {
            Ok(f) => f,
            Err(reason) => {
                if quiet {
                    debug!(reason = %reason, "policy not (yet) acceptable; checking again shortly");
                } else {
                    self.refused(reason);
                }
                return false;
            }
        };
        if self.refusal.take().is_some() {
            info!(
                serial = files.verified.cluster.serial,
                "policy file acceptable again"
            );
        }
        self.adopt(files);
        true
    }

    /// Logs a refusal once per distinct reason.
    fn refused(&mut self, reason: String) {
        if self.refusal.as_deref() == Some(reason.as_str()) {
            debug!(reason = %reason, "policy still refused");
            return;
        }
        match self.policy.as_ref().map(|p| p.cluster.serial) {
            Some(serial) => error!(reason = %reason, in_force = serial,
                "policy refused; the last verified policy stays in force"),
            None => error!(reason = %reason, in_force = "none",
                "policy refused; no verified policy: protective ruleset"),
        }
        self.refusal = Some(reason);
    }

    /// At start, while the file on disk is refused: the copy of the policy that was in force
    /// before the restart, if it still verifies and is what the rollback store last accepted.
    fn fall_back_to_copy_in_force(&mut self) {
        let copy = policy::load::in_force_path(&self.cfg.state);
        if self.policy.is_some() || !copy.exists() {
            return;
        }
        match self.load(&copy) {
            Ok(files) => {
                warn!(serial = files.verified.cluster.serial, copy = %copy.display(),
                    "the policy in force before the restart stays in force");
                self.adopt(files);
            }
            Err(reason) => {
                warn!(reason = %reason, "the copy of the policy in force is refused too")
            }
        }
    }

    /// Makes `files` the policy in force: logs the node-map change, keeps a copy, derives
    /// this node's mode.
    fn adopt(&mut self, files: SignedFiles) {
        let v = &files.verified;
        if let Some(old) = &self.policy
            && old.digest_hex() == v.digest_hex()
        {
            return;
        }
        info!(cluster = %v.cluster.name, serial = v.cluster.serial, nodes = v.nodes.len(),
            signer = %v.signer().key_id(), "policy accepted");
        size_neighbour_tables(v.nodes.len());
        // One adoption's leftovers at a time (a second adoption before a pass is rare).
        self.finish_adoption();
        let SignedFiles {
            verified,
            policy,
            signature,
            ..
        } = files;
        let previous = self.policy.replace(verified);
        self.adopted = Some(Adopted {
            previous,
            policy,
            signature,
        });
        self.derive_mode(Timestamp::now());
    }

    /// After the pass that put an adopted policy in force: the node-map log and the copy in
    /// force.
    fn finish_adoption(&mut self) {
        let Some(adopted) = self.adopted.take() else {
            return;
        };
        if let (Some(old), Some(new)) = (&adopted.previous, &self.policy) {
            log_node_map_change(old, new);
        }
        let saved =
            policy::load::save_in_force(&self.cfg.state, &adopted.policy, &adopted.signature);
        if let Err(e) = saved {
            warn!(reason = %e, "cannot keep a copy of the policy in force");
        }
    }

    /// This node's place at `now` in the policy in force: member, or protective (not listed,
    /// expired, or the policy itself expired).
    fn derive_mode(&mut self, now: Timestamp) {
        let Some(v) = &self.policy else {
            self.mode = Mode::Protective;
            return;
        };
        self.unquarantined = None;
        self.mode = match desired(v, &self.public, self.cfg.interface.as_deref(), now) {
            Ok(d) => {
                self.protective_reason = None;
                let d = Arc::new(d);
                let mode = Mode::Member(with_quarantine(&d, &self.quarantined));
                self.unquarantined = Some((d, now));
                mode
            }
            Err(e) => {
                let reason = e.to_string();
                if self.protective_reason.as_deref() != Some(reason.as_str()) {
                    error!(reason = %reason, "not a member: dropping all peers, protective ruleset");
                    self.protective_reason = Some(reason);
                }
                Mode::Protective
            }
        };
    }

    /// At an expiry instant: who left the effective node map, then the new mode.
    fn expire(&mut self, now: Timestamp) {
        if let Some(v) = &self.policy {
            for n in v
                .nodes
                .iter()
                .filter(|n| n.expires.is_some_and(|t| t <= now))
            {
                if let Mode::Member(d) = &self.mode
                    && d.peers.contains_key(&n.public_key)
                {
                    info!(node = n.id.get(), name = %n.name, expires = %n.expires.unwrap_or(now),
                        "node expired: removed from the effective node map");
                }
            }
        }
        self.derive_mode(now);
    }

    /// One pass, then the metrics.
    fn reconcile(&mut self, trigger: Trigger) {
        let started = Instant::now();
        let ok = self.pass(trigger);
        self.after_pass(trigger, ok, started.elapsed());
    }

    /// What follows a pass, off the path to convergence: an adopted policy's leftovers, then
    /// the metrics.
    fn after_pass(&mut self, trigger: Trigger, ok: Option<bool>, took: Duration) {
        self.retired = None;
        self.finish_adoption();
        if let Some(ok) = ok {
            self.write_metrics(trigger, ok, took);
        }
    }

    /// Writes the metrics file: this pass, and the state read back from the kernel.
    fn write_metrics(&mut self, trigger: Trigger, ok: bool, took: Duration) {
        let Some(exporter) = &mut self.metrics else {
            return;
        };
        let metrics = &exporter.metrics;
        metrics.pass(&trigger.to_string(), ok, took);
        let status = match (&self.mode, &self.policy) {
            (Mode::Member(_), Some(p)) => Some(crate::status::collect(
                p,
                self.cfg.interface.as_deref(),
                Some(&self.public),
                Timestamp::now(),
            )),
            _ => None,
        };
        metrics.state(status.as_ref(), &self.quarantined);
        let text = metrics.render();
        exporter.write(&text);
    }

    /// One reconciliation; `None` when it could not start (no interface).
    fn pass(&mut self, trigger: Trigger) -> Option<bool> {
        let result = match &self.mode {
            Mode::Protective => {
                // A later return to membership must rebuild from what is really installed,
                // never edit sets on top of the protective rules.
                self.converged = None;
                self.protective()
            }
            Mode::Member(d) => {
                if self.iface.as_ref().is_none_or(|i| i.name != d.interface) {
                    match Interface::new(&d.interface, self.kind.clone()) {
                        Ok(i) => self.iface = Some(i),
                        Err(e) => {
                            error!(reason = %e, "cannot manage interface");
                            return Some(false);
                        }
                    }
                }
                let Some(iface) = self.iface.as_mut() else {
                    return Some(false);
                };
                // Drift checks, starts and SIGHUP read everything back; policy, quarantine and
                // expiry changes trust the last pass.
                let previous = match trigger {
                    Trigger::DriftCheck | Trigger::Start | Trigger::Sighup => None,
                    _ => self.converged.as_deref(),
                };
                let r = reconcile(iface, &mut self.sets, &self.private, d, previous)
                    .map_err(|e| e.to_string());
                // The state it replaces is dropped after the pass (freeing 10,000 peers is
                // not on the path to convergence).
                let next = r.as_ref().ok().map(|_| Arc::clone(d));
                self.retired = std::mem::replace(&mut self.converged, next);
                r
            }
        };
        match result {
            Ok(changes) if changes.is_empty() => Some(true),
            Ok(changes) if trigger == Trigger::DriftCheck => {
                warn!(changes = %summary(&changes), "drift found and repaired");
                Some(true)
            }
            Ok(changes) => {
                info!(trigger = %trigger, changes = %summary(&changes), "reconciled");
                Some(true)
            }
            Err(reason) => {
                error!(trigger = %trigger, reason = %reason, "reconcile failed; will retry");
                Some(false)
            }
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

    /// Reads clusterd's quarantine list; a change re-derives the mode (a set-element edit).
    /// Returns whether anything changed. An unreadable list keeps the last one in force.
    fn reload_quarantine(&mut self) -> bool {
        let list = match proto::quarantine::QuarantineList::read(&self.cfg.quarantine) {
            Ok(l) => l,
            Err(e) => {
                warn!(reason = %e, "quarantine list unreadable; the last one stays in force");
                return false;
            }
        };
        let ids = list.ids();
        if ids == self.quarantined {
            return false;
        }
        let shown = |ids: &std::collections::BTreeSet<policy::NodeId>| {
            ids.iter()
                .map(|i| i.get().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        info!(quarantined = %shown(&ids), was = %shown(&self.quarantined),
            "quarantine list changed: services withheld from these nodes");
        self.quarantined = ids;
        self.requarantine(Timestamp::now());
        true
    }

    /// The quarantine list applied again to the state derived before, unless an expiry has
    /// passed since it was derived (then everything is derived again).
    fn requarantine(&mut self, now: Timestamp) {
        let fresh = match (&self.unquarantined, &self.policy, &self.mode) {
            (Some((d, at)), Some(p), Mode::Member(_)) => p
                .next_expiry(*at)
                .is_none_or(|t| t > now)
                .then(|| with_quarantine(d, &self.quarantined)),
            _ => None,
        };
        match fresh {
            Some(d) => self.mode = Mode::Member(d),
            None => self.derive_mode(now),
        }
    }

    /// When the next node (or the policy in force) expires, if ever.
    fn next_expiry(&self) -> Option<Timestamp> {
        self.policy
            .as_ref()
            .and_then(|p| p.next_expiry(Timestamp::now()))
    }
}

/// `unquarantined` with the services withheld from `quarantined`. With nobody quarantined
/// (the usual case) it is the same state, shared; otherwise a copy whose peers are shared and
/// whose sets are copied and edited.
fn with_quarantine(
    unquarantined: &Arc<Desired>,
    quarantined: &std::collections::BTreeSet<policy::NodeId>,
) -> Arc<Desired> {
    if quarantined.is_empty() {
        return Arc::clone(unquarantined);
    }
    let mut d = Desired::clone(unquarantined);
    d.quarantine(quarantined);
    Arc::new(d)
}

/// A pass's changes for one log line: all of them when few, else the first few and a count.
fn summary(changes: &[String]) -> String {
    if changes.len() <= DETAILED_CHANGES {
        return changes.join("; ");
    }
    for c in changes {
        debug!(change = %c, "change");
    }
    format!(
        "{}; and {} more (details at debug level)",
        changes[..DETAILED_CHANGES].join("; "),
        changes.len() - DETAILED_CHANGES
    )
}

/// One line per node-map change when it is small; one summary line with counts otherwise
/// (a 500-node change is one line, not 500), the details at debug level.
fn log_node_map_change(old: &Policy, new: &Policy) {
    let diff = NodeMapDiff::new(&NodeMap::from(old), &NodeMap::from(new));
    let serial = new.cluster.serial;
    let lines: Vec<String> = diff.to_string().lines().map(str::to_string).collect();
    if lines.len() <= DETAILED_CHANGES {
        for line in &lines {
            info!(change = %line, serial, "node map change");
        }
        return;
    }
    for line in &lines {
        debug!(change = %line, serial, "node map change");
    }
    info!(
        serial,
        added = diff.added.len(),
        removed = diff.removed.len(),
        changed = diff.changed.len(),
        "node map changed (details at debug level)"
    );
}

/// What a watched file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Policy,
    Quarantine,
}

/// Watches the directories of the policy (and its signature) and of the quarantine list; a
/// change to one of them (written in place, created, renamed over, deleted) is reported.
fn watch_files(cfg: &Config, tx: mpsc::UnboundedSender<Watched>) -> std::io::Result<()> {
    use inotify::{Inotify, WatchMask};
    let dir_of = |p: &std::path::Path| {
        p.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf()
    };
    let mut inotify = Inotify::init()?;
    let mask = WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::DELETE;
    let mut watched = Vec::new();
    for (path, what) in [
        (cfg.policy.clone(), Watched::Policy),
        (policy::signature_path(&cfg.policy), Watched::Policy),
        (cfg.quarantine.clone(), Watched::Quarantine),
    ] {
        let dir = dir_of(&path);
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
        }
        let wd = inotify.watches().add(&dir, mask)?;
        if let Some(name) = path.file_name() {
            watched.push((wd, name.as_bytes().to_vec(), what));
        }
    }
    std::thread::Builder::new()
        .name("policy-watch".into())
        .spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok(events) = inotify.read_events_blocking(&mut buf) else {
                    return;
                };
                for e in events {
                    let Some(name) = e.name else { continue };
                    let hit = watched
                        .iter()
                        .find(|(wd, n, _)| *wd == e.wd && n.as_slice() == name.as_bytes());
                    if let Some((_, _, what)) = hit
                        && tx.send(*what).is_err()
                    {
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

/// A tokio instant for a wall-clock timestamp (now, if it has passed).
fn instant_of(t: Timestamp) -> tokio::time::Instant {
    let wait = Timestamp::now()
        .duration_until(t)
        .try_into()
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + wait
}

/// Never the private key.
impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("public_key", &self.public.to_string())
            .field("serial", &self.policy.as_ref().map(|p| p.cluster.serial))
            .field("member", &matches!(self.mode, Mode::Member(_)))
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Everything before the event loop: the key, the rollback store, the quarantine list,
    /// the policy (or the copy in force if the file is refused), then the first pass.
    pub fn start(cfg: Config) -> Result<Self, StartupError> {
        check_metrics_file(&cfg)?;
        let private = load_key(&cfg.key)?;
        let public = WgPublicKey::from_bytes(private.get_public().0);
        let store = RollbackStore::open(&cfg.state, cfg.min_serial)?;
        let kind = cfg.backend.clone().unwrap_or_else(|| Kind::detect(None));
        info!(public_key = %public, backend = %kind, "netguard starting");
        let metrics = cfg.metrics_file.clone().map(crate::metrics::Exporter::new);
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
            sets: SetEditor::new(),
            blocks: policy::NodeBlocks::default(),
            refusal: None,
            protective_reason: None,
            quarantined: std::collections::BTreeSet::new(),
            metrics,
            last_load: Duration::ZERO,
            adopted: None,
            retired: None,
            unquarantined: None,
        };
        node.reload_quarantine();
        if !node.reload_quietly(false) {
            node.fall_back_to_copy_in_force();
        }
        node.reconcile(Trigger::Start);
        Ok(node)
    }

    /// The policy files changed: reloaded quietly (the signature may still be on its way),
    /// then a pass if the new policy was accepted. Returns what that cost, or `None` if it
    /// was not accepted.
    pub fn policy_changed(&mut self) -> Option<ChangeTimes> {
        let started = Instant::now();
        if !self.reload_quietly(true) {
            return None;
        }
        let adopted = started.elapsed();
        let ok = self.pass(Trigger::PolicyChange);
        let converged = started.elapsed();
        self.after_pass(Trigger::PolicyChange, ok, converged - adopted);
        let times = ChangeTimes {
            load: self.last_load,
            adopt: adopted.saturating_sub(self.last_load),
            pass: converged - adopted,
            after: started.elapsed() - converged,
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        debug!(
            load_ms = ms(times.load),
            adopt_ms = ms(times.adopt),
            pass_ms = ms(times.pass),
            after_ms = ms(times.after),
            "policy change timings"
        );
        Some(times)
    }

    /// The quarantine list changed: reloaded, then a pass if the ids changed. Returns whether
    /// they did.
    pub fn quarantine_changed(&mut self) -> bool {
        let changed = self.reload_quarantine();
        if changed {
            self.reconcile(Trigger::Quarantine);
        }
        changed
    }
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

/// Raises the kernel's neighbour-table limits when the map needs more (see `neighbours`).
fn size_neighbour_tables(nodes: usize) {
    for (family, dir) in crate::neighbours::tables(std::path::Path::new("/proc/sys")) {
        let current = match crate::neighbours::read(&dir) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                warn!(reason = %e, "cannot read the neighbour table limits");
                continue;
            }
        };
        let Some(up) = crate::neighbours::raised(current, nodes) else {
            continue;
        };
        match crate::neighbours::write(&dir, up) {
            Ok(()) => info!(
                family,
                nodes,
                gc_thresh3 = up.gc_thresh3,
                was = current.gc_thresh3,
                "neighbour table limit raised for the node map"
            ),
            Err(e) => warn!(family, nodes, reason = %e,
                "cannot raise the neighbour table limit; packets to some peers may be dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 9 item 10): a 500-node change logged 497 lines and a 12-29 KB line.
    #[test]
    fn a_large_change_is_one_short_line() {
        let changes: Vec<String> = (0..500).map(|i| format!("peer n{i} added")).collect();
        let line = summary(&changes);
        assert!(line.len() < 400, "{} bytes", line.len());
        assert!(
            line.ends_with("and 492 more (details at debug level)"),
            "{line}"
        );
        let few = &changes[..3];
        assert_eq!(summary(few), "peer n0 added; peer n1 added; peer n2 added");
    }

    #[test]
    fn triggers_read_as_words() {
        assert_eq!(Trigger::DriftCheck.to_string(), "drift check");
        assert_eq!(Trigger::Expiry.to_string(), "expiry");
    }
}
