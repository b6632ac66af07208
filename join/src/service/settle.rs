//! Settling a fork with another master (`crate::fork`): a policy of this serial with other
//! content beside the policy, or a newer serial grown from another master's line, and the
//! admissions of this master's that it lacks.

use jiff::Timestamp;
use policy::OperatorPublicKey;
use policy::edit::PolicyEdit;

use super::{Master, MasterError};
use crate::admit::{Admission, Binding, decide};

/// How a fork was settled ([`Master::settle_fork`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    /// The file was not a fork of the policy in force (another serial, or the same file).
    NotAFork,
    /// This master's policy has the greater digest: it stands, the other master carries.
    Stands { serial: u64 },
    /// This master's policy lost but added no node of its own: nothing to carry (an
    /// operator's edit; `tyd status --cluster` shows the fork).
    NothingToCarry { serial: u64 },
    /// This master's admissions in its policy of serial `lost` were not in the one that
    /// stood (a fork of that serial, or a newer serial made from another master's); `serial`
    /// is that one with `nodes` (id, name) added again.
    Carried {
        lost: u64,
        serial: u64,
        nodes: Vec<(u16, String)>,
    },
    /// These nodes this master admitted are not in the newer serial in force, and its
    /// parents do not say whether the operator removed them: not carried.
    Unclear { serial: u64, names: Vec<String> },
}

impl Master {
    /// Settles a fork that clusterd put beside the policy (`crate::fork`): when this
    /// master's policy lost, signs the next serial from the other's with the nodes it had
    /// admitted in its own. None when there is no fork file.
    pub fn settle_fork(&self) -> Option<Result<Forked, MasterError>> {
        // A master with an admission key signs no policy: it has no fork of one to settle.
        if self.admits_with_key() {
            return None;
        }
        let fork_file = crate::fork::fork_path(&self.policy);
        if !fork_file.exists() {
            return None;
        }
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.settle_fork_locked(&fork_file);
        for f in [policy::signature_path(&fork_file), fork_file] {
            let _ = std::fs::remove_file(f);
        }
        Some(result)
    }

    /// The signed policy at `path`, verified against the trusted keys (`--trust`, or this
    /// master's own key): its bytes and the policy.
    fn read_verified(
        &self,
        path: &std::path::Path,
        now: Timestamp,
    ) -> Result<(Vec<u8>, policy::Policy), MasterError> {
        let trust = match &self.trust {
            Some(path) => policy::load::read_trust(path)?,
            None => match &self.signer {
                super::Signer::Operator(k) => {
                    policy::TrustedKeys::new(vec![OperatorPublicKey::from(k)])
                }
                super::Signer::Admission(_) => return Err(MasterError::NotOperator),
            },
        };
        let files = policy::load::load_signed_with(path, &trust, now)?;
        Ok((files.policy, (*files.verified).clone()))
    }

    /// The policy in force (never the file as it is: it may hold an older policy) and its
    /// bytes.
    fn in_force_bytes(&self, now: Timestamp) -> Result<(Vec<u8>, policy::Policy), MasterError> {
        let p = super::policy_in_force(&self.in_force, now).ok_or(MasterError::NoPolicy)?;
        let policy: &policy::Policy = &p;
        Ok((p.files().policy.clone(), policy.clone()))
    }

    fn settle_fork_locked(&self, fork_file: &std::path::Path) -> Result<Forked, MasterError> {
        let now = Timestamp::now();
        let (mine, in_force) = self.in_force_bytes(now)?;
        let (theirs, fork) = self.read_verified(fork_file, now)?;
        let (digest, fork_digest) = (crate::fork::digest(&mine), crate::fork::digest(&theirs));
        let mut journal = crate::fork::Journal::load(&self.journal)?;
        let serial = in_force.cluster.serial;
        let carried = match crate::fork::settle(serial, &digest, &fork, &fork_digest, &journal) {
            crate::fork::Settle::NotAFork => return Ok(Forked::NotAFork),
            crate::fork::Settle::Stands => return Ok(Forked::Stands { serial }),
            crate::fork::Settle::Carry(c) if c.is_empty() => {
                return Ok(Forked::NothingToCarry { serial });
            }
            crate::fork::Settle::Carry(c) => c.into_iter().cloned().collect::<Vec<_>>(),
        };
        let (new_serial, nodes) = self.carry(theirs, &fork, &carried, &mut journal, now)?;
        Ok(Forked::Carried {
            lost: serial,
            serial: new_serial,
            nodes,
        })
    }

    /// Signs the next serial from `base` (its file's bytes) with `carried` added again, and
    /// journals them in it.
    fn carry(
        &self,
        base_bytes: Vec<u8>,
        base: &policy::Policy,
        carried: &[crate::fork::Admitted],
        journal: &mut crate::fork::Journal,
        now: Timestamp,
    ) -> Result<(u64, Vec<(u16, String)>), MasterError> {
        let mut edit = PolicyEdit::from_bytes(&self.policy, base_bytes)?;
        let mut nodes = Vec::new();
        for a in carried {
            let current = edit.current(now)?;
            // Its TPM key was proven at its join: carried as it is.
            let proven = Binding::Carried(a.attestation_key.as_ref());
            let mut decided = decide(&current, &a.request(), None, &a.roles, None, None, proven);
            if let Err(crate::admit::Refusal::NameTaken(_)) = decided {
                let mut req = a.request();
                req.name = None;
                decided = decide(&current, &req, None, &a.roles, None, None, proven);
            }
            match decided {
                Ok(Admission::Add(new)) => {
                    edit.add_node(&new)?;
                    nodes.push(new);
                }
                Ok(_) => {}
                Err(r) => {
                    tracing::error!(name = %a.name, reason = %r,
                        "cannot carry a node this master admitted into the policy in force: it is in no policy now; it must join again");
                }
            }
        }
        let (p, new_digest) = self.sign_and_write(edit, base, now)?;
        journal.admitted.retain(|a| !carried.contains(a));
        journal.admitted.extend(nodes.iter().filter_map(|new| {
            crate::fork::Admitted::of(new, p.cluster.serial, new_digest.clone(), now)
        }));
        journal.prune(now);
        journal.save(&self.journal)?;
        Ok((
            p.cluster.serial,
            nodes.iter().map(|n| (n.id.get(), n.name.clone())).collect(),
        ))
    }

    /// When the policy in force has changed to a newer serial than some of this master's
    /// admissions: carries those it lost to another master's signing into the next serial
    /// (`crate::fork::against_newer`), forgets those settled. None when the policy file is
    /// unchanged since the last call, or there is nothing to say.
    pub fn settle_newer(&self) -> Option<Result<Forked, MasterError>> {
        if self.admits_with_key() {
            return None;
        }
        let stamp = std::fs::metadata(&self.policy)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        {
            let mut seen = self.settled_at.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == stamp {
                return None;
            }
            *seen = stamp;
        }
        if !self.journal.exists() {
            return None;
        }
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
        let result = (|| {
            let mut journal = crate::fork::Journal::load(&self.journal)?;
            let (bytes, in_force) = self.in_force_bytes(now)?;
            let judged = crate::fork::against_newer(&in_force, &journal);
            let carried: Vec<_> = judged.carry.into_iter().cloned().collect();
            let unclear: Vec<_> = judged.unclear.into_iter().cloned().collect();
            let settled: Vec<_> = judged.settled.into_iter().cloned().collect();
            if carried.is_empty() && unclear.is_empty() && settled.is_empty() {
                return Ok(None);
            }
            journal
                .admitted
                .retain(|a| !settled.contains(a) && !unclear.contains(a));
            let serial = in_force.cluster.serial;
            if !carried.is_empty() {
                let lost = carried.iter().map(|a| a.serial).max().unwrap_or(serial);
                let (new_serial, nodes) =
                    self.carry(bytes, &in_force, &carried, &mut journal, now)?;
                return Ok(Some(Forked::Carried {
                    lost,
                    serial: new_serial,
                    nodes,
                }));
            }
            journal.save(&self.journal)?;
            Ok((!unclear.is_empty()).then(|| Forked::Unclear {
                serial,
                names: unclear.iter().map(|a| a.name.clone()).collect(),
            }))
        })();
        result.transpose()
    }
}
