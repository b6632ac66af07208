//! joind's shell run in-process, in a network namespace of its own: stopped by its shutdown
//! descriptor, with no process signal (issue 27: shutdown passed in, no global flag).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use policy::keys::KeyKind;
use policy::{OperatorPublicKey, WgPublicKey};

/// Steps: a master's files in a temporary directory; `run` in a thread that moved into a
/// network namespace of its own (its sockets are made there); a pipe as the shutdown; once
/// joind answers on its port, a byte written to the pipe: `run` returns Ok within a second.
#[test]
fn joind_stops_when_its_shutdown_descriptor_becomes_readable() {
    if !testsupport::root_or_skip(
        "joind_stops_when_its_shutdown_descriptor_becomes_readable",
        &["ip"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = master_files(dir.path(), 1);
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let served = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .ok();
        ready_tx.send(()).unwrap();
        join::daemon::run(args, read_end.as_fd())
    });
    ready_rx.recv().unwrap();
    // Serving (or it would already have returned its reason).
    std::thread::sleep(Duration::from_millis(500));
    assert!(!served.is_finished(), "joind ended by itself");
    let asked = Instant::now();
    std::fs::File::from(write_end).write_all(b"x").unwrap();
    while !served.is_finished() {
        assert!(asked.elapsed() < Duration::from_secs(1), "joind still runs");
        std::thread::sleep(Duration::from_millis(10));
    }
    served.join().unwrap().unwrap();
}

/// A master's files in `dir` (its policy at `serial`), and joind's arguments for them.
fn master_files(dir: &std::path::Path, serial: u64) -> join::cli::Args {
    let p = |name: &str| dir.join(name);
    let operator = SigningKey::from_bytes(&[7; 32]);
    let node_secret = [1u8; 32];
    let mut text = policy::template::init_template(
        "lab",
        Timestamp::now() + jiff::SignedDuration::from_hours(1),
    );
    text.push_str(&format!(
        "\n[[node]]\nid = 1\nname = \"master\"\npublic_key = \"{}\"\nendpoint = \"198.18.0.1:51820\"\naddresses = [\"10.77.0.1\"]\nroles = [\"master\"]\n",
        WgPublicKey::from_secret(&node_secret)
    ));
    let text = text.replacen("serial = 1", &format!("serial = {serial}"), 1);
    let sig = policy::sign(text.as_bytes(), &operator);
    policy::write_signed_pair(&p("cluster.toml"), text.as_bytes(), sig.as_bytes()).unwrap();
    std::fs::write(
        p("operator.pub"),
        OperatorPublicKey::from(&operator).to_base64(),
    )
    .unwrap();
    for (name, kind, key) in [
        ("node.key", KeyKind::NodeSecret, node_secret),
        ("operator.key", KeyKind::OperatorSecret, [7u8; 32]),
    ] {
        if !p(name).exists() {
            policy::fsutil::write_new_secret(&p(name), kind.file_text(&key).as_bytes()).unwrap();
        }
    }
    join::cli::Args {
        policy: p("cluster.toml"),
        trust: p("operator.pub"),
        key: p("node.key"),
        operator_key: Some(p("operator.key")),
        admission_key: None,
        tokens: p("tokens.json"),
        state: p("joind.json"),
        min_serial: 0,
        view: p("view.json"),
        log_json: false,
    }
}

/// Attack: an older signed policy put where joind reads it (one that still admits what a
/// later serial revoked), timed with a restart. Steps: joind's rollback store has accepted
/// serial 2 (as joind would have, running on it); serial 1, properly signed, is put in
/// place; `run` refuses to start, naming the rollback, with the exit code for a refusal, and
/// binds nothing (no namespace or root is needed: it never gets that far).
#[test]
fn joind_refuses_to_start_on_a_rolled_back_policy() {
    let dir = tempfile::tempdir().unwrap();
    let args = master_files(dir.path(), 2);
    let paths = policy::PolicyPaths::new(&args.policy, &args.trust, &args.state);
    policy::PolicyInForce::open(paths, 0)
        .unwrap()
        .load_now(Timestamp::now())
        .unwrap();
    let args = master_files(dir.path(), 1);
    let (read_end, _write_end) = nix::unistd::pipe().unwrap();
    let (code, reason) = join::daemon::run(args, read_end.as_fd()).unwrap_err();
    assert_eq!(code, policy::exit::Exit::Refused);
    assert!(
        reason.ends_with("serial 1 is older than accepted serial 2: rollback refused"),
        "{reason}"
    );
}
