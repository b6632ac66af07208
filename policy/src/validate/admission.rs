//! The checks of `[[admission]]`: each key's master, roles, ranges and count, apart from every
//! other key's and from every node the policy lists.

use ipnet::IpNet;

use super::{Finding, finding, node_at};
use crate::model::{Admission, Policy, Role};
use crate::source::{FieldPath, path};

fn at(i: usize, key: &str) -> FieldPath {
    path(&["admission"]).index(i).key(key)
}

/// Whether two networks share an address.
pub fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether `net` lies inside the cluster's tunnel network of its family.
fn inside_tunnel(policy: &Policy, net: &IpNet) -> bool {
    let c = &policy.cluster;
    match net {
        IpNet::V4(n) => c.tunnel_ipv4.is_some_and(|t| t.contains(n)),
        IpNet::V6(n) => c.tunnel_ipv6.is_some_and(|t| t.contains(n)),
    }
}

pub(super) fn check_admissions(policy: &Policy, out: &mut Vec<Finding>) {
    let all = &policy.admissions;
    for (i, a) in all.iter().enumerate() {
        check_one(policy, i, a, out);
        for (j, b) in all[..i].iter().enumerate() {
            if a.master == b.master {
                out.push(finding(
                    at(i, "master"),
                    format!(
                        "master {} already has an admission key (admission[{j}])",
                        a.master
                    ),
                ));
            }
            if a.key == b.key {
                out.push(finding(
                    at(i, "key"),
                    format!("the same key as admission[{j}]: each master has its own"),
                ));
            }
            if a.ids.overlaps(&b.ids) {
                out.push(finding(
                    at(i, "ids"),
                    format!("ids {} overlap admission[{j}]'s {}", a.ids, b.ids),
                ));
            }
            for (k, net) in a.addresses.iter().enumerate() {
                if let Some(other) = b.addresses.iter().find(|o| nets_overlap(net, o)) {
                    out.push(finding(
                        at(i, "addresses").index(k),
                        format!("{net} overlaps admission[{j}]'s {other}"),
                    ));
                }
            }
        }
    }
    if all.is_empty() {
        return;
    }
    // No node the operator lists may sit in a key's ranges: a membership could claim it.
    for (n, node) in policy.nodes.iter().enumerate() {
        for (i, a) in all.iter().enumerate() {
            if a.ids.contains(node.id) {
                out.push(finding(
                    node_at(n, "id"),
                    format!("node id {} is in admission[{i}]'s ids {}", node.id, a.ids),
                ));
            }
            for (k, addr) in node.addresses.iter().enumerate() {
                if a.holds_address(*addr) {
                    out.push(finding(
                        node_at(n, "addresses").index(k),
                        format!("tunnel address {addr} is in admission[{i}]'s networks"),
                    ));
                }
            }
        }
    }
}

fn check_one(policy: &Policy, i: usize, a: &Admission, out: &mut Vec<Finding>) {
    let holder = policy.node_by_id(a.master);
    if !holder.is_some_and(|n| n.roles.contains(&Role::Master)) {
        out.push(finding(
            at(i, "master"),
            format!("node {} is no master of this policy", a.master),
        ));
    }
    if a.roles.is_empty() {
        out.push(finding(at(i, "roles"), "no role to admit"));
    }
    if a.roles.contains(&Role::Master) {
        out.push(finding(
            at(i, "roles"),
            "an admission key never admits masters: the operator adds them",
        ));
    }
    if a.max_nodes == 0 || usize::from(a.max_nodes) > a.ids.len() {
        out.push(finding(
            at(i, "max_nodes"),
            format!(
                "max_nodes must be 1-{} (the ids {} hold)",
                a.ids.len(),
                a.ids
            ),
        ));
    }
    if a.addresses.is_empty() {
        out.push(finding(
            at(i, "addresses"),
            "no network to hand addresses out of",
        ));
    }
    for (k, net) in a.addresses.iter().enumerate() {
        if !inside_tunnel(policy, net) {
            out.push(finding(
                at(i, "addresses").index(k),
                format!("{net} is not inside the cluster's tunnel network"),
            ));
        }
        if a.addresses[..k].iter().any(|o| nets_overlap(net, o)) {
            out.push(finding(
                at(i, "addresses").index(k),
                format!("{net} overlaps another of this key's networks"),
            ));
        }
    }
}
