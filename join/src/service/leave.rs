//! A member leaving (`tyd leave`, through its tunnel): removed from the map, signed,
//! written; never the last master.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use policy::Role;

use super::membership::NextMembership;
use super::signing::NextSerial;
use super::{Master, MasterError, Outcome, Signer};

/// A master's answer to a leave, one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LeaveAnswer {
    Removed { node: u16 },
    Refused { reason: String },
}

/// Why a member's leave was refused.
#[derive(Debug, thiserror::Error)]
pub enum LeaveRefusal {
    #[error("{0} is no member's tunnel address")]
    NotAMember(IpAddr),
    #[error("the last master cannot leave (tyd node remove, by hand)")]
    LastMaster,
    /// A master with an admission key asked to remove a node it did not admit.
    #[error("{0}")]
    NotMine(String),
    #[error(transparent)]
    Master(#[from] MasterError),
}

impl Master {
    /// The member at tunnel address `from` leaves: removed from the map, signed, written.
    ///
    /// The answer goes out before the new policy is written, and the write waits until the
    /// member has closed the connection (or [`CLOSE_WAIT`] has passed): the policy without
    /// the member is what makes this node's netguard remove its tunnel, at once (inotify),
    /// and an answer still on its way through that tunnel would be lost with it. All that
    /// can fail after the answer is the disk; that is logged as an error here.
    pub(super) fn serve_leave<S: Read + Write + AsFd>(
        &self,
        mut stream: S,
        from: IpAddr,
    ) -> Outcome {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
        let removal = match self.removal(from, now) {
            Ok(r) => r,
            Err(refusal) => {
                let reason = refusal.to_string();
                answer(
                    &mut stream,
                    &LeaveAnswer::Refused {
                        reason: reason.clone(),
                    },
                );
                return Outcome::LeaveRefused { from, reason };
            }
        };
        answer(&mut stream, &LeaveAnswer::Removed { node: removal.id });
        wait_for_close(&mut stream);
        match self.write_removal(&removal.next, now) {
            Ok(serial) => Outcome::Left {
                id: removal.id,
                name: removal.name,
                serial,
            },
            Err(e) => Outcome::LeaveNotWritten {
                id: removal.id,
                name: removal.name,
                reason: e.to_string(),
            },
        }
    }

    /// The next serial without the member at `from`, checked, not yet written: of the policy,
    /// or, for a master with an admission key, of its membership (it removes only the nodes
    /// it admitted).
    fn removal(&self, from: IpAddr, now: Timestamp) -> Result<Removal, LeaveRefusal> {
        if let Signer::Admission(key) = &self.signer {
            return self.removal_from_membership(key, from, now);
        }
        let (mut edit, current) = self.edit_in_force(now)?;
        let node = current
            .nodes
            .iter()
            .find(|n| n.addresses.contains(&from))
            .ok_or(LeaveRefusal::NotAMember(from))?;
        let masters = current
            .nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Master))
            .count();
        if node.roles.contains(&Role::Master) && masters == 1 {
            return Err(LeaveRefusal::LastMaster);
        }
        let (id, name) = (node.id, node.name.clone());
        edit.remove_node(id).map_err(MasterError::from)?;
        let next = self.next_serial(edit, &current, now)?;
        Ok(Removal {
            id: id.get(),
            name,
            next: Next::Policy(Box::new(next)),
        })
    }

    fn removal_from_membership(
        &self,
        key: &ed25519_dalek::SigningKey,
        from: IpAddr,
        now: Timestamp,
    ) -> Result<Removal, LeaveRefusal> {
        let pif = self.fresh(now);
        let policy = pif.current().ok_or(MasterError::NoPolicy)?;
        let limits =
            super::membership::own_limits(policy, key, now).map_err(LeaveRefusal::NotMine)?;
        let mut nodes = super::membership::own_nodes(&pif, &limits);
        let Some(at) = nodes.iter().position(|n| n.addresses.contains(&from)) else {
            let listed = pif
                .effective()
                .is_some_and(|e| e.nodes.iter().any(|n| n.addresses.contains(&from)));
            return Err(if listed {
                LeaveRefusal::NotMine(format!(
                    "{from} is not a node this master admitted: the operator removes it (tyd node remove)"
                ))
            } else {
                LeaveRefusal::NotAMember(from)
            });
        };
        let node = nodes.remove(at);
        let serial = super::membership::next_serial(&pif, limits.master);
        Ok(Removal {
            id: node.id.get(),
            name: node.name,
            next: Next::Membership(NextMembership {
                master: limits.master,
                serial,
                nodes,
            }),
        })
    }

    /// Writes a removal decided; the serial it wrote.
    fn write_removal(&self, next: &Next, now: Timestamp) -> Result<u64, MasterError> {
        match (next, &self.signer) {
            (Next::Policy(next), _) => {
                self.sign_and_write_next(next, now)?;
                Ok(next.policy.cluster.serial)
            }
            (Next::Membership(next), Signer::Admission(key)) => {
                let mut pif = self.fresh(now);
                let policy = pif.current().cloned().ok_or(MasterError::NoPolicy)?;
                self.write_membership(&mut pif, key, &policy, next, now)?;
                Ok(next.serial)
            }
            (Next::Membership(_), Signer::Operator(_)) => Err(MasterError::NotOperator),
        }
    }
}

/// What a leave writes next.
enum Next {
    Policy(Box<NextSerial>),
    Membership(NextMembership),
}

/// How long a master waits, after answering a leave, for the member to close the connection
/// before it writes the policy that cuts the member's tunnel. The exchange's own read
/// deadline bounds it too; a member that holds the connection open only delays its own
/// removal.
pub const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// A leave decided: the member, and the next serial without it.
struct Removal {
    id: u16,
    name: String,
    next: Next,
}

fn answer<S: Write>(stream: &mut S, answer: &LeaveAnswer) {
    let mut line = serde_json::to_vec(answer).unwrap_or_default();
    line.push(b'\n');
    let _ = stream.write_all(&line).and_then(|()| stream.flush());
}

/// Reads until the member closes (anything it sends is ignored), an error, or [`CLOSE_WAIT`]
/// (each read waits for the socket to be readable, so no stream timeout is needed).
fn wait_for_close<S: Read + AsFd>(stream: &mut S) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let until = Instant::now() + CLOSE_WAIT;
    let mut buf = [0u8; 64];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
