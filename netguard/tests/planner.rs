//! The planner without root: desired state from a signed policy, the ruleset as golden JSON,
//! and set-element edits for node-map changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use netguard::desired::desired;
use netguard::ruleset::RulesetSpec;
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
    let d = desired(&v, &WgPublicKey::from_bytes([2; 32]), None).unwrap();
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
        peers4.iter().cloned().collect::<Vec<_>>(),
        ["10.77.0.1", "10.77.0.3"]
    );
}

#[test]
fn a_node_not_in_the_policy_is_not_a_member() {
    let v = verified(&policy_text(&[1, 2], false));
    let err = desired(&v, &WgPublicKey::from_bytes([9; 32]), None).unwrap_err();
    assert!(err.to_string().contains("is not in the policy"), "{err}");
}

/// Golden file: the full batch for node 2 of a three-node cluster. Regenerate with
/// `UPDATE_GOLDEN=1 cargo test -p netguard --test planner` and review the diff.
#[test]
fn ruleset_json_matches_golden_file() {
    let v = verified(&policy_text(&[1, 2, 3], false));
    let d = desired(&v, &WgPublicKey::from_bytes([2; 32]), None).unwrap();
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
    let a = desired(&small, &me, None).unwrap().ruleset;
    let b = desired(&big, &me, None).unwrap().ruleset;
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
    let rules = desired(&v, &WgPublicKey::from_bytes([1; 32]), None)
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
fn roaming_opens_the_wireguard_port_to_any_source() {
    let fixed = verified(&policy_text(&[1, 2], false));
    let roam = verified(&policy_text(&[1, 2], true));
    let me = WgPublicKey::from_bytes([1; 32]);
    let f = serde_json::to_string(&desired(&fixed, &me, None).unwrap().ruleset.rules()).unwrap();
    let r = serde_json::to_string(&desired(&roam, &me, None).unwrap().ruleset.rules()).unwrap();
    assert!(f.contains("@endpoints4") && !r.contains("@endpoints4"));
}

#[test]
fn node_map_changes_become_element_edits() {
    let before = verified(&policy_text(&[1, 2, 3], false));
    let after = verified(&policy_text(&[1, 2, 4], false));
    let me = WgPublicKey::from_bytes([1; 32]);
    let a = desired(&before, &me, None).unwrap().ruleset;
    let b = desired(&after, &me, None).unwrap().ruleset;
    let actual: BTreeMap<String, BTreeSet<String>> = a
        .elements
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let batch = b.element_batch(&actual).unwrap();
    let text = batch.to_string();
    assert!(
        text.contains(r#""delete":{"element":{"elem":["10.77.0.3"]"#)
            || text.contains("\"10.77.0.3\""),
        "{text}"
    );
    let cmds = batch["nftables"].as_array().unwrap();
    // peers4, peers6, endpoints4: one delete and one add each.
    assert_eq!(cmds.len(), 6, "{text}");
    assert!(
        b.element_batch(
            &b.elements
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        )
        .is_none()
    );
}

#[test]
fn the_protective_ruleset_opens_no_service_port() {
    let p = RulesetSpec::protective();
    let text = serde_json::to_string(&p.full_batch()).unwrap();
    assert!(!text.contains("4660") && !text.contains("723"));
    assert!(text.contains(r#""policy":"drop""#));
}
