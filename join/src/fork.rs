//! Two masters admitting at once both sign the next serial, each from the same policy, each
//! with its own new node: a fork. Members keep whichever they got first (a same serial is
//! never taken over another), so one of the two nodes is in some members' policies only, and
//! the next signing on either side drops the other's for good (a joiner was told "node 6,
//! serial 12", spent a token use, and was in nobody's policy).
//!
//! So a master keeps a journal of the nodes it admitted (`admitted.json` beside the tokens),
//! clusterd puts a policy of the same serial but another digest, signed and fetched from a
//! peer, beside the policy (`<policy>.fork`), and the two masters settle it the same way
//! everywhere: the policy with the greater BLAKE3 digest stands; the master whose policy
//! has the smaller one signs the next serial from the other's, with the nodes it admitted
//! in its own added again (new ids where the other took theirs). Nothing is ever removed
//! this way: only this master's own admissions in the very policy that lost are carried, and
//! a policy of the same serial cannot descend from the one that added them. An operator's
//! edit that forks with a join is not carried: it shows as a problem in `tyd status
//! --cluster` until the operator signs again. Pure but for the journal's file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use policy::{Policy, Role, WgPublicKey};
use serde::{Deserialize, Serialize};

use crate::admit::JoinRequest;

/// How long an admission is remembered: a fork shows within seconds (heartbeats every
/// second carry each member's serial and digest).
pub const REMEMBERED_FOR: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// Where a master keeps the nodes it admitted: beside the tokens.
pub fn journal_path(tokens: &Path) -> PathBuf {
    tokens.with_file_name("admitted.json")
}

/// Where clusterd puts a signed policy of this node's serial with another digest.
pub fn fork_path(policy: &Path) -> PathBuf {
    policy::fork_path(policy)
}

/// One node this master added, and the policy it added it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admitted {
    /// The serial and BLAKE3 digest (hex) of the policy this master signed with the node.
    pub serial: u64,
    pub digest: String,
    pub public_key: String,
    pub name: String,
    pub endpoint: SocketAddr,
    pub roles: Vec<Role>,
    pub at: Timestamp,
    /// The attestation key its TPM quote proved at the join (issue 29): carried with it.
    /// Absent in a journal from before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation_key: Option<policy::AttestationKey>,
}

impl Admitted {
    /// The entry for `new`, admitted in the policy of `serial` and `digest` (none for a
    /// node without an endpoint: nothing would admit it again).
    pub fn of(
        new: &policy::edit::NewNode,
        serial: u64,
        digest: String,
        at: Timestamp,
    ) -> Option<Self> {
        Some(Self {
            serial,
            digest,
            public_key: new.public_key.to_base64(),
            name: new.name.clone(),
            endpoint: new.endpoint?,
            roles: new.roles.clone(),
            at,
            attestation_key: new.attestation_key.clone(),
        })
    }

    /// The request that admits it again.
    pub fn request(&self) -> JoinRequest {
        JoinRequest {
            public_key: self.public_key.clone(),
            name: Some(self.name.clone()),
            endpoint: self.endpoint,
            attestation: None,
        }
    }
}

/// Reading or writing the journal.
pub type JournalError = crate::statefile::StateFileError;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub admitted: Vec<Admitted>,
}

impl Journal {
    pub fn load(path: &Path) -> Result<Self, JournalError> {
        crate::statefile::load(path, "a journal of admissions")
    }

    pub fn save(&self, path: &Path) -> Result<(), JournalError> {
        crate::statefile::save(path, self)
    }

    /// Forgets admissions older than [`REMEMBERED_FOR`] (settled ones are forgotten as they
    /// settle: `against_newer`).
    pub fn prune(&mut self, now: Timestamp) {
        self.admitted
            .retain(|a| a.at.checked_add(REMEMBERED_FOR).is_ok_and(|t| t > now));
    }
}

/// A policy's BLAKE3 digest, as the journal and the heartbeats write it.
pub fn digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// What a master does about a fork.
#[derive(Debug, PartialEq, Eq)]
pub enum Settle<'a> {
    /// The fork file is not of this serial, or is this very policy: drop it.
    NotAFork,
    /// This master's policy stands (the greater digest): nothing to carry.
    Stands,
    /// This master's policy lost: sign the next serial from the fork's, with these nodes.
    Carry(Vec<&'a Admitted>),
}

/// Decides on a fork: this master's policy in force (`serial`, `digest`) against the fork's
/// (`fork` and `fork_digest`), with the admissions in `journal`.
pub fn settle<'a>(
    serial: u64,
    digest: &str,
    fork: &Policy,
    fork_digest: &str,
    journal: &'a Journal,
) -> Settle<'a> {
    if fork.cluster.serial != serial || fork_digest == digest {
        return Settle::NotAFork;
    }
    if digest > fork_digest {
        return Settle::Stands;
    }
    let missing: Vec<&Admitted> = journal
        .admitted
        .iter()
        .filter(|a| a.serial == serial && a.digest == digest)
        .filter(|a| {
            a.public_key
                .parse::<WgPublicKey>()
                .is_ok_and(|k| fork.node_by_key(&k).is_none())
        })
        .collect();
    Settle::Carry(missing)
}

/// What becomes of this master's admissions once a newer policy is in force.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Newer<'a> {
    /// Not in it, and it does not descend from the policy that added them (its parents
    /// reach back past that serial without it): lost to another master's signing; carry.
    pub carry: Vec<&'a Admitted>,
    /// In it (carried forward by whoever signed it), or removed on purpose (it descends from
    /// the policy that added them): nothing more to do; forget.
    pub settled: Vec<&'a Admitted>,
    /// Not in it, and its parents do not say whether it descends (signed by hand, or more
    /// than [`policy::model::MAX_PARENTS`] signings later): never carried, since that could
    /// undo an operator's removal; the master says so once.
    pub unclear: Vec<&'a Admitted>,
}

/// Judges this master's admissions against `in_force` when its serial is above theirs.
pub fn against_newer<'a>(in_force: &Policy, journal: &'a Journal) -> Newer<'a> {
    let mut out = Newer::default();
    // Believed only as `PolicyEdit` writes them: the newest parent one serial below. A copy
    // edited by hand and signed with `--bump` keeps the parents of the policy it was copied
    // from, which would say it did not grow from that policy: taken as saying nothing.
    let parents: &[policy::model::Parent] = match in_force.cluster.parents.first() {
        Some(p) if p.serial.checked_add(1) == Some(in_force.cluster.serial) => {
            &in_force.cluster.parents
        }
        _ => &[],
    };
    for a in journal
        .admitted
        .iter()
        .filter(|a| a.serial < in_force.cluster.serial)
    {
        let listed = a
            .public_key
            .parse::<WgPublicKey>()
            .is_ok_and(|k| in_force.node_by_key(&k).is_some());
        let descends = parents.iter().any(|p| p.digest == a.digest);
        let reaches_back = parents.iter().any(|p| p.serial <= a.serial);
        if listed || descends {
            out.settled.push(a);
        } else if reaches_back {
            out.carry.push(a);
        } else {
            out.unclear.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> WgPublicKey {
        WgPublicKey::from_secret(&[n; 32])
    }

    fn policy(serial: u64, nodes: &[u8]) -> Policy {
        let mut text = policy::template::init_template(
            "lab",
            Timestamp::now() + jiff::SignedDuration::from_hours(1),
        )
        .replace("serial = 1", &format!("serial = {serial}"));
        for &n in nodes {
            text.push_str(&format!(
                "\n[[node]]\nid = {n}\nname = \"n{n}\"\npublic_key = \"{}\"\naddresses = [\"10.77.0.{n}\"]\nroles = [\"drone\"]\n",
                key(n)
            ));
        }
        policy::parse_policy("t", text.as_bytes(), Timestamp::now()).unwrap()
    }

    fn admitted(n: u8, serial: u64, digest: &str) -> Admitted {
        Admitted {
            serial,
            digest: digest.into(),
            public_key: key(n).to_base64(),
            name: format!("n{n}"),
            endpoint: format!("198.18.0.{n}:51820").parse().unwrap(),
            roles: vec![Role::Drone],
            at: Timestamp::now(),
            attestation_key: None,
        }
    }

    /// Attack (two masters admitting at once, issue 26 #10): both signed serial 12 from
    /// serial 11, each with its own joiner; one joiner ended in nobody's policy. Steps: this
    /// master admitted node 5 in its serial 12 (digest "aa"); the other's serial 12 (digest
    /// "bb", node 6 instead) arrives as the fork: this master's is the smaller digest, so it
    /// carries node 5 over; the other master, seeing "aa" as its fork, stands.
    #[test]
    fn the_master_whose_policy_lost_the_fork_carries_its_admission_over() {
        let mut journal = Journal::default();
        journal.admitted.push(admitted(5, 12, "aa"));
        journal.admitted.push(admitted(4, 11, "older"));
        let theirs = policy(12, &[1, 6]);
        match settle(12, "aa", &theirs, "bb", &journal) {
            Settle::Carry(carried) => {
                assert_eq!(carried.len(), 1);
                assert_eq!(carried[0].public_key, key(5).to_base64());
            }
            other => panic!("{other:?}"),
        }
        let mut other_journal = Journal::default();
        other_journal.admitted.push(admitted(6, 12, "bb"));
        let ours = policy(12, &[1, 5]);
        assert_eq!(
            settle(12, "bb", &ours, "aa", &other_journal),
            Settle::Stands
        );
    }

    /// Nothing is carried that the fork already lists, nor from a policy of another serial
    /// or digest (an operator's later removal is never undone), and a stale file is no fork.
    #[test]
    fn only_this_masters_admissions_in_the_losing_policy_are_carried() {
        let mut journal = Journal::default();
        journal.admitted.push(admitted(5, 12, "aa"));
        journal.admitted.push(admitted(7, 12, "other-digest"));
        let theirs = policy(12, &[1, 5, 6]);
        assert_eq!(
            settle(12, "aa", &theirs, "bb", &journal),
            Settle::Carry(vec![])
        );
        assert_eq!(settle(13, "aa", &theirs, "bb", &journal), Settle::NotAFork);
        assert_eq!(settle(12, "bb", &theirs, "bb", &journal), Settle::NotAFork);
    }

    #[test]
    fn old_admissions_are_forgotten() {
        let mut journal = Journal::default();
        journal.admitted.push(admitted(5, 12, "aa"));
        let mut old = admitted(7, 12, "cc");
        old.at = Timestamp::now() - jiff::SignedDuration::from_hours(2);
        journal.admitted.push(old);
        journal.prune(Timestamp::now());
        assert_eq!(journal.admitted.len(), 1);
        assert_eq!(journal.admitted[0].public_key, key(5).to_base64());
    }

    fn with_parents(mut p: Policy, parents: &[(u64, &str)]) -> Policy {
        p.cluster.parents = parents
            .iter()
            .map(|(serial, d)| policy::model::Parent {
                serial: *serial,
                digest: d.to_string(),
            })
            .collect();
        p
    }

    /// Attack (two masters, issue 26 #10, second round): x joined through master A (serial
    /// 12, digest "aa") while y joined through B (its own serial 12, "bb"); B admitted z
    /// 130 ms later (serial 13 from its 12) before either saw the fork; A took B's 13 as
    /// newer and x was in nobody's policy. Steps: A's journal has x at 12 "aa"; the policy in
    /// force is 13 with parents [12 "bb"]: it reaches back to 12 without "aa": x is carried.
    /// A policy 13 made from "aa" that lacks x is a removal (settled, never undone); one
    /// that lists x settles it; one whose parents stop above 12 is unclear, never carried.
    #[test]
    fn a_newer_policy_that_did_not_grow_from_an_admission_carries_it() {
        let mut journal = Journal::default();
        journal.admitted.push(admitted(5, 12, "aa"));
        let from_b = with_parents(policy(13, &[1, 6, 7]), &[(12, "bb"), (11, "cc")]);
        let n = against_newer(&from_b, &journal);
        assert_eq!(n.carry.len(), 1, "{n:?}");
        assert_eq!(n.carry[0].public_key, key(5).to_base64());
        let removed = with_parents(policy(13, &[1]), &[(12, "aa"), (11, "cc")]);
        let n = against_newer(&removed, &journal);
        assert!(n.carry.is_empty() && n.settled.len() == 1, "{n:?}");
        let listed = with_parents(policy(14, &[1, 5]), &[(13, "dd")]);
        assert_eq!(against_newer(&listed, &journal).settled.len(), 1);
        let by_hand = policy(14, &[1]);
        let n = against_newer(&by_hand, &journal);
        assert!(n.carry.is_empty() && n.unclear.len() == 1, "{n:?}");
        let far = with_parents(policy(30, &[1]), &[(29, "ee"), (28, "ff")]);
        assert_eq!(against_newer(&far, &journal).unclear.len(), 1);
        // A copy of serial 12's successor edited by hand and signed with --bump keeps that
        // policy's parents: they say nothing of the bumped one, which is never carried from.
        let bumped = with_parents(policy(14, &[1]), &[(11, "cc")]);
        let n = against_newer(&bumped, &journal);
        assert!(n.carry.is_empty() && n.unclear.len() == 1, "{n:?}");
    }
}
