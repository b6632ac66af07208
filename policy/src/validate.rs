//! Semantic checks that the schema alone cannot express.
//!
//! Each finding names the field it is about, so the caller can place it in the file.

use crate::parse::shown;
use std::net::IpAddr;

mod admission;

pub use admission::nets_overlap;

use jiff::Timestamp;

use crate::model::{Action, Node, Policy};
use crate::ports::PortSet;
use crate::source::{FieldPath, path};

/// One problem with a policy, before it is placed in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: FieldPath,
    pub message: String,
}

fn finding(path: FieldPath, message: impl Into<String>) -> Finding {
    Finding {
        path,
        message: message.into(),
    }
}

/// A name for clusters and nodes: what an operator types, what a log shows, what fits a hostname.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-')
}

/// Linux interface names: at most 15 bytes, no `/`, no whitespace.
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Why `ip` cannot be a node's LAN endpoint, if it cannot: no address (unspecified), this
/// machine's (loopback), many machines' (multicast, broadcast), no routable one
/// (link-local: the same on every link), or inside the cluster's own tunnel networks.
pub fn unusable_endpoint(policy: &Policy, ip: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("multicast or broadcast")
    } else if link_local {
        Some("link-local")
    } else if [
        policy.cluster.tunnel_ipv4.map(ipnet::IpNet::V4),
        policy.cluster.tunnel_ipv6.map(ipnet::IpNet::V6),
    ]
    .into_iter()
    .flatten()
    .any(|n| n.contains(&ip))
    {
        Some("inside the cluster's tunnel network")
    } else {
        None
    }
}

/// Checks `policy` as of `now`; an empty result means it is valid.
pub fn validate(policy: &Policy, now: Timestamp) -> Vec<Finding> {
    let mut out = Vec::new();
    check_all_but_nodes(policy, now, &mut out);
    check_nodes(policy, &mut out);
    out
}

/// What the checks of one node alone read besides the node: a node valid under one policy is
/// valid under another with the same context (the serial, expiry, firewall may differ).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCheckContext {
    tunnel_ipv4: Option<ipnet::Ipv4Net>,
    tunnel_ipv6: Option<ipnet::Ipv6Net>,
}

impl NodeCheckContext {
    pub fn of(policy: &Policy) -> Self {
        Self {
            tunnel_ipv4: policy.cluster.tunnel_ipv4,
            tunnel_ipv6: policy.cluster.tunnel_ipv6,
        }
    }
}

/// Above this many nodes not known, [`valid_with_known`] sorts like [`validate`]: comparing
/// each against every node costs more than that.
const FRESH_LIMIT: usize = 16;

/// Whether `policy` is valid as of `now`, given that the nodes marked in `known` come
/// unchanged from the last valid policy, with the same [`NodeCheckContext`], each at most once. Those
/// passed every check that looks at one node and were unique among themselves, so only the
/// other nodes are checked, each against every node: at 10,000 nodes and one change, a few
/// thousand comparisons instead of five sorts. The same answer as `validate(..).is_empty()`
/// (`tests::knowing_nodes_gives_the_answer_of_the_whole_check`).
pub fn valid_with_known(policy: &Policy, now: Timestamp, known: &[bool]) -> bool {
    if known.len() != policy.nodes.len() {
        return validate(policy, now).is_empty();
    }
    let fresh: Vec<usize> = known
        .iter()
        .enumerate()
        .filter_map(|(i, &k)| (!k).then_some(i))
        .collect();
    if fresh.len() > FRESH_LIMIT {
        return validate(policy, now).is_empty();
    }
    let mut out = Vec::new();
    check_all_but_nodes(policy, now, &mut out);
    let context = NodeCheckContext::of(policy);
    for &i in &fresh {
        let node = &policy.nodes[i];
        check_node(&context, i, node, &mut out);
        let own = &node.addresses;
        let repeated = own.iter().enumerate().any(|(j, a)| own[..j].contains(a));
        let clash = policy.nodes.iter().enumerate().any(|(j, other)| {
            j != i
                && (other.id == node.id
                    || other.name == node.name
                    || other.public_key == node.public_key
                    || (node.endpoint.is_some() && other.endpoint == node.endpoint)
                    || other.addresses.iter().any(|a| own.contains(a)))
        });
        if repeated || clash || !out.is_empty() {
            return false;
        }
    }
    out.is_empty()
}

/// Every check but the nodes': the cluster, services, firewall, certainty, hardening.
fn check_all_but_nodes(policy: &Policy, now: Timestamp, out: &mut Vec<Finding>) {
    check_cluster(policy, now, out);
    for (name, ports) in &policy.services {
        check_port_set(path(&["services", name]), name, ports, out);
        if !ports.roles.is_empty() {
            out.push(finding(
                path(&["services", name, "roles"]),
                "roles applies to [firewall.allow] entries only: services are open to every member",
            ));
        }
    }
    for (name, ports) in &policy.firewall.allow {
        check_port_set(path(&["firewall", "allow", name]), name, ports, out);
        check_not_a_service(policy, name, ports, out);
    }
    check_certainty(policy, out);
    check_hardening(policy, out);
    check_attestation(policy, out);
    admission::check_admissions(policy, out);
}

/// `[attestation]`: roles that must attest need a pinned image, and a quote interval that
/// fits within the freshness bound.
fn check_attestation(policy: &Policy, out: &mut Vec<Finding>) {
    let a = &policy.attestation;
    if !a.require.is_empty() && a.images.is_empty() {
        out.push(finding(
            path(&["attestation", "images"]),
            "attestation.require names roles but no image is pinned: every such node would be quarantined (pin the PCR 4 value drone build --uki prints)",
        ));
    }
    if a.interval.is_zero() {
        out.push(finding(
            path(&["attestation", "interval"]),
            "interval must be longer than 0s",
        ));
    } else if a.within < a.interval + policy.distribution.heartbeat * 2 {
        out.push(finding(
            path(&["attestation", "within"]),
            "within must be at least one quote interval and two heartbeats (one lost datagram is not a failed quote)",
        ));
    } else if a.within > MAX_WITHIN {
        out.push(finding(
            path(&["attestation", "within"]),
            format!(
                "within must be at most {} (one quote must not vouch for a node for longer)",
                crate::model::duration::format(&MAX_WITHIN)
            ),
        ));
    }
    // A node that must attest with no key pinned would be quarantined at its first
    // heartbeat: said here, where the operator can pin it (joins pin it themselves).
    for (i, n) in policy.nodes.iter().enumerate() {
        if a.required_of(&n.roles) && n.attestation_key.is_none() {
            out.push(finding(
                node_at(i, "attestation_key"),
                format!(
                    "node {} ({}) must attest ([attestation] require) but has no attestation_key: pin its TPM's key (tyd tpm key on that machine prints it)",
                    n.id, n.name
                ),
            ));
        }
    }
}

/// The longest `[attestation] within`.
pub const MAX_WITHIN: std::time::Duration = std::time::Duration::from_secs(600);

fn check_cluster(policy: &Policy, now: Timestamp, out: &mut Vec<Finding>) {
    let c = &policy.cluster;
    if !valid_name(&c.name) {
        out.push(finding(
            path(&["cluster", "name"]),
            format!(
                "cluster name {} must be 1-63 letters, digits, '-' or '_'",
                shown(&c.name)
            ),
        ));
    }
    if c.serial == 0 {
        out.push(finding(
            path(&["cluster", "serial"]),
            "serial must be greater than 0",
        ));
    }
    check_ports(policy, out);
    check_timing(policy, now, out);
    if c.parents.len() > crate::model::MAX_PARENTS {
        out.push(finding(
            path(&["cluster", "parents"]),
            format!(
                "{} parents; at most {} are kept",
                c.parents.len(),
                crate::model::MAX_PARENTS
            ),
        ));
    }
    if !valid_interface_name(&c.interface) {
        out.push(finding(
            path(&["cluster", "interface"]),
            format!(
                "interface name {} must be 1-15 letters, digits, '-', '_' or '.'",
                shown(&c.interface)
            ),
        ));
    }
    if c.listen_port == 0 {
        out.push(finding(
            path(&["cluster", "listen_port"]),
            "listen_port must not be 0",
        ));
    }
    if c.tunnel_ipv4.is_none() && c.tunnel_ipv6.is_none() {
        out.push(finding(
            path(&["cluster"]),
            "at least one of tunnel_ipv4 and tunnel_ipv6 is required",
        ));
    }
}

/// The distribution and join ports: set, apart from the WireGuard port and each other,
/// and the join port open to the LAN on every node.
fn check_ports(policy: &Policy, out: &mut Vec<Finding>) {
    let c = &policy.cluster;
    let d = &policy.distribution;
    if d.port == 0 || d.port == c.listen_port {
        out.push(finding(
            path(&["distribution", "port"]),
            format!(
                "distribution port {} must be set and differ from the WireGuard port",
                d.port
            ),
        ));
    }
    if let Some(j) = &policy.join {
        let open =
            policy.firewall.allow.values().any(|ports| {
                ports.roles.is_empty() && ports.tcp.iter().any(|r| r.contains(j.port))
            });
        if j.port == 0 || j.port == c.listen_port || j.port == d.port {
            out.push(finding(
                path(&["join", "port"]),
                format!(
                    "join port {} must be set and differ from the WireGuard and distribution ports",
                    j.port
                ),
            ));
        } else if !open {
            out.push(finding(
                path(&["join", "port"]),
                format!(
                    "join port {} is not open to the LAN on every node: add it to [firewall.allow] \
                     ([firewall.allow.join] tcp = [{}], no roles)",
                    j.port, j.port
                ),
            ));
        }
    }
}

/// The heartbeat and how long silence lasts before quarantine, and the policy's expiry.
fn check_timing(policy: &Policy, now: Timestamp, out: &mut Vec<Finding>) {
    let (c, d) = (&policy.cluster, &policy.distribution);
    if d.heartbeat.is_zero() {
        out.push(finding(
            path(&["distribution", "heartbeat"]),
            "heartbeat must be longer than 0s",
        ));
    } else if d.quarantine_after < d.heartbeat * 2 {
        out.push(finding(
            path(&["distribution", "quarantine_after"]),
            "quarantine_after must be at least two heartbeats (one lost datagram is not silence)",
        ));
    }
    if c.expires <= now {
        out.push(finding(
            path(&["cluster", "expires"]),
            format!("policy expired at {}", c.expires),
        ));
    }
}

fn check_port_set(at: FieldPath, name: &str, ports: &PortSet, out: &mut Vec<Finding>) {
    if !valid_name(name) {
        out.push(finding(
            at.clone(),
            format!("name {} must be letters, digits, '-' or '_'", shown(name)),
        ));
    }
    if ports.is_empty() {
        out.push(finding(
            at,
            format!("{} lists no tcp or udp ports", shown(name)),
        ));
    }
}

/// A port is either open to the LAN or a service (members only, through the tunnels), never
/// both: netguard lets replies from allow-listed ports leave to any port, so an allow-listed
/// service port would let that service's traffic leave beside the tunnel.
fn check_not_a_service(policy: &Policy, name: &str, allow: &PortSet, out: &mut Vec<Finding>) {
    for (proto, open) in [("tcp", &allow.tcp), ("udp", &allow.udp)] {
        for (service, ports) in &policy.services {
            let members_only = if proto == "tcp" {
                &ports.tcp
            } else {
                &ports.udp
            };
            for a in open {
                if let Some(s) = members_only.iter().find(|s| s.overlaps(a)) {
                    out.push(finding(
                        path(&["firewall", "allow", name, proto]),
                        format!(
                            "{proto} {a} overlaps service {}'s {s}: a service port is open to members through the tunnels only, never to the LAN",
                            shown(service)
                        ),
                    ));
                }
            }
        }
    }
}

fn check_certainty(policy: &Policy, out: &mut Vec<Finding>) {
    let c = &policy.certainty;
    let at = |k: &str| path(&["certainty", k]);
    if c.interval.is_zero() {
        out.push(finding(at("interval"), "interval must be greater than 0"));
    }
    if c.content_every == 0 {
        out.push(finding(
            at("content_every"),
            "content_every must be at least 1",
        ));
    }
    if c.action == Action::Exec && c.exec.is_none() {
        out.push(finding(
            at("action"),
            "action \"exec\" needs an exec hook path",
        ));
    }
    if let Some(hook) = &c.exec
        && !hook.is_absolute()
    {
        out.push(finding(at("exec"), "exec hook must be an absolute path"));
    }
    if !c.root.is_absolute() {
        out.push(finding(at("root"), "root must be an absolute path"));
    }
    if c.source != "tree" {
        match c.source.strip_prefix("device:") {
            Some(dev) if dev.starts_with('/') => {}
            _ => out.push(finding(
                at("source"),
                format!(
                    "source {} must be \"tree\" or \"device:/dev/NAME\"",
                    shown(&c.source)
                ),
            )),
        }
    }
    if let Some(hash) = &c.expected_root
        && (hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        out.push(finding(
            at("expected_root"),
            "expected_root must be 64 hex digits (a BLAKE3 hash)",
        ));
    }
}

/// A sysctl name as `sysctl(8)` writes it: dotted words (no '/', so nothing can leave
/// /proc/sys).
pub fn valid_sysctl_name(name: &str) -> bool {
    name.len() <= 128
        && name.split('.').count() >= 2
        && name.split('.').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

fn check_hardening(policy: &Policy, out: &mut Vec<Finding>) {
    for (name, value) in &policy.hardening.sysctl {
        let at = path(&["hardening", "sysctl", name]);
        if !valid_sysctl_name(name) {
            out.push(finding(
                at,
                format!(
                    "{} is not a sysctl name (dotted words of letters, digits, '_', '-')",
                    shown(name)
                ),
            ));
        } else if name == "kernel.modules_disabled" {
            out.push(finding(
                at,
                "use hardening.lock_modules: modules must be locked after the drone's own are loaded",
            ));
        } else if value.is_empty() || value.len() > 256 || value.chars().any(|c| c.is_control()) {
            out.push(finding(
                at,
                format!("sysctl value {value:?} must be 1-256 printable characters"),
            ));
        }
    }
}

/// Reports every value seen twice, pointing at each later occurrence: `items` are
/// (node index, value), and `field` is the node's key the value is at. Sorted rather than
/// hashed: a 10,000-node policy is checked in a fraction of the time.
fn check_unique<T: Ord + std::fmt::Display>(
    items: impl Iterator<Item = (usize, T)>,
    field: &str,
    what: &str,
    out: &mut Vec<Finding>,
) {
    let mut sorted: Vec<(T, usize)> = items.map(|(index, value)| (value, index)).collect();
    sorted.sort_unstable();
    for (value, index, first) in repeats(&sorted) {
        out.push(finding(
            node_at(index, field),
            format!("duplicate {what} {value} (also used by node[{first}])"),
        ));
    }
}

/// In `sorted` (value, position) pairs, each pair whose value came before: (value, its
/// position, the first position of that value).
fn repeats<T: PartialEq, P: Copy>(sorted: &[(T, P)]) -> impl Iterator<Item = (&T, P, P)> {
    let mut first: Option<(&T, P)> = None;
    sorted.iter().filter_map(move |(value, at)| match first {
        Some((seen, from)) if seen == value => Some((value, *at, from)),
        _ => {
            first = Some((value, *at));
            None
        }
    })
}

/// `node[i].key`. Made only for a finding: a 10,000-node policy has 60,000 fields.
fn node_at(i: usize, key: &str) -> FieldPath {
    path(&["node"]).index(i).key(key)
}

fn check_nodes(policy: &Policy, out: &mut Vec<Finding>) {
    let nodes = &policy.nodes;
    let indexed = || nodes.iter().enumerate();
    check_unique(indexed().map(|(i, n)| (i, n.id)), "id", "node id", out);
    check_unique(
        indexed().map(|(i, n)| (i, n.name.as_str())),
        "name",
        "node name",
        out,
    );
    check_unique(
        indexed().map(|(i, n)| (i, n.public_key)),
        "public_key",
        "public key",
        out,
    );
    check_unique(
        indexed().filter_map(|(i, n)| n.endpoint.map(|e| (i, e))),
        "endpoint",
        "endpoint",
        out,
    );
    // One TPM is one machine: two entries with one attestation key are one node twice.
    check_unique(
        indexed().filter_map(|(i, n)| n.attestation_key.as_ref().map(|k| (i, k.to_string()))),
        "attestation_key",
        "attestation key",
        out,
    );
    // Addresses are numbered by their own position, since one node has several.
    let address_at = |(i, j): (usize, usize)| node_at(i, "addresses").index(j);
    let mut addresses: Vec<(IpAddr, (usize, usize))> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        for (j, addr) in node.addresses.iter().enumerate() {
            addresses.push((*addr, (i, j)));
        }
    }
    addresses.sort_unstable();
    for (addr, at, (first, _)) in repeats(&addresses) {
        let message = if at.0 == first {
            format!("tunnel address {addr} is listed twice")
        } else {
            format!("duplicate tunnel address {addr} (also used by node[{first}])")
        };
        out.push(finding(address_at(at), message));
    }
    let context = NodeCheckContext::of(policy);
    for (i, node) in nodes.iter().enumerate() {
        check_node(&context, i, node, out);
    }
}

/// The checks that look at one node alone: they read nothing of the policy but `context`.
fn check_node(context: &NodeCheckContext, i: usize, node: &Node, out: &mut Vec<Finding>) {
    for (j, addr) in node.addresses.iter().enumerate() {
        if let Some(message) = outside_tunnel(context, *addr) {
            out.push(finding(node_at(i, "addresses").index(j), message));
        }
    }
    if !valid_name(&node.name) {
        out.push(finding(
            node_at(i, "name"),
            format!(
                "node name {} must be 1-63 letters, digits, '-' or '_'",
                shown(&node.name)
            ),
        ));
    }
    if node.addresses.is_empty() {
        out.push(finding(
            node_at(i, "addresses"),
            format!("node {} ({}) has no tunnel address", node.id, node.name),
        ));
    }
    if let Some(endpoint) = node.endpoint
        && endpoint.port() == 0
    {
        out.push(finding(
            node_at(i, "endpoint"),
            "endpoint port must not be 0",
        ));
    }
}

/// Why `addr` cannot be a tunnel address of this cluster, if it cannot.
fn outside_tunnel(c: &NodeCheckContext, addr: IpAddr) -> Option<String> {
    match addr {
        IpAddr::V4(a) => match c.tunnel_ipv4 {
            Some(net) if net.contains(&a) => None,
            Some(net) => Some(format!("address {a} is outside the tunnel network {net}")),
            None => Some(format!(
                "address {a} is IPv4 but the cluster has no tunnel_ipv4"
            )),
        },
        IpAddr::V6(a) => match c.tunnel_ipv6 {
            Some(net) if net.contains(&a) => None,
            Some(net) => Some(format!("address {a} is outside the tunnel network {net}")),
            None => Some(format!(
                "address {a} is IPv6 but the cluster has no tunnel_ipv6"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeId, Role};
    use proptest::prelude::*;
    use std::net::SocketAddr;

    const PREAMBLE: &str = "[cluster]\nname = \"t\"\nserial = 1\nexpires = 2030-01-01T00:00:00Z\ntunnel_ipv4 = \"10.77.0.0/24\"\n";

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().expect("an instant")
    }

    /// Nodes from small domains, so that clashes and bad values are common.
    fn node() -> impl Strategy<Value = Node> {
        let address = prop_oneof![
            Just("10.77.0.1"),
            Just("10.77.0.2"),
            Just("10.77.0.3"),
            Just("10.77.0.4"),
            Just("10.99.0.1"),
            Just("fd00::1"),
        ]
        .prop_map(|a| a.parse::<IpAddr>().expect("an address"));
        (
            1u16..6,
            prop_oneof![Just("a"), Just("b"), Just("c"), Just("d"), Just("bad name")],
            1u8..6,
            prop_oneof![
                2 => Just(None),
                1 => Just(Some("192.0.2.1:51820")),
                1 => Just(Some("192.0.2.2:51820")),
                1 => Just(Some("192.0.2.1:0")),
            ],
            proptest::collection::vec(address, 0..3),
        )
            .prop_map(|(id, name, key, endpoint, addresses)| Node {
                id: NodeId::new(id).expect("not 0"),
                name: name.to_string(),
                public_key: crate::WgPublicKey::from_bytes([key; 32]),
                endpoint: endpoint.map(|e| e.parse::<SocketAddr>().expect("an endpoint")),
                addresses,
                roles: vec![Role::Drone],
                expires: None,
                attestation_key: None,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The last valid policy's nodes (each kept or dropped, some used twice), with fresh
        /// ones among them, in any order: the quick check says valid exactly when the whole
        /// check finds nothing.
        #[test]
        fn knowing_nodes_gives_the_answer_of_the_whole_check(
            candidates in proptest::collection::vec(node(), 0..8),
            keep in proptest::collection::vec(0u8..3, 8),
            fresh in proptest::collection::vec(node(), 0..4),
            order in proptest::collection::vec(any::<u16>(), 24),
        ) {
            let mut last: Policy = toml::from_str(PREAMBLE).expect("the preamble parses");
            for n in candidates {
                last.nodes.push(n);
                if !validate(&last, now()).is_empty() {
                    last.nodes.pop();
                }
            }
            // 0: dropped, 1: kept, 2: kept and used a second time (which vouches once).
            let mut marked: Vec<(Node, bool)> = Vec::new();
            for (n, k) in last.nodes.iter().zip(&keep) {
                if *k >= 1 {
                    marked.push((n.clone(), true));
                }
                if *k == 2 {
                    marked.push((n.clone(), false));
                }
            }
            marked.extend(fresh.into_iter().map(|n| (n, false)));
            let mut keyed: Vec<(u16, (Node, bool))> = order.into_iter().zip(marked).collect();
            keyed.sort_by_key(|(k, _)| *k);
            let mut policy = last.clone();
            policy.nodes = keyed.iter().map(|(_, (n, _))| n.clone()).collect();
            let known: Vec<bool> = keyed.iter().map(|(_, (_, k))| *k).collect();
            prop_assert_eq!(
                valid_with_known(&policy, now(), &known),
                validate(&policy, now()).is_empty()
            );
        }
    }
}
