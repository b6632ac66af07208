//! A master that admits with its admission key (issue 28): it never signs the policy. It
//! adds the node to its own membership (the nodes it admitted), within the limits the
//! operator's policy gives its key, signs that with the key and writes it beside the policy,
//! where its own daemons read it and clusterd carries it to every member.

use std::sync::MutexGuard;

use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use policy::membership::{Header, Membership, membership_path, render};
use policy::model::Admission as Limits;
use policy::{MembershipEvent, Node, NodeId, OperatorPublicKey, Policy, PolicyInForce, Role};

use super::{Added, Asked, Master, MasterError, ServeError, Signer};
use crate::admit::{Admission, MembershipText, Replaceable, decide};

/// What a master with an admission key is to sign next: its membership of `serial`.
pub(super) struct NextMembership {
    pub master: NodeId,
    pub serial: u64,
    pub nodes: Vec<Node>,
}

/// This master's key in `policy`, live at `now`, or why it admits nobody (told to the joiner).
pub(super) fn own_limits(
    policy: &Policy,
    key: &SigningKey,
    now: Timestamp,
) -> Result<Limits, String> {
    let public = OperatorPublicKey::from(key);
    let limits = policy
        .admissions
        .iter()
        .find(|a| a.key == public)
        .ok_or_else(|| {
            format!(
                "this master's admission key {} is not in the policy in force: it admits nobody",
                public.key_id()
            )
        })?;
    if !limits.is_live(now) {
        return Err(format!(
            "this master's admission key expired at {}: it admits nobody",
            limits.expires
        ));
    }
    Ok(limits.clone())
}

/// Whether `roles` are all roles `limits` admits, or why not.
fn roles_within(limits: &Limits, roles: &[Role]) -> Result<(), String> {
    match roles.iter().find(|r| !limits.roles.contains(r)) {
        None => Ok(()),
        Some(r) => Err(format!(
            "this master's admission key admits {} only, not {}",
            limits.role_names(),
            r.name()
        )),
    }
}

impl Master {
    /// The role of a node admitted by the operator's approval: as the master's root says
    /// ([`super::approval_role`]), or, for a master with an admission key, the first role
    /// its key admits.
    pub(super) fn approval_role(&self) -> Role {
        let by_root = super::approval_role(super::root_in_ram());
        let Signer::Admission(key) = &self.signer else {
            return by_root;
        };
        let now = Timestamp::now();
        let pif = self.fresh(now);
        pif.current()
            .and_then(|p| own_limits(p, key, now).ok())
            .map_or(by_root, |l| {
                if l.roles.contains(&by_root) {
                    by_root
                } else {
                    l.roles.first().copied().unwrap_or(by_root)
                }
            })
    }

    /// Whether `req` could be admitted now with `roles`, or why not (a join waiting for the
    /// operator is refused at once when it never could be).
    pub(super) fn could_admit(&self, asked: Asked<'_>, roles: &[Role]) -> Result<(), String> {
        let Asked { req, seen, binding } = asked;
        let now = Timestamp::now();
        let pif = self.fresh(now);
        let (Some(policy), Some(effective)) = (pif.current(), pif.effective()) else {
            return Err(MasterError::NoPolicy.to_string());
        };
        let limits = match &self.signer {
            Signer::Operator(_) => None,
            Signer::Admission(key) => {
                let l = own_limits(policy, key, now)?;
                roles_within(&l, roles)?;
                Some(l)
            }
        };
        let on: &Policy = match limits {
            Some(_) => effective,
            None => policy,
        };
        decide(on, req, seen, roles, None, limits.as_ref(), binding)
            .map(|_| ())
            .map_err(|r| r.to_string())
    }

    /// The policy files and memberships as they are now, held for an admission.
    pub(super) fn fresh(&self, now: Timestamp) -> MutexGuard<'_, PolicyInForce> {
        let mut pif = self.in_force.lock().unwrap_or_else(|p| p.into_inner());
        super::signing::reread(&mut pif, now);
        pif
    }

    /// [`Master::add`] for a master with admission key `key`: decided against the node map
    /// in force, the id and addresses from the key's ranges, written as the next serial of
    /// its membership.
    pub(super) fn add_to_membership(
        &self,
        key: &SigningKey,
        asked: Asked<'_>,
        roles: &[Role],
        replace: Option<&Replaceable>,
        before_write: impl FnOnce(&Admission) -> Result<(), MasterError>,
    ) -> Result<Added, ServeError> {
        let Asked { req, seen, binding } = asked;
        let now = Timestamp::now();
        let mut pif = self.fresh(now);
        let policy = pif.current().cloned().ok_or(MasterError::NoPolicy)?;
        let effective = pif.effective().cloned().ok_or(MasterError::NoPolicy)?;
        let limits = match own_limits(&policy, key, now).and_then(|l| {
            roles_within(&l, roles)?;
            Ok(l)
        }) {
            Ok(l) => l,
            Err(reason) => return Ok(Added::Refused(reason)),
        };
        let admission = match decide(
            &effective,
            req,
            seen,
            roles,
            replace,
            Some(&limits),
            binding,
        ) {
            Err(r) if r.is_temporary() => return Ok(Added::Later(r.to_string())),
            Err(r) => return Ok(Added::Refused(r.to_string())),
            Ok(a) => a,
        };
        let master = limits.master;
        // Nodes the operator revoked leave the membership the next time it is signed.
        let mut nodes = own_nodes(&pif, &limits);
        let (node, name) = match &admission {
            Admission::Already { id, name } => {
                drop(pif);
                let answer = self.accepted_answer(id.get(), name.clone(), now)?;
                return Ok(Added::Already {
                    node: id.get(),
                    name: name.clone(),
                    answer,
                });
            }
            Admission::Add(new) => {
                if nodes.len() >= usize::from(limits.max_nodes) {
                    return Ok(Added::Refused(format!(
                        "this master's admission key admits {} nodes, and all are in use",
                        limits.max_nodes
                    )));
                }
                nodes.push(Node {
                    id: new.id,
                    name: new.name.clone(),
                    public_key: new.public_key,
                    endpoint: new.endpoint,
                    addresses: new.addresses.clone(),
                    roles: new.roles.clone(),
                    expires: new.expires,
                    attestation_key: new.attestation_key.clone(),
                });
                (new.id.get(), new.name.clone())
            }
            Admission::Replace {
                id,
                name,
                public_key,
            } => {
                let Some(n) = nodes.iter_mut().find(|n| n.id == *id) else {
                    return Ok(Added::Refused(format!(
                        "node {id} was not admitted by this master: only the operator can give its entry a new key"
                    )));
                };
                n.public_key = *public_key;
                (id.get(), name.clone())
            }
        };
        before_write(&admission)?;
        let serial = next_serial(&pif, master);
        let next = NextMembership {
            master,
            serial,
            nodes,
        };
        self.write_membership(&mut pif, key, &policy, &next, now)?;
        drop(pif);
        let answer = self.accepted_answer(node, name.clone(), now)?;
        Ok(Added::New {
            node,
            name,
            serial,
            answer,
            replaced: matches!(admission, Admission::Replace { .. }),
        })
    }

    /// Signs `next` with `key`, writes it beside the policy, and takes it through this
    /// node's own memberships at once (the next admission edits it).
    pub(super) fn write_membership(
        &self,
        pif: &mut PolicyInForce,
        key: &SigningKey,
        policy: &Policy,
        next: &NextMembership,
        now: Timestamp,
    ) -> Result<(), MasterError> {
        let m = Membership {
            membership: Header {
                cluster: policy.cluster.name.clone(),
                master: next.master,
                serial: next.serial,
            },
            nodes: next.nodes.clone(),
        };
        let text = render(&m).map_err(|e| MasterError::NotTaken(e.to_string()))?;
        let sig = policy::sign(text.as_bytes(), key);
        let path = membership_path(&self.policy, next.master);
        policy::write_signed_pair(&path, text.as_bytes(), sig.as_bytes())?;
        let events = pif.read_memberships(now);
        let taken = pif
            .memberships()
            .of(next.master)
            .is_some_and(|m| m.verified.membership.serial == next.serial);
        if taken {
            return Ok(());
        }
        let why = events
            .into_iter()
            .find_map(|e| match e {
                MembershipEvent::Refused { reason, .. } => Some(reason.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "the file changed meanwhile".into());
        Err(MasterError::NotTaken(why))
    }

    /// The answer to an admitted (or already listed) node: the policy in force, the operator
    /// key that signed it, and every membership in force.
    pub(super) fn accepted_answer(
        &self,
        node: u16,
        name: String,
        now: Timestamp,
    ) -> Result<crate::admit::JoinAnswer, MasterError> {
        let pif = self.fresh(now);
        let in_force = pif.current().cloned().ok_or(MasterError::NoPolicy)?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let memberships = pif
            .memberships()
            .iter()
            .map(|(master, m)| MembershipText {
                master: master.get(),
                membership: text(&m.bytes),
                signature: text(&m.signature),
            })
            .collect();
        Ok(crate::admit::JoinAnswer::Accepted {
            node,
            name,
            policy: text(&in_force.files().policy),
            signature: text(&in_force.files().signature),
            operator_key: in_force.signer().to_base64(),
            memberships,
        })
    }
}

impl Master {
    /// After the operator gave this master a new admission key (`tyd admission rotate`): its
    /// membership on disk, signed with the old key, is refused everywhere, and its nodes are
    /// out of the map until it is signed again. This signs it again with the key this master
    /// holds, at the next serial, keeping the nodes the key's limits allow. Looks once per
    /// policy in force; `None` when there was nothing to do, else the serial written or why
    /// not.
    pub fn resign_own_membership(&self) -> Option<Result<u64, MasterError>> {
        let Signer::Admission(key) = &self.signer else {
            return None;
        };
        let now = Timestamp::now();
        let mut pif = self.fresh(now);
        let policy = pif.current().cloned()?;
        {
            let mut seen = self.resigned_for.lock().unwrap_or_else(|p| p.into_inner());
            let digest = policy.digest_hex();
            if seen.as_deref() == Some(digest.as_str()) {
                return None;
            }
            *seen = Some(digest);
        }
        let limits = own_limits(&policy, key, now).ok()?;
        if pif.memberships().of(limits.master).is_some() {
            return None;
        }
        let path = membership_path(&self.policy, limits.master);
        let bytes = policy::fsutil::read(&path).ok()?;
        // This master's own file: what it admitted, whatever key signed it then.
        let old = policy::membership::parse_membership(&path.display().to_string(), &bytes).ok()?;
        if old.membership.master != limits.master || old.membership.cluster != policy.cluster.name {
            return None;
        }
        let serial = next_serial(&pif, limits.master).max(old.membership.serial + 1);
        let mut nodes = old.nodes;
        nodes.retain(|n| !limits.revoked.contains(&n.public_key));
        let next = NextMembership {
            master: limits.master,
            serial,
            nodes,
        };
        let _ = self.write_membership(&mut pif, key, &policy, &next, now);
        let taken = pif
            .memberships()
            .of(limits.master)
            .is_some_and(|m| m.verified.membership.serial == serial);
        Some(if taken {
            Ok(serial)
        } else {
            Err(MasterError::NotTaken(
                "its nodes are not all within the key's limits now".into(),
            ))
        })
    }
}

/// The nodes of the membership in force of the master `limits` are for, without those the
/// operator revoked since (they leave it the next time it is signed).
pub(super) fn own_nodes(pif: &PolicyInForce, limits: &Limits) -> Vec<Node> {
    let mut nodes: Vec<Node> = pif
        .memberships()
        .of(limits.master)
        .map(|m| m.verified.nodes.clone())
        .unwrap_or_default();
    nodes.retain(|n| !limits.revoked.contains(&n.public_key));
    nodes
}

/// The serial after the last this node accepted of `master`'s membership.
pub(super) fn next_serial(pif: &PolicyInForce, master: NodeId) -> u64 {
    let in_force = pif
        .memberships()
        .of(master)
        .map_or(0, |m| m.verified.membership.serial);
    in_force.max(pif.membership_record(master).unwrap_or(0)) + 1
}
