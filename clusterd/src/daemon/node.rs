//! clusterd's node: the policy in force (through the rollback store, from the file or a
//! peer), this node's heartbeat, the quarantine list and the cluster view, and carrying out
//! what the core decided.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use policy::{
    Effective, MembershipEvent, NodeId, Outcome, Policy, PolicyInForce, SignedFiles, TrustedKeys,
    Verified, WgPublicKey,
};
use proto::quarantine::{QuarantineList, Quarantined};
use tracing::{debug, error, info, warn};

use crate::core::{Action, Config as CoreConfig, Core, Fetched as FetchResult};
use crate::policy_file::{self, OnDisk, Written};
use crate::probe::{CertaintyFacts, Facts};
use crate::transfer::{MembershipPart, Transfer};
use crate::view;
use proto::cluster::Heartbeat;

use super::{Config, FetchFailure, StartupError};

pub(super) struct Node {
    pub(super) cfg: Config,
    pub(super) me: WgPublicKey,
    pub(super) trust: TrustedKeys,
    /// The policy file and peers' policies, put through this node's rollback store; what
    /// it holds is the policy in force, with its exact files (served to peers).
    pub(super) in_force: PolicyInForce,
    pub(super) my_id: Option<NodeId>,
    pub(super) my_name: String,
    pub(super) core: Core,
    pub(super) start: Instant,
    pub(super) seq: u64,
    /// Where each peer is reached, and who each tunnel address is.
    pub(super) addr_of: BTreeMap<NodeId, IpAddr>,
    pub(super) node_of: BTreeMap<IpAddr, NodeId>,
    /// The host's facts, read at each heartbeat.
    pub(super) facts: Option<Facts>,
    /// certaintyd's answer, read at each poll (only there, so a change is always noticed
    /// where it is told out of turn).
    pub(super) certainty: Option<CertaintyFacts>,
    pub(super) quarantine: QuarantineList,
    /// Datagrams dropped since the last log line about them (untrusted input: rate-limited).
    pub(super) dropped: u64,
    /// How many more times a changed heartbeat is to be told out of turn.
    pub(super) repeats: u32,
    /// Times the quarantine list was written (what each write costs netguard: an edit).
    pub(super) quarantine_writes: u64,
    pub(super) rng: rand_core::OsRng,
    /// A TPM quote is being made on a blocking thread (one at a time: a TPM that hangs
    /// holds one thread, not one per interval).
    pub(super) quoting: Arc<std::sync::atomic::AtomicBool>,
    /// TPM failures in a row (the first is a warning, the rest debug until one succeeds).
    pub(super) tpm_failures: u64,
}

/// Where a policy came from, for the log.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The policy file (the operator's delivery).
    File,
    /// Fetched from this peer.
    Peer(NodeId),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File => f.write_str("file"),
            Source::Peer(id) => write!(f, "peer:{}", id.get()),
        }
    }
}

pub(super) fn load_key(path: &std::path::Path) -> Result<WgPublicKey, StartupError> {
    let secret = policy::keys::read_secret_key(path, policy::keys::KeyKind::NodeSecret)
        .map_err(|e| StartupError::Key(e.to_string()))?;
    Ok(WgPublicKey::from_secret(&secret))
}

impl Node {
    pub(super) fn new(
        cfg: Config,
        me: WgPublicKey,
        trust: TrustedKeys,
        in_force: PolicyInForce,
        quarantine: QuarantineList,
    ) -> Self {
        let placeholder =
            CoreConfig::from_policy(NodeId::MIN, &policy::Distribution::default(), &[]);
        Node {
            cfg,
            me,
            trust,
            in_force,
            my_id: None,
            my_name: String::new(),
            core: Core::new(placeholder),
            start: Instant::now(),
            seq: 0,
            addr_of: BTreeMap::new(),
            node_of: BTreeMap::new(),
            facts: None,
            certainty: None,
            quarantine,
            dropped: 0,
            repeats: 0,
            quarantine_writes: 0,
            rng: rand_core::OsRng,
            quoting: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            tpm_failures: 0,
        }
    }

    pub(super) fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// A fetch from `from` ended: what it sent is verified, put in force if it is new here,
    /// and written to the policy file, never over a file as new as it (issue 26 #10): the
    /// file is read first (another writer, joind admitting or `tyd policy push`, may have put
    /// a policy there that the next poll would only now read), and checked again just
    /// before the rename ([`policy_file::write_if_newer`]).
    pub(super) fn take_fetched(
        &mut self,
        from: NodeId,
        result: Result<Transfer, FetchFailure>,
    ) -> Vec<Action> {
        let (result, memberships) = match result {
            Ok(t) => (Ok((t.policy, t.signature)), t.memberships),
            Err(e) => (Err(e), Vec::new()),
        };
        let files = match self.verify_fetched(from, result) {
            Ok(files) => files,
            Err(failed) => {
                return self
                    .core
                    .fetch_done(from, failed, self.now())
                    .into_iter()
                    .collect();
            }
        };
        // The file first: what another writer put there is in force before the fetched one
        // is weighed against it.
        let mut actions = self.poll_policy_file();
        let before = self.core.serial();
        let served = files.verified.cluster.serial;
        let fetched_digest = files.verified.digest_hex();
        let already = self
            .policy()
            .is_some_and(|p| p.digest_hex() == fetched_digest);
        let mut kept = false;
        if !already && served == before {
            // The file held the same serial with other content (the usual case of the race:
            // the poll above just read it): the peer did not lie, two policies were signed at
            // one serial. Nothing is written; `tyd status --cluster` shows the split.
            kept = true;
            let in_force = self.policy().map(|p| p.digest_hex()).unwrap_or_default();
            warn!(from = from.get(), serial = served, in_force_digest = %in_force, fetched_digest = %fetched_digest,
                "two policies signed at one serial: the fetched one has the serial of the policy in force here, with other content; the policy file is kept (sign a higher serial to settle it)");
            self.put_fork(from, &files);
        } else if !already
            && served > before
            && self
                .in_force
                .store()
                .check(&files.verified, Timestamp::now())
                .is_ok()
        {
            kept = self.write_fetched(from, &files, &mut actions);
        }
        if !kept || self.core.serial() < served {
            actions.extend(self.accept(files, from));
        }
        // Under the policy now in force: the memberships it brought.
        actions.extend(self.take_memberships(from, memberships));
        // Verified but not taken here (rolled back, replayed, another cluster): a lie. The
        // policy this node took meanwhile from elsewhere (or the file it kept) is not, unless
        // it is older than the serial the peer offered.
        let result = if kept || already || self.core.serial() > before {
            FetchResult::Delivered { serial: served }
        } else {
            FetchResult::Refused
        };
        let delivered = matches!(result, FetchResult::Delivered { .. });
        let next = self.core.fetch_done(from, result, self.now());
        // (A policy refused here was logged by accept, once.)
        if delivered && self.core.spoiled(from) {
            warn!(
                from = from.get(),
                served,
                "the peer offered a newer serial than it served: not fetching from it again until the policy changes"
            );
        }
        actions.extend(next);
        actions
    }

    /// What a fetch from `from` brought, verified; or what the core is told of its failure.
    fn verify_fetched(
        &mut self,
        from: NodeId,
        result: Result<(Vec<u8>, Vec<u8>), FetchFailure>,
    ) -> Result<SignedFiles, FetchResult> {
        let verified = result.and_then(|(bytes, sig)| {
            // Named for where it came from: a refusal is the peer's, not the file's.
            let file = format!("the policy fetched from node {}", from.get());
            self.in_force
                .verify(&file, bytes, sig, &self.trust, Timestamp::now())
                .map_err(|e| FetchFailure::Refused(e.to_string()))
        });
        verified.map_err(|failure| match failure {
            FetchFailure::Network(reason) => {
                debug!(from = from.get(), reason = %reason, "fetch failed; another peer or the next heartbeat will do");
                FetchResult::Network
            }
            FetchFailure::Refused(reason) => {
                warn!(from = from.get(), reason = %reason, "fetched policy refused (or not finished in time); not fetching from this peer again until the policy changes");
                FetchResult::Refused
            }
        })
    }

    /// Writes a fetched policy newer than the one in force to the policy file, unless the
    /// file holds one as new by now. Returns whether the file was kept (then what it holds is
    /// put in force, if acceptable here: its actions are added to `actions`).
    fn write_fetched(
        &mut self,
        from: NodeId,
        files: &SignedFiles,
        actions: &mut Vec<Action>,
    ) -> bool {
        let served = files.verified.cluster.serial;
        let fetched_digest = files.verified.digest_hex();
        let known = self.policy().map(|p| (p.digest_hex(), p.cluster.serial));
        match policy_file::write_if_newer(
            &self.cfg.policy,
            &files.policy,
            &files.signature,
            served,
            &self.trust,
            known.as_ref().map(|(d, s)| (d.as_str(), *s)),
        ) {
            Ok(Written::Replaced { was, locked }) => {
                self.in_force.forget_stamp();
                if let OnDisk::Invalid(reason) = was {
                    warn!(from = from.get(), served, reason = %reason, "the policy file was not a valid signed policy; replaced by the fetched one");
                }
                if !locked {
                    debug!(
                        "policy directory lock not had in time; the file was checked and written without it"
                    );
                }
                false
            }
            Ok(Written::Kept { serial, digest }) => {
                if serial == served && digest != fetched_digest {
                    warn!(from = from.get(), serial, file_digest = %digest, fetched_digest = %fetched_digest,
                        "two policies signed at one serial: the fetched one has the serial of the policy in force here, with other content; the policy file is kept (sign a higher serial to settle it)");
                    self.put_fork(from, files);
                } else if serial > served {
                    info!(
                        from = from.get(),
                        served,
                        file_serial = serial,
                        "the policy file holds a newer serial than the one fetched; the file is kept"
                    );
                }
                // What the file holds is put in force, if it is acceptable here.
                self.in_force.forget_stamp();
                actions.extend(self.poll_policy_file());
                true
            }
            Err(e) => {
                error!(reason = %e, "cannot write the fetched policy");
                false
            }
        }
    }

    /// On a master, puts a verified policy of the serial in force with other content beside
    /// the policy (`policy::fork_path`), for joind to settle: the master whose policy has the
    /// smaller digest carries its admissions into the next serial (`join::fork`).
    pub(super) fn put_fork(&self, from: NodeId, files: &SignedFiles) {
        if !self.core.config().master {
            return;
        }
        let path = policy::fork_path(&self.cfg.policy);
        match policy::write_signed_pair(&path, &files.policy, &files.signature) {
            Ok(()) => {
                info!(from = from.get(), serial = files.verified.cluster.serial, file = %path.display(),
                "the other policy of this serial put beside the policy for joind to settle")
            }
            Err(e) => {
                warn!(reason = %e, "cannot put the other policy of this serial beside the policy")
            }
        }
    }

    pub(super) fn policy(&self) -> Option<&Verified<Policy>> {
        self.in_force.current().map(|f| f.verified())
    }

    /// The node map in force: the policy and the masters' memberships.
    pub(super) fn effective(&self) -> Option<&Arc<Effective>> {
        self.in_force.effective()
    }

    /// Reads the policy file if it changed; adopts it if it is acceptable and new here. Then
    /// the memberships beside it.
    pub(super) fn poll_policy_file(&mut self) -> Vec<Action> {
        let outcome = self.in_force.poll(Timestamp::now());
        let mut actions = self.took(outcome, Source::File);
        let events = self.in_force.read_memberships(Timestamp::now());
        actions.extend(self.memberships_changed(events, Source::File));
        actions
    }

    /// The memberships a fetch from `from` brought: each verified under the policy in force
    /// and put in force if it is newer here, then written beside the policy (unless the file
    /// holds one as new: the master's joind may just have written it).
    fn take_memberships(&mut self, from: NodeId, parts: Vec<MembershipPart>) -> Vec<Action> {
        let mut events = Vec::new();
        for part in parts {
            let Some(master) = NodeId::new(part.master) else {
                continue;
            };
            let origin = format!(
                "the membership of master {master} fetched from node {}",
                from.get()
            );
            let event = self.in_force.offer_membership(
                master,
                part.bytes,
                part.signature,
                &origin,
                Timestamp::now(),
            );
            for e in &event {
                if let MembershipEvent::Accepted { serial, .. } = e {
                    self.write_membership(master, *serial);
                }
            }
            events.extend(event);
        }
        self.memberships_changed(events, Source::Peer(from))
    }

    /// Writes master `master`'s membership in force (of `serial`) beside the policy.
    fn write_membership(&self, master: NodeId, serial: u64) {
        let (Some(m), Some(key)) = (
            self.in_force.memberships().of(master),
            self.policy()
                .and_then(|p| p.admission_of(master))
                .map(|a| a.key),
        ) else {
            return;
        };
        let path = policy::membership::membership_path(&self.cfg.policy, master);
        match policy_file::write_membership_if_newer(&path, &m.bytes, &m.signature, serial, &key) {
            Ok(true) => {}
            Ok(false) => debug!(
                master = master.get(),
                serial, "the membership file is as new; kept"
            ),
            Err(e) => {
                error!(master = master.get(), reason = %e, "cannot write the fetched membership")
            }
        }
    }

    /// Logs what reading or being offered memberships did; if the node map in force changed,
    /// the core follows it and a newer membership is offered to a few peers.
    fn memberships_changed(&mut self, events: Vec<MembershipEvent>, source: Source) -> Vec<Action> {
        let mut changed = false;
        for event in events {
            match event {
                MembershipEvent::Accepted {
                    master,
                    serial,
                    nodes,
                } => {
                    info!(%source, master = master.get(), serial, nodes, "membership accepted");
                    changed = true;
                }
                MembershipEvent::Refused {
                    reason,
                    first: true,
                    origin,
                    ..
                } => warn!(origin = %origin, reason = %reason,
                    "membership refused; that master's last accepted membership stays in force"),
                MembershipEvent::Refused { reason, .. } => {
                    debug!(reason = %reason, "membership still refused")
                }
                MembershipEvent::Dropped(d) => {
                    warn!(master = d.master.get(), serial = d.serial, reason = %d.reason,
                        "membership dropped with its nodes: the policy in force no longer allows it");
                    changed = true;
                }
                MembershipEvent::LeftOut { master, node, why } => {
                    warn!(%source, master = master.get(), node = node.get(), reason = %why,
                        "a node of a membership left out of the node map: a node of the policy (which stays) or of another master's membership (also left out) has its identity too");
                    changed = true;
                }
            }
        }
        if !changed {
            return Vec::new();
        }
        let mut actions = self.adopt();
        let serials = self
            .effective()
            .map(|e| {
                e.membership_serials()
                    .iter()
                    .map(|(m, s)| (m.get(), *s))
                    .collect()
            })
            .unwrap_or_default();
        actions.extend(self.core.memberships_in_force(serials, &mut self.rng));
        actions
    }

    /// The memberships in force, as a transfer carries them.
    pub(super) fn membership_parts(&self) -> Vec<MembershipPart> {
        self.in_force
            .memberships()
            .iter()
            .map(|(master, m)| MembershipPart {
                master: master.get(),
                bytes: m.bytes.clone(),
                signature: m.signature.clone(),
            })
            .collect()
    }

    /// A verified policy from a peer: through the rollback store, then in force.
    fn accept(&mut self, files: SignedFiles, from: NodeId) -> Vec<Action> {
        let origin = format!("the policy fetched from node {}", from.get());
        let outcome = self.in_force.offer(files, &origin, Timestamp::now());
        self.took(outcome, Source::Peer(from))
    }

    /// What the policy in force made of a policy from `source`.
    fn took(&mut self, outcome: Outcome, source: Source) -> Vec<Action> {
        match outcome {
            Outcome::Accepted {
                policy, new: true, ..
            } => {
                info!(%source, cluster = %policy.cluster.name, serial = policy.cluster.serial,
                    signer = %policy.signer().key_id(), "policy accepted");
                self.adopt()
            }
            Outcome::Accepted { .. } | Outcome::Unread => Vec::new(),
            Outcome::Refused { reason, first } => {
                let in_force = self.policy().map(|p| p.cluster.serial);
                match (first, in_force) {
                    (false, _) => debug!(%source, reason = %reason, "policy still refused"),
                    (true, Some(serial)) => {
                        warn!(%source, reason = %reason, in_force = serial, "policy refused; the one in force stays")
                    }
                    (true, None) => {
                        warn!(%source, reason = %reason, "policy refused; no policy in force: no heartbeats and no fetches until an acceptable one")
                    }
                }
                Vec::new()
            }
        }
    }

    /// Makes the node map in force (the policy and the memberships) this node's: the map,
    /// the addresses, the core's peers.
    pub(super) fn adopt(&mut self) -> Vec<Action> {
        let now = Timestamp::now();
        let Some(effective) = self.effective().cloned() else {
            return Vec::new();
        };
        let v: &Policy = &effective;
        let me = v.node_by_key(&self.me).filter(|n| n.is_live(now));
        self.my_id = me.map(|n| n.id);
        self.my_name = me.map(|n| n.name.clone()).unwrap_or_default();
        if self.my_id.is_none() {
            error!("this node is not (or no longer) in the policy: no heartbeats, no fetches");
        }
        self.addr_of.clear();
        self.node_of.clear();
        for n in v.live_nodes(now) {
            // Peers are reached on the same address family as this node's first address.
            let family_v4 = me
                .and_then(|m| m.addresses.first())
                .is_none_or(IpAddr::is_ipv4);
            if let Some(a) = n.addresses.iter().find(|a| a.is_ipv4() == family_v4) {
                self.addr_of.insert(n.id, *a);
            }
            for a in &n.addresses {
                self.node_of.insert(*a, n.id);
            }
        }
        let members: Vec<(NodeId, String)> = if self.my_id.is_some() {
            v.live_nodes(now).map(|n| (n.id, n.name.clone())).collect()
        } else {
            Vec::new()
        };
        let core_cfg =
            CoreConfig::from_policy(self.my_id.unwrap_or(NodeId::MIN), &v.distribution, &v.nodes)
                .with_attestation(&v.cluster.name, &v.attestation, &v.nodes);
        let (serial, digest) = (v.cluster.serial, effective.accepted().digest_hex());
        let elapsed = self.now();
        let actions =
            self.core
                .policy_in_force(core_cfg, serial, &digest, &members, elapsed, &mut self.rng);
        // A restart must not readmit anyone: quarantines on file are taken over.
        for q in &self.quarantine.nodes {
            if self
                .core
                .peers()
                .get(&q.id)
                .is_some_and(|p| p.quarantine.is_none())
            {
                self.core
                    .restore_quarantine(q.id, q.until_reboot, q.boot_id.clone(), elapsed);
            }
        }
        actions
    }

    pub(super) fn heartbeat(&mut self) -> Option<Heartbeat> {
        let id = self.my_id?;
        let facts = self.facts.as_ref()?;
        let certainty = self.certainty.as_ref()?;
        let pinned = self
            .policy()
            .and_then(|p| p.certainty.expected_root.clone());
        self.seq += 1;
        Some(Heartbeat {
            node: id.get(),
            boot_id: facts.boot_id.clone(),
            seq: self.seq,
            serial: self.core.serial(),
            digest: self.policy().map(|p| p.digest_hex()).unwrap_or_default(),
            integrity: certainty.integrity,
            root_matches: match (&pinned, &certainty.stable_root) {
                (Some(p), Some(r)) => Some(p.eq_ignore_ascii_case(r)),
                _ => None,
            },
            stable_root: certainty.stable_root.clone(),
            last_verification: certainty.last_verification.clone(),
            uptime_s: facts.uptime_s,
            load1: facts.load1,
            mem_available_kb: facts.mem_available_kb,
            memberships: self.core.memberships().clone(),
            // The core puts this heartbeat's challenge in ([`Core::tick`]).
            challenge: None,
        })
    }

    /// Records a quarantine or readmission in the list netguard enforces.
    pub(super) fn set_quarantine(&mut self, node: NodeId, entry: Option<Quarantined>) {
        let before = self.quarantine.nodes.clone();
        self.quarantine.nodes.retain(|q| q.id != node);
        self.quarantine.nodes.extend(entry);
        self.quarantine.nodes.sort_by_key(|q| q.id);
        if self.quarantine.nodes == before {
            return;
        }
        self.quarantine_writes += 1;
        if let Err(e) = self.quarantine.write(&self.cfg.quarantine) {
            error!(reason = %e, "cannot write the quarantine list");
        }
    }

    pub(super) fn write_view(&self, mine: &Heartbeat) {
        let cluster = self
            .policy()
            .map(|p| p.cluster.name.clone())
            .unwrap_or_default();
        let memberships = self.in_force.memberships();
        let admitted_by = |id: u16| {
            NodeId::new(id)
                .and_then(|id| memberships.admitted_by(id))
                .map(NodeId::get)
        };
        let v = view::of(
            &self.core,
            &cluster,
            mine,
            &self.my_name,
            self.now(),
            &admitted_by,
        );
        let mut bytes = serde_json::to_vec_pretty(&v).unwrap_or_default();
        bytes.push(b'\n');
        if let Err(e) = policy::fsutil::replace_volatile(&self.cfg.view, &bytes, 0o644) {
            debug!(reason = %e, "cannot write the cluster view");
        }
    }

    pub(super) fn name_of(&self, id: NodeId) -> String {
        self.core
            .peers()
            .get(&id)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }
}

impl Node {
    /// Carries out a decision about a peer: the log line, and the quarantine list netguard
    /// enforces.
    pub(super) fn record(&mut self, action: Action) {
        match action {
            Action::Quarantine { node: id, reason } => {
                let name = self.name_of(id);
                // A node in a flapping spell is said to be one, with the hold its next
                // readmission waits for (0: not flapping).
                let hold_s = self
                    .core
                    .peers()
                    .get(&id)
                    .map_or(0, |p| p.damping.hold.as_secs());
                warn!(node = id.get(), name = %name, reason = %reason, flapping_hold_s = hold_s,
                "quarantined: services withheld, tunnel kept");
                let boot_id = self
                    .core
                    .peers()
                    .get(&id)
                    .and_then(|p| p.last.as_ref().map(|h| h.boot_id.clone()));
                self.set_quarantine(
                    id,
                    Some(Quarantined {
                        id,
                        name,
                        until_reboot: reason.needs_reboot(),
                        reason,
                        since: Timestamp::now(),
                        boot_id,
                    }),
                );
            }
            Action::Readmit { node: id, why } => {
                info!(node = id.get(), name = %self.name_of(id), why = %why, "readmitted: services restored");
                self.set_quarantine(id, None);
            }
            Action::Flapping {
                node: id,
                quarantines,
                hold,
            } => {
                // Once per flapping spell; the node stays on the quarantine list (nothing to
                // write). Its next quarantines and readmission, each at least a hold apart, are
                // the summary.
                warn!(node = id.get(), name = %self.name_of(id), quarantines,
                window_s = crate::core::FLAP_WINDOW.as_secs(), hold_s = hold.as_secs(),
                max_hold_s = crate::core::MAX_HOLD.as_secs(),
                "flapping: held quarantined; readmission waits for the hold, which doubles while it goes on");
            }
            Action::QuoteRefused { node: id, fault } => {
                warn!(node = id.get(), name = %self.name_of(id), fault = %fault,
                    "TPM quote refused");
            }
            Action::Send { .. } | Action::Fetch { .. } | Action::Quote { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests;
