//! The masters' memberships beside the policy in force ([`crate::membership`]): read from their
//! files or offered by a peer, each through the checks and the rollback record, and the node
//! map they make with the policy, [`Effective`].

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use jiff::Timestamp;

use super::{PolicyInForce, Stamp};
use crate::membership::{Dropped, Refusal, membership_path};
use crate::model::{NodeId, Policy};
use crate::store::Accepted;

/// The policy in force with every membership in force: its nodes are the node map in force
/// (the policy's, then each master's), everything else is the policy's. What netguard
/// enforces and clusterd watches over; [`accepted`](Self::accepted) is the operator's
/// policy itself (its serial, its files).
#[derive(Debug)]
pub struct Effective {
    accepted: Arc<Accepted>,
    /// The policy with the memberships' nodes added; `None` when there are none (the policy
    /// itself, not copied).
    combined: Option<Policy>,
    /// Per master, the serial of its membership in force.
    serials: BTreeMap<NodeId, u64>,
}

impl Effective {
    pub fn accepted(&self) -> &Arc<Accepted> {
        &self.accepted
    }

    /// Per master, the serial of its membership in force.
    pub fn membership_serials(&self) -> &BTreeMap<NodeId, u64> {
        &self.serials
    }
}

impl Deref for Effective {
    type Target = Policy;
    fn deref(&self) -> &Policy {
        self.combined.as_ref().unwrap_or(&self.accepted)
    }
}

/// What reading or being offered a membership did.
#[derive(Debug)]
pub enum MembershipEvent {
    /// A newer membership of `master` is in force.
    Accepted {
        master: NodeId,
        serial: u64,
        nodes: usize,
    },
    /// Refused; that master's last accepted membership stays. `first`: not reported lately.
    Refused {
        master: NodeId,
        origin: String,
        reason: Refusal,
        first: bool,
    },
    /// A membership in force that the policy in force (or the time) no longer allows.
    Dropped(Dropped),
    /// A node of master `master`'s membership left out of the node map: another (of the
    /// policy, or of another master's membership) has its key, name, endpoint, address or id
    /// too (`why`). Told once, when it is first left out.
    LeftOut {
        master: NodeId,
        node: NodeId,
        why: String,
    },
}

impl PolicyInForce {
    /// The node map in force: the policy and the memberships in force.
    pub fn effective(&self) -> Option<&Arc<Effective>> {
        self.effective.as_ref()
    }

    /// The memberships in force.
    pub fn memberships(&self) -> &crate::membership::MembershipsInForce {
        &self.memberships
    }

    /// The serial of the last membership of `master` this node accepted (in force or not).
    pub fn membership_record(&self, master: NodeId) -> Option<u64> {
        self.membership_store.last(master).map(|r| r.serial)
    }

    /// Reads the membership of each master the policy in force gives an admission key, where
    /// its file changed since the last read (a master with no file yet has admitted nobody),
    /// and checks the ones in force again at `now` (a key's expiry). Returns what changed.
    pub fn read_memberships(&mut self, now: Timestamp) -> Vec<MembershipEvent> {
        let mut events: Vec<MembershipEvent> = self
            .dropped
            .drain(..)
            .map(MembershipEvent::Dropped)
            .collect();
        events.append(&mut self.left_out_events);
        let Some(policy) = self.current.clone() else {
            return events;
        };
        for admission in &policy.admissions {
            let master = admission.master;
            let path = membership_path(&self.paths.policy, master);
            let stamp = Stamp::of(&path);
            if self.membership_stamps.get(&master) == Some(&stamp) {
                continue;
            }
            self.membership_stamps.insert(master, stamp);
            let Some((bytes, sig)) = crate::membership::read_pair(&path) else {
                continue;
            };
            let origin = path.display().to_string();
            events.extend(self.offer_membership(master, bytes, sig, &origin, now));
        }
        // A new policy is checked against when it comes (`after_new_policy`); between two,
        // only a key's expiry changes what is allowed.
        if self.membership_recheck_at.is_some_and(|t| t <= now) {
            events.extend(
                self.memberships
                    .recheck(&policy, now)
                    .into_iter()
                    .map(MembershipEvent::Dropped),
            );
        }
        self.refresh_effective();
        events.append(&mut self.left_out_events);
        events
    }

    /// Master `master`'s membership from `origin` (its file, or a peer): in force if it is
    /// acceptable and newer. Nothing: the one in force, offered again.
    pub fn offer_membership(
        &mut self,
        master: NodeId,
        bytes: Vec<u8>,
        signature: Vec<u8>,
        origin: &str,
        now: Timestamp,
    ) -> Vec<MembershipEvent> {
        let Some(policy) = self.current.clone() else {
            return Vec::new();
        };
        let before = self.memberships.of(master).map(|m| m.verified.digest_hex());
        let event = match self.memberships.offer(
            &policy,
            &mut self.membership_store,
            master,
            origin,
            bytes,
            signature,
            now,
        ) {
            // In force now and not before: new to the store, or the one it accepted before a
            // restart (the store says unchanged, but the node map has it only now).
            Ok(_) => self
                .memberships
                .of(master)
                .filter(|m| before.as_deref() != Some(m.verified.digest_hex().as_str()))
                .map(|m| MembershipEvent::Accepted {
                    master,
                    serial: m.verified.membership.serial,
                    nodes: m.verified.nodes.len(),
                }),
            Err(reason) => {
                let first = self.report(&format!("{origin}: {reason}"));
                Some(MembershipEvent::Refused {
                    master,
                    origin: origin.to_string(),
                    reason,
                    first,
                })
            }
        };
        self.refresh_effective();
        let mut events: Vec<MembershipEvent> = event.into_iter().collect();
        events.append(&mut self.left_out_events);
        events
    }

    /// After a new policy: the memberships in force checked under it (those it no longer
    /// allows are dropped, and reported by the next [`read_memberships`]), and the files read
    /// again (a new key may make a refused one acceptable).
    pub(super) fn after_new_policy(&mut self, now: Timestamp) {
        if let Some(policy) = self.current.clone() {
            let dropped = self.memberships.recheck(&policy, now);
            self.dropped.extend(dropped);
        }
        self.membership_stamps.clear();
        self.refresh_effective();
    }

    fn refresh_effective(&mut self) {
        // Made again only when the policy or what is in force beside it changed: clusterd
        // reads the memberships every 200 ms, and a new map is a copy of the whole policy.
        let generation = self.memberships.generation();
        let same_policy = match (&self.effective, &self.current) {
            (Some(e), Some(c)) => Arc::ptr_eq(e.accepted(), c),
            (None, None) => true,
            _ => false,
        };
        if same_policy && self.effective_generation == Some(generation) {
            return;
        }
        self.effective_generation = Some(generation);
        // The nodes newly left out are told once.
        let now_out = self.memberships.excluded();
        for ((master, node), why) in now_out {
            if !self.told_left_out.contains(&(*master, *node)) {
                self.left_out_events.push(MembershipEvent::LeftOut {
                    master: *master,
                    node: *node,
                    why: why.clone(),
                });
            }
        }
        self.told_left_out = now_out.keys().copied().collect();
        self.membership_recheck_at = self.current.as_ref().and_then(|p| {
            p.admissions
                .iter()
                .filter(|a| self.memberships.of(a.master).is_some())
                .map(|a| a.expires)
                .min()
        });
        self.effective = self.current.as_ref().map(|accepted| {
            let serials: BTreeMap<NodeId, u64> = self
                .memberships
                .iter()
                .map(|(m, s)| (m, s.verified.membership.serial))
                .collect();
            let combined = (!serials.is_empty()).then(|| self.memberships.combined(accepted));
            Arc::new(Effective {
                accepted: Arc::clone(accepted),
                combined,
                serials,
            })
        });
    }
}

/// A verified policy with the memberships beside its file that check out under it (no
/// rollback record: a reader that keeps no state, such as `tyd status`): the node map this
/// node's daemons enforce, as far as the files say.
#[derive(Debug)]
pub struct Combined {
    policy: Policy,
}

impl Deref for Combined {
    type Target = Policy;
    fn deref(&self) -> &Policy {
        &self.policy
    }
}

impl Combined {
    /// `verified` (read from `policy_path`) with the memberships beside it; those refused,
    /// with why.
    pub fn beside(
        policy_path: &std::path::Path,
        verified: &crate::Verified<Policy>,
        now: Timestamp,
    ) -> (Self, Vec<(NodeId, Refusal)>) {
        let (memberships, refused) = crate::membership::read_beside(policy_path, verified, now);
        let policy = memberships.combined(verified);
        (Self { policy }, refused)
    }
}

/// A policy a daemon may act on every node of: one verified under the operator's key
/// ([`crate::Verified`]`<Policy>`), or the node map in force ([`Effective`]: such a policy with
/// the memberships verified under its admission keys). Sealed: nothing else is.
pub trait Checked: Deref<Target = Policy> + sealed::Sealed {}

impl Checked for crate::Verified<Policy> {}
impl Checked for Effective {}
impl Checked for Combined {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::Verified<crate::Policy> {}
    impl Sealed for super::Effective {}
    impl Sealed for super::Combined {}
}
