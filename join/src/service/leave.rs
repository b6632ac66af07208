//! A member leaving (`tyd leave`, through its tunnel): removed from the map, signed,
//! written; never the last master.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use policy::Role;

use super::signing::NextSerial;
use super::{Master, MasterError, Outcome};

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
        match self.sign_and_write_next(&removal.next, now) {
            Ok(()) => Outcome::Left {
                id: removal.id,
                name: removal.name,
                serial: removal.next.policy.cluster.serial,
            },
            Err(e) => Outcome::LeaveNotWritten {
                id: removal.id,
                name: removal.name,
                reason: e.to_string(),
            },
        }
    }

    /// The next serial without the member at `from`, checked, not yet written.
    fn removal(&self, from: IpAddr, now: Timestamp) -> Result<Removal, LeaveRefusal> {
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
            next,
        })
    }
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
    next: NextSerial,
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
