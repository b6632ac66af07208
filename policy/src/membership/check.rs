//! What a membership may hold: only nodes within its master's admission key's limits, apart
//! from every node the policy and the other memberships list. Each refusal is one line.

use std::collections::HashMap;

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
    #[error("node {id}: its {what} is node {other}'s too, in the same membership")]
    Duplicate {
        id: NodeId,
        what: String,
        other: NodeId,
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
    let mut seen: HashMap<String, NodeId> = HashMap::new();
    for n in &m.nodes {
        for what in identifiers(n) {
            if let Some(&other) = seen.get(&what) {
                return Err(Refusal::Duplicate {
                    id: n.id,
                    what,
                    other,
                });
            }
            seen.insert(what, n.id);
        }
    }
    Ok(())
}

/// What a node is known by, each as one text: its id, WireGuard key, name, endpoint (one
/// spelling: an IPv4 address written as IPv6 is that address) and each tunnel address. Two
/// nodes sharing any of these are one node claimed twice.
pub(super) fn identifiers(n: &Node) -> Vec<String> {
    let mut out = vec![
        format!("node id {}", n.id),
        format!("public key {}", n.public_key),
        format!("name {}", shown(&n.name)),
    ];
    if let Some(e) = n.endpoint {
        out.push(format!(
            "endpoint {}",
            std::net::SocketAddr::new(e.ip().to_canonical(), e.port())
        ));
    }
    out.extend(n.addresses.iter().map(|a| format!("tunnel address {a}")));
    out
}

/// The admission key `policy` lists for `master`, if it may sign at `now`: what a membership
/// of that master is checked against, when it arrives and whenever the policy changes.
pub(super) fn live_key(
    policy: &Policy,
    master: NodeId,
    now: Timestamp,
) -> Result<&crate::model::Admission, Refusal> {
    let key = policy
        .admission_of(master)
        .ok_or(Refusal::NoKey { master })?;
    if key.is_live(now) {
        Ok(key)
    } else {
        Err(Refusal::KeyExpired {
            master,
            at: key.expires,
        })
    }
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
