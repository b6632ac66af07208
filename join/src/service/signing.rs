//! What a master signs from: the policy in force, shared with joind's shell and held through
//! joind's rollback state, never the file as it is; and signing the next serial.

use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use policy::edit::PolicyEdit;
use policy::{Accepted, Outcome as PolicyRead, PolicyInForce};

use super::{Master, MasterError};

/// The policy files as joind holds them, through its own rollback state: shared by the
/// shell, which asks at each connection, and the master, which edits and signs only what it
/// holds (never whatever the file holds: an older signed policy or unsigned text put there
/// would be signed again under a new serial).
pub type SharedPolicy = Arc<Mutex<PolicyInForce>>;

/// Reads the policy files, and the masters' memberships beside them, again if they changed.
/// A refusal is logged when it is news (`PolicyInForce` says so); what was accepted before
/// stays in force.
pub(super) fn reread(in_force: &mut PolicyInForce, now: Timestamp) {
    if let PolicyRead::Refused {
        reason,
        first: true,
    } = in_force.poll(now)
    {
        match in_force.current() {
            Some(p) => tracing::warn!(reason = %reason, in_force = p.cluster.serial,
                "policy refused; the one in force stays"),
            None => tracing::warn!(reason = %reason,
                "no acceptable policy in force: join connections are closed until it changes"),
        }
    }
    for event in in_force.read_memberships(now) {
        if let policy::MembershipEvent::Refused {
            reason,
            first: true,
            ..
        } = event
        {
            tracing::warn!(reason = %reason, "membership refused; the one in force stays");
        }
    }
}

/// The policy in force now (its files read again if they changed: [`reread`]), unless it
/// expired.
pub fn policy_in_force(shared: &Mutex<PolicyInForce>, now: Timestamp) -> Option<Arc<Accepted>> {
    let mut in_force = shared.lock().unwrap_or_else(|p| p.into_inner());
    reread(&mut in_force, now);
    in_force
        .current()
        .filter(|p| p.cluster.expires > now)
        .cloned()
}

/// The node map in force now (the policy and the masters' memberships, read again if they
/// changed: [`reread`]), unless the policy expired.
pub fn effective_in_force(
    shared: &Mutex<PolicyInForce>,
    now: Timestamp,
) -> Option<Arc<policy::Effective>> {
    let mut in_force = shared.lock().unwrap_or_else(|p| p.into_inner());
    reread(&mut in_force, now);
    in_force
        .effective()
        .filter(|p| p.cluster.expires > now)
        .cloned()
}

/// How long after a node's `expires`, by its own clock, a master keeps the entry in the
/// policies it signs. Members stop using the node at the instant by their clocks; a master
/// whose clock ran 3 h ahead signed a node out 2 h before it expired. The entry is dropped
/// once the instant is this far behind, so a master's clock must be a day ahead to drop it
/// early.
pub const EXPIRED_KEPT_FOR: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// Whether a node that expires at `expires` is dropped from a policy signed at `now`.
pub fn expired_for_good(expires: Timestamp, now: Timestamp) -> bool {
    expires
        .checked_add(EXPIRED_KEPT_FOR)
        .is_ok_and(|gone| gone <= now)
}

impl Master {
    /// The policy in force now, and an edit of exactly its bytes.
    pub(super) fn edit_in_force(
        &self,
        now: Timestamp,
    ) -> Result<(PolicyEdit, Arc<Accepted>), MasterError> {
        let p = policy_in_force(&self.in_force, now).ok_or(MasterError::NoPolicy)?;
        let edit = PolicyEdit::from_bytes(&self.policy, p.files().policy.clone())?;
        Ok((edit, p))
    }

    /// Drops nodes whose `expires` passed [`EXPIRED_KEPT_FOR`] ago by this master's clock
    /// (members stop using a node at its instant by their own clocks; the entry itself goes
    /// only once even a clock that far ahead cannot be early), bumps the serial, signs, and
    /// writes the pair.
    pub(super) fn sign_and_write(
        &self,
        edit: PolicyEdit,
        current: &policy::Policy,
        now: Timestamp,
    ) -> Result<(policy::Policy, String), MasterError> {
        let next = self.next_serial(edit, current, now)?;
        self.sign_and_write_next(&next, now)?;
        Ok((next.policy, next.digest))
    }

    /// [`Self::sign_and_write`]'s first half: the next serial's text, checked, not yet
    /// signed or written (nothing that can fail is left but the disk).
    pub(super) fn next_serial(
        &self,
        mut edit: PolicyEdit,
        current: &policy::Policy,
        now: Timestamp,
    ) -> Result<NextSerial, MasterError> {
        for n in &current.nodes {
            if let Some(expires) = n.expires
                && expired_for_good(expires, now)
            {
                tracing::info!(node = n.id.get(), name = %n.name, expires = %expires,
                    "dropping a node expired more than a day ago by this master's clock");
                // Already gone when the edit was a removal of this very node (a leave).
                match edit.remove_node(n.id) {
                    Ok(()) | Err(policy::edit::EditError::NoSuchNode(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let (text, policy) = edit.commit_text(now)?;
        let digest = crate::fork::digest(text.as_bytes());
        Ok(NextSerial {
            text,
            policy,
            digest,
        })
    }

    /// [`Self::sign_and_write`]'s second half: signs `next`, writes the pair, and takes it
    /// through this node's own rollback store at once (the next admission edits it).
    pub(super) fn sign_and_write_next(
        &self,
        next: &NextSerial,
        now: Timestamp,
    ) -> Result<(), MasterError> {
        let super::Signer::Operator(operator) = &self.signer else {
            return Err(MasterError::NotOperator);
        };
        let sig = policy::sign(next.text.as_bytes(), operator);
        policy::write_signed_pair(&self.policy, next.text.as_bytes(), sig.as_bytes())?;
        let mut in_force = self.in_force.lock().unwrap_or_else(|p| p.into_inner());
        match in_force.reload(now) {
            PolicyRead::Accepted { policy, .. } if policy.digest_hex() == next.digest => Ok(()),
            PolicyRead::Refused { reason, .. } => Err(MasterError::NotTaken(reason.to_string())),
            _ => Err(MasterError::NotTaken("the file changed meanwhile".into())),
        }
    }
}

/// The next serial's text, checked, before it is signed and written.
pub(super) struct NextSerial {
    text: String,
    pub policy: policy::Policy,
    pub digest: String,
}
