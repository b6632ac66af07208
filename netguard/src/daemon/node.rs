//! netguard's node: its state and how it reacts to each event (a policy change, the
//! quarantine list, an expiry, a timer), without the event loop. [`super::run`] drives it,
//! and so does the convergence benchmark (`examples/converge.rs`), so what is measured is what
//! runs.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use policy::{Effective, Outcome, PolicyInForce, PolicyPaths, WgPublicKey};
use tracing::{debug, error, info, warn};
use wireguard_control::{DeviceUpdate, Key};

use super::report::{log_node_map_change, size_neighbour_tables, summary};
use super::{ChangeTimes, Config, StartupError, Trigger, check_metrics_file, load_key};
use crate::desired::{Desired, desired};
use crate::nfnl::SetEditor;
use crate::reconcile::{ReconcileError, reconcile, sync_ruleset};
use crate::ruleset::RulesetSpec;
use crate::wg::{Interface, Kind};

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
    pub(super) cfg: Config,
    private: Key,
    public: WgPublicKey,
    /// The policy files, read and put through this node's rollback store: what it holds is
    /// the policy this node's state is derived from.
    in_force: PolicyInForce,
    mode: Mode,
    kind: Kind,
    iface: Option<Interface>,
    /// What the last successful pass converged to: lets a policy change edit the sets
    /// without reading the table back first. Only ever a member's state.
    converged: Option<Arc<Desired>>,
    /// Set-element edits over a netlink socket kept open.
    sets: SetEditor,
    /// Why this node is protective, as last logged (same idea).
    protective_reason: Option<String>,
    /// The nodes clusterd has quarantined: no services for them here.
    quarantined: std::collections::BTreeSet<policy::NodeId>,
    /// With `--metrics-file`: what is measured, and where it is written.
    metrics: Option<crate::metrics::Exporter>,
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
    previous: Option<Arc<Effective>>,
    adopted: Arc<Effective>,
}

impl Node {
    /// Reads the policy files; on any refusal the state in force stays as it is. With
    /// `quiet`, a refusal is only logged at debug level (the signature may still be on its
    /// way) and `false` is returned so the caller can check again shortly. Returns whether
    /// the policy on disk is the one in force.
    pub(super) fn reload_quietly(&mut self, quiet: bool) -> bool {
        let now = Timestamp::now();
        let before = self.in_force.effective().cloned();
        let outcome = if quiet {
            self.in_force.reload_tentatively(now)
        } else {
            self.in_force.reload(now)
        };
        match outcome {
            Outcome::Accepted {
                policy,
                new,
                recovered,
            } => {
                if recovered {
                    info!(
                        serial = policy.cluster.serial,
                        "policy file acceptable again"
                    );
                }
                let memberships = self.read_memberships(now);
                if new || memberships {
                    self.adopt(before);
                }
                true
            }
            Outcome::Refused { reason, first } => {
                if quiet {
                    debug!(reason = %reason, "policy not (yet) acceptable; checking again shortly");
                } else if first {
                    self.refused(&reason);
                } else {
                    debug!(reason = %reason, "policy still refused");
                }
                false
            }
            Outcome::Unread => {
                if self.read_memberships(now) {
                    self.adopt(before);
                }
                true
            }
        }
    }

    /// Reads the masters' memberships beside the policy in force, logging what each did;
    /// whether the node map in force changed.
    pub(super) fn read_memberships(&mut self, now: Timestamp) -> bool {
        let mut changed = false;
        for event in self.in_force.read_memberships(now) {
            changed |= super::report::log_membership(&event);
        }
        changed
    }

    /// Logs a refusal (once per distinct reason: the caller knows).
    pub(super) fn refused(&self, reason: &policy::Refusal) {
        match self.in_force.current().map(|p| p.cluster.serial) {
            Some(serial) => error!(reason = %reason, in_force = serial,
                "policy refused; the last verified policy stays in force"),
            None => error!(reason = %reason, in_force = "none",
                "policy refused; no verified policy: protective ruleset"),
        }
    }

    /// At start, while the file on disk is refused: the copy of the policy that was in force
    /// before the restart, if it still verifies and is what the rollback store last accepted.
    pub(super) fn fall_back_to_copy_in_force(&mut self) {
        match self.in_force.fall_back_to_copy(Timestamp::now()) {
            Some(Outcome::Accepted { policy, .. }) => {
                warn!(serial = policy.cluster.serial, copy = %self.in_force.copy_path().display(),
                    "the policy in force before the restart stays in force");
                self.read_memberships(Timestamp::now());
                self.adopt(None);
            }
            Some(Outcome::Refused { reason, .. }) => {
                warn!(reason = %reason, "the copy of the policy in force is refused too")
            }
            Some(Outcome::Unread) | None => {}
        }
    }

    /// Makes the node map in force (a new policy, or new memberships, after `previous`) this
    /// node's: logs the node-map change, keeps a copy, derives this node's mode.
    pub(super) fn adopt(&mut self, previous: Option<Arc<Effective>>) {
        let Some(policy) = self.in_force.effective().cloned() else {
            return;
        };
        let v = &policy;
        let same_policy = previous
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p.accepted(), v.accepted()));
        if !same_policy {
            info!(cluster = %v.cluster.name, serial = v.cluster.serial, nodes = v.nodes.len(),
                signer = %v.accepted().signer().key_id(), "policy accepted");
        }
        size_neighbour_tables(v.nodes.len());
        // One adoption's leftovers at a time (a second adoption before a pass is rare).
        self.finish_adoption();
        self.adopted = Some(Adopted {
            previous,
            adopted: policy,
        });
        self.derive_mode(Timestamp::now());
    }

    /// After the pass that put an adopted policy in force: the node-map log and the copy in
    /// force.
    pub(super) fn finish_adoption(&mut self) {
        let Some(adopted) = self.adopted.take() else {
            return;
        };
        if let Some(old) = &adopted.previous {
            log_node_map_change(old, &adopted.adopted);
        }
        if let Err(e) = self.in_force.keep_copy() {
            warn!(reason = %e, "cannot keep a copy of the policy in force");
        }
    }

    /// This node's place at `now` in the policy in force: member, or protective (not listed,
    /// expired, or the policy itself expired).
    pub(super) fn derive_mode(&mut self, now: Timestamp) {
        let Some(v) = self.in_force.effective() else {
            self.mode = Mode::Protective;
            return;
        };
        self.unquarantined = None;
        self.mode = match desired(&**v, &self.public, self.cfg.interface.as_deref(), now) {
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
    pub(super) fn expire(&mut self, now: Timestamp) {
        if self.read_memberships(now) {
            info!("memberships changed at an expiry");
        }
        if let Some(v) = self.in_force.effective() {
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
    pub(super) fn reconcile(&mut self, trigger: Trigger) {
        let started = Instant::now();
        let ok = self.pass(trigger);
        self.after_pass(trigger, ok, started.elapsed());
    }

    /// What follows a pass, off the path to convergence: an adopted policy's leftovers, then
    /// the metrics.
    pub(super) fn after_pass(&mut self, trigger: Trigger, ok: Option<bool>, took: Duration) {
        self.retired = None;
        self.finish_adoption();
        if let Some(ok) = ok {
            self.write_metrics(trigger, ok, took);
        }
    }

    /// Writes the metrics file: this pass, and the state read back from the kernel.
    pub(super) fn write_metrics(&mut self, trigger: Trigger, ok: bool, took: Duration) {
        let Some(exporter) = &mut self.metrics else {
            return;
        };
        let metrics = &exporter.metrics;
        metrics.pass(&trigger.to_string(), ok, took);
        let status = match (&self.mode, self.in_force.effective()) {
            (Mode::Member(_), Some(p)) => Some(crate::status::collect(
                &**p,
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
    pub(super) fn pass(&mut self, trigger: Trigger) -> Option<bool> {
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
                let r = reconcile(iface, &mut self.sets, &self.private, d, previous);
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

    pub(super) fn protective(&mut self) -> Result<Vec<String>, ReconcileError> {
        let mut changes = sync_ruleset(&RulesetSpec::protective())?;
        if let Some(iface) = &self.iface
            && let Ok(dev) = iface.read()
            && !dev.peers.is_empty()
        {
            let mut u = DeviceUpdate::new();
            for p in &dev.peers {
                u = u.remove_peer_by_key(&p.config.public_key);
            }
            iface.apply(u)?;
            changes.push(format!("{} peers removed", dev.peers.len()));
        }
        Ok(changes)
    }

    /// Reads clusterd's quarantine list; a change re-derives the mode (a set-element edit).
    /// Returns whether anything changed. An unreadable list keeps the last one in force.
    pub(super) fn reload_quarantine(&mut self) -> bool {
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
    pub(super) fn requarantine(&mut self, now: Timestamp) {
        let fresh = match (&self.unquarantined, self.in_force.effective(), &self.mode) {
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
    pub(super) fn next_expiry(&self) -> Option<Timestamp> {
        self.in_force
            .effective()
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

/// Never the private key.
impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("public_key", &self.public.to_string())
            .field("serial", &self.in_force.current().map(|p| p.cluster.serial))
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
        let in_force = PolicyInForce::open(
            PolicyPaths::new(&cfg.policy, &cfg.trust, &cfg.state),
            cfg.min_serial,
        )?;
        let kind = cfg.backend.clone().unwrap_or_else(|| Kind::detect(None));
        info!(public_key = %public, backend = %kind, "netguard starting");
        let metrics = cfg.metrics_file.clone().map(crate::metrics::Exporter::new);
        let mut node = Node {
            cfg,
            private,
            public,
            in_force,
            mode: Mode::Protective,
            kind,
            iface: None,
            converged: None,
            sets: SetEditor::new(),
            protective_reason: None,
            quarantined: std::collections::BTreeSet::new(),
            metrics,
            adopted: None,
            retired: None,
            unquarantined: None,
        };
        node.reload_quarantine();
        match node.in_force.reload(Timestamp::now()) {
            Outcome::Accepted { .. } => {
                node.read_memberships(Timestamp::now());
                node.adopt(None);
            }
            // The copy in force first, so the refusal says what stays in force.
            Outcome::Refused { reason, .. } => {
                node.fall_back_to_copy_in_force();
                node.refused(&reason);
            }
            Outcome::Unread => {}
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
            load: self.in_force.last_load(),
            adopt: adopted.saturating_sub(self.in_force.last_load()),
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
