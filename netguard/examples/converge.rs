//! Convergence benchmark (run by scripts/bench-netguard.sh inside a network namespace, as
//! root). For maps of 10 to 10,000 nodes it times the daemon's own code (`daemon::Node`, what
//! `netguard` runs on each event, minus the inotify wake-up) from "new signed policy file in
//! place" to "WireGuard peers and nft sets converged": cold start, one node added, one
//! removed, one key rotated, a quarantine and readmission; and, in the same run, the naive
//! approach (`wg syncconf` of the whole config plus `nft -f` of the whole ruleset). A real
//! peer (node 2, in another namespace) keeps a session up throughout; its handshake time and
//! counters show whether any change disturbed it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use netguard::daemon::{Config, Node};
use netguard::desired::desired;
use netguard::nfnl::SetEditor;
use netguard::reconcile::reconcile;
use netguard::wg::{Interface, Kind};
use policy::{TrustedKeys, WgPublicKey};
use proto::quarantine::{QuarantineList, Quarantined, Reason, Schema};
use wireguard_control::Key;

struct Env {
    iface: String,
    peer_pub: String,
    peer_lan: String,
    dir: std::path::PathBuf,
}

fn policy_text(n: usize, serial: u64, me: &str, env: &Env, rotated: bool, extra: bool) -> String {
    let mut t = policy::template::init_template(
        "bench",
        jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
    )
    .replace("serial = 1", &format!("serial = {serial}"))
    .replace("10.77.0.0/24", "10.0.0.0/16")
    .replace("allow_roaming = false", "allow_roaming = true");
    let count = if extra { n + 1 } else { n };
    for id in 1..=count {
        let key = match id {
            1 => me.to_string(),
            2 => env.peer_pub.clone(),
            3 if rotated => WgPublicKey::from_bytes([0xEE; 32]).to_base64(),
            _ => {
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&(id as u32).to_le_bytes());
                b[31] = 0x42;
                WgPublicKey::from_bytes(b).to_base64()
            }
        };
        let endpoint = if id == 2 {
            format!("{}:51820", env.peer_lan)
        } else {
            format!("198.19.{}.{}:51820", id / 250, id % 250 + 1)
        };
        let _ = write!(
            t,
            "\n[[node]]\nid = {id}\nname = \"n{id}\"\npublic_key = \"{key}\"\nendpoint = \"{endpoint}\"\naddresses = [\"10.0.{}.{}\"]\n",
            id / 250,
            id % 250 + 1
        );
    }
    t
}

/// What the benchmark keeps besides the daemon: its own handle on the interface (to read the
/// peer's session) and a set editor (for the drift check).
struct Runner {
    env: Env,
    op: ed25519_dalek::SigningKey,
    private: Key,
    me: WgPublicKey,
    iface: Interface,
    sets: SetEditor,
}

impl Runner {
    /// Puts a signed policy in place, as `tyd` does: the policy, then its signature.
    fn write_policy(&self, text: &str) {
        std::fs::write(self.env.dir.join("cluster.toml"), text).unwrap();
        std::fs::write(
            self.env.dir.join("cluster.toml.sig"),
            policy::sign(text.as_bytes(), &self.op),
        )
        .unwrap();
    }

    /// The daemon's configuration, with its own rollback state for this map size.
    fn config(&self, n: usize) -> Config {
        Config {
            policy: self.env.dir.join("cluster.toml"),
            trust: self.env.dir.join("trusted.pub"),
            key: self.env.dir.join("me.key"),
            state: self.env.dir.join(format!("state-{n}.json")),
            min_serial: 0,
            interface: Some(self.env.iface.clone()),
            backend: Some(Kind::detect(Some("userspace"))),
            drift: Duration::from_secs(3600),
            quarantine: self.env.dir.join("quarantine.json"),
            metrics_file: None,
        }
    }

    /// The desired state of the policy in `text`, computed outside any timing.
    fn desired_of(&self, text: &str) -> netguard::desired::Desired {
        let sig = policy::sign(text.as_bytes(), &self.op);
        let trust = TrustedKeys::new(vec![(&self.op).into()]);
        let v = policy::verify_policy(
            "p",
            text.as_bytes(),
            sig.as_bytes(),
            &trust,
            jiff::Timestamp::now(),
        )
        .unwrap();
        desired(&v, &self.me, Some(&self.env.iface), jiff::Timestamp::now()).unwrap()
    }
}

/// The naive approach: the whole WireGuard config through `wg syncconf`, the whole ruleset
/// through `nft -f`.
fn naive(text: &str, env: &Env, private: &Key, me: &WgPublicKey, iface: &str) -> Duration {
    let trust_key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let sig = policy::sign(text.as_bytes(), &trust_key);
    let v = policy::verify_policy(
        "p",
        text.as_bytes(),
        sig.as_bytes(),
        &TrustedKeys::new(vec![(&trust_key).into()]),
        jiff::Timestamp::now(),
    )
    .unwrap();
    let d = desired(&v, me, Some(iface), jiff::Timestamp::now()).unwrap();
    let mut conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51821\n",
        private.to_base64()
    );
    for (k, p) in d.peers.iter() {
        let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        let _ = write!(
            conf,
            "\n[Peer]\nPublicKey = {k}\nAllowedIPs = {}\n",
            ips.join(", ")
        );
        if let Some(e) = p.endpoint {
            let _ = writeln!(conf, "Endpoint = {e}");
        }
    }
    let mut rules = String::from(
        "table inet naive\ndelete table inet naive\ntable inet naive {\n set peers4 { type ipv4_addr; ",
    );
    let peers: Vec<String> = d.ruleset.elements["peers4"]
        .iter()
        .map(ToString::to_string)
        .collect();
    if !peers.is_empty() {
        let _ = write!(rules, "elements = {{ {} }}; ", peers.join(", "));
    }
    rules.push_str("}\n chain input { type filter hook input priority 10; policy accept;\n  iifname \"naive0\" tcp dport { 723, 4660 } ip saddr @peers4 accept\n  tcp dport { 723, 4660 } drop\n }\n}\n");
    std::fs::write(env.dir.join("naive.conf"), conf).unwrap();
    std::fs::write(env.dir.join("naive.nft"), rules).unwrap();
    let t = Instant::now();
    let ok = Command::new("wg")
        .args([
            "syncconf",
            "naive0",
            &env.dir.join("naive.conf").display().to_string(),
        ])
        .status()
        .unwrap()
        .success()
        && Command::new("nft")
            .args(["-f", &env.dir.join("naive.nft").display().to_string()])
            .status()
            .unwrap()
            .success();
    assert!(ok, "naive apply failed");
    t.elapsed()
}

fn session(iface: &Interface, peer: &WgPublicKey) -> (Option<std::time::SystemTime>, u64) {
    let dev = iface.read().unwrap();
    dev.peers
        .iter()
        .find(|p| p.config.public_key.0 == *peer.as_bytes())
        .map(|p| (p.stats.last_handshake_time, p.stats.rx_bytes))
        .unwrap_or((None, 0))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A drift check with nothing to repair: a full pass (table read back and compared with the
/// desired shape, device read, link and foreign routes checked). In the same run, the table
/// read-back alone (what the old comment-tag check cost) and read-back plus the content
/// comparison, so the comparison's own cost shows.
fn drift_check(r: &mut Runner, n: usize, text: &str) {
    let d = r.desired_of(text);
    // The benchmark's own handle first adopts the interface the daemon made.
    let first = reconcile(&mut r.iface, &mut r.sets, &r.private, &d, None).unwrap();
    assert!(
        first.iter().all(|c| c.contains("adopted")),
        "the daemon's state was repaired: {first:?}"
    );
    let mut full = Vec::new();
    let mut read = Vec::new();
    let mut compare = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let changes = reconcile(&mut r.iface, &mut r.sets, &r.private, &d, None).unwrap();
        full.push(t.elapsed());
        assert!(
            changes.is_empty(),
            "a clean table was repaired: {changes:?}"
        );
        let t = Instant::now();
        let table = netguard::nft::read_table().unwrap().expect("table");
        read.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(d.ruleset.drift(&table.shape), None);
        compare.push(t.elapsed());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (full, read, compare) = (median(&mut full), median(&mut read), median(&mut compare));
    println!(
        "{n:>6} {:<14} {:>12.1}  (median of 5; table read-back {:.1} ms, content comparison {:.2} ms = {:.0}% of the read-back)",
        "drift check",
        ms(full),
        ms(read),
        ms(compare),
        100.0 * ms(compare) / ms(read)
    );
}

/// A quarantine and the readmission: clusterd rewrites its list, the policy stays. Through
/// the daemon's own handling (list read, applied to the state derived before, set edits),
/// checked in the kernel afterwards, outside the timing.
fn quarantine(node: &mut Node, cfg: &Config, n: usize) {
    let listed = |ids: &[u16]| QuarantineList {
        schema: Schema,
        nodes: ids
            .iter()
            .map(|&id| Quarantined {
                id: policy::NodeId::new(id).unwrap(),
                name: format!("n{id}"),
                reason: Reason::CertaintyUnreachable,
                since: jiff::Timestamp::now(),
                boot_id: None,
                until_reboot: false,
            })
            .collect(),
    };
    let addr: std::net::IpAddr = [10, 0, 0, 4].into(); // node 3's tunnel address
    let in_peers = || {
        netguard::nft::read_table()
            .unwrap()
            .expect("table")
            .elements["peers4"]
            .contains(&addr)
    };
    let mut timed = |ids: &[u16]| {
        listed(ids).write(&cfg.quarantine).unwrap();
        let t = Instant::now();
        assert!(node.quarantine_changed(), "quarantine list change not seen");
        t.elapsed()
    };
    let out = timed(&[3]);
    assert!(!in_peers(), "quarantine not in force");
    let back = timed(&[]);
    assert!(in_peers(), "readmission not in force");
    println!(
        "{n:>6} {:<14} {:>12.2}  (readmission {:.2} ms; the list read and applied to the state derived before, set edits; checked in the kernel after)",
        "quarantine one",
        ms(out),
        ms(back)
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let env = Env {
        iface: args.next().expect("iface"),
        peer_pub: args.next().expect("peer public key"),
        peer_lan: args.next().expect("peer LAN address"),
        dir: std::path::PathBuf::from(args.next().expect("work dir")),
    };
    let key_path = Path::new(&env.dir).join("me.key");
    let private_text = std::fs::read_to_string(&key_path).unwrap();
    let private = Key::from_base64(private_text.trim()).unwrap();
    // A node's secret key file must not be readable by others.
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let me = WgPublicKey::from_bytes(private.get_public().0);
    let op = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    std::fs::write(
        env.dir.join("trusted.pub"),
        format!("{}\n", policy::OperatorPublicKey::from(&op)),
    )
    .unwrap();
    // The naive approach's own interface, so both run side by side.
    assert!(
        Command::new("sh")
            .args(["-c", "wireguard-go naive0 && ip link set naive0 up"])
            .status()
            .unwrap()
            .success()
    );
    println!(
        "{:>6} {:<14} {:>12} {:>10} {:>12} {:>8}  unchanged peer's session",
        "nodes", "change", "netguard ms", "load ms", "naive ms", "speedup"
    );
    let mut serial = 1;
    // BENCH_NODES="1000 10000" runs some of the rows only.
    let sizes: Vec<usize> = std::env::var("BENCH_NODES")
        .unwrap_or_else(|_| "10 100 1000 10000".into())
        .split_whitespace()
        .map(|n| n.parse().expect("BENCH_NODES: node counts"))
        .collect();
    for n in sizes {
        let mut r = Runner {
            iface: Interface::new(&env.iface, Kind::detect(Some("userspace"))).unwrap(),
            env: Env {
                iface: env.iface.clone(),
                peer_pub: env.peer_pub.clone(),
                peer_lan: env.peer_lan.clone(),
                dir: env.dir.clone(),
            },
            op: op.clone(),
            private: private.clone(),
            me,
            sets: SetEditor::new(),
        };
        // Cold start: no interface, no table.
        r.iface.remove();
        let _ = Command::new("sh")
            .args([
                "-c",
                "nft delete table inet netguard; nft delete table inet naive",
            ])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("wg")
            .args([
                "set",
                "naive0",
                "peer",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                "remove",
            ])
            .status();
        // What creating the interface alone costs (wireguard-go's start with this backend),
        // so the cold start can be read for the kernel backend too.
        let t = Instant::now();
        r.iface.ensure().unwrap();
        let create = t.elapsed();
        r.iface.remove();
        serial += 1;
        let base = policy_text(n, serial, &me.to_base64(), &r.env, false, false);
        r.write_policy(&base);
        let cfg = r.config(n);
        let t = Instant::now();
        let mut node = Node::start(cfg.clone()).unwrap();
        let cold = t.elapsed();
        let cold_naive = naive(&base, &r.env, &private, &me, "naive0");
        println!(
            "{n:>6} {:<14} {:>12.1} {:>10} {:>12.1} {:>7.1}x  (interface created; creating it alone takes {:.1} ms: wireguard-go's start)",
            "cold start",
            ms(cold),
            "",
            ms(cold_naive),
            ms(cold_naive) / ms(cold),
            ms(create)
        );
        // Let the real peer's session come up.
        let peer = WgPublicKey::from_bytes(Key::from_base64(&r.env.peer_pub).unwrap().0);
        let until = Instant::now() + Duration::from_secs(20);
        while session(&r.iface, &peer).0.is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut text = base;
        for (change, rotated, extra) in [
            ("add one", false, true),
            ("remove one", false, false),
            ("rotate a key", true, false),
        ] {
            serial += 1;
            text = policy_text(n, serial, &me.to_base64(), &r.env, rotated, extra);
            let before = session(&r.iface, &peer);
            r.write_policy(&text);
            let times = node.policy_changed().expect("policy accepted");
            std::thread::sleep(Duration::from_millis(300));
            let after = session(&r.iface, &peer);
            let naive_t = naive(&text, &r.env, &private, &me, "naive0");
            let verdict = match (before.0, after.0) {
                (None, _) => "no session before the change",
                (Some(a), Some(b)) if a == b && after.1 >= before.1 => {
                    "undisturbed (same handshake, counters growing)"
                }
                _ => "DISTURBED (new handshake or counters reset)",
            };
            println!(
                "{n:>6} {change:<14} {:>12.1} {:>10.1} {:>12.1} {:>7.1}x  {verdict}; load {:.1} + adopt {:.1} + pass {:.1} ms, then {:.1} ms after",
                ms(times.converged()),
                ms(times.load),
                ms(naive_t),
                ms(naive_t) / ms(times.converged()),
                ms(times.load),
                ms(times.adopt),
                ms(times.pass),
                ms(times.after),
            );
        }
        quarantine(&mut node, &cfg, n);
        drift_check(&mut r, n, &text);
    }
    let _ = Command::new("ip").args(["link", "del", "naive0"]).status();
}
