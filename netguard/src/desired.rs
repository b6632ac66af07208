//! What this node's WireGuard device and firewall should look like, from the verified policy
//! and this node's identity. Pure: unit-tested without root.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use jiff::Timestamp;
use policy::{NodeId, WgPublicKey};

use crate::ruleset::RulesetSpec;

/// A tunnel address with its prefix length, as configured on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfAddr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One peer: another node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    pub node: NodeId,
    pub name: String,
    pub endpoint: Option<SocketAddr>,
    /// Host routes (/32, /128) of the node's tunnel addresses: it may only speak as itself.
    pub allowed_ips: Vec<IfAddr>,
    pub keepalive: Option<u16>,
    /// `allow_roaming`: a recent handshake keeps the endpoint the peer roamed to. Without
    /// it, an endpoint other than the policy's is drift (`wg set ... endpoint` by hand).
    pub roams: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub interface: String,
    pub me: NodeId,
    pub my_name: String,
    pub listen_port: u16,
    pub addresses: Vec<IfAddr>,
    /// Shared: a quarantine change makes a new desired state with the same peers.
    pub peers: Arc<BTreeMap<WgPublicKey, DesiredPeer>>,
    pub ruleset: RulesetSpec,
}

impl Desired {
    /// Withholds the services from the peers whose node ids are in `quarantined` (ids not in
    /// the map are ignored). Their WireGuard peers stay: only the service sets change.
    pub fn quarantine(&mut self, quarantined: &std::collections::BTreeSet<NodeId>) {
        let q: Vec<&DesiredPeer> = self
            .peers
            .values()
            .filter(|p| quarantined.contains(&p.node))
            .collect();
        self.ruleset.quarantine(&q);
    }
}

/// Why this node has no place in the cluster now: it runs the protective ruleset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("this node's public key {0} is not in the policy: not a member of the cluster")]
    NotMember(WgPublicKey),
    #[error("this node ({name}) expired at {at}: no longer a member of the cluster")]
    Expired { name: String, at: Timestamp },
    /// Fail closed: a policy past its `expires` opens nothing, even the one in force.
    #[error(
        "the policy in force expired at {0}: services closed and peers removed until a newer one arrives"
    )]
    PolicyExpired(Timestamp),
}

fn host(addr: IpAddr) -> IfAddr {
    IfAddr {
        addr,
        prefix: if addr.is_ipv4() { 32 } else { 128 },
    }
}

/// Computes the desired state, at `now`, of the node whose WireGuard public key is `me`:
/// nodes whose `expires` has passed are nobody's peers. `interface` overrides the policy's
/// interface name (several nodes on one test host).
pub fn desired(
    policy: &impl policy::Checked,
    me: &WgPublicKey,
    interface: Option<&str>,
    now: Timestamp,
) -> Result<Desired, IdentityError> {
    let c = &policy.cluster;
    if c.expires <= now {
        return Err(IdentityError::PolicyExpired(c.expires));
    }
    let node = policy
        .node_by_key(me)
        .ok_or(IdentityError::NotMember(*me))?;
    if let Some(at) = node.expires.filter(|_| !node.is_live(now)) {
        return Err(IdentityError::Expired {
            name: node.name.clone(),
            at,
        });
    }
    let addresses = node
        .addresses
        .iter()
        .map(|&addr| IfAddr {
            addr,
            prefix: match addr {
                IpAddr::V4(_) => c.tunnel_ipv4.map_or(32, |n| n.prefix_len()),
                IpAddr::V6(_) => c.tunnel_ipv6.map_or(128, |n| n.prefix_len()),
            },
        })
        .collect();
    // Sorted as (key, index) pairs first: collecting the peers themselves (128 bytes each)
    // into a map sorted them by moving them about, 2 ms at 10,000 nodes; a map built from
    // sorted input only checks the order.
    let mut others: Vec<(WgPublicKey, usize)> = policy
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.id != node.id && n.is_live(now))
        .map(|(i, n)| (n.public_key, i))
        .collect();
    others.sort_unstable();
    let peers: BTreeMap<WgPublicKey, DesiredPeer> = others
        .into_iter()
        .map(|(_, i)| &policy.nodes[i])
        .map(|n| {
            (
                n.public_key,
                DesiredPeer {
                    node: n.id,
                    name: n.name.clone(),
                    endpoint: n.endpoint,
                    allowed_ips: n.addresses.iter().copied().map(host).collect(),
                    keepalive: c.persistent_keepalive,
                    roams: c.allow_roaming,
                },
            )
        })
        .collect();
    let interface = interface.unwrap_or(&c.interface).to_string();
    let ruleset = RulesetSpec::new(policy, &interface, &peers, &node.roles);
    Ok(Desired {
        interface,
        me: node.id,
        my_name: node.name.clone(),
        listen_port: c.listen_port,
        addresses,
        peers: Arc::new(peers),
        ruleset,
    })
}
