#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
//! The namespace lab for clusterd (tests and the benchmark): nodes in network namespaces on a bridge, each running netguard
//! (userspace WireGuard) and clusterd, with a stand-in certaintyd per node (a control socket
//! the test answers, so it can say "integrity lost" on cue). Each test builds its own lab
//! with unique names and removes it, failed or not.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use proto::certainty::{ControlResponse, Status};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn root_or_skip(test: &str) -> bool {
    testsupport::root_or_skip(test, &["wireguard-go", "nft"])
}

pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A binary of the workspace in the target directory this program was built into (built
/// here if it is not yet): clusterd, netguard, tyd, joind.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // Tests run from target/PROFILE/deps, examples from target/PROFILE/examples.
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join(name);
    if !bin.exists() {
        let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug");
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        let package = if name == "joind" { "join" } else { name };
        build.args(["build", "-p", package, "--bin", name]);
        if profile == "release" {
            build.arg("--release");
        }
        let status = build.status().unwrap();
        assert!(status.success(), "cannot build {name}");
    }
    bin
}

/// `tyd status --cluster` on member `i`'s view: exit code and output.
pub fn tyd_cluster_status(lab: &Lab, i: usize) -> (i32, String) {
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

pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
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

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// What the stand-in certaintyd is set to when it is to behave as if killed: it takes each
/// connection and closes it without a word.
pub const NO_ANSWER: &str = "";

/// A stand-in certaintyd: answers status requests with whatever state the test sets.
pub fn fake_certaintyd(socket: &Path, state: Arc<Mutex<String>>) {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut line = String::new();
            let mut reader = BufReader::new(&conn);
            if reader.read_line(&mut line).is_err() || *state.lock().unwrap() == NO_ANSWER {
                continue;
            }
            let reply = ControlResponse {
                ok: true,
                status: Some(Status::default()),
                ..ControlResponse::default()
            };
            // The state as the test wrote it, as certaintyd puts it on the wire (a test may
            // name one certaintyd does not have).
            let mut reply = serde_json::to_value(&reply).unwrap();
            reply["status"]["state"] = serde_json::Value::String(state.lock().unwrap().clone());
            let mut out = serde_json::to_vec(&reply).unwrap();
            out.push(b'\n');
            let _ = (&conn).write_all(&out);
        }
    });
}

pub struct Member {
    pub ns: String,
    pub iface: String,
    pub tun: String,
    pub dir: PathBuf,
    pub key: [u8; 32],
    /// What the stand-in certaintyd answers.
    pub certainty: Arc<Mutex<String>>,
    /// The control socket clusterd asks: the stand-in's, or a real certaintyd's.
    pub certainty_socket: PathBuf,
    /// A real certaintyd's root (a tmpfs in its own mount namespace), when it runs one.
    pub certainty_root: Option<PathBuf>,
    /// What the lab started for it: a real certaintyd (if any), netguard, clusterd (last).
    pub children: Vec<Child>,
    /// Its TPM for clusterd's quotes (`--tpm`); None: `--tpm none`.
    pub tpm: Option<PathBuf>,
    /// Its attestation key as the policy pins it (`attestation_key`), if any.
    pub attestation_key: Option<String>,
}

pub struct Lab {
    br: String,
    pub members: Vec<Member>,
    pub dir: tempfile::TempDir,
    pub operator: SigningKey,
    /// netguard's drift interval (long in the benchmark: 50 drift checks a second would
    /// take both cores).
    pub drift: String,
    /// Put in the policy before the nodes (e.g. an `[attestation]` section).
    pub extra_policy: String,
}

impl Lab {
    pub fn new(n: usize) -> Self {
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
            drift: "1s".into(),
            extra_policy: String::new(),
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
                certainty_socket: d.join("certaintyd.sock"),
                certainty_root: None,
                dir: d,
                key,
                certainty,
                children: Vec::new(),
                tpm: None,
                attestation_key: None,
            });
        }
        lab
    }

    pub fn policy_text(&self, serial: u64) -> String {
        self.policy_text_of(serial, &(0..self.members.len()).collect::<Vec<_>>())
    }

    /// The policy at `serial` listing only the members `listed`.
    pub fn policy_text_of(&self, serial: u64, listed: &[usize]) -> String {
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let mut t = policy::template::init_template("lab", expires)
            .replace("serial = 1", &format!("serial = {serial}"));
        t.push_str(&self.extra_policy);
        for (i, m) in self.members.iter().enumerate() {
            if !listed.contains(&i) {
                continue;
            }
            let public = policy::WgPublicKey::from_secret(&m.key);
            t.push_str(&format!(
                "\n[[node]]\nid = {}\nname = \"d{}\"\npublic_key = \"{public}\"\nendpoint = \"198.18.0.{}:51820\"\naddresses = [\"{}\"]\n",
                i + 1, i + 1, i + 1, m.tun
            ));
            if let Some(k) = &m.attestation_key {
                t.push_str(&format!("attestation_key = \"{k}\"\n"));
            }
        }
        t
    }

    /// Puts the signed policy in place on the given members only.
    pub fn publish_on(&self, serial: u64, on: &[usize]) {
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

    /// The operator signs serial `serial` and pushes it with `tyd policy push` to member `i`
    /// only (clusterd carries it to the others).
    pub fn push(&self, serial: u64, i: usize) {
        self.push_text(serial, &self.policy_text(serial), i);
    }

    /// Signs `text` (at `serial`) with the operator's key and pushes it to member `i`.
    pub fn push_text(&self, serial: u64, text: &str, i: usize) {
        let staged = self.dir.path().join(format!("serial{serial}.toml"));
        std::fs::write(&staged, text).unwrap();
        std::fs::write(
            policy::signature_path(&staged),
            policy::sign(text.as_bytes(), &self.operator),
        )
        .unwrap();
        let d = &self.members[i].dir;
        let out = Command::new(workspace_bin("tyd"))
            .args(["policy", "push"])
            .arg(&staged)
            .arg("--trust")
            .arg(d.join("operator.pub"))
            .arg("--to")
            .arg(d.join("cluster.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start(&mut self, i: usize) {
        let netguard = workspace_bin("netguard");
        let clusterd = workspace_bin("clusterd");
        let drift = self.drift.clone();
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
                &drift,
            ])
            .stderr(log("netguard.log"))
            .spawn()
            .unwrap();
        let cd = Command::new("ip")
            .args(["netns", "exec", &m.ns])
            .arg(&clusterd)
            .args([
                "--policy",
                &p("cluster.toml"),
                "--trust",
                &p("operator.pub"),
            ])
            .args(["--key", &p("node.key"), "--state", &p("clusterd.json")])
            .arg("--certainty-socket")
            .arg(&m.certainty_socket)
            .args(["--boot-id", &p("boot_id")])
            .args([
                "--quarantine",
                &p("quarantine.json"),
                "--view",
                &p("view.json"),
            ])
            .arg("--tpm")
            .arg(m.tpm.as_deref().unwrap_or(std::path::Path::new("none")))
            .stderr(log("clusterd.log"))
            .spawn()
            .unwrap();
        m.children.extend([ng, cd]);
    }

    /// Starts joind for member `i`: a master (with the operator key `tyd init` wrote in its
    /// directory) or a relay.
    pub fn start_joind(&mut self, i: usize, master: bool) {
        let m = &mut self.members[i];
        let d = m.dir.clone();
        let p = |name: &str| d.join(name).display().to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &m.ns])
            .arg(workspace_bin("joind"))
            .args([
                "--policy",
                &p("cluster.toml"),
                "--trust",
                &p("operator.pub"),
            ])
            .args(["--key", &p("node.key"), "--tokens", &p("tokens.json")])
            .args(["--state", &p("joind.json")]);
        if master {
            // As `tyd init` sets it up: the admission key when it made one.
            if d.join("admission.key").exists() {
                cmd.args(["--admission-key", &p("admission.key")]);
            } else {
                cmd.args(["--operator-key", &p("operator.key")]);
            }
        }
        let child = cmd
            .stderr(std::fs::File::create(d.join("joind.log")).unwrap())
            .spawn()
            .unwrap();
        m.children.push(child);
    }

    /// Runs `tyd` with `args` inside member `i`'s namespace: exit code, stdout and stderr.
    pub fn tyd_in(&self, i: usize, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.members[i].ns])
            .arg(workspace_bin("tyd"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a real certaintyd for member `i` (call before `start`): alert mode, on a tmpfs in
    /// its own mount namespace, verifying every 300 ms. Returns when its baseline is taken.
    pub fn real_certaintyd(&mut self, i: usize) {
        let bin = workspace_bin("certaintyd");
        let m = &mut self.members[i];
        let root = m.dir.join("root");
        std::fs::create_dir(&root).unwrap();
        let socket = m.dir.join("real-certaintyd.sock");
        let d = m.dir.display().to_string();
        let script = format!(
            "mount -t tmpfs -o size=16m tmpfs {r} && mkdir {r}/bin && echo shell > {r}/bin/sh && \
             exec {bin} --policy {d}/cluster.toml --trust {d}/operator.pub --state {d}/certaintyd.json \
             --root {r} --socket {s} --node d{n} --grace 0s --interval 300ms --action alert --no-harden",
            r = root.display(),
            bin = bin.display(),
            s = socket.display(),
            n = i + 1
        );
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stderr(std::fs::File::create(m.dir.join("certaintyd.log")).unwrap())
            .spawn()
            .unwrap();
        m.children.push(child);
        m.certainty_socket = socket;
        m.certainty_root = Some(root);
        let log = m.dir.join("certaintyd.log");
        wait_for("certaintyd's baseline", Duration::from_secs(20), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("baseline taken"))
        });
    }

    /// Writes into member `i`'s real certaintyd root, as root on that node would.
    pub fn tamper(&self, i: usize) {
        let m = &self.members[i];
        let holder = m.children[0].id().to_string();
        let target = m.certainty_root.as_ref().unwrap().join("bin/sh");
        run(&[
            "nsenter",
            "-t",
            &holder,
            "-m",
            "--",
            "sh",
            "-c",
            &format!("echo tampered >> {}", target.display()),
        ]);
    }

    pub fn file(&self, i: usize, name: &str) -> String {
        std::fs::read_to_string(self.members[i].dir.join(name)).unwrap_or_default()
    }

    pub fn serial_on(&self, i: usize) -> Option<u64> {
        let text = self.file(i, "cluster.toml");
        text.lines()
            .find_map(|l| l.strip_prefix("serial = "))
            .and_then(|s| s.trim().parse().ok())
    }

    pub fn quarantined_on(&self, i: usize) -> Vec<u16> {
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

    pub fn view(&self, i: usize) -> serde_json::Value {
        serde_json::from_str(&self.file(i, "view.json")).unwrap_or_default()
    }

    /// Waits until every member's view lists every member, each reachable and none
    /// quarantined; returns how long that took.
    pub fn wait_all_healthy(&self, timeout: Duration) -> Duration {
        let n = self.members.len();
        wait_for(
            "every node to hear its peers, nobody quarantined",
            timeout,
            || {
                (0..n).all(|i| {
                    self.view(i)["nodes"].as_array().is_some_and(|v| {
                        v.len() == n
                            && v.iter()
                                .all(|x| x["reachable"] == true && x["quarantined"].is_null())
                    })
                })
            },
        )
    }

    pub fn tcp_ok(&self, from: usize, to: &str) -> bool {
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

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, _) in self.members.iter().enumerate() {
            for name in [
                "netguard.log",
                "clusterd.log",
                "certaintyd.log",
                "joind.log",
            ] {
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
            // wireguard-go killed that way leaves its control socket in the shared
            // /var/run/wireguard: remove this member's, by exact name.
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", m.iface));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.br]).status();
    }
}

pub fn wireguard_key() -> [u8; 32] {
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
pub fn echo_server(ns: &str) {
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

/// The token and the operator fingerprint from `tyd init`'s "tyd join ..." line.
pub fn join_line(init_out: &str) -> (String, String) {
    let line = init_out
        .lines()
        .find(|l| l.trim_start().starts_with("tyd join "))
        .unwrap_or_else(|| panic!("no join command in:\n{init_out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |flag: &str| {
        let i = words.iter().position(|w| *w == flag).unwrap();
        words[i + 1].to_string()
    };
    (after("--token"), after("--operator"))
}
