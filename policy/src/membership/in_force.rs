//! The memberships in force beside the policy, and the node map they make together.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;

use super::check::{Refusal, check_limits, identifiers, live_key};
use super::store::MembershipStore;
use super::{Membership, verify_membership};
use crate::model::{Node, NodeId, Policy};
use crate::signature::Verified;
use crate::store::Acceptance;

/// A membership accepted, with the exact bytes it was verified from (served to peers).
#[derive(Debug)]
pub struct SignedMembership {
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
    pub verified: Verified<Membership>,
}

/// A membership in force that a new policy (or the passing of its key's expiry) no longer
/// allows: dropped, its nodes with it (fail closed).
#[derive(Debug)]
pub struct Dropped {
    pub master: NodeId,
    pub serial: u64,
    pub reason: Refusal,
}

/// Which document lists a node another collides with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whose {
    /// The operator's policy.
    Policy,
    /// Master N's membership.
    Master(NodeId),
}

impl fmt::Display for Whose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Whose::Policy => f.write_str("the policy's"),
            Whose::Master(m) => write!(f, "in master {m}'s membership"),
        }
    }
}

/// Per master, the membership in force.
#[derive(Debug, Default)]
pub struct MembershipsInForce {
    by_master: BTreeMap<NodeId, Arc<SignedMembership>>,
    /// Nodes of the memberships left out of the node map, by (master, node id), with why:
    /// a WireGuard key, name, endpoint, tunnel address or id that a node of the policy or of
    /// another master's membership has too. Both claims are left out, whichever came first,
    /// so every member makes the same map whatever order memberships reach it in, and a
    /// master cannot take a node over by listing its key (issue 28, attack B1/B4).
    excluded: BTreeMap<(NodeId, NodeId), String>,
    /// Counts every change of what is in force (a membership put in force or dropped, the
    /// nodes left out worked out again): a holder of a node map made from these knows
    /// whether it is still current.
    generation: u64,
}

impl MembershipsInForce {
    /// Master `master`'s membership offered (from its file or a peer): verified under
    /// `policy` ([`verify_membership`]), newer than the last accepted from that master
    /// (`store`, persisted first). On a refusal nothing changes. A node of it that another
    /// claims too is left out of the node map ([`Self::excluded`]), not the membership.
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        &mut self,
        policy: &Policy,
        store: &mut MembershipStore,
        master: NodeId,
        file: &str,
        bytes: Vec<u8>,
        signature: Vec<u8>,
        now: Timestamp,
    ) -> Result<Acceptance, Refusal> {
        let verified = verify_membership(file, master, &bytes, &signature, policy, now)?;
        let found = verified.membership.master;
        if found != master {
            return Err(Refusal::OtherMaster {
                found,
                expected: master,
            });
        }
        let acceptance =
            store.accept(master, verified.membership.serial, &verified.digest_hex())?;
        if acceptance == Acceptance::New || !self.by_master.contains_key(&master) {
            self.by_master.insert(
                master,
                Arc::new(SignedMembership {
                    bytes,
                    signature,
                    verified,
                }),
            );
            self.recount(policy);
        }
        Ok(acceptance)
    }

    /// Works out which membership nodes are left out: any whose key, name, endpoint,
    /// address or id another owner (the policy, or another master) has too. Revoked nodes
    /// count for nothing.
    fn recount(&mut self, policy: &Policy) {
        use std::collections::HashMap;
        let mut owners: HashMap<String, Vec<(Whose, NodeId)>> = HashMap::new();
        let mut claim = |what: String, whose: Whose, id: NodeId| {
            let list = owners.entry(what).or_default();
            if !list.iter().any(|(w, _)| *w == whose) {
                list.push((whose, id));
            }
        };
        let live = |master: NodeId, n: &Node| {
            !policy
                .admission_of(master)
                .is_some_and(|a| a.revoked.contains(&n.public_key))
        };
        let all =
            policy
                .nodes
                .iter()
                .map(|n| (Whose::Policy, n))
                .chain(self.by_master.iter().flat_map(|(master, m)| {
                    m.verified
                        .nodes
                        .iter()
                        .filter(move |n| live(*master, n))
                        .map(move |n| (Whose::Master(*master), n))
                }));
        for (whose, n) in all {
            for what in identifiers(n) {
                claim(what, whose, n.id);
            }
        }
        let mut excluded = BTreeMap::new();
        for (master, m) in &self.by_master {
            for n in m.verified.nodes.iter().filter(|n| live(*master, n)) {
                let clash = identifiers(n).into_iter().find_map(|what| {
                    let other = owners
                        .get(&what)?
                        .iter()
                        .find(|(w, _)| *w != Whose::Master(*master))?;
                    Some(format!(
                        "its {what} is also node {}'s ({})",
                        other.1, other.0
                    ))
                });
                if let Some(why) = clash {
                    excluded.insert((*master, n.id), why);
                }
            }
        }
        self.excluded = excluded;
        self.generation += 1;
    }

    /// Which state of what is in force this is ([`Self::recount`] runs on every change).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// `policy` with the node map in force as its nodes ([`Self::nodes`]).
    pub fn combined(&self, policy: &Policy) -> Policy {
        let mut p = policy.clone();
        p.nodes = self.nodes(policy).cloned().collect();
        p
    }

    /// The membership nodes left out of the node map, by (master, node id), with why.
    pub fn excluded(&self) -> &BTreeMap<(NodeId, NodeId), String> {
        &self.excluded
    }

    /// Checks every membership in force again under `policy` at `now` (a new policy, or time
    /// passing a key's expiry), in master order; drops those it no longer allows.
    pub fn recheck(&mut self, policy: &Policy, now: Timestamp) -> Vec<Dropped> {
        let mut dropped = Vec::new();
        let masters: Vec<NodeId> = self.by_master.keys().copied().collect();
        for master in masters {
            let Some(m) = self.by_master.get(&master).cloned() else {
                continue;
            };
            let verdict = live_key(policy, master, now)
                .and_then(|key| {
                    // Signed by the key listed now (a rotated key's membership waits for its
                    // master to sign it again).
                    if key.key == *m.verified.signer() {
                        Ok(())
                    } else {
                        Err(Refusal::NotSigned {
                            master,
                            key_id: key.key.key_id(),
                        })
                    }
                })
                .and_then(|()| check_limits(policy, &m.verified));
            if let Err(reason) = verdict {
                self.by_master.remove(&master);
                dropped.push(Dropped {
                    master,
                    serial: m.verified.membership.serial,
                    reason,
                });
            }
        }
        self.recount(policy);
        dropped
    }

    /// Master `master`'s membership in force.
    pub fn of(&self, master: NodeId) -> Option<&Arc<SignedMembership>> {
        self.by_master.get(&master)
    }

    /// Every membership in force, by master.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Arc<SignedMembership>)> {
        self.by_master.iter().map(|(m, s)| (*m, s))
    }

    /// The node map in force: the policy's nodes, then each membership's, by master, but for
    /// those whose key the operator revoked in that master's admission and those left out
    /// ([`Self::excluded`], as last worked out under `policy`).
    pub fn nodes<'a>(&'a self, policy: &'a Policy) -> impl Iterator<Item = &'a Node> {
        policy
            .nodes
            .iter()
            .chain(self.by_master.iter().flat_map(move |(master, m)| {
                let revoked = policy
                    .admission_of(*master)
                    .map_or(&[][..], |a| a.revoked.as_slice());
                m.verified.nodes.iter().filter(move |n| {
                    !revoked.contains(&n.public_key)
                        && !self.excluded.contains_key(&(*master, n.id))
                })
            }))
    }

    /// Which master admitted node `id` (None: the operator's policy lists it, or no one).
    pub fn admitted_by(&self, id: NodeId) -> Option<NodeId> {
        self.by_master
            .iter()
            .find(|(_, m)| m.verified.nodes.iter().any(|n| n.id == id))
            .map(|(master, _)| *master)
    }
}

/// The memberships beside the policy at `policy_path` (one file per master `policy` gives an
/// admission key), each checked as a daemon checks it but with no rollback record: what
/// `tyd` reads to know the node map in force on this node. A master with no file is left
/// out; a refused file is returned with why.
pub fn read_beside(
    policy_path: &std::path::Path,
    policy: &Policy,
    now: Timestamp,
) -> (MembershipsInForce, Vec<(NodeId, Refusal)>) {
    let mut in_force = MembershipsInForce::default();
    let mut store = MembershipStore::in_memory();
    let mut refused = Vec::new();
    for admission in &policy.admissions {
        let master = admission.master;
        let path = super::membership_path(policy_path, master);
        let Some((bytes, sig)) = super::read_pair(&path) else {
            continue;
        };
        let file = path.display().to_string();
        if let Err(e) = in_force.offer(policy, &mut store, master, &file, bytes, sig, now) {
            refused.push((master, e));
        }
    }
    (in_force, refused)
}
