//! The firewall as data: one table, `inet netguard`, whose rules never change with the node
//! map; peers live in named sets, so a node joining or leaving is a set-element edit.
//!
//! Rule order matters for revocation: service ports are judged before `ct state established`
//! is accepted, so a removed peer loses its open connections too, not just new ones.
//!
//! Every expression is written in the form nft itself prints it back (a one-element set is
//! the element), so what the kernel holds can be compared with what should be, object by
//! object and expression by expression ([`RulesetSpec::drift`]): a rule replaced in place
//! with a copied comment is still seen.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use policy::{PortRange, PortSet, Posture, WgPublicKey};
use serde_json::{Value, json};

use crate::desired::DesiredPeer;

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "netguard";

/// The named sets whose elements follow the node map. `peers` may use the services (members
/// not in quarantine); `members` may use the distribution port (every member, so a
/// quarantined node can still report that it is well again).
pub const SETS: [(&str, &str); 6] = [
    ("peers4", "ipv4_addr"),
    ("peers6", "ipv6_addr"),
    ("members4", "ipv4_addr"),
    ("members6", "ipv6_addr"),
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
    /// The tunnel networks: nothing addressed to them may leave, and nothing from them may
    /// arrive, on any interface but the tunnel.
    pub tunnel4: Option<Ipv4Net>,
    pub tunnel6: Option<Ipv6Net>,
    /// Router advertisements and redirects from the LAN are dropped unless the policy allows.
    pub accept_router_advertisements: bool,
    /// clusterd's port (heartbeats and policy fetch), open to every member through the tunnel.
    pub distribution_port: u16,
    /// Set name to elements.
    pub elements: BTreeMap<&'static str, BTreeSet<IpAddr>>,
}

impl RulesetSpec {
    /// `roles`: this node's, for allow-list entries open on some roles only.
    pub fn new(
        policy: &impl policy::Checked,
        interface: &str,
        peers: &BTreeMap<WgPublicKey, DesiredPeer>,
        roles: &[policy::Role],
    ) -> Self {
        // Gathered, sorted once, then split by family (every IPv4 address sorts before every
        // IPv6 one): the sets are built from sorted input, which they only check.
        let (mut tunnel, mut endpoints) = (Vec::new(), Vec::new());
        for p in peers.values() {
            tunnel.extend(p.allowed_ips.iter().map(|a| a.addr));
            endpoints.extend(p.endpoint.map(|e| e.ip()));
        }
        let by_family = |mut addrs: Vec<IpAddr>| -> (BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
            addrs.sort_unstable();
            let v6 = addrs.partition_point(IpAddr::is_ipv4);
            let six = addrs.split_off(v6);
            (addrs.into_iter().collect(), six.into_iter().collect())
        };
        let (tunnel4, tunnel6) = by_family(tunnel);
        let (endpoints4, endpoints6) = by_family(endpoints);
        let elements = BTreeMap::from([
            ("peers4", tunnel4.clone()),
            ("peers6", tunnel6.clone()),
            ("members4", tunnel4),
            ("members6", tunnel6),
            ("endpoints4", endpoints4),
            ("endpoints6", endpoints6),
        ]);
        Self {
            interface: interface.to_string(),
            listen_port: policy.cluster.listen_port,
            roaming: policy.cluster.allow_roaming,
            posture: policy.firewall.default,
            services: policy.services.clone(),
            allow: policy
                .firewall
                .allow
                .iter()
                .filter(|(_, ports)| ports.open_on(roles))
                .map(|(name, ports)| (name.clone(), ports.clone()))
                .collect(),
            tunnel4: policy.cluster.tunnel_ipv4.map(|n| n.trunc()),
            tunnel6: policy.cluster.tunnel_ipv6.map(|n| n.trunc()),
            accept_router_advertisements: policy.firewall.accept_router_advertisements,
            distribution_port: policy.distribution.port,
            elements,
        }
    }

    /// Withholds the services from `quarantined` peers: their tunnel addresses leave the
    /// `peers` sets (a set-element edit) and stay in `members`.
    pub fn quarantine(&mut self, quarantined: &[&DesiredPeer]) {
        for p in quarantined {
            for a in &p.allowed_ips {
                let set = if a.addr.is_ipv4() { "peers4" } else { "peers6" };
                if let Some(e) = self.elements.get_mut(set) {
                    e.remove(&a.addr);
                }
            }
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
            tunnel4: None,
            tunnel6: None,
            accept_router_advertisements: false,
            distribution_port: 0,
            elements: SETS.iter().map(|(n, _)| (*n, BTreeSet::new())).collect(),
        }
    }

    /// Identifies the rules (not the set elements): two specs with the same tag differ only in
    /// set elements. Every rule carries it in its comment (`ng:N:TAG`), so an operator reading
    /// `nft list` sees which generation is installed; drift is judged by content, not by it.
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
    // Long on purpose: it reads top to bottom as the ruleset nft holds, each numbered step
    // beside the rules it emits, and that order is what revocation depends on.
    pub fn rules(&self) -> Vec<(&'static str, Vec<Value>)> {
        let mut input: Vec<Vec<Value>> = Vec::new();
        let mut output: Vec<Vec<Value>> = Vec::new();
        // Service ports never leave beside the tunnel; gathered here, placed last in output.
        let mut service_output: Vec<Vec<Value>> = Vec::new();
        // 0. clusterd's port: every member, quarantined or not, through the tunnel only.
        if !self.interface.is_empty() && self.distribution_port != 0 {
            for proto in ["tcp", "udp"] {
                let port = json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": self.distribution_port}});
                for (family, set) in [("ip", "members4"), ("ip6", "members6")] {
                    input.push(vec![
                        m_iifname(&self.interface),
                        port.clone(),
                        m_saddr_set(family, set),
                        json!({"accept": null}),
                    ]);
                }
                input.push(vec![port, json!({"drop": null})]);
            }
        }
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
                service_output.push(out);
            }
        }
        // 2. Nothing from a tunnel address arrives beside the tunnel (a rogue on the LAN
        //    claiming a member's tunnel address), and nothing to one leaves beside it (no clear
        //    text to a peer when a route points elsewhere, e.g. after a rogue RA).
        if !self.interface.is_empty() {
            for (family, net) in self.tunnel_families() {
                input.push(vec![
                    m_not_iifname(&self.interface),
                    m_addr(family, "saddr", net),
                    json!({"drop": null}),
                ]);
                output.push(vec![
                    m_not_oifname(&self.interface),
                    m_addr(family, "daddr", net),
                    json!({"drop": null}),
                ]);
            }
        }
        // 3. Loopback, established flows, invalid packets.
        input.push(vec![m_iifname("lo"), json!({"accept": null})]);
        input.push(vec![
            m_ct_state(&["established", "related"]),
            json!({"accept": null}),
        ]);
        input.push(vec![m_ct_state(&["invalid"]), json!({"drop": null})]);
        // 4. WireGuard handshakes from peer endpoints (or anywhere, when roaming is allowed).
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
        // 5. ICMP (path MTU) and ICMPv6 (neighbour discovery cannot work without it), but no
        //    router advertisements or redirects: anyone on the LAN can send those, and one
        //    with the tunnel prefix would give this node an address and a route beside the
        //    tunnel.
        if !self.accept_router_advertisements {
            input.push(vec![
                json!({"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-router-advert", "nd-redirect"]}}}),
                json!({"drop": null}),
            ]);
            input.push(vec![
                json!({"match": {"op": "==", "left": {"payload": {"protocol": "icmp", "field": "type"}}, "right": "redirect"}}),
                json!({"drop": null}),
            ]);
        }
        input.push(vec![m_l4proto("icmp"), json!({"accept": null})]);
        input.push(vec![m_l4proto("ipv6-icmp"), json!({"accept": null})]);
        // 6. DHCP replies, so a node can always get its address.
        input.push(vec![
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "sport"}}, "right": 67}}),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 68}}),
            json!({"accept": null}),
        ]);
        // 7. The allow list, open to the LAN.
        for ports in self.allow.values() {
            for (proto, ranges) in [("tcp", &ports.tcp), ("udp", &ports.udp)] {
                if !ranges.is_empty() {
                    input.push(vec![m_dport(proto, ranges), json!({"accept": null})]);
                }
            }
        }
        // 8. Everything else: the base posture, counted.
        input.push(vec![
            json!({"counter": "unmatched"}),
            posture_verdict(self.posture),
        ]);
        let mut all: Vec<(&'static str, Vec<Value>)> =
            input.into_iter().map(|r| ("input", r)).collect();
        // Replies of the services this node opens to the LAN (ssh, dhcp, join, a boot server's
        // TFTP from port 69) go to whatever port the client chose, which may fall in a
        // cluster service's range (iPXE picks low ports): they leave. Then the service ports.
        for ports in self.allow.values() {
            for (proto, ranges) in [("tcp", &ports.tcp), ("udp", &ports.udp)] {
                if !ranges.is_empty() {
                    output.push(vec![
                        m_port(proto, "sport", ranges),
                        json!({"accept": null}),
                    ]);
                }
            }
        }
        output.extend(service_output);
        all.extend(output.into_iter().map(|r| ("output", r)));
        all
    }

    /// The tunnel networks, with the nft family name that matches each.
    fn tunnel_families(&self) -> Vec<(&'static str, IpNet)> {
        let mut nets = Vec::new();
        if let Some(n) = self.tunnel4 {
            nets.push(("ip", IpNet::V4(n)));
        }
        if let Some(n) = self.tunnel6 {
            nets.push(("ip6", IpNet::V6(n)));
        }
        nets
    }

    /// The tunnel networks this node's traffic to peers must stay in.
    pub fn tunnel_nets(&self) -> Vec<IpNet> {
        self.tunnel_families().into_iter().map(|(_, n)| n).collect()
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
            let elems: Vec<String> = self
                .elements
                .get(name)
                .map(|e| e.iter().map(ToString::to_string).collect())
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

    /// The table as it should read back, everything that changes at run time left out.
    pub fn shape(&self) -> Shape {
        let mut shape = Shape::default();
        for cmd in self.full_batch()["nftables"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(add) = cmd.get("add") {
                shape.insert(add);
            }
        }
        shape
    }

    /// What differs between the table in the kernel and this spec, apart from set elements
    /// (those are edited, not rebuilt): `None` when it does exactly what it should.
    pub fn drift(&self, actual: &Shape) -> Option<String> {
        let want = self.shape();
        if &want == actual {
            return None;
        }
        for (key, obj) in &want.objects {
            match actual.objects.get(key) {
                None => return Some(format!("{} {} missing", key.0, key.1)),
                Some(o) if o != obj => return Some(format!("{} {} changed: {o}", key.0, key.1)),
                Some(_) => {}
            }
        }
        if let Some((kind, name)) = actual
            .objects
            .keys()
            .find(|k| !want.objects.contains_key(*k))
        {
            return Some(format!("unexpected {kind} {name}"));
        }
        for (chain, rules) in &want.rules {
            let have = actual
                .rules
                .get(chain)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if have.len() != rules.len() {
                return Some(format!(
                    "chain {chain} has {} rules, {} expected",
                    have.len(),
                    rules.len()
                ));
            }
            if let Some(i) = (0..rules.len()).find(|&i| have[i] != rules[i]) {
                return Some(format!("rule {i} of chain {chain} changed: {}", have[i]));
            }
        }
        match actual.rules.keys().find(|c| !want.rules.contains_key(*c)) {
            Some(chain) => Some(format!("rules in unexpected chain {chain}")),
            None => Some("table differs".into()),
        }
    }

    /// The set-element edits from `actual` (set name to elements) to these elements, deletions
    /// before additions in each set; empty when nothing differs.
    pub fn element_edits<K: Borrow<str> + Ord>(
        &self,
        actual: &BTreeMap<K, BTreeSet<IpAddr>>,
    ) -> Vec<ElementEdit> {
        let mut edits = Vec::new();
        let empty = BTreeSet::new();
        for (name, want) in &self.elements {
            let have = actual.get(*name).unwrap_or(&empty);
            let del: Vec<IpAddr> = have.difference(want).copied().collect();
            let add: Vec<IpAddr> = want.difference(have).copied().collect();
            for (op, elems) in [(EditOp::Delete, del), (EditOp::Add, add)] {
                if !elems.is_empty() {
                    edits.push(ElementEdit {
                        set: name,
                        op,
                        elems,
                    });
                }
            }
        }
        edits
    }
}

/// Adding or deleting set elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditOp {
    Add,
    Delete,
}

/// One operation on some elements of one of netguard's sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementEdit {
    pub set: &'static str,
    pub op: EditOp,
    pub elems: Vec<IpAddr>,
}

/// The edits as one `nft -j` batch (one transaction), or `None` when there are none.
pub fn element_batch(edits: &[ElementEdit]) -> Option<Value> {
    let cmds: Vec<Value> = edits
        .iter()
        .map(|e| {
            let verb = match e.op {
                EditOp::Add => "add",
                EditOp::Delete => "delete",
            };
            let elems: Vec<String> = e.elems.iter().map(ToString::to_string).collect();
            json!({verb: {"element": {"family": FAMILY, "table": TABLE, "name": e.set, "elem": elems}}})
        })
        .collect();
    (!cmds.is_empty()).then(|| json!({"nftables": cmds}))
}

/// A table with what changes at run time (handles, counter values, set elements) left out:
/// chains with their hooks, priorities and policies, sets with their types, counters, and
/// every rule's expressions and comment, in order. Built the same way from what netguard
/// would add and from what nft reads back, so the two compare structurally.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// (kind, name) to the object's normalised JSON, for every object but rules and the
    /// table itself.
    pub objects: BTreeMap<(String, String), String>,
    /// Chain name to its rules' normalised JSON, in order.
    pub rules: BTreeMap<String, Vec<String>>,
}

impl Shape {
    /// Adds one object as nft names it (`{"chain": {...}}`); the table, elements and nft's
    /// metainfo are not part of a shape.
    pub fn insert(&mut self, item: &Value) {
        let Some((kind, obj)) = item.as_object().and_then(|o| o.iter().next()) else {
            return;
        };
        if matches!(kind.as_str(), "metainfo" | "table" | "element") {
            return;
        }
        let mut obj = obj.clone();
        if let Some(o) = obj.as_object_mut() {
            for runtime in ["handle", "elem", "packets", "bytes"] {
                o.remove(runtime);
            }
        }
        let text = obj.to_string();
        let field = |k: &str| {
            obj.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        if kind == "rule" {
            self.rules.entry(field("chain")).or_default().push(text);
        } else {
            self.objects.insert((kind.clone(), field("name")), text);
        }
    }
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

fn m_not_iifname(name: &str) -> Value {
    json!({"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": name}})
}

fn m_not_oifname(name: &str) -> Value {
    json!({"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": name}})
}

/// `ip saddr 10.77.0.0/24`; a full-length prefix is printed by nft as the plain address.
fn m_addr(family: &str, field: &str, net: IpNet) -> Value {
    let right = if net.prefix_len() == net.max_prefix_len() {
        json!(net.addr().to_string())
    } else {
        json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
    };
    json!({"match": {"op": "==", "left": {"payload": {"protocol": family, "field": field}}, "right": right}})
}

fn m_ct_state(states: &[&str]) -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": one_or_list(states.iter().map(|s| json!(s)).collect())}})
}

/// nft prints a one-element list or set as the element itself.
fn one_or_list(mut items: Vec<Value>) -> Value {
    if items.len() == 1 {
        items.remove(0)
    } else {
        Value::Array(items)
    }
}

fn m_saddr_set(family: &str, set: &str) -> Value {
    json!({"match": {"op": "==", "left": {"payload": {"protocol": family, "field": "saddr"}}, "right": format!("@{set}")}})
}

fn m_dport(proto: &str, ranges: &[PortRange]) -> Value {
    m_port(proto, "dport", ranges)
}

/// `proto field in ranges` (`field`: sport or dport), in nft's normal form.
fn m_port(proto: &str, field: &str, ranges: &[PortRange]) -> Value {
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
    let right = if elems.len() == 1 {
        one_or_list(elems)
    } else {
        json!({ "set": elems })
    };
    json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": field}}, "right": right}})
}
