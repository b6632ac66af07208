//! clusterd for real, as root: nodes in network namespaces on a bridge, each running netguard
//! (userspace WireGuard) and clusterd, with a stand-in certaintyd per node (a control socket
//! the test answers, so it can say "integrity lost" on cue). Each test builds its own lab
//! with unique names and removes it, failed or not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certaintyd::control::{ControlResponse, Status};
use ed25519_dalek::SigningKey;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn root_or_skip(test: &str) -> bool {
    let have = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if nix::unistd::geteuid().is_root() && have("wireguard-go") && have("nft") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, nft and wireguard-go; CI has them"
    );
    eprintln!("SKIP {test}: needs root, nft and wireguard-go (scripts/install-deps.sh)");
    false
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

/// Another binary of the workspace, beside clusterd in the target directory (built here if
/// it is not yet): netguard, tyd.
fn workspace_bin(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_clusterd")).parent().unwrap();
    let bin = dir.join(name);
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", name, "--bin", name])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build {name}");
    }
    bin
}

/// `tyd status --cluster` on member `i`'s view: exit code and output.
fn tyd_cluster_status(lab: &Lab, i: usize) -> (i32, String) {
    let out = Command::new(workspace_bin("tyd"))
        .args(["status", "--cluster", "--view"])
        .arg(lab.members[i].dir.join("view.json"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

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

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A stand-in certaintyd: answers status requests with whatever state the test sets.
fn fake_certaintyd(socket: &Path, state: Arc<Mutex<String>>) {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut line = String::new();
            let mut reader = BufReader::new(&conn);
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let status = Status {
                state: state.lock().unwrap().clone(),
                ..Status::default()
            };
            let reply = ControlResponse {
                ok: true,
                status: Some(status),
                ..ControlResponse::default()
            };
            let mut out = serde_json::to_vec(&reply).unwrap();
            out.push(b'\n');
            let _ = (&conn).write_all(&out);
        }
    });
}

struct Member {
    ns: String,
    iface: String,
    tun: String,
    dir: PathBuf,
    key: [u8; 32],
    certainty: Arc<Mutex<String>>,
    children: Vec<Child>,
}

struct Lab {
    br: String,
    members: Vec<Member>,
    dir: tempfile::TempDir,
    operator: SigningKey,
}

impl Lab {
    fn new(n: usize) -> Self {
        let tag = format!(
            "cd{}{}",
            std::process::id() % 10000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::tempdir().unwrap();
        let br = format!("{tag}br");
        run(&["ip", "netns", "add", &br]);
        run(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &br, "link", "set", "br0", "up"]);
        let mut lab = Lab {
            br: br.clone(),
            members: Vec::new(),
            dir,
            operator: SigningKey::from_bytes(&[7; 32]),
        };
        for i in 1..=n {
            let ns = format!("{tag}n{i}");
            run(&["ip", "netns", "add", &ns]);
            run(&[
                "ip",
                "-n",
                &ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &format!("p{i}"),
                "netns",
                &br,
            ]);
            run(&[
                "ip",
                "-n",
                &br,
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
                &ns,
                "addr",
                "add",
                &format!("198.18.0.{i}/24"),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            let d = lab.dir.path().join(format!("n{i}"));
            std::fs::create_dir(&d).unwrap();
            let key = wireguard_key();
            let secret = d.join("node.key");
            std::fs::write(&secret, format!("{}\n", policy::keys::encode(&key))).unwrap();
            std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            let op = policy::OperatorPublicKey::from(&lab.operator).to_base64();
            std::fs::write(d.join("operator.pub"), format!("{op}\n")).unwrap();
            std::fs::write(d.join("boot_id"), format!("boot-{i}-a\n")).unwrap();
            let certainty = Arc::new(Mutex::new("verifying".to_string()));
            fake_certaintyd(&d.join("certaintyd.sock"), certainty.clone());
            lab.members.push(Member {
                ns,
                iface: format!("{tag}w{i}"),
                tun: format!("10.77.0.{i}"),
                dir: d,
                key,
                certainty,
                children: Vec::new(),
            });
        }
        lab
    }

    fn policy_text(&self, serial: u64) -> String {
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let mut t = policy::template::init_template("lab", expires)
            .replace("serial = 1", &format!("serial = {serial}"));
        for (i, m) in self.members.iter().enumerate() {
            let public = policy::WgPublicKey::from_secret(&m.key);
            t.push_str(&format!(
                "\n[[node]]\nid = {}\nname = \"d{}\"\npublic_key = \"{public}\"\nendpoint = \"198.18.0.{}:51820\"\naddresses = [\"{}\"]\n",
                i + 1, i + 1, i + 1, m.tun
            ));
        }
        t
    }

    /// Puts the signed policy in place on the given members only.
    fn publish_on(&self, serial: u64, on: &[usize]) {
        let text = self.policy_text(serial);
        let sig = policy::sign(text.as_bytes(), &self.operator);
        for &i in on {
            let d = &self.members[i].dir;
            std::fs::write(d.join(".s.tmp"), &sig).unwrap();
            std::fs::rename(d.join(".s.tmp"), d.join("cluster.toml.sig")).unwrap();
            std::fs::write(d.join(".p.tmp"), &text).unwrap();
            std::fs::rename(d.join(".p.tmp"), d.join("cluster.toml")).unwrap();
        }
    }

    fn start(&mut self, i: usize) {
        let netguard = workspace_bin("netguard");
        let m = &mut self.members[i];
        let d = m.dir.clone();
        let p = |name: &str| d.join(name).display().to_string();
        let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
        let ng = Command::new("ip")
            .args(["netns", "exec", &m.ns])
            .arg(&netguard)
            .args([
                "--policy",
                &p("cluster.toml"),
                "--trust",
                &p("operator.pub"),
            ])
            .args(["--key", &p("node.key"), "--state", &p("accepted.json")])
            .args(["--quarantine", &p("quarantine.json")])
            .args([
                "--interface",
                &m.iface,
                "--backend",
                "userspace",
                "--drift",
                "1s",
            ])
            .stderr(log("netguard.log"))
            .spawn()
            .unwrap();
        let cd = Command::new("ip")
            .args(["netns", "exec", &m.ns, env!("CARGO_BIN_EXE_clusterd")])
            .args([
                "--policy",
                &p("cluster.toml"),
                "--trust",
                &p("operator.pub"),
            ])
            .args(["--key", &p("node.key"), "--state", &p("clusterd.json")])
            .args(["--certainty-socket", &p("certaintyd.sock")])
            .args(["--boot-id", &p("boot_id")])
            .args([
                "--quarantine",
                &p("quarantine.json"),
                "--view",
                &p("view.json"),
            ])
            .stderr(log("clusterd.log"))
            .spawn()
            .unwrap();
        m.children.extend([ng, cd]);
    }

    fn file(&self, i: usize, name: &str) -> String {
        std::fs::read_to_string(self.members[i].dir.join(name)).unwrap_or_default()
    }

    fn serial_on(&self, i: usize) -> Option<u64> {
        let text = self.file(i, "cluster.toml");
        text.lines()
            .find_map(|l| l.strip_prefix("serial = "))
            .and_then(|s| s.trim().parse().ok())
    }

    fn quarantined_on(&self, i: usize) -> Vec<u16> {
        let v: serde_json::Value =
            serde_json::from_str(&self.file(i, "quarantine.json")).unwrap_or_default();
        v["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["id"].as_u64())
                    .map(|n| n as u16)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn view(&self, i: usize) -> serde_json::Value {
        serde_json::from_str(&self.file(i, "view.json")).unwrap_or_default()
    }

    fn tcp_ok(&self, from: usize, to: &str) -> bool {
        let to: SocketAddr = to.parse().unwrap();
        in_netns(&self.members[from].ns, || {
            let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(800)) else {
                return false;
            };
            s.set_read_timeout(Some(Duration::from_millis(800)))
                .unwrap();
            let mut buf = [0u8; 5];
            s.write_all(b"hello").is_ok() && s.read_exact(&mut buf).is_ok()
        })
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, _) in self.members.iter().enumerate() {
            for name in ["netguard.log", "clusterd.log"] {
                out.push_str(&format!("--- d{} {name}\n{}", i + 1, self.file(i, name)));
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for m in &mut self.members {
            for c in &mut m.children {
                let _ = c.kill();
                let _ = c.wait();
            }
            // What netguard left running (wireguard-go): by PID, through our namespace.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &m.ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &m.ns]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.br]).status();
    }
}

fn wireguard_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut k)
        .unwrap();
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

/// An echo server on 4660 in `ns` (lives until the test process ends).
fn echo_server(ns: &str) {
    let ns = ns.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let fd = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = std::net::TcpListener::bind("0.0.0.0:4660").unwrap();
        tx.send(()).unwrap();
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 64];
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

/// A new serial put on one member only reaches every member by itself; a member that lost
/// integrity loses the services on every peer within about a second and keeps its tunnel;
/// after a reboot (new boot id) into a verified state it is readmitted; and no member can
/// get another quarantined by speaking for it.
#[test]
fn the_cluster_keeps_itself_current_and_quarantines_a_node_that_lost_integrity() {
    if !root_or_skip("the_cluster_keeps_itself_current_and_quarantines_a_node_that_lost_integrity")
    {
        return;
    }
    let mut lab = Lab::new(4);
    lab.publish_on(2, &[0, 1, 2, 3]);
    for i in 0..4 {
        lab.start(i);
    }
    echo_server(&lab.members[1].ns);
    // Everyone hears everyone, verified: nobody quarantined.
    wait_for(
        "every node to hear its three peers",
        Duration::from_secs(30),
        || {
            (0..4).all(|i| {
                let v = lab.view(i);
                v["nodes"].as_array().is_some_and(|n| {
                    n.len() == 4
                        && n.iter()
                            .all(|n| n["reachable"] == true && n["quarantined"].is_null())
                })
            })
        },
    );
    assert!(lab.tcp_ok(2, "10.77.0.2:4660"), "d3 -> d2 before");

    // Distribution: the operator pushes serial 3 to d1 only.
    let text = lab.policy_text(3);
    let staged = lab.dir.path().join("serial3.toml");
    std::fs::write(&staged, &text).unwrap();
    std::fs::write(
        policy::signature_path(&staged),
        policy::sign(text.as_bytes(), &lab.operator),
    )
    .unwrap();
    let d1 = &lab.members[0].dir;
    let out = Command::new(workspace_bin("tyd"))
        .args(["policy", "push"])
        .arg(&staged)
        .arg("--trust")
        .arg(d1.join("operator.pub"))
        .arg("--to")
        .arg(d1.join("cluster.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = wait_for("serial 3 on every member", Duration::from_secs(5), || {
        (0..4).all(|i| lab.serial_on(i) == Some(3))
    });
    eprintln!("serial 3 reached 4 members in {} ms", took.as_millis());
    assert!(took < Duration::from_secs(2), "{took:?}");
    // netguard took it too (it verifies on its own).
    wait_for("netguard on d4 on serial 3", Duration::from_secs(5), || {
        lab.file(3, "netguard.log").contains("serial=3")
    });

    // d3's certaintyd reports lost integrity.
    *lab.members[2].certainty.lock().unwrap() = "integrity lost".into();
    let took = wait_for(
        "d3 quarantined on every peer",
        Duration::from_secs(5),
        || [0, 1, 3].iter().all(|&i| lab.quarantined_on(i) == [3]),
    );
    eprintln!(
        "d3 quarantined on all 3 peers {} ms after it reported",
        took.as_millis()
    );
    assert!(took < Duration::from_millis(1500), "{took:?}");
    wait_for(
        "d3 refused by d2's firewall",
        Duration::from_secs(3),
        || !lab.tcp_ok(2, "10.77.0.2:4660"),
    );
    assert!(lab.tcp_ok(0, "10.77.0.2:4660"), "d1 -> d2 unaffected");
    // Heartbeats carry each node's serial: within one interval the view has settled.
    wait_for(
        "d2's view: one quarantined, the rest healthy",
        Duration::from_secs(3),
        || {
            tyd_cluster_status(&lab, 1)
                .1
                .contains("4 nodes, 3 healthy, 1 quarantined")
        },
    );
    let (code, text) = tyd_cluster_status(&lab, 1);
    assert_eq!(code, 7, "{text}");
    assert!(
        text.lines()
            .nth(2)
            .is_some_and(|l| l.contains("quarantined: it reports lost integrity")),
        "{text}"
    );
    // Its tunnel stays: d2 still hears it.
    std::thread::sleep(Duration::from_millis(1500));
    let d3 = lab.view(1)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == 3)
        .cloned()
        .unwrap();
    assert_eq!(d3["reachable"], true, "{d3}");
    assert_eq!(d3["integrity"], "lost", "{d3}");
    // "verifying" again in the same boot does not readmit it.
    *lab.members[2].certainty.lock().unwrap() = "verifying".into();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(lab.quarantined_on(1), [3]);
    // A reboot into a verified state does.
    std::fs::write(lab.members[2].dir.join("boot_id"), "boot-3-b\n").unwrap();
    wait_for("d3 readmitted everywhere", Duration::from_secs(5), || {
        [0, 1, 3].iter().all(|&i| lab.quarantined_on(i).is_empty())
    });
    wait_for("d3 served again", Duration::from_secs(3), || {
        lab.tcp_ok(2, "10.77.0.2:4660")
    });
    wait_for("a healthy cluster view", Duration::from_secs(3), || {
        tyd_cluster_status(&lab, 1).0 == 0
    });

    // d3 speaks for d4: "d4 lost integrity". Nobody believes it.
    let forged = serde_json::json!({"heartbeat": {
        "node": 4, "boot_id": "boot-4-a", "seq": 999, "serial": 3, "digest": "x",
        "integrity": "lost", "stable_root": null, "root_matches": null,
        "last_verification": null, "uptime_s": 1, "load1": 0.0, "mem_available_kb": 1}});
    in_netns(&lab.members[2].ns, || {
        let s = std::net::UdpSocket::bind("10.77.0.3:0").unwrap();
        for _ in 0..5 {
            s.send_to(forged.to_string().as_bytes(), "10.77.0.2:7946")
                .unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        lab.quarantined_on(1).is_empty(),
        "{:?}",
        lab.quarantined_on(1)
    );
    assert!(
        lab.file(1, "clusterd.log")
            .contains("claiming to be another node ignored"),
        "{}",
        lab.file(1, "clusterd.log")
    );
}
