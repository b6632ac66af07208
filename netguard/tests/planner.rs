//! The planner without root: desired state from a signed policy, the ruleset as golden JSON,
//! and set-element edits for node-map changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use netguard::desired::desired;
use netguard::ruleset::{EditOp, ElementEdit, RulesetSpec, element_batch};
use policy::{TrustedKeys, WgPublicKey};

fn key(n: u8) -> String {
    WgPublicKey::from_bytes([n; 32]).to_base64()
}

fn policy_text(nodes: &[u8], roaming: bool) -> String {
    let mut t = policy::template::init_template("lab", "2030-01-01T00:00:00Z".parse().unwrap());
    if roaming {
        t = t.replace("allow_roaming = false", "allow_roaming = true");
    }
    for &n in nodes {
        t.push_str(&format!(
            "\n[[node]]\nid = {n}\nname = \"n{n}\"\npublic_key = \"{}\"\nendpoint = \"198.18.0.{n}:51820\"\naddresses = [\"10.77.0.{n}\", \"fd77:7d00::{n}\"]\n",
            key(n)
        ));
    }
    t
}

/// The planner's clock: well inside the test policies' lifetime.
fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn now() -> jiff::Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

fn verified(text: &str) -> policy::Verified<policy::Policy> {
    let op = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    let sig = policy::sign(text.as_bytes(), &op);
    let trust = TrustedKeys::new(vec![(&op).into()]);
    policy::verify_policy(
        "p",
        text.as_bytes(),
        sig.as_bytes(),
        &trust,
        "2026-06-01T00:00:00Z".parse().unwrap(),
    )
    .unwrap()
}

#[test]
fn desired_state_for_one_node() {
    let v = verified(&policy_text(&[1, 2, 3], false));
    let d = desired(&v, &WgPublicKey::from_bytes([2; 32]), None, now()).unwrap();
    assert_eq!(d.interface, "tyd0");
    assert_eq!(d.me.get(), 2);
    assert_eq!(
        d.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.77.0.2/24", "fd77:7d00::2/64"]
    );
    let peers: Vec<u16> = d.peers.values().map(|p| p.node.get()).collect();
    assert_eq!(peers, [1, 3]);
    let p1 = &d.peers[&WgPublicKey::from_bytes([1; 32])];
    assert_eq!(
        p1.allowed_ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.77.0.1/32", "fd77:7d00::1/128"]
    );
    assert_eq!(p1.endpoint.unwrap().to_string(), "198.18.0.1:51820");
    let peers4 = &d.ruleset.elements["peers4"];
    assert_eq!(
        peers4.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.77.0.1", "10.77.0.3"]
    );
}

#[test]
fn a_node_not_in_the_policy_is_not_a_member() {
    let v = verified(&policy_text(&[1, 2], false));
    let err = desired(&v, &WgPublicKey::from_bytes([9; 32]), None, now()).unwrap_err();
    assert!(err.to_string().contains("is not in the policy"), "{err}");
}

/// Golden file: the full batch for node 2 of a three-node cluster. Regenerate with
/// `UPDATE_GOLDEN=1 cargo test -p netguard --test planner` and review the diff.
#[test]
fn ruleset_json_matches_golden_file() {
    let v = verified(&policy_text(&[1, 2, 3], false));
    let d = desired(&v, &WgPublicKey::from_bytes([2; 32]), None, now()).unwrap();
    let got = serde_json::to_string_pretty(&d.ruleset.full_batch()).unwrap() + "\n";
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ruleset-node2.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        got, want,
        "ruleset changed; review and regenerate the golden file"
    );
    // The nftables crate's schema accepts it, command by command.
    let parsed: nftables::schema::Nftables = serde_json::from_str(&got).unwrap();
    assert_eq!(
        parsed.objects.len(),
        d.ruleset.full_batch()["nftables"].as_array().unwrap().len()
    );
}

#[test]
fn rule_count_does_not_grow_with_the_node_map() {
    let small = verified(&policy_text(&[1, 2], false));
    let nodes: Vec<u8> = (1..=200).collect();
    let big = verified(&policy_text(&nodes, false));
    let me = WgPublicKey::from_bytes([1; 32]);
    let a = desired(&small, &me, None, now()).unwrap().ruleset;
    let b = desired(&big, &me, None, now()).unwrap().ruleset;
    assert_eq!(a.rules().len(), b.rules().len());
    assert_eq!(
        a.tag(),
        b.tag(),
        "node-map changes must not change the rules"
    );
    assert_eq!(b.elements["peers4"].len(), 199);
}

#[test]
fn service_ports_are_guarded_before_established_flows() {
    let v = verified(&policy_text(&[1, 2], false));
    let rules = desired(&v, &WgPublicKey::from_bytes([1; 32]), None, now())
        .unwrap()
        .ruleset
        .rules();
    let text: Vec<String> = rules
        .iter()
        .filter(|(c, _)| *c == "input")
        .map(|(_, r)| serde_json::to_string(r).unwrap())
        .collect();
    let first_service_drop = text
        .iter()
        .position(|r| r.contains("svc_openmosix"))
        .unwrap();
    let established = text.iter().position(|r| r.contains("established")).unwrap();
    assert!(first_service_drop < established);
}

#[test]
fn an_allow_entry_with_roles_is_open_on_those_nodes_only() {
    // Node 1 is a master serving network boots; node 2 a drone.
    let text = policy_text(&[1, 2], false).replacen(
        "[firewall.allow.ssh]",
        "[firewall.allow.pxe]\nudp = [67, 69, 4011]\nroles = [\"master\"]\n\n[firewall.allow.ssh]",
        1,
    );
    let text = text.replacen(
        "addresses = [\"10.77.0.1\", \"fd77:7d00::1\"]\n",
        "addresses = [\"10.77.0.1\", \"fd77:7d00::1\"]\nroles = [\"master\"]\n",
        1,
    );
    let v = verified(&text);
    let rules_of = |n: u8| {
        serde_json::to_string(
            &desired(&v, &WgPublicKey::from_bytes([n; 32]), None, now())
                .unwrap()
                .ruleset
                .rules(),
        )
        .unwrap()
    };
    let (master, drone) = (rules_of(1), rules_of(2));
    assert!(
        master.contains("4011"),
        "the master's boot server is closed"
    );
    assert!(
        !drone.contains("4011"),
        "a drone opens the boot server's ports"
    );
    // Entries without roles are open everywhere.
    assert!(master.contains("7947") && drone.contains("7947"));
    // roles on a service (not an allow entry) is refused.
    let bad = policy_text(&[1, 2], false).replacen(
        "[services.openmosix]",
        "[services.openmosix]\nroles = [\"master\"]",
        1,
    );
    let findings = policy::parse_policy("p", bad.as_bytes(), now()).unwrap_err();
    assert!(
        findings
            .to_string()
            .contains("roles applies to [firewall.allow] entries only"),
        "{findings}"
    );
}

#[test]
fn replies_of_lan_services_leave_even_to_a_port_in_a_service_range() {
    // ssh (22) answers a LAN client whose port happens to be 4660: the reply leaves. The
    // service-port drop stays for everything else, and after the tunnel-network drops.
    let v = verified(&policy_text(&[1, 2], false));
    let rules = desired(&v, &WgPublicKey::from_bytes([1; 32]), None, now())
        .unwrap()
        .ruleset
        .rules();
    let out: Vec<String> = rules
        .iter()
        .filter(|(c, _)| *c == "output")
        .map(|(_, r)| serde_json::to_string(r).unwrap())
        .collect();
    let ssh_reply = out
        .iter()
        .position(|r| r.contains(r#""field":"sport""#) && r.contains("22") && r.contains("accept"))
        .expect("no accept for ssh replies");
    let service_drop = out
        .iter()
        .position(|r| r.contains(r#""field":"dport""#) && r.contains("4660") && r.contains("drop"))
        .expect("no service-port drop");
    let tunnel_drop = out
        .iter()
        .position(|r| r.contains("10.77.0.0") && r.contains("drop"))
        .expect("no tunnel-network drop");
    assert!(
        tunnel_drop < ssh_reply && ssh_reply < service_drop,
        "{out:#?}"
    );
}

#[test]
fn roaming_opens_the_wireguard_port_to_any_source() {
    let fixed = verified(&policy_text(&[1, 2], false));
    let roam = verified(&policy_text(&[1, 2], true));
    let me = WgPublicKey::from_bytes([1; 32]);
    let f =
        serde_json::to_string(&desired(&fixed, &me, None, now()).unwrap().ruleset.rules()).unwrap();
    let r =
        serde_json::to_string(&desired(&roam, &me, None, now()).unwrap().ruleset.rules()).unwrap();
    assert!(f.contains("@endpoints4") && !r.contains("@endpoints4"));
}

#[test]
fn node_map_changes_become_element_edits() {
    let before = verified(&policy_text(&[1, 2, 3], false));
    let after = verified(&policy_text(&[1, 2, 4], false));
    let me = WgPublicKey::from_bytes([1; 32]);
    let a = desired(&before, &me, None, now()).unwrap().ruleset;
    let b = desired(&after, &me, None, now()).unwrap().ruleset;
    let edits = b.element_edits(&a.elements);
    let gone: Vec<(&str, IpAddr)> = edits
        .iter()
        .filter(|e| e.op == EditOp::Delete)
        .flat_map(|e| e.elems.iter().map(move |x| (e.set, *x)))
        .collect();
    let new: Vec<(&str, IpAddr)> = edits
        .iter()
        .filter(|e| e.op == EditOp::Add)
        .flat_map(|e| e.elems.iter().map(move |x| (e.set, *x)))
        .collect();
    let (three, four) = (ip("10.77.0.3"), ip("10.77.0.4"));
    assert!(gone.contains(&("peers4", three)) && gone.contains(&("members4", three)));
    assert!(new.contains(&("peers4", four)) && new.contains(&("members4", four)));
    // peers4, peers6, members4, members6, endpoints4: one delete and one add each.
    assert_eq!(edits.len(), 10, "{edits:?}");
    assert_eq!(gone.len(), 5, "one element per set: {gone:?}");
    // Deletions come before additions in each set, and the nft batch says the same.
    let batch = element_batch(&edits).unwrap();
    let cmds = batch["nftables"].as_array().unwrap();
    assert_eq!(cmds.len(), 10);
    assert!(
        cmds[0].get("delete").is_some() && cmds[1].get("add").is_some(),
        "{batch}"
    );
    // Edits from a string-keyed read-back are the same as from the spec's own map.
    let actual: BTreeMap<String, BTreeSet<IpAddr>> = a
        .elements
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    assert_eq!(b.element_edits(&actual), edits);
    assert!(b.element_edits(&b.elements).is_empty());
    assert!(element_batch(&[]).is_none());
}

#[test]
fn the_protective_ruleset_opens_no_service_port() {
    let p = RulesetSpec::protective();
    let text = serde_json::to_string(&p.full_batch()).unwrap();
    assert!(!text.contains("4660") && !text.contains("723"));
    assert!(text.contains(r#""policy":"drop""#));
}

/// The golden ruleset, installed and read back by nft 1.0.6 (captured with
/// `nft -j list table inet netguard`), compares equal to the desired shape: every expression
/// is generated in nft's own normal form, so a fresh table is never mistaken for drift.
fn read_back_of(spec: &RulesetSpec) -> netguard::nft::ActualTable {
    // What nft adds on a read-back: handles, counter values, and the set elements inside
    // the set objects; nothing else changes.
    let mut items = vec![serde_json::json!({"metainfo": {"version": "1.0.6"}})];
    let mut handle = 1;
    for cmd in spec.full_batch()["nftables"].as_array().unwrap() {
        let Some(add) = cmd.get("add") else { continue };
        let (kind, obj) = add.as_object().unwrap().iter().next().unwrap();
        if kind == "element" {
            continue;
        }
        let mut obj = obj.clone();
        obj["handle"] = handle.into();
        handle += 1;
        if kind == "counter" {
            obj["packets"] = 7.into();
            obj["bytes"] = 700.into();
        }
        if kind == "set" {
            let name = obj["name"].as_str().unwrap();
            let elems: Vec<String> = spec
                .elements
                .iter()
                .find(|(n, _)| **n == name)
                .map(|(_, e)| e.iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            if !elems.is_empty() {
                obj["elem"] = serde_json::json!(elems);
            }
        }
        if kind == "table" {
            obj.as_object_mut().unwrap().remove("comment");
        }
        items.push(serde_json::json!({ kind.clone(): obj }));
    }
    netguard::nft::parse_table(&serde_json::json!({ "nftables": items }))
}

#[test]
fn a_fresh_table_read_back_is_not_drift() {
    let v = verified(&policy_text(&[1, 2, 3], false));
    let spec = desired(&v, &WgPublicKey::from_bytes([2; 32]), None, now())
        .unwrap()
        .ruleset;
    assert_eq!(spec.drift(&read_back_of(&spec).shape), None);
    // The golden file is what nft was given; its rules must already be in nft's normal form
    // (no one-element sets or lists, which nft prints as the element).
    let golden = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ruleset-node2.json"),
    )
    .unwrap();
    assert!(
        !golden
            .contains("\"set\": [\n                        {\n                          \"range\"")
    );
}

/// Regression (issue 9 item 1): drift that keeps the rule comment was never seen.
/// 1. `nft replace rule inet netguard input handle H tcp dport 4660 accept comment "ng:2:TAG"`
///    (a wider match, the same comment);
/// 2. `nft add chain inet netguard input { policy accept; }` (the base chain's policy);
/// 3. the drift check compared comments only: no log line, `tyd status` said "installed",
///    and a rogue reached 723/4660.
///
/// Now the read-back is compared expression by expression, chain by chain.
#[test]
fn drift_that_keeps_the_rule_comment_is_seen() {
    let v = verified(&policy_text(&[1, 2, 3], false));
    let spec = desired(&v, &WgPublicKey::from_bytes([2; 32]), None, now())
        .unwrap()
        .ruleset;
    let clean = read_back_of(&spec).shape;

    // A service drop rule replaced by an accept, comment copied.
    let mut t = clean.clone();
    let input = t.rules.get_mut("input").unwrap();
    let i = input
        .iter()
        .position(|r| r.contains("svc_openmosix"))
        .unwrap();
    input[i] = input[i].replace(r#"{"drop":null}"#, r#"{"accept":null}"#);
    let why = spec.drift(&t).unwrap();
    assert!(
        why.starts_with(&format!("rule {i} of chain input changed")),
        "{why}"
    );

    // The input chain's policy turned to accept.
    let mut t = clean.clone();
    let key = ("chain".to_string(), "input".to_string());
    let c = t.objects[&key].replace(r#""policy":"drop""#, r#""policy":"accept""#);
    t.objects.insert(key, c);
    assert!(spec.drift(&t).unwrap().starts_with("chain input changed"));

    // An extra rule appended, an extra base chain, a rule removed.
    let mut t = clean.clone();
    t.rules
        .get_mut("input")
        .unwrap()
        .push(r#"{"expr":[{"accept":null}]}"#.into());
    assert!(spec.drift(&t).unwrap().contains("rules"), "{t:?}");
    let mut t = clean.clone();
    t.objects
        .insert(("chain".into(), "evil".into()), "{}".into());
    assert_eq!(spec.drift(&t).unwrap(), "unexpected chain evil");
    let mut t = clean.clone();
    t.rules.get_mut("output").unwrap().pop();
    assert!(spec.drift(&t).is_some());
    // Counter values and set elements are run-time state, not drift.
    assert_eq!(spec.drift(&clean), None);
}

/// Regression (issue 9 item 2): router advertisements and redirects are dropped from the
/// LAN unless the policy allows them, and nothing to or from the tunnel networks passes
/// beside the tunnel.
#[test]
fn router_advertisements_are_dropped_and_tunnel_traffic_never_leaves_beside_the_tunnel() {
    let v = verified(&policy_text(&[1, 2], false));
    let spec = desired(&v, &WgPublicKey::from_bytes([1; 32]), None, now())
        .unwrap()
        .ruleset;
    let text = serde_json::to_string(&spec.rules()).unwrap();
    assert!(
        text.contains("nd-router-advert") && text.contains("redirect"),
        "{text}"
    );
    let ra = text.find("nd-router-advert").unwrap();
    let icmp6_accept = text.find(r#""right":"ipv6-icmp"}},{"accept""#).unwrap();
    assert!(
        ra < icmp6_accept,
        "RAs must be dropped before ICMPv6 is accepted"
    );
    assert!(
        text.contains(r#"{"prefix":{"addr":"fd77:7d00::","len":64}}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"{"prefix":{"addr":"10.77.0.0","len":24}}"#),
        "{text}"
    );
    let out: Vec<String> = spec
        .rules()
        .iter()
        .filter(|(c, _)| *c == "output")
        .map(|(_, r)| serde_json::to_string(r).unwrap())
        .collect();
    assert!(
        out.iter()
            .any(|r| r.contains("oifname") && r.contains("daddr"))
    );

    let allowing = verified(&policy_text(&[1, 2], false).replace(
        "accept_router_advertisements = false",
        "accept_router_advertisements = true",
    ));
    let spec = desired(&allowing, &WgPublicKey::from_bytes([1; 32]), None, now())
        .unwrap()
        .ruleset;
    assert!(
        !serde_json::to_string(&spec.rules())
            .unwrap()
            .contains("nd-router-advert")
    );
}

/// Regression (issue 9 item 3): an expired node is nobody's peer from its instant on; an
/// expired node itself, or an expired policy, leaves this node with nothing open.
#[test]
fn expired_nodes_leave_the_desired_state_at_their_instant() {
    let text = policy_text(&[1, 2, 3], false).replace(
        "addresses = [\"10.77.0.3\", \"fd77:7d00::3\"]\n",
        "addresses = [\"10.77.0.3\", \"fd77:7d00::3\"]\nexpires = \"2026-07-01T00:00:00Z\"\n",
    );
    let v = verified(&text);
    let me = WgPublicKey::from_bytes([1; 32]);
    let before = desired(&v, &me, None, now()).unwrap();
    assert_eq!(before.peers.len(), 2);
    let at = "2026-07-01T00:00:00Z".parse().unwrap();
    let after = desired(&v, &me, None, at).unwrap();
    let peers: Vec<u16> = after.peers.values().map(|p| p.node.get()).collect();
    assert_eq!(peers, [2]);
    assert!(!after.ruleset.elements["peers4"].contains(&ip("10.77.0.3")));
    // The node that expired is no member any more.
    let e = desired(&v, &WgPublicKey::from_bytes([3; 32]), None, at).unwrap_err();
    assert!(
        e.to_string().contains("expired at 2026-07-01T00:00:00Z"),
        "{e}"
    );
    // A policy past its own expiry opens nothing.
    let e = desired(&v, &me, None, "2030-01-01T00:00:00Z".parse().unwrap()).unwrap_err();
    assert!(
        matches!(e, netguard::desired::IdentityError::PolicyExpired(_)),
        "{e}"
    );
}

/// Quarantine is a set-element edit: the node's tunnel addresses leave the service sets and
/// stay in the member sets (its heartbeats still reach clusterd); the rules do not change.
#[test]
fn quarantine_withholds_the_services_but_keeps_the_tunnel_and_the_distribution_port() {
    let v = verified(&policy_text(&[1, 2, 3], false));
    let me = WgPublicKey::from_bytes([1; 32]);
    let clean = desired(&v, &me, None, now()).unwrap();
    let mut q = clean.clone();
    q.quarantine(&[policy::NodeId::new(3).unwrap()].into_iter().collect());
    assert_eq!(q.ruleset.tag(), clean.ruleset.tag(), "rules unchanged");
    assert_eq!(q.peers, clean.peers, "WireGuard peers unchanged");
    assert!(!q.ruleset.elements["peers4"].contains(&ip("10.77.0.3")));
    assert!(q.ruleset.elements["members4"].contains(&ip("10.77.0.3")));
    assert!(!q.ruleset.elements["peers6"].contains(&ip("fd77:7d00::3")));
    let edits = q.ruleset.element_edits(&clean.ruleset.elements);
    assert_eq!(
        edits,
        vec![
            ElementEdit {
                set: "peers4",
                op: EditOp::Delete,
                elems: vec![ip("10.77.0.3")]
            },
            ElementEdit {
                set: "peers6",
                op: EditOp::Delete,
                elems: vec![ip("fd77:7d00::3")]
            },
        ]
    );
    let text = serde_json::to_string(&q.ruleset.rules()).unwrap();
    assert!(
        text.contains("@members4") && text.contains("7946"),
        "{text}"
    );
}

/// After a policy change the peers are planned from the last pass, without reading the
/// device back; full passes, a new or adopted interface, another interface, and endpoint
/// changes (a roaming peer's is judged on the device) still read it.
#[test]
fn a_policy_change_is_planned_from_the_last_pass_unless_the_device_must_be_read() {
    use netguard::peers::PeerOp;
    use netguard::reconcile::plan_from_last_pass;
    use netguard::wg::Ensured;
    let me = WgPublicKey::from_bytes([1; 32]);
    let a = desired(&verified(&policy_text(&[1, 2, 3], false)), &me, None, now()).unwrap();
    let b = desired(&verified(&policy_text(&[1, 2, 4], false)), &me, None, now()).unwrap();
    let ops = plan_from_last_pass(Some(&a), Ensured::Present, &b).unwrap();
    assert!(
        matches!(&ops[..], [PeerOp::Add { peer, .. }, PeerOp::Remove { .. }] if peer.node.get() == 4),
        "{ops:?}"
    );
    assert!(
        plan_from_last_pass(Some(&b), Ensured::Present, &b)
            .unwrap()
            .is_empty()
    );
    assert!(plan_from_last_pass(None, Ensured::Present, &b).is_none());
    assert!(plan_from_last_pass(Some(&a), Ensured::Created, &b).is_none());
    assert!(plan_from_last_pass(Some(&a), Ensured::Adopted, &b).is_none());
    let mut other = a.clone();
    other.interface = "tyd9".into();
    assert!(plan_from_last_pass(Some(&other), Ensured::Present, &b).is_none());
    let moved = policy_text(&[1, 2, 4], false).replace("198.18.0.2:51820", "198.18.7.2:51820");
    let c = desired(&verified(&moved), &me, None, now()).unwrap();
    assert!(
        plan_from_last_pass(Some(&b), Ensured::Present, &c).is_none(),
        "an endpoint change reads the device"
    );
}

/// A set element netguard never writes (an interval, or anything that is not one address) is
/// counted as foreign, which makes the next pass rebuild the table; the addresses beside it
/// are still read as addresses.
#[test]
fn a_set_element_that_is_not_one_address_is_foreign() {
    let listing = serde_json::json!({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"set": {"family": "inet", "table": "netguard", "name": "peers4", "type": "ipv4_addr",
                 "handle": 3,
                 "elem": ["10.77.0.2", {"prefix": {"addr": "10.77.0.0", "len": 24}}, "10.77.0.300",
                          // As nft 1.0.6 lists `nft add element ... { 10.77.0.9 timeout 1h }`.
                          {"elem": {"val": "10.77.0.9", "timeout": 3600, "expires": 3599}}]}}
    ]});
    let table = netguard::nft::parse_table(&listing);
    assert_eq!(table.odd_elements, 3);
    assert_eq!(
        table.elements["peers4"].iter().collect::<Vec<_>>(),
        [&ip("10.77.0.2")]
    );
}
