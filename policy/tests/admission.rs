//! Attacks on admission keys (issue 28): what a party holding one master's admission key, or
//! a hostile master with root, can and cannot make the members accept. Each test forges the
//! document and shows it refused with one line, the last good state in force.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::SigningKey;
use jiff::{SignedDuration, Timestamp};
use policy::membership::{
    Header, Membership, MembershipStore, MembershipsInForce, Refusal, render,
};
use policy::{NodeId, Policy, Role, WgPublicKey};

const OPERATOR: [u8; 32] = [7; 32];
const ADMISSION_1: [u8; 32] = [11; 32];
const ADMISSION_3: [u8; 32] = [13; 32];

fn now() -> Timestamp {
    Timestamp::now()
}

fn pubkey(seed: [u8; 32]) -> String {
    policy::OperatorPublicKey::from(&SigningKey::from_bytes(&seed)).to_base64()
}

fn wg(i: u16) -> WgPublicKey {
    WgPublicKey::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

/// Masters 1 and 3 with admission keys (ids 100-199 in 10.77.0.128/26, and 200-299 in
/// 10.77.0.192/26, drones only, 3 nodes each), node 2 the operator's own server.
fn policy_text(serial: u64, admissions: &str) -> String {
    let expires = now() + SignedDuration::from_hours(48);
    let mut text = policy::template::init_template("lab", expires)
        .replace("serial = 1\n", &format!("serial = {serial}\n"));
    text.push_str(admissions);
    for (id, roles) in [(1, "master"), (2, "server"), (3, "master")] {
        text.push_str(&format!(
            "\n[[node]]\nid = {id}\nname = \"n{id}\"\npublic_key = \"{}\"\nendpoint = \"198.18.0.{id}:51820\"\naddresses = [\"10.77.0.{id}\"]\nroles = [\"{roles}\"]\n",
            wg(id)
        ));
    }
    text
}

fn admission(master: u16, seed: [u8; 32], ids: &str, net: &str, expires: Timestamp) -> String {
    format!(
        "\n[[admission]]\nmaster = {master}\nkey = \"{}\"\nroles = [\"drone\"]\nids = \"{ids}\"\naddresses = [\"{net}\"]\nmax_nodes = 3\nexpires = \"{expires}\"\n",
        pubkey(seed)
    )
}

fn both(expires: Timestamp) -> String {
    admission(1, ADMISSION_1, "100-199", "10.77.0.128/26", expires)
        + &admission(3, ADMISSION_3, "200-299", "10.77.0.192/26", expires)
}

fn parsed(text: &str) -> Policy {
    policy::parse_policy("cluster.toml", text.as_bytes(), now()).unwrap_or_else(|e| panic!("{e}"))
}

fn lab_policy() -> Policy {
    parsed(&policy_text(
        5,
        &both(now() + SignedDuration::from_hours(24)),
    ))
}

fn node(id: u16, last_octet: u8) -> policy::Node {
    policy::Node {
        id: NodeId::new(id).unwrap(),
        name: format!("d{id}"),
        public_key: wg(id),
        endpoint: None,
        addresses: vec![format!("10.77.0.{last_octet}").parse().unwrap()],
        roles: vec![Role::Drone],
        expires: None,
        attestation_key: None,
    }
}

fn membership(master: u16, serial: u64, nodes: Vec<policy::Node>) -> Membership {
    Membership {
        membership: Header {
            cluster: "lab".into(),
            master: NodeId::new(master).unwrap(),
            serial,
        },
        nodes,
    }
}

/// The membership's bytes and their signature by `seed`.
fn signed(m: &Membership, seed: [u8; 32]) -> (Vec<u8>, Vec<u8>) {
    let text = render(m).unwrap();
    let sig = policy::sign(text.as_bytes(), &SigningKey::from_bytes(&seed));
    (text.into_bytes(), sig.into_bytes())
}

struct Member {
    _dir: tempfile::TempDir,
    store: MembershipStore,
    in_force: MembershipsInForce,
}

fn member() -> Member {
    let dir = tempfile::tempdir().unwrap();
    let store = MembershipStore::open(&dir.path().join("memberships.json")).unwrap();
    Member {
        _dir: dir,
        store,
        in_force: MembershipsInForce::default(),
    }
}

impl Member {
    fn offer(
        &mut self,
        p: &Policy,
        as_master: u16,
        doc: (Vec<u8>, Vec<u8>),
    ) -> Result<(), Refusal> {
        self.in_force
            .offer(
                p,
                &mut self.store,
                NodeId::new(as_master).unwrap(),
                "membership.toml",
                doc.0,
                doc.1,
                now(),
            )
            .map(|_| ())
    }

    fn ids(&self, p: &Policy) -> Vec<u16> {
        self.in_force.nodes(p).map(|n| n.id.get()).collect()
    }
}

/// A refusal is one line, and the node map is what it was.
fn refused(m: &mut Member, p: &Policy, as_master: u16, doc: (Vec<u8>, Vec<u8>)) -> Refusal {
    let before = m.ids(p);
    let e = m.offer(p, as_master, doc).expect_err("accepted");
    assert!(!e.to_string().contains('\n'), "{e}");
    assert_eq!(m.ids(p), before, "{e}");
    e
}

/// The honest case first: master 1 admits two drones; every member's node map has them.
#[test]
fn a_master_admits_within_its_limits_and_the_node_map_has_its_nodes() {
    let p = lab_policy();
    let mut m = member();
    m.offer(
        &p,
        1,
        signed(
            &membership(1, 1, vec![node(100, 130), node(101, 131)]),
            ADMISSION_1,
        ),
    )
    .unwrap();
    m.offer(
        &p,
        3,
        signed(&membership(3, 1, vec![node(200, 200)]), ADMISSION_3),
    )
    .unwrap();
    assert_eq!(m.ids(&p), [1, 2, 3, 100, 101, 200]);
    assert_eq!(
        m.in_force.admitted_by(NodeId::new(101).unwrap()),
        NodeId::new(1)
    );
    assert_eq!(m.in_force.admitted_by(NodeId::new(2).unwrap()), None);
}

/// Attack: a thief with master 1's admission key signs the policy itself (raising the serial,
/// opening the firewall). Steps: sign a new policy with the admission key; every member
/// verifies with the operator key it pins: refused, naming the signer it does not trust.
#[test]
fn a_stolen_admission_key_cannot_sign_a_policy() {
    let text = policy_text(6, &both(now() + SignedDuration::from_hours(24)))
        .replace("default = \"drop\"", "default = \"accept\"");
    let sig = policy::sign(text.as_bytes(), &SigningKey::from_bytes(&ADMISSION_1));
    let trust = policy::TrustedKeys::new(vec![(&SigningKey::from_bytes(&OPERATOR)).into()]);
    let e = policy::verify_policy(
        "cluster.toml",
        text.as_bytes(),
        sig.as_bytes(),
        &trust,
        now(),
    )
    .expect_err("a policy signed by an admission key");
    assert!(e.to_string().contains("not one of the 1 trusted"), "{e}");
    // Nor can it pass a policy off as its membership: the document is not a membership.
    let mut m = member();
    let p = lab_policy();
    let e = refused(&mut m, &p, 1, (text.into_bytes(), sig.into_bytes()));
    assert!(matches!(e, Refusal::Invalid(_)), "{e}");
}

/// Attack: a stolen key admits outside its limits. Steps: sign, with master 1's key, a
/// membership with a server; with master 1 itself as a drone (a master); with id 250 (master
/// 3's range); with 10.77.0.200 (master 3's network); with 4 drones (3 allowed). Each is
/// refused, naming the limit.
#[test]
fn a_stolen_admission_key_cannot_admit_a_role_id_address_or_count_outside_its_limits() {
    let p = lab_policy();
    let mut m = member();
    let mut server = node(100, 130);
    server.roles = vec![Role::Server];
    let mut master = node(101, 131);
    master.roles = vec![Role::Master];
    let cases: Vec<(Vec<policy::Node>, &str)> = vec![
        (
            vec![server],
            "role server is not one master 1's admission key admits",
        ),
        (vec![master], "role master is not one"),
        (
            vec![node(250, 140)],
            "node 250 is outside master 1's ids 100-199",
        ),
        (
            vec![node(102, 200)],
            "10.77.0.200 is outside master 1's networks",
        ),
        (
            (0..4).map(|i| node(110 + i, 140 + i as u8)).collect(),
            "lists 4 nodes; master 1's admission key admits 3 at most",
        ),
    ];
    for (nodes, why) in cases {
        let e = refused(&mut m, &p, 1, signed(&membership(1, 1, nodes), ADMISSION_1));
        assert!(e.to_string().contains(why), "{e}");
    }
}

/// Attack (helper's B1 and B4, issue 28): a hostile master takes over nodes it did not
/// admit by listing their identity. Steps: it lists a drone with the WireGuard key of node 2
/// (the operator's server), one with node 2's name, and one with master 3's drone's key. Each such node is left out of the
/// node map, with why, and so is master 3's drone it collided with: nobody gets a contested
/// identity, node 2 (the operator's) keeps its place, and the map is the same whichever
/// membership reached the member first.
#[test]
fn a_hostile_master_cannot_take_over_a_node_it_did_not_admit() {
    let p = lab_policy();
    let mut key = node(100, 130);
    key.public_key = wg(2);
    let mut name = node(101, 131);
    name.name = "n2".into();
    let mut thief = node(102, 132);
    thief.public_key = wg(200);
    let honest = membership(3, 1, vec![node(200, 200), node(201, 201)]);
    let hostile = membership(1, 1, vec![key, name, thief]);
    let mut maps = Vec::new();
    for order in [[1, 3], [3, 1]] {
        let mut m = member();
        for master in order {
            let doc = if master == 1 {
                signed(&hostile, ADMISSION_1)
            } else {
                signed(&honest, ADMISSION_3)
            };
            m.offer(&p, master, doc).unwrap();
        }
        let out: Vec<(u16, u16, String)> = m
            .in_force
            .excluded()
            .iter()
            .map(|((master, id), why)| (master.get(), id.get(), why.clone()))
            .collect();
        maps.push((m.ids(&p), out));
    }
    assert_eq!(
        maps[0], maps[1],
        "the map depends on the order memberships came in"
    );
    let (ids, out) = &maps[0];
    // Master 3's other drone stays: only what is contested is left out.
    assert_eq!(ids, &[1, 2, 3, 201]);
    let why = |id: u16| {
        out.iter()
            .find(|(_, n, _)| *n == id)
            .map(|(_, _, w)| w.clone())
    };
    assert!(
        why(100)
            .unwrap()
            .contains("is also node 2's (the policy's)"),
        "{out:?}"
    );
    assert!(why(101).unwrap().contains("name \"n2\""), "{out:?}");
    assert!(
        why(102).unwrap().contains("in master 3's membership"),
        "{out:?}"
    );
    assert!(
        why(200).unwrap().contains("in master 1's membership"),
        "{out:?}"
    );
}

/// Attack (helper's B5): endpoints a node cannot have, or written another way to slip past
/// the comparison with the policy's. Steps: master 1 signs a membership whose node's endpoint
/// is node 1's written as IPv6-mapped IPv4, then loopback, then a tunnel address: each is
/// refused, naming the endpoint.
#[test]
fn a_membership_endpoint_written_twice_or_unusable_is_refused() {
    let p = lab_policy();
    let mut m = member();
    for (endpoint, why) in [
        ("[::ffff:198.18.0.1]:51820", "IPv4 address written as IPv6"),
        ("127.0.0.1:51820", "loopback"),
        ("10.77.0.1:51820", "inside the cluster's tunnel network"),
    ] {
        let mut n = node(100, 130);
        n.endpoint = Some(endpoint.parse().unwrap());
        let e = refused(
            &mut m,
            &p,
            1,
            signed(&membership(1, 1, vec![n]), ADMISSION_1),
        );
        assert!(e.to_string().contains(why), "{endpoint}: {e}");
    }
}

/// Attack: replaying or rolling back a master's membership (to bring back a node it removed).
/// Steps: serial 2 with drones 100 and 101, then serial 3 with 100 alone, accepted; then
/// serial 2 again (rollback), and a serial 3 with other content (replay): both refused, and
/// serial 3 stays; the record survives a restart of the member.
#[test]
fn a_membership_cannot_be_rolled_back_or_replayed() {
    let p = lab_policy();
    let mut m = member();
    let two = signed(
        &membership(1, 2, vec![node(100, 130), node(101, 131)]),
        ADMISSION_1,
    );
    m.offer(&p, 1, two.clone()).unwrap();
    let three = signed(&membership(1, 3, vec![node(100, 130)]), ADMISSION_1);
    m.offer(&p, 1, three.clone()).unwrap();
    let e = refused(&mut m, &p, 1, two.clone());
    assert!(
        matches!(
            e,
            Refusal::Rollback {
                offered: 2,
                accepted: 3,
                ..
            }
        ),
        "{e}"
    );
    let other_three = signed(
        &membership(1, 3, vec![node(100, 130), node(101, 131)]),
        ADMISSION_1,
    );
    let e = refused(&mut m, &p, 1, other_three);
    assert!(matches!(e, Refusal::Replay { serial: 3, .. }), "{e}");
    m.offer(&p, 1, three).unwrap();
    // A restarted member (its memberships gone from memory) still refuses serial 2.
    let path = m._dir.path().join("memberships.json");
    let mut again = Member {
        store: MembershipStore::open(&path).unwrap(),
        in_force: MembershipsInForce::default(),
        _dir: m._dir,
    };
    let e = refused(&mut again, &p, 1, two);
    assert!(matches!(e, Refusal::Rollback { .. }), "{e}");
}

/// Attack: a key outliving its expiry, its removal from the policy, or its replacement.
/// Steps: master 1's membership in force; a policy whose key for master 1 expired: a new
/// membership is refused, and the one in force is dropped on the recheck (its nodes leave the
/// map, fail closed); a policy without master 1's key: the same; a policy with a new key for
/// master 1: the old key's membership is dropped until master 1 signs it again.
#[test]
fn a_stolen_admission_key_dies_with_its_expiry_removal_or_replacement() {
    let p = lab_policy();
    let mut m = member();
    let doc = signed(&membership(1, 1, vec![node(100, 130)]), ADMISSION_1);
    m.offer(&p, 1, doc.clone()).unwrap();
    let past = now() - SignedDuration::from_secs(1);
    let expired = parsed(&policy_text(
        6,
        &(admission(1, ADMISSION_1, "100-199", "10.77.0.128/26", past)
            + &admission(
                3,
                ADMISSION_3,
                "200-299",
                "10.77.0.192/26",
                now() + SignedDuration::from_hours(1),
            )),
    ));
    let next = signed(
        &membership(1, 2, vec![node(100, 130), node(101, 131)]),
        ADMISSION_1,
    );
    let e = refused(&mut m, &expired, 1, next);
    assert!(matches!(e, Refusal::KeyExpired { .. }), "{e}");
    let dropped = m.in_force.recheck(&expired, now());
    assert_eq!(dropped.len(), 1);
    assert!(matches!(dropped[0].reason, Refusal::KeyExpired { .. }));
    assert_eq!(m.ids(&expired), [1, 2, 3]);

    let mut m = member();
    m.offer(&p, 1, doc.clone()).unwrap();
    let removed = parsed(&policy_text(
        6,
        &admission(
            3,
            ADMISSION_3,
            "200-299",
            "10.77.0.192/26",
            now() + SignedDuration::from_hours(1),
        ),
    ));
    let dropped = m.in_force.recheck(&removed, now());
    assert!(
        matches!(dropped[0].reason, Refusal::NoKey { .. }),
        "{:?}",
        dropped[0].reason
    );
    assert_eq!(m.ids(&removed), [1, 2, 3]);

    let mut m = member();
    m.offer(&p, 1, doc.clone()).unwrap();
    let rotated = parsed(&policy_text(
        6,
        &admission(
            1,
            [21; 32],
            "100-199",
            "10.77.0.128/26",
            now() + SignedDuration::from_hours(1),
        ),
    ));
    let dropped = m.in_force.recheck(&rotated, now());
    assert!(
        matches!(dropped[0].reason, Refusal::NotSigned { .. }),
        "{:?}",
        dropped[0].reason
    );
    let e = refused(
        &mut m,
        &rotated,
        1,
        signed(&membership(1, 2, vec![node(100, 130)]), ADMISSION_1),
    );
    assert!(matches!(e, Refusal::NotSigned { .. }), "{e}");
    m.offer(
        &rotated,
        1,
        signed(&membership(1, 2, vec![node(100, 130)]), [21; 32]),
    )
    .unwrap();
    // An honest recheck keeps what is allowed.
    assert!(m.in_force.recheck(&rotated, now()).is_empty());
    assert_eq!(m.ids(&rotated), [1, 2, 3, 100]);
}

/// Bad input: signed by an unknown key, offered for another master, for another cluster,
/// oversized, malformed, or not UTF-8: one line each, nothing changes.
#[test]
fn memberships_from_the_wrong_key_cluster_or_master_or_malformed_are_refused() {
    let p = lab_policy();
    let mut m = member();
    let ok = membership(1, 1, vec![node(100, 130)]);
    let e = refused(&mut m, &p, 1, signed(&ok, [99; 32]));
    assert!(
        e.to_string()
            .starts_with("not signed by master 1's admission key"),
        "{e}"
    );
    // Master 3's key, its document saying master 1: offered as master 3's.
    let e = refused(&mut m, &p, 3, signed(&ok, ADMISSION_3));
    assert!(matches!(e, Refusal::OtherMaster { .. }), "{e}");
    let e = refused(&mut m, &p, 2, signed(&ok, ADMISSION_1));
    assert!(
        e.to_string().contains("no admission key for master 2"),
        "{e}"
    );
    let mut other = ok.clone();
    other.membership.cluster = "prod".into();
    let e = refused(&mut m, &p, 1, signed(&other, ADMISSION_1));
    assert!(matches!(e, Refusal::OtherCluster { .. }), "{e}");
    let huge = vec![b'#'; policy::membership::MAX_MEMBERSHIP_BYTES + 1];
    let sig = policy::sign(&huge, &SigningKey::from_bytes(&ADMISSION_1)).into_bytes();
    let e = refused(&mut m, &p, 1, (huge, sig));
    assert!(matches!(e, Refusal::TooLarge { .. }), "{e}");
    for bad in [
        &b"[membership]\ncluster = \"lab\"\nmaster = 1\n"[..],
        b"\xff\xfe",
        b"[[node]]\nid = 0\n",
    ] {
        let sig = policy::sign(bad, &SigningKey::from_bytes(&ADMISSION_1)).into_bytes();
        let e = refused(&mut m, &p, 1, (bad.to_vec(), sig));
        assert!(matches!(e, Refusal::Invalid(_)), "{e}");
    }
    assert!(m.in_force.of(NodeId::new(1).unwrap()).is_none());
}

/// The operator's limits themselves are checked: an admission key for a node that is no
/// master, one that admits masters, ranges that overlap another key's, a network outside the
/// tunnel network, a node of the policy inside a key's ranges: each a placed finding.
#[test]
fn admission_limits_that_overlap_or_reach_too_far_are_invalid() {
    let far = now() + SignedDuration::from_hours(24);
    let cases = [
        (
            admission(2, ADMISSION_1, "100-199", "10.77.0.128/26", far),
            "node 2 is no master",
        ),
        (
            admission(1, ADMISSION_1, "100-199", "10.77.0.128/26", far)
                .replace("[\"drone\"]", "[\"drone\", \"master\"]"),
            "never admits masters",
        ),
        (
            both(far).replace("200-299", "150-299"),
            "ids 150-299 overlap admission[0]'s 100-199",
        ),
        (
            both(far).replace("10.77.0.192/26", "10.77.0.160/27"),
            "overlaps admission[0]'s 10.77.0.128/26",
        ),
        (
            admission(1, ADMISSION_1, "100-199", "10.78.0.0/24", far),
            "not inside the cluster's tunnel network",
        ),
        (
            admission(1, ADMISSION_1, "1-199", "10.77.0.128/26", far),
            "node id 1 is in admission[0]'s ids",
        ),
        (
            admission(1, ADMISSION_1, "100-199", "10.77.0.0/26", far),
            "tunnel address 10.77.0.1 is in admission[0]'s networks",
        ),
        (
            both(far).replace(&pubkey(ADMISSION_3), &pubkey(ADMISSION_1)),
            "the same key as admission[0]",
        ),
        (
            admission(1, ADMISSION_1, "100-101", "10.77.0.128/26", far),
            "max_nodes must be 1-2",
        ),
    ];
    for (admissions, why) in cases {
        let text = policy_text(5, &admissions);
        let e = policy::parse_policy("cluster.toml", text.as_bytes(), now())
            .expect_err(why)
            .to_string();
        assert!(e.contains(why), "{why}: {e}");
        assert!(e.starts_with("cluster.toml:"), "{e}");
    }
}

/// The operator removes a node a master admitted (`tyd admission revoke`): the policy names
/// its WireGuard key in the master's admission; every member leaves it out of the node map
/// though the master's membership still lists it, and the rest of that membership stays.
#[test]
fn a_node_the_operator_revoked_is_out_of_the_map_whatever_the_membership_says() {
    let p = lab_policy();
    let mut m = member();
    m.offer(
        &p,
        1,
        signed(
            &membership(1, 1, vec![node(100, 130), node(101, 131)]),
            ADMISSION_1,
        ),
    )
    .unwrap();
    let far = now() + SignedDuration::from_hours(24);
    let revoked = admission(1, ADMISSION_1, "100-199", "10.77.0.128/26", far)
        + &format!("revoked = [\"{}\"]\n", wg(100))
        + &admission(3, ADMISSION_3, "200-299", "10.77.0.192/26", far);
    let q = parsed(&policy_text(6, &revoked));
    assert!(
        m.in_force.recheck(&q, now()).is_empty(),
        "the membership stays"
    );
    assert_eq!(m.ids(&q), [1, 2, 3, 101]);
}
