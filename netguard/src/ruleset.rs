//! The firewall as data: one table, `inet netguard`, whose rules never change with the node
//! map; peers live in named sets, so a node joining or leaving is a set-element edit.
//!
//! Rule order matters for revocation: service ports are judged before `ct state established`
//! is accepted, so a removed peer loses its open connections too, not just new ones.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use policy::{Policy, PortRange, PortSet, Posture, Verified, WgPublicKey};
use serde_json::{Value, json};

use crate::desired::DesiredPeer;

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "netguard";

/// The named sets whose elements follow the node map.
pub const SETS: [(&str, &str); 4] = [
    ("peers4", "ipv4_addr"),
    ("peers6", "ipv6_addr"),
    ("endpoints4", "ipv4_addr"),
    ("endpoints6", "ipv6_addr"),
];

/// Everything the ruleset depends on. The rules come from all but the set elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetSpec {
    pub interface: String,
    pub listen_port: u16,
    pub roaming: bool,
    pub posture: Posture,
    pub services: BTreeMap<String, PortSet>,
    pub allow: BTreeMap<String, PortSet>,
    /// Set name to elements (addresses as text, sorted).
    pub elements: BTreeMap<&'static str, BTreeSet<String>>,
}

impl RulesetSpec {
    pub fn new(
        policy: &Verified<Policy>,
        interface: &str,
        peers: &BTreeMap<WgPublicKey, DesiredPeer>,
    ) -> Self {
        let mut elements: BTreeMap<&'static str, BTreeSet<String>> =
            SETS.iter().map(|(n, _)| (*n, BTreeSet::new())).collect();
        for p in peers.values() {
            for a in &p.allowed_ips {
                let set = if a.addr.is_ipv4() { "peers4" } else { "peers6" };
                elements.entry(set).or_default().insert(a.addr.to_string());
            }
            if let Some(ep) = p.endpoint {
                let set = if ep.ip().is_ipv4() {
                    "endpoints4"
                } else {
                    "endpoints6"
                };
                elements.entry(set).or_default().insert(canonical(ep.ip()));
            }
        }
        Self {
            interface: interface.to_string(),
            listen_port: policy.cluster.listen_port,
            roaming: policy.cluster.allow_roaming,
            posture: policy.firewall.default,
            services: policy.services.clone(),
            allow: policy.firewall.allow.clone(),
            elements,
        }
    }

    /// The protective ruleset, for a node with no verified policy: nothing new gets in, no
    /// service port is open, the node can still get an address (DHCP replies).
    pub fn protective() -> Self {
        Self {
            interface: String::new(),
            listen_port: 0,
            roaming: false,
            posture: Posture::Drop,
            services: BTreeMap::new(),
            allow: BTreeMap::new(),
            elements: SETS.iter().map(|(n, _)| (*n, BTreeSet::new())).collect(),
        }
    }

    /// Identifies the rules (not the set elements). Every rule carries it in its comment
    /// (`ng:N:TAG`; nft 1.0.6 does not return table comments in JSON), so one read-back shows
    /// whether the rules are ours, current, complete and in order.
    pub fn tag(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(
            serde_json::to_string(&self.rules())
                .unwrap_or_default()
                .as_bytes(),
        );
        h.finalize().to_hex()[..16].to_string()
    }

    /// The rule comments a read-back must find, in order.
    pub fn rule_comments(&self) -> Vec<String> {
        let tag = self.tag();
        (0..self.rules().len())
            .map(|i| format!("ng:{i}:{tag}"))
            .collect()
    }

    /// The rules, in order, by chain.
    pub fn rules(&self) -> Vec<(&'static str, Vec<Value>)> {
        let mut input: Vec<Vec<Value>> = Vec::new();
        let mut output: Vec<Vec<Value>> = Vec::new();
        // 1. Service ports: only from peers, only through the tunnel; counted and dropped
        //    everywhere else. Before `established`, so revocation cuts open flows.
        for (name, ports) in &self.services {
            for (proto, ranges) in [("tcp", &ports.tcp), ("udp", &ports.udp)] {
                if ranges.is_empty() {
                    continue;
                }
                let dport = m_dport(proto, ranges);
                if !self.interface.is_empty() {
                    for (family, set) in [("ip", "peers4"), ("ip6", "peers6")] {
                        input.push(vec![
                            m_iifname(&self.interface),
                            dport.clone(),
                            m_saddr_set(family, set),
                            json!({"accept": null}),
                        ]);
                    }
                }
                input.push(vec![
                    dport.clone(),
                    json!({"counter": counter_name(name)}),
                    json!({"drop": null}),
                ]);
                // Never let cluster traffic leave in clear text beside the tunnel.
                let mut out = vec![m_dport(proto, ranges)];
                if !self.interface.is_empty() {
                    out.push(json!({"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": self.interface}}));
                }
                out.push(json!({"drop": null}));
                output.push(out);
            }
        }
        // 2. Loopback, established flows, invalid packets.
        input.push(vec![m_iifname("lo"), json!({"accept": null})]);
        input.push(vec![
            m_ct_state(&["established", "related"]),
            json!({"accept": null}),
        ]);
        input.push(vec![m_ct_state(&["invalid"]), json!({"drop": null})]);
        // 3. WireGuard handshakes from peer endpoints (or anywhere, when roaming is allowed).
        if self.listen_port != 0 {
            let port = json!({"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": self.listen_port}});
            if self.roaming {
                input.push(vec![port, json!({"accept": null})]);
            } else {
                for (family, set) in [("ip", "endpoints4"), ("ip6", "endpoints6")] {
                    input.push(vec![
                        port.clone(),
                        m_saddr_set(family, set),
                        json!({"accept": null}),
                    ]);
                }
            }
        }
        // 4. ICMP (path MTU) and ICMPv6 (neighbour discovery cannot work without it).
        input.push(vec![m_l4proto("icmp"), json!({"accept": null})]);
        input.push(vec![m_l4proto("ipv6-icmp"), json!({"accept": null})]);
        // 5. DHCP replies, so a node can always get its address.
        input.push(vec![
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "sport"}}, "right": 67}}),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 68}}),
            json!({"accept": null}),
        ]);
        // 6. The allow list, open to the LAN.
        for ports in self.allow.values() {
            for (proto, ranges) in [("tcp", &ports.tcp), ("udp", &ports.udp)] {
                if !ranges.is_empty() {
                    input.push(vec![m_dport(proto, ranges), json!({"accept": null})]);
                }
            }
        }
        // 7. Everything else: the base posture, counted.
        input.push(vec![
            json!({"counter": "unmatched"}),
            posture_verdict(self.posture),
        ]);
        let mut all: Vec<(&'static str, Vec<Value>)> =
            input.into_iter().map(|r| ("input", r)).collect();
        all.extend(output.into_iter().map(|r| ("output", r)));
        all
    }

    /// Named counters: one per service (what non-peers tried), and one for the rest.
    pub fn counters(&self) -> Vec<String> {
        let mut c: Vec<String> = self.services.keys().map(|n| counter_name(n)).collect();
        c.push("unmatched".into());
        c
    }

    /// The whole table as one `nft -j` batch: add, delete, add again (so it works whether or
    /// not the table exists, in one transaction), then sets, counters, chains, rules.
    pub fn full_batch(&self) -> Value {
        let mut cmds = vec![
            json!({"add": {"table": {"family": FAMILY, "name": TABLE}}}),
            json!({"delete": {"table": {"family": FAMILY, "name": TABLE}}}),
            json!({"add": {"table": {"family": FAMILY, "name": TABLE, "comment": format!("netguard {}", self.tag())}}}),
        ];
        for (name, ty) in SETS {
            cmds.push(json!({"add": {"set": {"family": FAMILY, "table": TABLE, "name": name, "type": ty}}}));
            let elems: Vec<&String> = self
                .elements
                .get(name)
                .map(|e| e.iter().collect())
                .unwrap_or_default();
            if !elems.is_empty() {
                cmds.push(json!({"add": {"element": {"family": FAMILY, "table": TABLE, "name": name, "elem": elems}}}));
            }
        }
        for c in self.counters() {
            cmds.push(json!({"add": {"counter": {"family": FAMILY, "table": TABLE, "name": c}}}));
        }
        cmds.push(
            json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": "input",
            "type": "filter", "hook": "input", "prio": -10, "policy": "drop"}}}),
        );
        cmds.push(
            json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": "output",
            "type": "filter", "hook": "output", "prio": -10, "policy": "accept"}}}),
        );
        for ((chain, expr), comment) in self.rules().into_iter().zip(self.rule_comments()) {
            cmds.push(
                json!({"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain,
                "expr": expr, "comment": comment}}}),
            );
        }
        json!({"nftables": cmds})
    }

    /// Set-element edits from `actual` to these elements, or `None` when nothing differs.
    pub fn element_batch(&self, actual: &BTreeMap<String, BTreeSet<String>>) -> Option<Value> {
        let mut cmds = Vec::new();
        for (name, want) in &self.elements {
            let empty = BTreeSet::new();
            let have = actual.get(*name).unwrap_or(&empty);
            let add: Vec<&String> = want.difference(have).collect();
            let del: Vec<&String> = have.difference(want).collect();
            if !del.is_empty() {
                cmds.push(json!({"delete": {"element": {"family": FAMILY, "table": TABLE, "name": name, "elem": del}}}));
            }
            if !add.is_empty() {
                cmds.push(json!({"add": {"element": {"family": FAMILY, "table": TABLE, "name": name, "elem": add}}}));
            }
        }
        (!cmds.is_empty()).then(|| json!({"nftables": cmds}))
    }
}

fn canonical(ip: IpAddr) -> String {
    ip.to_string()
}

pub fn counter_name(service: &str) -> String {
    format!("svc_{service}")
}

fn posture_verdict(p: Posture) -> Value {
    match p {
        Posture::Drop => json!({"drop": null}),
        Posture::Accept => json!({"accept": null}),
    }
}

fn m_iifname(name: &str) -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": name}})
}

fn m_l4proto(proto: &str) -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": proto}})
}

fn m_ct_state(states: &[&str]) -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": states}})
}

fn m_saddr_set(family: &str, set: &str) -> Value {
    json!({"match": {"op": "==", "left": {"payload": {"protocol": family, "field": "saddr"}}, "right": format!("@{set}")}})
}

fn m_dport(proto: &str, ranges: &[PortRange]) -> Value {
    let elems: Vec<Value> = ranges
        .iter()
        .map(|r| {
            if r.start() == r.end() {
                json!(r.start())
            } else {
                json!({"range": [r.start(), r.end()]})
            }
        })
        .collect();
    json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": {"set": elems}}})
}
