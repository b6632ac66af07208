//! Convergence benchmark (run by scripts/bench-netguard.sh inside a network namespace, as
//! root). For maps of 10, 100 and 1000 nodes it times, from "new signed policy file in place"
//! (read, verify, rollback check, plan, apply, read back) to "WireGuard peers and nft sets
//! converged": cold start, one node added, one removed, one key rotated; and, in the same run,
//! the naive approach (`wg syncconf` of the whole config plus `nft -f` of the whole ruleset).
//! A real peer (node 2, in another namespace) keeps a session up throughout; its handshake
//! time and counters show whether any change disturbed it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use netguard::desired::desired;
use netguard::nfnl::SetEditor;
use netguard::reconcile::reconcile;
use netguard::wg::{Interface, Kind};
use policy::{RollbackStore, TrustedKeys, WgPublicKey};
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

struct Runner {
    env: Env,
    op: ed25519_dalek::SigningKey,
    trust: TrustedKeys,
    private: Key,
    me: WgPublicKey,
    store: RollbackStore,
    iface: Interface,
    converged: Option<netguard::desired::Desired>,
    sets: SetEditor,
    /// The last policy's `[[node]]` blocks, kept as the daemon keeps them.
    blocks: policy::NodeBlocks,
}

impl Runner {
    /// Writes the signed policy, then reads, verifies, accepts, plans and applies it. Returns
    /// the whole time and its parts.
    fn converge(&mut self, text: &str) -> Parts {
        let p = self.env.dir.join("cluster.toml");
        std::fs::write(&p, text).unwrap();
        std::fs::write(
            self.env.dir.join("cluster.toml.sig"),
            policy::sign(text.as_bytes(), &self.op),
        )
        .unwrap();
        let t = Instant::now();
        let bytes = std::fs::read(&p).unwrap();
        let sig = std::fs::read(self.env.dir.join("cluster.toml.sig")).unwrap();
        let now = jiff::Timestamp::now();
        let v = policy::verify_policy_reusing(
            "cluster.toml",
            &bytes,
            &sig,
            &self.trust,
            now,
            &mut self.blocks,
        )
        .unwrap();
        let verified = t.elapsed();
        self.store.accept(&v, now).unwrap();
        let stored = t.elapsed();
        let d = desired(&v, &self.me, Some(&self.env.iface), jiff::Timestamp::now()).unwrap();
        reconcile(
            &mut self.iface,
            &mut self.sets,
            &self.private,
            &d,
            self.converged.as_ref(),
        )
        .unwrap();
        let took = t.elapsed();
        self.converged = Some(d);
        Parts {
            total: took,
            verify: verified,
            store: stored - verified,
            apply: took - stored,
        }
    }
}

/// One convergence: the whole, reading and verifying the policy (signature, parse,
/// validation), recording it in the rollback store (a synced write), and the rest (desired
/// state, plan, apply).
struct Parts {
    total: Duration,
    verify: Duration,
    store: Duration,
    apply: Duration,
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
    for (k, p) in &d.peers {
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
fn drift_check(r: &mut Runner, n: usize) {
    let d = r.converged.clone().expect("converged");
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

/// A quarantine and the readmission (clusterd's list changes, the policy does not): set edits
/// only. Checked in the kernel afterwards, outside the timing.
fn quarantine(r: &mut Runner, n: usize) {
    let clean = r.converged.clone().expect("converged");
    let node3 = policy::NodeId::new(3).unwrap();
    let mut q = clean.clone();
    q.quarantine(&[node3].into_iter().collect());
    let addr: std::net::IpAddr = [10, 0, 0, 4].into(); // node 3's tunnel address
    let in_peers = || {
        netguard::nft::read_table()
            .unwrap()
            .expect("table")
            .elements["peers4"]
            .contains(&addr)
    };
    let t = Instant::now();
    let changes = reconcile(&mut r.iface, &mut r.sets, &r.private, &q, Some(&clean)).unwrap();
    let out = t.elapsed();
    assert!(
        !changes.is_empty() && !in_peers(),
        "quarantine not in force: {changes:?}"
    );
    let t = Instant::now();
    reconcile(&mut r.iface, &mut r.sets, &r.private, &clean, Some(&q)).unwrap();
    let back = t.elapsed();
    assert!(in_peers(), "readmission not in force");
    println!(
        "{n:>6} {:<14} {:>12.2}  (readmission {:.2} ms; set edits only, checked in the kernel after)",
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
    let private_text = std::fs::read_to_string(Path::new(&env.dir).join("me.key")).unwrap();
    let private = Key::from_base64(private_text.trim()).unwrap();
    let me = WgPublicKey::from_bytes(private.get_public().0);
    let op = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let trust = TrustedKeys::new(vec![(&op).into()]);
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
        "nodes", "change", "netguard ms", "verify ms", "naive ms", "speedup"
    );
    let mut serial = 1;
    for n in [10usize, 100, 1000, 10_000] {
        let store_path = env.dir.join(format!("state-{n}.json"));
        let mut r = Runner {
            iface: Interface::new(&env.iface, Kind::detect(Some("userspace"))).unwrap(),
            env: Env {
                iface: env.iface.clone(),
                peer_pub: env.peer_pub.clone(),
                peer_lan: env.peer_lan.clone(),
                dir: env.dir.clone(),
            },
            op: op.clone(),
            trust: trust.clone(),
            private: private.clone(),
            me,
            store: RollbackStore::open(&store_path, 0).unwrap(),
            converged: None,
            sets: SetEditor::new(),
            blocks: policy::NodeBlocks::default(),
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
        let cold = r.converge(&base).total;
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
        for (change, rotated, extra) in [
            ("add one", false, true),
            ("remove one", false, false),
            ("rotate a key", true, false),
        ] {
            serial += 1;
            let text = policy_text(n, serial, &me.to_base64(), &r.env, rotated, extra);
            let before = session(&r.iface, &peer);
            let parts = r.converge(&text);
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
                "{n:>6} {change:<14} {:>12.1} {:>10.1} {:>12.1} {:>7.1}x  {verdict}; verify {:.1} + store {:.1} + apply {:.1} ms",
                ms(parts.total),
                ms(parts.verify + parts.store),
                ms(naive_t),
                ms(naive_t) / ms(parts.total),
                ms(parts.verify),
                ms(parts.store),
                ms(parts.apply),
            );
        }
        quarantine(&mut r, n);
        drift_check(&mut r, n);
    }
    let _ = Command::new("ip").args(["link", "del", "naive0"]).status();
}
