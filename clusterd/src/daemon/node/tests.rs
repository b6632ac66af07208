//! clusterd's node without sockets: policies from the file and from peers, quarantines.

use std::path::Path;
use std::sync::Mutex;

use ed25519_dalek::SigningKey;

use super::*;
use crate::probe::Sources;
use policy::PolicyPaths;
use proto::cluster::{Integrity, Message};

/// What a test logged, as the daemon's text lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    let c = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(c.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&c.0.lock().unwrap()).into_owned();
    (r, text)
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

fn id(n: u16) -> NodeId {
    NodeId::new(n).unwrap()
}

const KEYS: [[u8; 32]; 2] = [[1; 32], [2; 32]];

/// The lab's policy at `serial` with nodes 1 (this one) and 2; `note` makes content
/// differ at one serial.
fn policy_text(serial: u64, note: &str) -> String {
    let expires = Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let mut t = policy::template::init_template("lab", expires)
        .replace("serial = 1", &format!("serial = {serial}"));
    for (i, k) in KEYS.iter().enumerate() {
        t.push_str(&format!(
            "\n[[node]]\nid = {n}\nname = \"d{n}\"\npublic_key = \"{}\"\nendpoint = \"198.18.0.{n}:51820\"\naddresses = [\"10.77.0.{n}\"]\nroles = [\"{role}\"]\n",
            WgPublicKey::from_secret(k),
            n = i + 1,
            role = if i == 0 { "master" } else { "drone" }
        ));
    }
    t.push_str(&format!("\n# {note}\n"));
    t
}

fn operator() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// Puts a signed policy in place as another writer would (joind, `tyd policy push`).
fn put(path: &Path, text: &str) -> String {
    let sig = policy::sign(text.as_bytes(), &operator());
    std::fs::write(policy::signature_path(path), &sig).unwrap();
    std::fs::write(path, text).unwrap();
    sig
}

/// Node 1's daemon state (no sockets), with serial 11 in force from its policy file.
fn node_on_11(dir: &Path) -> Node {
    let policy = dir.join("cluster.toml");
    put(&policy, &policy_text(11, "eleven"));
    let trust_text = format!(
        "{}\n",
        policy::OperatorPublicKey::from(&operator()).to_base64()
    );
    std::fs::write(dir.join("operator.pub"), &trust_text).unwrap();
    let trust = TrustedKeys::parse(&trust_text).unwrap();
    let cfg = Config {
        policy,
        trust: dir.join("operator.pub"),
        key: dir.join("node.key"),
        state: dir.join("clusterd.json"),
        min_serial: 0,
        sources: Sources {
            certainty_socket: None,
            boot_id: dir.join("boot_id"),
            proc_root: dir.join("proc"),
        },
        quarantine: dir.join("quarantine.json"),
        view: dir.join("view.json"),
        tpm: None,
    };
    let paths = PolicyPaths::new(&cfg.policy, &cfg.trust, &cfg.state);
    let in_force = PolicyInForce::open(paths, 0).unwrap();
    let mut node = Node::new(
        cfg,
        WgPublicKey::from_secret(&KEYS[0]),
        trust,
        in_force,
        QuarantineList::default(),
    );
    node.poll_policy_file();
    assert_eq!(node.core.serial(), 11);
    assert_eq!(node.my_id, Some(id(1)));
    node
}

fn heartbeat(node: u16, integrity: Integrity, boot: &str, digest: &str) -> Heartbeat {
    Heartbeat {
        node,
        boot_id: boot.into(),
        seq: 1,
        serial: 12,
        digest: digest.into(),
        integrity,
        stable_root: None,
        root_matches: None,
        last_verification: None,
        uptime_s: 1,
        load1: 0.0,
        mem_available_kb: 1,
        memberships: Default::default(),
        challenge: None,
    }
}

fn digest(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// Attack (issue 26 #10, "a fetched policy overwrote a newer one on disk"): two masters
/// admitted a node each at once and both signed serial 12; one master's clusterd fetched
/// the other's serial 12 before its own 200 ms poll had read the file its joind had just
/// written (serial 12, other content), took it and wrote it over that file. Steps: node 1
/// has serial 11 in force from its file; its joind puts serial 12 (content A) in the file;
/// the fetched serial 12 (content B) from node 2 arrives, once after the poll could have
/// seen the file and once while it could not (same modification time and length: the
/// poll sees no change); the file must still hold A, A be in force, a line say "two
/// policies signed at one serial", and the view show node 2's serial 12 as a problem.
/// A fetched serial 13 is still written.
#[test]
fn a_fetched_policy_never_overwrites_the_same_serial_joind_just_wrote() {
    for poll_sees_it in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut node = node_on_11(dir.path());
        let path = node.cfg.policy.clone();
        let a = policy_text(12, "admitted here by joind");
        let sig_a = put(&path, &a);
        if !poll_sees_it {
            node.in_force.mark_read();
        }
        let b = policy_text(12, "admitted by the other master");
        let sig_b = policy::sign(b.as_bytes(), &operator());
        let (_, log) = logged(|| {
            node.take_fetched(
                id(2),
                Ok(transfer(b.clone().into_bytes(), sig_b.into_bytes())),
            )
        });
        let case = if poll_sees_it { "poll" } else { "no poll" };
        assert_eq!(std::fs::read_to_string(&path).unwrap(), a, "{case}: {log}");
        assert_eq!(
            std::fs::read_to_string(policy::signature_path(&path)).unwrap(),
            sig_a,
            "{case}"
        );
        assert_eq!(node.core.serial(), 12, "{case}");
        assert_eq!(
            node.policy().map(|p| p.digest_hex()),
            Some(digest(&a)),
            "{case}: A in force"
        );
        assert_eq!(
            count(&log, "two policies signed at one serial"),
            1,
            "{case}: {log}"
        );
        assert!(!node.core.spoiled(id(2)), "{case}: the peer did not lie");
        // Node 1 is a master: B is beside the policy for its joind to settle the fork.
        let fork = policy::fork_path(&path);
        assert_eq!(std::fs::read_to_string(&fork).unwrap(), b, "{case}");
        std::fs::remove_file(&fork).unwrap();
        // Node 2 says it runs B at serial 12: a problem in `tyd status --cluster`.
        let now = node.now();
        node.core.receive(
            id(2),
            Message::Heartbeat(heartbeat(2, Integrity::Verifying, "b", &digest(&b))),
            now,
        );
        let mine = heartbeat(1, Integrity::Verifying, "a", &digest(&a));
        let v = view::of(&node.core, "lab", &mine, "d1", now, &|_| None);
        let d2 = v.nodes.iter().find(|n| n.id == 2).unwrap();
        let problem = v.problem_of(d2).unwrap_or_default();
        assert!(
            problem.contains("two policies at one serial"),
            "{case}: {problem:?}"
        );
        // A higher serial is written over it.
        let c = policy_text(13, "both admissions");
        let sig_c = policy::sign(c.as_bytes(), &operator());
        node.take_fetched(
            id(2),
            Ok(transfer(c.clone().into_bytes(), sig_c.into_bytes())),
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), c, "{case}");
        assert_eq!(node.core.serial(), 13, "{case}");
    }
}

/// Attack (issue 26 #11, "flapping costs every peer"), as the daemon carries it out: node
/// 2 alternates "lost" in boot k and "verifying" twice in boot k + 1, 100 times a second
/// for 10 s. Before, each flap was a quarantine line, a readmission line and two writes of
/// the quarantine list (each an edit in netguard): 2000 lines and 2000 writes. Now: at
/// most a handful of each, one "flapping" line, and node 2 on the list at the end.
#[test]
fn a_flapping_member_costs_the_daemon_one_flapping_line_and_few_list_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = node_on_11(dir.path());
    let (_, log) = logged(|| {
        for k in 0..1000u64 {
            let t = Duration::from_millis(10 * k);
            let lost = heartbeat(2, Integrity::Lost, &format!("boot-{k}"), "d");
            let good = heartbeat(2, Integrity::Verifying, &format!("boot-{}", k + 1), "d");
            for (h, dt) in [(lost, 0), (good.clone(), 3), (good, 6)] {
                let at = t + Duration::from_millis(dt);
                for a in node.core.receive(id(2), Message::Heartbeat(h), at) {
                    node.record(a);
                }
            }
        }
    });
    let quarantined = count(&log, "quarantined: services withheld");
    let readmitted = count(&log, "readmitted: services restored");
    let flapping = count(&log, "flapping: held quarantined");
    eprintln!(
        "daemon, 100 flaps/s for 10 s: {quarantined} quarantine lines, {readmitted} \
         readmission lines, {flapping} flapping lines, {} quarantine list writes",
        node.quarantine_writes
    );
    assert!(quarantined + readmitted <= 5, "{log}");
    assert_eq!(flapping, 1, "{log}");
    assert!(node.quarantine_writes <= 5, "{}", node.quarantine_writes);
    let list = QuarantineList::read(&node.cfg.quarantine).unwrap();
    assert_eq!(list.ids(), [id(2)].into(), "held out at the end");
    // The flapping line has its fields.
    let line = log
        .lines()
        .find(|l| l.contains("flapping: held"))
        .unwrap_or_default();
    assert!(
        line.contains("node=2") && line.contains("hold_s=30") && line.contains("quarantines=3"),
        "{line}"
    );
}

/// A fetched policy with no memberships.
fn transfer(policy: Vec<u8>, signature: Vec<u8>) -> crate::transfer::Transfer {
    crate::transfer::Transfer {
        policy,
        signature,
        memberships: Vec::new(),
    }
}
