//! Issue 29: at a violation certaintyd extends the TPM's ratchet PCR before any action, once,
//! and a TPM that does not answer delays the action by the deadline at most.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use attest::pcr;
use attest::tpm::Tpm;
use certaintyd::action::{Actuator, Outcome, RATCHET_DEADLINE, Ratchet};
use certaintyd::verdict::{Cause, Report};
use policy::Action;
use testsupport::Swtpm;

fn report() -> Report {
    Report {
        cause: Cause::FullVerification,
        node: "d1".into(),
        root: "/".into(),
        baseline_root_hash: "0".repeat(64),
        detected_at: "2026-12-05T00:00:00Z".into(),
        findings: Vec::new(),
        detail: String::new(),
    }
}

fn actuator(tpm: &std::path::Path) -> Actuator {
    Actuator {
        action: Action::Alert,
        exec: None,
        exec_deadline: Duration::from_secs(1),
        dry_run: true,
        ratchet: Some(Ratchet::new(tpm.to_path_buf())),
    }
}

/// Steps: a node whose TPM is swtpm loses integrity (an alert action, so the daemon keeps
/// watching and loses it again): PCR 15 goes from zero to the one "integrity lost" value
/// before the action returns, and a second violation does not extend it again (a quote then
/// still says "integrity lost", not "not pinned"). After the TPM restarts (a reboot) it is
/// clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_violation_sets_the_ratchet_once_before_the_action() {
    if !testsupport::tools_or_skip("certaintyd ratchet", &["swtpm"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(dir.path());
    let read = |p: &std::path::Path| {
        Tpm::open(p, Duration::from_secs(2))
            .unwrap()
            .read_pcrs()
            .unwrap()
            .1
    };
    assert_eq!(read(&tpm.socket), [0; 32]);
    let a = actuator(&tpm.socket);
    assert_eq!(a.perform(&report()).await, Outcome::Alerted);
    assert_eq!(read(&tpm.socket), pcr::ratcheted());
    assert_eq!(a.perform(&report()).await, Outcome::Alerted);
    assert_eq!(read(&tpm.socket), pcr::ratcheted(), "extended twice");
    tpm.stop();
    let tpm = Swtpm::start(dir.path());
    assert_eq!(read(&tpm.socket), [0; 32]);
}

/// Steps: the TPM's socket accepts and never answers (a hung TPM): the action still happens,
/// within the ratchet's deadline and a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_that_does_not_answer_delays_the_action_by_the_deadline_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hung.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let held = std::thread::spawn(move || {
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(4));
        drop(conn);
    });
    let started = Instant::now();
    assert_eq!(actuator(&path).perform(&report()).await, Outcome::Alerted);
    let took = started.elapsed();
    assert!(took < RATCHET_DEADLINE + Duration::from_secs(1), "{took:?}");
    assert!(
        took >= RATCHET_DEADLINE - Duration::from_millis(500),
        "{took:?}"
    );
    held.join().unwrap();
}
