//! Issue 28 for real: masters admit with an admission key, and their memberships travel
//! between members through clusterd. Nodes in network namespaces, each running netguard
//! (userspace WireGuard) and clusterd, as in `cluster.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use lab::{Lab, root_or_skip, wait_for};

/// The lab's policy at `serial`: d1 is master 1 with the admission key `key` (drones, ids
/// 100-199 in 10.77.0.128/26), d2-d4 are listed by the operator, d5 is not.
fn policy_text(lab: &Lab, serial: u64, key: &SigningKey) -> String {
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let mut t = policy::template::init_template("lab", expires)
        .replace("serial = 1", &format!("serial = {serial}"));
    t.push_str(&format!(
        "\n[[admission]]\nmaster = 1\nkey = \"{}\"\nroles = [\"drone\"]\nids = \"100-199\"\naddresses = [\"10.77.0.128/26\"]\nmax_nodes = 8\nexpires = \"{expires}\"\n",
        policy::OperatorPublicKey::from(key)
    ));
    for i in 0..4 {
        let public = policy::WgPublicKey::from_secret(&lab.members[i].key);
        let role = if i == 0 { "master" } else { "drone" };
        t.push_str(&format!(
            "\n[[node]]\nid = {}\nname = \"d{}\"\npublic_key = \"{public}\"\nendpoint = \"198.18.0.{}:51820\"\naddresses = [\"{}\"]\nroles = [\"{role}\"]\n",
            i + 1, i + 1, i + 1, lab.members[i].tun
        ));
    }
    t
}

/// Master 1's membership at `serial` with `nodes` ((id, name, WireGuard public key, tunnel
/// address)), and its signature by `key`.
fn membership(
    serial: u64,
    nodes: &[(u16, &str, String, &str)],
    key: &SigningKey,
) -> (String, String) {
    let mut t = format!("[membership]\ncluster = \"lab\"\nmaster = 1\nserial = {serial}\n");
    for (id, name, public, tun) in nodes {
        // Only d5 (node 100) is reachable on the LAN, at 198.18.0.5.
        let endpoint = if *id == 100 {
            "endpoint = \"198.18.0.5:51820\"\n"
        } else {
            ""
        };
        t.push_str(&format!(
            "\n[[node]]\nid = {id}\nname = \"{name}\"\npublic_key = \"{public}\"\n{endpoint}addresses = [\"{tun}\"]\nroles = [\"drone\"]\n"
        ));
    }
    let sig = policy::sign(t.as_bytes(), key);
    (t, sig)
}

/// The serial of master 1's membership file in member `i`'s directory.
fn membership_serial_on(lab: &Lab, i: usize) -> Option<u64> {
    let text = lab.file(i, "membership-1.toml");
    text.lines()
        .find_map(|l| l.strip_prefix("serial = "))
        .and_then(|s| s.parse().ok())
}

/// What a fetch from d1's tunnel address brings: the transfer's framing, the policy, then one
/// membership.
fn frame(policy: &[u8], sig: &[u8], membership: Option<(&str, &str)>) -> Vec<u8> {
    let mut out = b"TYD1".to_vec();
    let part = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend((b.len() as u32).to_be_bytes());
        out.extend(b);
    };
    part(&mut out, policy);
    part(&mut out, sig);
    if let Some((m, s)) = membership {
        out.extend(1u32.to_be_bytes());
        out.extend(1u16.to_be_bytes());
        part(&mut out, m.as_bytes());
        part(&mut out, s.as_bytes());
    }
    out
}

/// Attack (issue 28, a compromised master with root and its admission key): five members;
/// d1 is master 1, d5 admitted by d1's membership alone (written on d1 and d5, as joind and
/// the join answer put it there). Steps: clusterd carries the membership to d2-d4, and every
/// member reaches every other, d5 included. Then d1's clusterd is replaced by a program that,
/// from d1's tunnel address, offers master 1's membership at serial 9 to everyone, 200 times
/// a second, and answers each member's fetch with its own forgery: to d2 a policy raising the
/// serial signed with the admission key; to d3 a membership admitting a node outside its ids;
/// to d4 one taking over d2's WireGuard key; to d5 one signed by another key. Each member
/// refuses its forgery with one line naming why, fetches from d1 once, and keeps the last
/// good state: the policy's serial, membership serial 1, every tunnel.
#[test]
fn a_compromised_masters_forgeries_are_refused_on_every_member() {
    if !root_or_skip("a_compromised_masters_forgeries_are_refused_on_every_member") {
        return;
    }
    let mut lab = Lab::new(5);
    lab.members[4].tun = "10.77.0.130".into();
    let admission = SigningKey::from_bytes(&[41; 32]);
    let text = policy_text(&lab, 2, &admission);
    let sig = policy::sign(text.as_bytes(), &lab.operator);
    for m in &lab.members {
        std::fs::write(m.dir.join("cluster.toml.sig"), &sig).unwrap();
        std::fs::write(m.dir.join("cluster.toml"), &text).unwrap();
    }
    let d5_key = policy::WgPublicKey::from_secret(&lab.members[4].key).to_string();
    let (m1, s1) = membership(1, &[(100, "d5", d5_key.clone(), "10.77.0.130")], &admission);
    for i in [0, 4] {
        let path = lab.members[i].dir.join("membership-1.toml");
        policy::write_signed_pair(&path, m1.as_bytes(), s1.as_bytes()).unwrap();
    }
    for i in 0..5 {
        lab.start(i);
    }
    let took = wait_for(
        "every member reaches every other, d5 too",
        Duration::from_secs(45),
        || {
            (0..5).all(|i| {
                lab.view(i)["nodes"]
                    .as_array()
                    .is_some_and(|v| v.len() == 5 && v.iter().all(|x| x["reachable"] == true))
            })
        },
    );
    eprintln!(
        "d5, admitted by master 1's membership alone, reached by all after {} ms",
        took.as_millis()
    );
    for i in 1..4 {
        assert_eq!(
            membership_serial_on(&lab, i),
            Some(1),
            "carried to d{}",
            i + 1
        );
    }
    // `tyd status --cluster` says which master admitted d5.
    let (_, status) = lab::tyd_cluster_status(&lab, 1);
    assert!(status.contains("d5 (by master 1)"), "{status}");

    // d1 compromised: its clusterd replaced by the forger.
    let clusterd = lab.members[0].children.last_mut().unwrap();
    clusterd.kill().unwrap();
    clusterd.wait().unwrap();
    let d2_key = policy::WgPublicKey::from_secret(&lab.members[1].key).to_string();
    let raised = text.replace("serial = 2\n", "serial = 9\n");
    let raised_sig = policy::sign(raised.as_bytes(), &admission);
    let out_of_ids = membership(
        9,
        &[
            (100, "d5", d5_key.clone(), "10.77.0.130"),
            (
                250,
                "x",
                policy::WgPublicKey::from_secret(&lab::wireguard_key()).to_string(),
                "10.77.0.140",
            ),
        ],
        &admission,
    );
    let takeover = membership(
        9,
        &[
            (100, "d5", d5_key.clone(), "10.77.0.130"),
            (101, "x", d2_key, "10.77.0.131"),
        ],
        &admission,
    );
    let other_key = membership(
        9,
        &[(100, "d5", d5_key, "10.77.0.130")],
        &SigningKey::from_bytes(&[42; 32]),
    );
    let forgeries: Vec<(String, Vec<u8>)> = vec![
        (
            "10.77.0.2".into(),
            frame(raised.as_bytes(), raised_sig.as_bytes(), None),
        ),
        (
            "10.77.0.3".into(),
            frame(
                text.as_bytes(),
                sig.as_bytes(),
                Some((&out_of_ids.0, &out_of_ids.1)),
            ),
        ),
        (
            "10.77.0.4".into(),
            frame(
                text.as_bytes(),
                sig.as_bytes(),
                Some((&takeover.0, &takeover.1)),
            ),
        ),
        (
            "10.77.0.130".into(),
            frame(
                text.as_bytes(),
                sig.as_bytes(),
                Some((&other_key.0, &other_key.1)),
            ),
        ),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let forger = forging_master(&lab.members[0].ns, forgeries, stop.clone());
    // Each forgery refused, or (the takeover: signed right, within the key's limits) taken
    // with the contested node left out of the map.
    let why = [
        (1, "fetched policy refused"),
        (2, "node 250 is outside master 1's ids 100-199"),
        (3, "left out of the node map"),
        (4, "not signed by master 1's admission key"),
    ];
    wait_for(
        "each member refused its forgery",
        Duration::from_secs(15),
        || {
            why.iter()
                .all(|(i, w)| lab.file(*i, "clusterd.log").lines().any(|l| l.contains(w)))
        },
    );
    let takeover_line = lab.file(3, "clusterd.log");
    assert!(
        takeover_line
            .lines()
            .any(|l| l.contains("left out") && l.contains("is also node 2's (the policy's)")),
        "{takeover_line}"
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let served = forger.join().unwrap();
    for (i, w) in why {
        let log = lab.file(i, "clusterd.log");
        let line = log.lines().find(|l| l.contains(w)).unwrap_or_default();
        eprintln!(
            "d{}: {}",
            i + 1,
            line.split_once("WARN ").map_or(line, |(_, l)| l)
        );
    }
    eprintln!(
        "fetches served by the forger in 2 s of offers at 200/s: {}",
        served.len()
    );
    for (i, _) in why {
        assert_eq!(lab.serial_on(i), Some(2), "d{}: policy", i + 1);
        // Serial 1, or the takeover's 9 (carried from d4): either way the same node map.
        assert!(
            matches!(membership_serial_on(&lab, i), Some(1 | 9)),
            "d{}: membership",
            i + 1
        );
        let view = lab.view(i);
        assert!(
            !view["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["id"] == 101),
            "d{}: the node with d2's key is in the map: {view}",
            i + 1
        );
    }
    // One fetch each: a member that served a lie is not asked again.
    assert!(served.len() <= 8, "fetches from the forger: {served:?}");
    // Every tunnel kept: d2-d4 still hear d5 (admitted by the membership in force), and d5
    // them.
    for i in 1..5 {
        let view = lab.view(i);
        let heard = |id: u64| {
            view["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["id"] == id && x["reachable"] == true)
        };
        let others = [2, 3, 4, 100]
            .into_iter()
            .filter(|&id| id != [2, 3, 4, 100][i - 1]);
        assert!(others.clone().all(heard), "d{}: {view}", i + 1);
    }
}

/// From d1's tunnel address: offers master 1's membership at serial 9 (policy serial 2) every
/// 5 ms to d2-d5, and answers each fetch with the forgery meant for the fetching address.
/// Returns the addresses it served.
fn forging_master(
    ns: &str,
    forgeries: Vec<(String, Vec<u8>)>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let fd = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let udp = std::net::UdpSocket::bind("10.77.0.1:7946").unwrap();
        let tcp = std::net::TcpListener::bind("10.77.0.1:7946").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let offer = serde_json::json!({"offer": {"serial": 2, "digest": "f".repeat(64), "memberships": {"1": 9}}});
        let mut served = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for (p, _) in &forgeries {
                let _ = udp.send_to(offer.to_string().as_bytes(), format!("{p}:7946"));
            }
            while let Ok((mut c, from)) = tcp.accept() {
                let from = from.ip().to_string();
                if let Some((_, bytes)) = forgeries.iter().find(|(p, _)| *p == from) {
                    let _ = c.set_nonblocking(false);
                    let _ = c.write_all(bytes);
                }
                served.push(from);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        served
    })
}
