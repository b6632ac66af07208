//! clusterd's `run` in-process, stopped by a value on its signal channel, with no process
//! signal (issue 27: shutdown passed in).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

use clusterd::daemon::Config;
use clusterd::probe::Sources;
use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use policy::keys::KeyKind;
use policy::{OperatorPublicKey, WgPublicKey};

/// Steps: a member's files in a temporary directory (a policy naming it at 10.77.0.1); a
/// thread that moved into a network namespace of its own with that address on `lo`; `run`
/// on a runtime there; once clusterd accepts policy fetches on its port,
/// `Signal::Terminate` is sent on the channel `run` was given: `run` returns Ok within a
/// second.
#[test]
fn clusterd_stops_on_a_terminate_sent_in_process() {
    if !testsupport::root_or_skip("clusterd_stops_on_a_terminate_sent_in_process", &["ip"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let operator = SigningKey::from_bytes(&[7; 32]);
    let secret = [3u8; 32];
    let mut text = policy::template::init_template(
        "lab",
        Timestamp::now() + jiff::SignedDuration::from_hours(1),
    );
    text.push_str(&format!(
        "\n[[node]]\nid = 1\nname = \"d1\"\npublic_key = \"{}\"\nendpoint = \"198.18.0.1:51820\"\naddresses = [\"10.77.0.1\"]\n",
        WgPublicKey::from_secret(&secret)
    ));
    let sig = policy::sign(text.as_bytes(), &operator);
    policy::write_signed_pair(&p("cluster.toml"), text.as_bytes(), sig.as_bytes()).unwrap();
    let trust = OperatorPublicKey::from(&operator).to_base64();
    std::fs::write(p("operator.pub"), format!("{trust}\n")).unwrap();
    policy::fsutil::write_new_secret(
        &p("node.key"),
        KeyKind::NodeSecret.file_text(&secret).as_bytes(),
    )
    .unwrap();
    std::fs::write(p("boot_id"), "b1\n").unwrap();
    let cfg = Config {
        policy: p("cluster.toml"),
        trust: p("operator.pub"),
        key: p("node.key"),
        state: p("clusterd.json"),
        min_serial: 0,
        sources: Sources {
            certainty_socket: None,
            boot_id: p("boot_id"),
            proc_root: "/proc".into(),
        },
        quarantine: p("quarantine.json"),
        view: p("view.json"),
        tpm: None,
    };
    let within = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", "10.77.0.1/24", "dev", "lo"][..],
        ] {
            assert!(
                std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, rx) = signals::channel();
            let running = tokio::spawn(clusterd::daemon::run(cfg, rx));
            let start = Instant::now();
            while TcpStream::connect("10.77.0.1:7946").is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "clusterd not listening"
                );
                assert!(!running.is_finished(), "clusterd ended by itself");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let asked = Instant::now();
            tx.send(signals::Signal::Terminate).await.unwrap();
            tokio::time::timeout(Duration::from_secs(1), running)
                .await
                .expect("clusterd still runs a second after the stop")
                .unwrap()
                .unwrap();
            asked.elapsed()
        })
    })
    .join()
    .unwrap();
    eprintln!("clusterd stopped {within:?} after the in-process Terminate");
}
