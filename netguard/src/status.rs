//! What `tyd status` shows: every node of the map with its tunnel state, and what non-peers
//! tried (per-service drop counters). The modern `mosmon`/`showmap`.

use std::collections::BTreeMap;

use policy::{Policy, WgPublicKey};
use serde::Serialize;
use wireguard_control::Device;

use crate::desired::desired;
use crate::nft;
use crate::peers::{ActualPeer, RECENT_HANDSHAKE};
use crate::ruleset::{RulesetSpec, counter_name};
use crate::wg::{self, Interface, Kind};

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub id: u16,
    pub name: String,
    /// This is the node the status was taken on.
    pub this_node: bool,
    /// In the signed policy (all listed nodes are) and configured as a peer here.
    pub authorised: bool,
    pub peer_configured: bool,
    pub tunnel_up: bool,
    pub handshake_age_s: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub endpoint: Option<String>,
}

/// The version of `tyd status --json`: raised when a field changes meaning or goes away
/// (adding a field does not). `tyd status --cluster --json` carries its own (`ClusterView`).
pub const STATUS_SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// [`STATUS_SCHEMA`].
    pub schema: u32,
    pub cluster: String,
    pub serial: u64,
    pub interface: String,
    pub nodes: Vec<NodeStatus>,
    /// Peers on the device that the policy does not list (drift, or tampering).
    pub unknown_peers: Vec<String>,
    /// Service name -> packets dropped that came from outside the tunnel or from non-peers.
    pub dropped: BTreeMap<String, u64>,
    pub firewall_installed: bool,
    /// When this node is known (its key given): how its firewall differs from what the
    /// policy asks for, if it does (what the next drift check would repair).
    pub firewall_drift: Option<String>,
    /// Base chains of other tables, any family and hook (informational: they cannot undo
    /// netguard's drops, so they are not problems). Read by `tyd status` ([`with_other_chains`]);
    /// the daemon's metrics do not spend an nft run on them.
    pub other_base_chains: Vec<String>,
    /// Everything wrong, one line each; empty when healthy. `tyd status` exits 7 otherwise.
    pub problems: Vec<String>,
}

pub fn collect(
    verified: &impl policy::Checked,
    interface: Option<&str>,
    me: Option<&WgPublicKey>,
    now: jiff::Timestamp,
) -> Status {
    let policy: &Policy = verified;
    let name = interface.unwrap_or(&policy.cluster.interface).to_string();
    let device = read_device(&name);
    let peers = device.as_ref().map(wg::actual_peers).unwrap_or_default();
    let nodes = node_statuses(policy, device.as_ref(), &peers, me);
    let unknown_peers: Vec<String> = peers
        .keys()
        .filter(|k| policy.node_by_key(k).is_none())
        .map(ToString::to_string)
        .collect();
    let table = nft::read_table().ok().flatten();
    let dropped = dropped_counts(policy, table.as_ref());
    // This node's own view: the member ruleset, or, when it has no place in the cluster, the
    // protective one (which is then what netguard keeps installed).
    let mut problems = Vec::new();
    let firewall_drift = match (me, &table) {
        (Some(me), Some(t)) => match desired(verified, me, interface, now) {
            Ok(d) => d.ruleset.drift(&t.shape),
            Err(e) => {
                problems.push(format!("not a member: {e}"));
                RulesetSpec::protective().drift(&t.shape)
            }
        },
        _ => None,
    };
    if table.is_none() {
        problems.push("firewall table inet netguard is missing".to_string());
    }
    if let Some(d) = &firewall_drift {
        problems.push(format!("firewall differs from the policy: {d}"));
    }
    for k in &unknown_peers {
        problems.push(format!("peer {k} is configured but not in the policy"));
    }
    Status {
        schema: STATUS_SCHEMA,
        cluster: policy.cluster.name.clone(),
        serial: policy.cluster.serial,
        interface: name,
        nodes,
        unknown_peers,
        dropped,
        firewall_installed: table.is_some(),
        firewall_drift,
        other_base_chains: Vec::new(),
        problems,
    }
}

/// Reads the WireGuard device `name`, kernel or detected backend first, then wireguard-go.
fn read_device(name: &str) -> Option<Device> {
    let device = Interface::new(name, Kind::detect(None))
        .ok()
        .and_then(|i| i.read().ok());
    device.or_else(|| {
        Interface::new(name, Kind::Userspace("wireguard-go".into()))
            .ok()
            .and_then(|i| i.read().ok())
    })
}

/// Every node of the policy with what the device says of it as a peer.
fn node_statuses(
    policy: &Policy,
    device: Option<&Device>,
    peers: &BTreeMap<WgPublicKey, ActualPeer>,
    me: Option<&WgPublicKey>,
) -> Vec<NodeStatus> {
    let stats: BTreeMap<WgPublicKey, (u64, u64)> = device
        .map(|d| {
            d.peers
                .iter()
                .map(|p| {
                    (
                        WgPublicKey::from_bytes(p.config.public_key.0),
                        (p.stats.rx_bytes, p.stats.tx_bytes),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    policy
        .nodes
        .iter()
        .map(|n| {
            let peer = peers.get(&n.public_key);
            let age = peer.and_then(|p| p.handshake_age);
            let (rx, tx) = stats.get(&n.public_key).copied().unwrap_or_default();
            NodeStatus {
                id: n.id.get(),
                name: n.name.clone(),
                this_node: me == Some(&n.public_key),
                authorised: true,
                peer_configured: peer.is_some(),
                tunnel_up: age.is_some_and(|a| a < RECENT_HANDSHAKE),
                handshake_age_s: age.map(|a| a.as_secs()),
                rx_bytes: rx,
                tx_bytes: tx,
                endpoint: peer
                    .and_then(|p| p.endpoint)
                    .or(n.endpoint)
                    .map(|e| e.to_string()),
            }
        })
        .collect()
}

/// Each service's drop counter in `table` (0 when there is no table or no counter).
fn dropped_counts(policy: &Policy, table: Option<&nft::ActualTable>) -> BTreeMap<String, u64> {
    policy
        .services
        .keys()
        .map(|s| {
            let packets = table
                .and_then(|t| t.counters.get(&counter_name(s)))
                .map_or(0, |c| c.0);
            (s.clone(), packets)
        })
        .collect()
}

/// `status` with the other tables' base chains read from the kernel.
pub fn with_other_chains(mut status: Status) -> Status {
    status.other_base_chains = nft::read_other_base_chains();
    status
}
