//! netguard for real, as root, in network namespaces with the userspace WireGuard backend.
//! Each test builds its own lab (a bridge, drone namespaces, a rogue) with unique names and
//! removes all of it when it ends, failed or not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() && which("wireguard-go") && which("nft") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, nft and wireguard-go; CI has them"
    );
    eprintln!("SKIP {test}: needs root, nft and wireguard-go (scripts/install-deps.sh)");
    false
}

fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn try_run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// Starts an echo server on port 4660 inside `ns` (lives until the test process ends).
fn echo_server(ns: &str) {
    let ns = ns.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let fd = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind("0.0.0.0:4660").unwrap();
        tx.send(()).unwrap();
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 100];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    rx.recv().unwrap();
}

/// Connects from `ns` to `to` and checks an echo comes back.
fn tcp_ok(ns: &str, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(ns, || {
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(1500)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut buf = [0u8; 5];
        s.write_all(b"hello").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"hello"
    })
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

struct Drone {
    ns: String,
    iface: String,
    lan: String,
    tun: String,
    dir: PathBuf,
    key: [u8; 32],
    netguard: Option<Child>,
}

struct Lab {
    tag: String,
    br: String,
    rogue: String,
    drones: Vec<Drone>,
    dir: tempfile::TempDir,
    operator: SigningKey,
    serial: u64,
}

fn wg_key() -> ([u8; 32], String) {
    let k = wireguard_control::Key::generate_private();
    (
        k.0,
        policy::WgPublicKey::from_bytes(k.get_public().0).to_base64(),
    )
}

impl Lab {
    fn new(n: usize) -> Self {
        let tag = format!(
            "ng{}{}",
            std::process::id() % 10000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::tempdir().unwrap();
        let br = format!("{tag}br");
        run(&["ip", "netns", "add", &br]);
        let mut lab = Lab {
            tag: tag.clone(),
            br: br.clone(),
            rogue: format!("{tag}rg"),
            drones: Vec::new(),
            dir,
            operator: SigningKey::from_bytes(&[7; 32]),
            serial: 1,
        };
        run(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &br, "link", "set", "br0", "up"]);
        for i in 1..=n {
            let ns = format!("{tag}n{i}");
            lab.plug(&ns, i, &format!("198.18.0.{i}"));
            let d = lab.dir.path().join(format!("n{i}"));
            std::fs::create_dir(&d).unwrap();
            let (key, _) = wg_key();
            std::fs::write(
                d.join("node.key"),
                format!("{}\n", policy::keys::encode(&key)),
            )
            .unwrap();
            std::fs::set_permissions(
                d.join("node.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            let op = policy::OperatorPublicKey::from(&lab.operator).to_base64();
            std::fs::write(d.join("operator.pub"), format!("{op}\n")).unwrap();
            lab.drones.push(Drone {
                ns,
                iface: format!("{tag}w{i}"),
                lan: format!("198.18.0.{i}"),
                tun: format!("10.77.0.{i}"),
                dir: d,
                key,
                netguard: None,
            });
        }
        let rogue = lab.rogue.clone();
        lab.plug(&rogue, 99, "198.18.0.99");
        lab
    }

    fn plug(&self, ns: &str, i: usize, addr: &str) {
        run(&["ip", "netns", "add", ns]);
        run(&[
            "ip",
            "-n",
            ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &format!("p{i}"),
            "netns",
            &self.br,
        ]);
        run(&[
            "ip",
            "-n",
            &self.br,
            "link",
            "set",
            &format!("p{i}"),
            "master",
            "br0",
            "up",
        ]);
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    fn public(&self, i: usize) -> String {
        let k = wireguard_control::Key(self.drones[i].key);
        policy::WgPublicKey::from_bytes(k.get_public().0).to_base64()
    }

    /// A policy listing `members` (indexes), with `serial`, expiring at `expires`.
    fn policy_text(&self, members: &[usize], serial: u64, expires: jiff::Timestamp) -> String {
        let mut t = policy::template::init_template("lab", expires)
            .replace("serial = 1", &format!("serial = {serial}"));
        for &i in members {
            t.push_str(&format!(
                "\n[[node]]\nid = {}\nname = \"d{}\"\npublic_key = \"{}\"\nendpoint = \"{}:51820\"\naddresses = [\"{}\"]\n",
                i + 1, i + 1, self.public(i), self.drones[i].lan, self.drones[i].tun
            ));
        }
        t
    }

    /// Signs `text` and replaces every drone's policy with it atomically (rename over).
    fn publish_text(&self, text: &str) {
        let sig = policy::sign(text.as_bytes(), &self.operator);
        for d in &self.drones {
            std::fs::write(d.dir.join(".p.tmp"), text).unwrap();
            std::fs::write(d.dir.join(".s.tmp"), &sig).unwrap();
            std::fs::rename(d.dir.join(".p.tmp"), d.dir.join("cluster.toml")).unwrap();
            std::fs::rename(d.dir.join(".s.tmp"), d.dir.join("cluster.toml.sig")).unwrap();
        }
    }

    fn publish(&mut self, members: &[usize]) {
        self.serial += 1;
        let text = self.policy_text(
            members,
            self.serial,
            jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
        );
        self.publish_text(&text);
    }

    fn start(&mut self, i: usize) {
        let d = &mut self.drones[i];
        let log = std::fs::File::create(d.dir.join("netguard.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &d.ns, env!("CARGO_BIN_EXE_netguard")])
            .args([
                "--policy",
                &d.dir.join("cluster.toml").display().to_string(),
            ])
            .args(["--trust", &d.dir.join("operator.pub").display().to_string()])
            .args(["--key", &d.dir.join("node.key").display().to_string()])
            .args([
                "--state",
                &d.dir.join("accepted.json").display().to_string(),
            ])
            .args([
                "--interface",
                &d.iface,
                "--backend",
                "userspace",
                "--drift",
                "1s",
            ])
            .stderr(log)
            .spawn()
            .unwrap();
        d.netguard = Some(child);
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.drones[i].dir.join("netguard.log")).unwrap_or_default()
    }

    fn ping(&self, from: usize, to: usize) -> bool {
        try_run(&[
            "ip",
            "netns",
            "exec",
            &self.drones[from].ns,
            "ping",
            "-c1",
            "-W1",
            &self.drones[to].tun,
        ])
    }

    fn wait_mesh(&self, members: &[usize]) {
        for &a in members {
            for &b in members {
                if a != b {
                    wait_for(
                        &format!("tunnel d{} -> d{}", a + 1, b + 1),
                        Duration::from_secs(30),
                        || self.ping(a, b),
                    );
                }
            }
        }
    }

    fn ns(&self, i: usize) -> &str {
        &self.drones[i].ns
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for d in &mut self.drones {
            if let Some(mut c) = d.netguard.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = Command::new("pkill")
                .args(["-f", &format!("wireguard-go -f {}", d.iface)])
                .status();
        }
        let _ = Command::new("pkill")
            .args(["-f", &format!("wireguard-go -f {}", self.tag)])
            .status();
        for ns in self
            .drones
            .iter()
            .map(|d| d.ns.clone())
            .chain([self.rogue.clone(), self.br.clone()])
        {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        if std::thread::panicking() {
            for (i, d) in self.drones.iter().enumerate() {
                eprintln!("--- netguard log of {} ---\n{}", d.ns, self.log(i));
            }
        }
    }
}

#[test]
fn services_only_through_tunnels_only_from_members() {
    if !root_or_skip("services_only_through_tunnels_only_from_members") {
        return;
    }
    let mut lab = Lab::new(3);
    lab.publish(&[0, 1, 2]);
    for i in 0..3 {
        lab.start(i);
        echo_server(lab.ns(i));
    }
    lab.wait_mesh(&[0, 1, 2]);
    assert!(tcp_ok(lab.ns(0), "10.77.0.2:4660"), "member through tunnel");
    assert!(tcp_ok(lab.ns(2), "10.77.0.1:4660"), "member through tunnel");
    // Members on the LAN, outside the tunnel: refused.
    assert!(!tcp_ok(lab.ns(0), "198.18.0.2:4660"));
    // A rogue on the LAN: refused.
    assert!(!tcp_ok(&lab.rogue, "198.18.0.2:4660"));
    // A rogue spoofing a member's LAN address: still refused (not from the tunnel).
    run(&[
        "ip",
        "-n",
        &lab.rogue,
        "addr",
        "add",
        "198.18.0.3/32",
        "dev",
        "eth0",
    ]);
    let spoofed = in_netns(&lab.rogue, || {
        let s = std::net::TcpStream::connect_timeout(
            &"198.18.0.2:4660".parse().unwrap(),
            Duration::from_millis(1500),
        );
        s.is_ok()
    });
    assert!(!spoofed);
    // A rogue with its own WireGuard key, claiming drone3's tunnel address: no handshake.
    let (rk, _) = wg_key();
    let key_file = lab.dir.path().join("rogue.key");
    std::fs::write(&key_file, policy::keys::encode(&rk)).unwrap();
    let rif = format!("{}rw", lab.tag);
    let mut rogue_wg = Command::new("ip")
        .args(["netns", "exec", &lab.rogue, "wireguard-go", "-f", &rif])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("rogue wireguard-go", Duration::from_secs(5), || {
        try_run(&["ip", "-n", &lab.rogue, "link", "show", &rif])
    });
    run(&[
        "ip",
        "netns",
        "exec",
        &lab.rogue,
        "wg",
        "set",
        &rif,
        "private-key",
        &key_file.display().to_string(),
        "peer",
        &lab.public(1),
        "endpoint",
        "198.18.0.2:51820",
        "allowed-ips",
        "10.77.0.0/24",
    ]);
    run(&[
        "ip",
        "-n",
        &lab.rogue,
        "addr",
        "add",
        "10.77.0.3/24",
        "dev",
        &rif,
    ]);
    run(&["ip", "-n", &lab.rogue, "link", "set", &rif, "up"]);
    assert!(
        !tcp_ok(&lab.rogue, "10.77.0.2:4660"),
        "rogue with an unlisted key"
    );
    let _ = rogue_wg.kill();
    let _ = rogue_wg.wait();
    // What non-peers tried is counted.
    let counters = run(&[
        "ip",
        "netns",
        "exec",
        lab.ns(1),
        "nft",
        "list",
        "counter",
        "inet",
        "netguard",
        "svc_openmosix",
    ]);
    assert!(!counters.contains("packets 0 "), "{counters}");
}

#[test]
fn removing_a_node_cuts_its_established_flows() {
    if !root_or_skip("removing_a_node_cuts_its_established_flows") {
        return;
    }
    let mut lab = Lab::new(3);
    lab.publish(&[0, 1, 2]);
    for i in 0..3 {
        lab.start(i);
    }
    echo_server(lab.ns(1));
    lab.wait_mesh(&[0, 1, 2]);
    let ns3 = lab.ns(2).to_string();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let flow = std::thread::spawn(move || {
        let fd = std::fs::File::open(format!("/var/run/netns/{ns3}")).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s =
            TcpStream::connect_timeout(&"10.77.0.2:4660".parse().unwrap(), Duration::from_secs(2))
                .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 6];
        s.write_all(b"before").unwrap();
        s.read_exact(&mut buf).unwrap();
        rx.recv().unwrap(); // wait for the removal
        let _ = s.write_all(b"after!");
        s.read_exact(&mut buf).is_ok()
    });
    std::thread::sleep(Duration::from_millis(300));
    lab.publish(&[0, 1]);
    wait_for("drone2 to drop drone3", Duration::from_secs(10), || {
        lab.log(1).contains("node 3 (d3) removed")
    });
    std::thread::sleep(Duration::from_millis(500));
    tx.send(()).unwrap();
    assert!(
        !flow.join().unwrap(),
        "the established flow of a removed node still works"
    );
    assert!(!tcp_ok(lab.ns(2), "10.77.0.2:4660"));
    assert!(
        tcp_ok(lab.ns(0), "10.77.0.2:4660"),
        "remaining member unaffected"
    );
}

#[test]
fn drift_is_repaired_within_one_interval() {
    if !root_or_skip("drift_is_repaired_within_one_interval") {
        return;
    }
    let mut lab = Lab::new(2);
    lab.publish(&[0, 1]);
    lab.start(0);
    lab.start(1);
    lab.wait_mesh(&[0, 1]);
    let ns = lab.ns(0).to_string();
    let iface = lab.drones[0].iface.clone();
    let table_ok = || {
        try_run(&[
            "ip", "netns", "exec", &ns, "nft", "list", "table", "inet", "netguard",
        ])
    };
    // Someone flushes the whole ruleset.
    run(&["ip", "netns", "exec", &ns, "nft", "flush", "ruleset"]);
    assert!(!table_ok());
    wait_for("ruleset restored", Duration::from_secs(3), table_ok);
    // Someone removes a peer.
    run(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "wg",
        "set",
        &iface,
        "peer",
        &lab.public(1),
        "remove",
    ]);
    wait_for("peer restored", Duration::from_secs(3), || {
        run(&["ip", "netns", "exec", &ns, "wg", "show", &iface, "peers"]).contains(&lab.public(1))
    });
    // Someone widens a peer's allowed IPs.
    run(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "wg",
        "set",
        &iface,
        "peer",
        &lab.public(1),
        "allowed-ips",
        "0.0.0.0/0",
    ]);
    wait_for("allowed IPs restored", Duration::from_secs(3), || {
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "wg",
            "show",
            &iface,
            "allowed-ips",
        ])
        .contains("10.77.0.2/32")
    });
    // Someone deletes the interface.
    run(&["ip", "-n", &ns, "link", "del", &iface]);
    wait_for(
        "tunnel back after interface deletion",
        Duration::from_secs(10),
        || lab.ping(0, 1),
    );
    let log = lab.log(0);
    assert!(log.contains("drift found and repaired"), "{log}");
}

#[test]
fn bad_expired_or_rolled_back_policies_leave_the_previous_state() {
    if !root_or_skip("bad_expired_or_rolled_back_policies_leave_the_previous_state") {
        return;
    }
    let mut lab = Lab::new(2);
    lab.publish(&[0, 1]);
    lab.start(0);
    lab.start(1);
    echo_server(lab.ns(1));
    lab.wait_mesh(&[0, 1]);
    let refusals = |lab: &Lab| lab.log(0).matches("policy refused").count();
    // Garbage, validly signed: refused, nothing changes.
    lab.publish_text("this is not a policy");
    wait_for("garbage refused", Duration::from_secs(5), || {
        refusals(&lab) >= 1
    });
    // Expired.
    let expired = lab.policy_text(
        &[0],
        99,
        jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1),
    );
    let before = refusals(&lab);
    lab.publish_text(&expired);
    wait_for("expired refused", Duration::from_secs(5), || {
        refusals(&lab) > before
    });
    // Rolled back: an older serial that would drop drone2.
    let old = lab.policy_text(
        &[0],
        1,
        jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
    );
    let before = refusals(&lab);
    lab.publish_text(&old);
    wait_for("rollback refused", Duration::from_secs(5), || {
        refusals(&lab) > before
    });
    assert!(lab.log(0).contains("rollback refused"), "{}", lab.log(0));
    // Tampered: signed bytes changed.
    let good = lab.policy_text(
        &[0],
        50,
        jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
    );
    let sig = policy::sign(good.as_bytes(), &lab.operator);
    std::fs::write(lab.drones[0].dir.join("cluster.toml.sig"), sig).unwrap();
    std::fs::write(
        lab.drones[0].dir.join("cluster.toml"),
        good.replace("d1", "d9"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        lab.log(0).contains("signature does not match"),
        "{}",
        lab.log(0)
    );
    // Through all of it the last verified state stayed in force.
    assert!(tcp_ok(lab.ns(0), "10.77.0.2:4660"));
    assert!(lab.ping(0, 1));
}

#[test]
fn without_a_policy_the_protective_ruleset_is_installed() {
    if !root_or_skip("without_a_policy_the_protective_ruleset_is_installed") {
        return;
    }
    let mut lab = Lab::new(1);
    lab.start(0);
    let ns = lab.ns(0).to_string();
    wait_for("protective table", Duration::from_secs(5), || {
        try_run(&[
            "ip", "netns", "exec", &ns, "nft", "list", "table", "inet", "netguard",
        ])
    });
    let table = run(&[
        "ip", "netns", "exec", &ns, "nft", "list", "table", "inet", "netguard",
    ]);
    assert!(table.contains("policy drop"), "{table}");
    assert!(!table.contains("4660"), "{table}");
    assert!(lab.log(0).contains("policy refused"));
    // Stopping netguard leaves the table in place.
    if let Some(mut c) = lab.drones[0].netguard.take() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let _ = c.wait();
    }
    assert!(try_run(&[
        "ip", "netns", "exec", &ns, "nft", "list", "table", "inet", "netguard"
    ]));
    let _ = IpAddr::from([0, 0, 0, 0]);
}
