//! openMosix map export/import and node-map diff laws, by example and by property.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use policy::{MosixMap, NodeId, NodeMap, NodeMapDiff, parse_policy};
use proptest::prelude::*;

#[test]
fn export_coalesces_consecutive_ids_and_addresses() {
    let p = parse_policy("c", valid_policy().as_bytes(), now()).unwrap();
    assert_eq!(MosixMap::from_policy(&p).render(), "1 10.77.0.1 3\n");
}

#[test]
fn export_breaks_runs_and_writes_aliases() {
    let text = with("[\"10.77.0.3\"]", "[\"10.77.0.9\", \"10.77.0.10\"]");
    let p = parse_policy("c", text.as_bytes(), now()).unwrap();
    assert_eq!(
        MosixMap::from_policy(&p).render(),
        "1 10.77.0.1 2\n3 10.77.0.9 1\n3 10.77.0.10 ALIAS\n"
    );
}

#[test]
fn import_reads_ranges_aliases_and_comments() {
    let text = "# CHAOS map\n1 192.168.1.10 3   # three drones\n\n10 192.168.2.1 1\n10 192.168.3.1 ALIAS\n";
    let map = MosixMap::parse("openmosix.map", text).unwrap();
    let ids: Vec<u16> = map.nodes.keys().map(|i| i.get()).collect();
    assert_eq!(ids, [1, 2, 3, 10]);
    assert_eq!(
        map.nodes[&NodeId::new(3).unwrap()],
        Ipv4Addr::new(192, 168, 1, 12)
    );
    assert_eq!(
        map.aliases[&NodeId::new(10).unwrap()],
        [Ipv4Addr::new(192, 168, 3, 1)]
    );
}

#[test]
fn import_errors_name_the_line() {
    let cases = [
        (
            "1 10.0.0.1\n",
            "openmosix.map:1: expected `first-id address count` or `id address ALIAS`, got \"1 10.0.0.1\"",
        ),
        (
            "0 10.0.0.1 1\n",
            "openmosix.map:1: node id \"0\" is not a number in 1-65535",
        ),
        (
            "\n1 node1 1\n",
            "openmosix.map:2: \"node1\" is not an IPv4 address (hostnames are not resolved)",
        ),
        (
            "1 10.0.0.1 0\n",
            "openmosix.map:1: count \"0\" is not a positive number",
        ),
        (
            "65535 10.0.0.1 2\n",
            "openmosix.map:1: ids 65535+2 run past 65535",
        ),
        (
            "1 255.255.255.255 2\n",
            "openmosix.map:1: addresses 255.255.255.255+2 run past 255.255.255.255",
        ),
        (
            "1 10.0.0.1 2\n2 10.0.0.9 1\n",
            "openmosix.map:2: node id 2 is listed twice",
        ),
        (
            "5 10.0.0.1 ALIAS\n",
            "openmosix.map:0: ALIAS for node 5, which has no address line",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(
            MosixMap::parse("openmosix.map", text)
                .unwrap_err()
                .to_string(),
            want
        );
    }
}

fn arb_map() -> impl Strategy<Value = MosixMap> {
    (
        prop::collection::btree_map(1u16..=400, any::<u32>(), 0..40),
        prop::collection::vec((0usize..40, any::<u32>()), 0..5),
    )
        .prop_map(|(nodes, aliases)| {
            let nodes: BTreeMap<NodeId, Ipv4Addr> = nodes
                .into_iter()
                .map(|(id, a)| (NodeId::new(id).unwrap(), Ipv4Addr::from(a)))
                .collect();
            let ids: Vec<NodeId> = nodes.keys().copied().collect();
            let mut map = MosixMap {
                nodes,
                aliases: BTreeMap::new(),
            };
            if !ids.is_empty() {
                for (i, a) in aliases {
                    map.aliases
                        .entry(ids[i % ids.len()])
                        .or_default()
                        .push(Ipv4Addr::from(a));
                }
            }
            map
        })
}

/// Maps with long runs of consecutive ids and addresses, to exercise coalescing.
fn arb_runs() -> impl Strategy<Value = MosixMap> {
    prop::collection::vec((1u16..50, 1u32..20, any::<u32>()), 1..6).prop_map(|runs| {
        let mut map = MosixMap::default();
        let mut next = 1u32;
        for (gap, len, base) in runs {
            next += u32::from(gap);
            for i in 0..len {
                let id = next + i;
                if let Some(id) = u16::try_from(id).ok().and_then(NodeId::new) {
                    map.nodes.insert(id, Ipv4Addr::from(base.wrapping_add(i)));
                }
            }
            next += len;
        }
        map
    })
}

proptest! {
    #[test]
    fn map_render_parse_round_trips(map in arb_map()) {
        let text = map.render();
        prop_assert_eq!(MosixMap::parse("m", &text).unwrap(), map);
    }

    #[test]
    fn coalesced_runs_round_trip_and_never_grow(map in arb_runs()) {
        let text = map.render();
        prop_assert!(text.lines().count() <= map.nodes.len());
        prop_assert_eq!(MosixMap::parse("m", &text).unwrap(), map);
    }
}

fn node(id: u16, key: u8, endpoint_port: u16, addr: u8) -> policy::Node {
    policy::Node {
        id: NodeId::new(id).unwrap(),
        name: format!("n{id}"),
        public_key: policy::WgPublicKey::from_bytes([key; 32]),
        endpoint: Some(
            format!("192.168.1.{}:{endpoint_port}", id % 250)
                .parse()
                .unwrap(),
        ),
        addresses: vec![format!("10.77.{}.{addr}", id % 250).parse().unwrap()],
        roles: vec![policy::Role::Drone],
        expires: None,
        attestation_key: None,
    }
}

fn arb_nodemap() -> impl Strategy<Value = NodeMap> {
    prop::collection::btree_map(1u16..60, (0u8..4, 1u16..3, 1u8..3), 0..30).prop_map(|m| {
        NodeMap(
            m.into_iter()
                .map(|(id, (k, p, a))| (NodeId::new(id).unwrap(), node(id, k, p, a)))
                .collect(),
        )
    })
}

#[test]
fn diff_names_each_kind_of_change() {
    let old = NodeMap(
        [
            (1, node(1, 1, 1, 1)),
            (2, node(2, 1, 1, 1)),
            (3, node(3, 1, 1, 1)),
        ]
        .into_iter()
        .map(|(i, n)| (NodeId::new(i).unwrap(), n))
        .collect(),
    );
    let mut new = old.clone();
    new.0.remove(&NodeId::new(3).unwrap());
    new.0.insert(NodeId::new(4).unwrap(), node(4, 1, 1, 1));
    let two = new.0.get_mut(&NodeId::new(2).unwrap()).unwrap();
    *two = node(2, 9, 2, 1);
    let diff = NodeMapDiff::new(&old, &new);
    assert_eq!(
        diff.to_string(),
        "+ node 4 (n4) added\n- node 3 (n3) removed\n~ node 2 (n2): key rotated, endpoint moved\n"
    );
}

proptest! {
    #[test]
    fn diff_of_a_map_with_itself_is_empty(a in arb_nodemap()) {
        prop_assert!(NodeMapDiff::new(&a, &a).is_empty());
    }

    #[test]
    fn applying_a_diff_gives_the_new_map(a in arb_nodemap(), b in arb_nodemap()) {
        prop_assert_eq!(NodeMapDiff::new(&a, &b).apply(&a), b);
    }

    #[test]
    fn diff_reversed_swaps_added_and_removed(a in arb_nodemap(), b in arb_nodemap()) {
        let ab = NodeMapDiff::new(&a, &b);
        let ba = NodeMapDiff::new(&b, &a);
        prop_assert_eq!(&ab.added, &ba.removed);
        prop_assert_eq!(&ab.removed, &ba.added);
        prop_assert_eq!(ab.changed.len(), ba.changed.len());
        for (x, y) in ab.changed.iter().zip(&ba.changed) {
            prop_assert_eq!(&x.changes, &y.changes);
            prop_assert_eq!(&x.old, &y.new);
        }
    }
}
