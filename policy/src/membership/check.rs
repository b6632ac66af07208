//! What a membership may hold: only nodes within its master's admission key's limits, apart
//! from every node the policy and the other memberships list. Each refusal is one line.

use std::collections::HashMap;
use std::fmt;

use jiff::Timestamp;

use super::Membership;
use crate::model::{Node, NodeId, Policy, Role};
use crate::parse::{Invalid, shown};

/// Why a membership is refused (the last accepted one of that master stays in force).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{size} bytes is more than the {limit} bytes a membership may have")]
    TooLarge { size: usize, limit: usize },
    #[error(
        "the policy in force lists no admission key for master {master} (never added, or removed)"
    )]
    NoKey { master: NodeId },
    #[error("master {master}'s admission key expired at {at}")]
    KeyExpired { master: NodeId, at: Timestamp },
    #[error("not signed by master {master}'s admission key {key_id}")]
    NotSigned { master: NodeId, key_id: String },
    #[error("{0}")]
    Invalid(Invalid),
    #[error("for cluster {found:?}, not this cluster {expected:?}")]
    OtherCluster { found: String, expected: String },
    #[error("says it is master {found}'s, offered as master {expected}'s")]
    OtherMaster { found: NodeId, expected: NodeId },
    #[error("lists {count} nodes; master {master}'s admission key admits {max} at most")]
    TooMany {
        master: NodeId,
        count: usize,
        max: u16,
    },
    #[error("node {id}: role {} is not one master {master}'s admission key admits", .role.name())]
    Role {
        master: NodeId,
        id: NodeId,
        role: Role,
    },
    #[error("node {id} is outside master {master}'s ids {range}")]
    Id {
        master: NodeId,
        id: NodeId,
        range: crate::model::IdRange,
    },
    #[error("node {id}: tunnel address {addr} is outside master {master}'s networks")]
    Address {
        master: NodeId,
        id: NodeId,
        addr: std::net::IpAddr,
    },
    #[error("node {id}: {what}")]
    Node { id: NodeId, what: String },
    #[error("node {id}: {what} {value} is already node {other}'s ({whose})")]
    Collides {
        id: NodeId,
        what: &'static str,
        value: String,
        other: NodeId,
        whose: Whose,
    },
    #[error(
        "serial {offered} is below serial {accepted} accepted from master {master}: rollback refused"
    )]
    Rollback {
        master: NodeId,
        offered: u64,
        accepted: u64,
    },
    #[error("serial {serial} was accepted from master {master} with other content: replay refused")]
    Replay { master: NodeId, serial: u64 },
    #[error("cannot persist the memberships' rollback state: {0}")]
    Store(#[from] crate::fsutil::FileError),
}

/// Which document lists a node another collides with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
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

/// Checks `m` against the policy: this cluster, a live admission key for its master, and
/// every node within that key's roles, ids, networks and count, well formed, and apart from
/// every other node of `m`.
pub fn check_limits(policy: &Policy, m: &Membership) -> Result<(), Refusal> {
    let h = &m.membership;
    let master = h.master;
    if h.cluster != policy.cluster.name {
        return Err(Refusal::OtherCluster {
            found: h.cluster.clone(),
            expected: policy.cluster.name.clone(),
        });
    }
    let key = policy
        .admission_of(master)
        .ok_or(Refusal::NoKey { master })?;
    if m.nodes.len() > usize::from(key.max_nodes) {
        return Err(Refusal::TooMany {
            master,
            count: m.nodes.len(),
            max: key.max_nodes,
        });
    }
    for n in &m.nodes {
        let id = n.id;
        if let Some(&role) = n.roles.iter().find(|r| !key.roles.contains(r)) {
            return Err(Refusal::Role { master, id, role });
        }
        if !key.ids.contains(id) {
            return Err(Refusal::Id {
                master,
                id,
                range: key.ids,
            });
        }
        if let Some(&addr) = n.addresses.iter().find(|a| !key.holds_address(**a)) {
            return Err(Refusal::Address { master, id, addr });
        }
        well_formed(policy, n)?;
    }
    // Two nodes of one membership sharing anything: refused (the master wrote it so). One
    // sharing anything with a node of the policy or of another master's membership is left
    // out of the node map instead ([`super::MembershipsInForce::excluded`]): a refusal
    // would depend on which came first.
    let mut taken = Taken::default();
    taken.add_all(m.nodes.iter(), Whose::Master(master))?;
    Ok(())
}

/// A node's own checks, as the policy's nodes have them, and an endpoint joind would take:
/// written one way (an IPv4 address written as IPv6 is refused, not read as another one),
/// and one a node can have ([`crate::validate::unusable_endpoint`]).
fn well_formed(policy: &Policy, n: &Node) -> Result<(), Refusal> {
    let bad_endpoint = n.endpoint.and_then(|e| {
        if e.ip().to_canonical() != e.ip() {
            return Some(format!("endpoint {e} is an IPv4 address written as IPv6"));
        }
        crate::validate::unusable_endpoint(policy, e.ip())
            .map(|why| format!("endpoint {e} is {why}"))
    });
    let what = if let Some(why) = bad_endpoint {
        why
    } else if !crate::validate::valid_name(&n.name) {
        format!(
            "name {} must be 1-63 letters, digits, '-' or '_'",
            shown(&n.name)
        )
    } else if n.roles.is_empty() {
        "no role".into()
    } else if n.addresses.is_empty() {
        "no tunnel address".into()
    } else if n.endpoint.is_some_and(|e| e.port() == 0) {
        "endpoint port must not be 0".into()
    } else {
        return Ok(());
    };
    Err(Refusal::Node { id: n.id, what })
}

/// Every id, name, key, endpoint and address in use, and whose node has it: a node that
/// shares any with another is refused (one WireGuard key or address for two nodes would let
/// one take the other's traffic).
#[derive(Default)]
pub(super) struct Taken {
    ids: HashMap<NodeId, (NodeId, Whose)>,
    names: HashMap<String, (NodeId, Whose)>,
    keys: HashMap<crate::WgPublicKey, (NodeId, Whose)>,
    endpoints: HashMap<std::net::SocketAddr, (NodeId, Whose)>,
    addresses: HashMap<std::net::IpAddr, (NodeId, Whose)>,
}

impl Taken {
    pub(super) fn add_all<'a>(
        &mut self,
        nodes: impl Iterator<Item = &'a Node>,
        whose: Whose,
    ) -> Result<(), Refusal> {
        nodes.into_iter().try_for_each(|n| self.add(n, whose))
    }

    fn add(&mut self, n: &Node, whose: Whose) -> Result<(), Refusal> {
        let owner = (n.id, whose);
        let clash = |what: &'static str, value: String, (other, whose): (NodeId, Whose)| {
            Refusal::Collides {
                id: n.id,
                what,
                value,
                other,
                whose,
            }
        };
        if let Some(&o) = self.ids.get(&n.id) {
            return Err(clash("id", n.id.to_string(), o));
        }
        if let Some(&o) = self.names.get(&n.name) {
            return Err(clash("name", shown(&n.name), o));
        }
        if let Some(&o) = self.keys.get(&n.public_key) {
            return Err(clash("public key", n.public_key.to_string(), o));
        }
        if let Some(e) = n.endpoint
            && let Some(&o) = self.endpoints.get(&e)
        {
            return Err(clash("endpoint", e.to_string(), o));
        }
        for (j, a) in n.addresses.iter().enumerate() {
            if let Some(&o) = self.addresses.get(a) {
                return Err(clash("tunnel address", a.to_string(), o));
            }
            if n.addresses[..j].contains(a) {
                return Err(clash("tunnel address", a.to_string(), owner));
            }
        }
        self.ids.insert(n.id, owner);
        self.names.insert(n.name.clone(), owner);
        self.keys.insert(n.public_key, owner);
        if let Some(e) = n.endpoint {
            self.endpoints.insert(e, owner);
        }
        for a in &n.addresses {
            self.addresses.insert(*a, owner);
        }
        Ok(())
    }
}
