//! A member leaving (`tyd leave`, through its tunnel): removed from the map, signed,
//! written; never the last master.

use std::io::{Read, Write};
use std::net::IpAddr;

use jiff::Timestamp;
use policy::Role;

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
    pub(super) fn serve_leave<S: Read + Write>(&self, mut stream: S, from: IpAddr) -> Outcome {
        let (answer, outcome) = match self.remove(from) {
            Ok((id, name, serial)) => (
                LeaveAnswer::Removed { node: id },
                Outcome::Left { id, name, serial },
            ),
            Err(refusal) => (
                LeaveAnswer::Refused {
                    reason: refusal.to_string(),
                },
                Outcome::LeaveRefused {
                    from,
                    reason: refusal.to_string(),
                },
            ),
        };
        let mut line = serde_json::to_vec(&answer).unwrap_or_default();
        line.push(b'\n');
        let _ = stream.write_all(&line).and_then(|()| stream.flush());
        outcome
    }

    fn remove(&self, from: IpAddr) -> Result<(u16, String, u64), LeaveRefusal> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
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
        let serial = self.sign_and_write(edit, &current, now)?.0.cluster.serial;
        Ok((id.get(), name, serial))
    }
}
