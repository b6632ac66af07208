//! The memberships in force beside the policy, and the node map they make together.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;

use super::check::{Refusal, Taken, Whose, check_limits};
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

/// Per master, the membership in force.
#[derive(Debug, Default)]
pub struct MembershipsInForce {
    by_master: BTreeMap<NodeId, Arc<SignedMembership>>,
}

impl MembershipsInForce {
    /// Master `master`'s membership offered (from its file or a peer): verified under
    /// `policy` ([`verify_membership`]), apart from every other membership in force, newer
    /// than the last accepted from that master (`store`, persisted first). On a refusal
    /// nothing changes.
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
        self.apart(policy, &verified)?;
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
        }
        Ok(acceptance)
    }

    /// Whether `m` shares no id, name, key, endpoint or address with the policy's nodes and
    /// the other masters' memberships in force.
    fn apart(&self, policy: &Policy, m: &Membership) -> Result<(), Refusal> {
        let mut taken = Taken::default();
        taken.add_all(policy.nodes.iter(), Whose::Policy)?;
        for (master, other) in &self.by_master {
            if *master != m.membership.master {
                taken.add_all(other.verified.nodes.iter(), Whose::Master(*master))?;
            }
        }
        taken.add_all(m.nodes.iter(), Whose::Master(m.membership.master))
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
            let verdict = policy
                .admission_of(master)
                .ok_or(Refusal::NoKey { master })
                .and_then(|key| {
                    if key.is_live(now) {
                        Ok(())
                    } else {
                        Err(Refusal::KeyExpired {
                            master,
                            at: key.expires,
                        })
                    }
                })
                .and_then(|()| {
                    // Signed by the key listed now (a rotated key's membership waits for its
                    // master to sign it again).
                    let key = policy.admission_of(master).map(|a| a.key);
                    if key == Some(*m.verified.signer()) {
                        Ok(())
                    } else {
                        Err(Refusal::NotSigned {
                            master,
                            key_id: key.map(|k| k.key_id()).unwrap_or_default(),
                        })
                    }
                })
                .and_then(|()| check_limits(policy, &m.verified))
                .and_then(|()| {
                    self.by_master.remove(&master);
                    let apart = self.apart(policy, &m.verified);
                    self.by_master.insert(master, Arc::clone(&m));
                    apart
                });
            if let Err(reason) = verdict {
                self.by_master.remove(&master);
                dropped.push(Dropped {
                    master,
                    serial: m.verified.membership.serial,
                    reason,
                });
            }
        }
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
    /// those whose key the operator revoked in that master's admission.
    pub fn nodes<'a>(&'a self, policy: &'a Policy) -> impl Iterator<Item = &'a Node> {
        policy
            .nodes
            .iter()
            .chain(self.by_master.iter().flat_map(move |(master, m)| {
                let revoked = policy
                    .admission_of(*master)
                    .map_or(&[][..], |a| a.revoked.as_slice());
                m.verified
                    .nodes
                    .iter()
                    .filter(move |n| !revoked.contains(&n.public_key))
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
        let (Ok(bytes), Ok(sig)) = crate::fsutil::read_signed_pair(
            &path,
            &crate::signature_path(&path),
            super::MAX_MEMBERSHIP_BYTES as u64 + 1,
            64 << 10,
        ) else {
            continue;
        };
        let file = path.display().to_string();
        if let Err(e) = in_force.offer(policy, &mut store, master, &file, bytes, sig, now) {
            refused.push((master, e));
        }
    }
    (in_force, refused)
}
