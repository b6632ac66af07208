//! The policy `tyd policy init` writes: what CHAOS allowed, made explicit and commented.

use jiff::Timestamp;

/// A new cluster policy with no nodes yet; `expires` is when it stops being accepted.
// Long on purpose: the body is one literal, the commented policy file exactly as the
// operator will read it.
pub fn init_template(cluster: &str, expires: Timestamp) -> String {
    let expires = expires.round(jiff::Unit::Second).unwrap_or(expires);
    format!(
        r#"# Cluster policy. Sign it with `tyd policy sign`; nodes refuse it unsigned.
# Add nodes with `tyd node add`.

[cluster]
name = "{cluster}"
# Raised on every change; nodes never go back to a lower serial.
serial = 1
# After this instant nodes refuse the policy: re-sign before then.
expires = "{expires}"
interface = "tyd0"
listen_port = 51820
tunnel_ipv4 = "10.77.0.0/24"
tunnel_ipv6 = "fd77:7d00::/64"
# Accept WireGuard handshakes only from the endpoints listed below.
allow_roaming = false

# Traffic that may only flow between authenticated nodes, inside the tunnels.
# openMosix: tcp 723 (mosix protocol) and 4660 (info), udp 5000-5700 (migration).
[services.openmosix]
tcp = [723, 4660]
udp = ["5000-5700"]

# Everything else arriving on a node: dropped unless allowed here (CHAOS allowed these).
[firewall]
default = "drop"
# IPv6 router advertisements and ICMP redirects from the LAN are dropped: a rogue one could
# claim the tunnel network. Set to true only on a LAN you trust.
accept_router_advertisements = false

[firewall.allow.ssh]
tcp = [22]

[firewall.allow.dhcp]
udp = [68]

[firewall.allow.ntp]
udp = [123]

# tyd join: authenticated by a join token (Noise), open to the LAN so new nodes can ask
# (udp: `tyd join any` finding a member).
[firewall.allow.join]
tcp = [7947]
udp = [7947]

# certaintyd: integrity of the RAM root filesystem.
[certainty]
root = "/"
source = "tree"
interval = "2s"
grace = "30s"
# reboot | poweroff | exec | alert
action = "reboot"
# Keys (base64 ed25519) that may sign maintenance windows.
maintenance_keys = []
max_maintenance = "1h"

[hardening]
# The recommended boot-time sysctls (docs/policy.md lists them); `sysctl` adds or overrides.
recommended = true
sysctl = {{}}
# kernel.modules_disabled = 1 once the drone's own modules are loaded.
lock_modules = true
# Kernel lockdown raised at boot: none | integrity | confidentiality.
lockdown = "integrity"

# clusterd: members pass the signed policy and their own heartbeats to each other through
# the tunnels on this port (UDP and TCP; guarded like the services).
[distribution]
port = 7946
heartbeat = "1s"
# Services are taken from a node that reports lost integrity, whose certaintyd does not
# answer, whose root is not the pinned one, or that is silent this long; its tunnel stays.
quarantine = true
quarantine_after = "5s"
# Who must run certaintyd: true (every node), false, or roles, e.g. ["drone"] when masters
# run on ordinary disks (tyd init chooses by its own root).
require_certainty = true

# Joining with one command (tyd join): masters admit nodes that hold a join token; other
# members relay to a master through the tunnels. Remove this section to add nodes only by
# hand (tyd node add); the port must be in [firewall.allow].
[join]
port = 7947
"#
    )
}

/// An `[[admission]]` table as `tyd init` and `tyd master add` write it, commented.
pub fn admission_block(a: &crate::model::Admission) -> String {
    let roles: Vec<String> = a.roles.iter().map(|r| format!("{:?}", r.name())).collect();
    let nets: Vec<String> = a.addresses.iter().map(|n| format!("\"{n}\"")).collect();
    let expires = a.expires.round(jiff::Unit::Second).unwrap_or(a.expires);
    format!(
        r#"# Master {master} admits nodes with its own admission key, within these limits, and signs
# only the list of the nodes it admitted (its membership): never this policy.
[[admission]]
master = {master}
key = "{key}"
roles = [{roles}]
ids = "{ids}"
addresses = [{nets}]
max_nodes = {max}
expires = "{expires}"
{revoked}"#,
        master = a.master,
        key = a.key,
        roles = roles.join(", "),
        ids = a.ids,
        nets = nets.join(", "),
        max = a.max_nodes,
        revoked = if a.revoked.is_empty() {
            String::new()
        } else {
            let keys: Vec<String> = a.revoked.iter().map(|k| format!("\"{k}\"")).collect();
            format!("revoked = [{}]\n", keys.join(", "))
        },
    )
}

/// The limits `tyd init` gives the first master's admission key in a policy made from the
/// template: ids 100-199, and in each tunnel network the block it hands addresses from
/// (the third quarter of an IPv4 network, at most a /26 from it; `::1:0/112` of an IPv6
/// one), as many nodes as the IPv4 block holds. `None` when a tunnel network is too small.
pub fn first_admission(
    policy: &crate::Policy,
    master: crate::NodeId,
    key: crate::OperatorPublicKey,
    roles: Vec<crate::Role>,
    expires: Timestamp,
) -> Option<crate::model::Admission> {
    use ipnet::{IpNet, Ipv4Net, Ipv6Net};
    let mut addresses = Vec::new();
    let mut hosts = usize::from(u16::MAX);
    if let Some(net) = policy.cluster.tunnel_ipv4 {
        let prefix = net.prefix_len().max(24) + 2;
        if prefix > 30 {
            return None;
        }
        let size = 1u32 << (32 - prefix);
        let start = u32::from(net.network()) + 2 * size;
        let block = Ipv4Net::new(start.into(), prefix).ok()?;
        hosts = block.hosts().count();
        addresses.push(IpNet::V4(block));
    }
    if let Some(net) = policy.cluster.tunnel_ipv6 {
        if net.prefix_len() > 112 {
            return None;
        }
        let start = u128::from(net.network()) + (1u128 << 16);
        addresses.push(IpNet::V6(Ipv6Net::new(start.into(), 112).ok()?));
    }
    let ids = crate::model::IdRange::try_from("100-199".to_string()).ok()?;
    Some(crate::model::Admission {
        master,
        key,
        roles,
        ids,
        addresses,
        max_nodes: u16::try_from(hosts.min(ids.len())).ok()?,
        expires,
        revoked: Vec::new(),
    })
}
