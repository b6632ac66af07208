//! certaintyd's `run` in-process, stopped by a value on its signal channel, with no process
//! signal (issue 27: shutdown passed in).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use certaintyd::action::Actuator;
use certaintyd::daemon::{Config, Exit, Source};
use certaintyd::protect::Heartbeat;
use policy::{Action, TrustedKeys};

fn config(root: &std::path::Path, signals_are_violations: bool) -> Config {
    Config {
        root: root.to_path_buf(),
        source: Source::Tree,
        interval: Duration::from_millis(300),
        grace: Duration::ZERO,
        deadline: None,
        actuator: Actuator {
            action: Action::Alert,
            exec: None,
            exec_deadline: Duration::from_secs(1),
            dry_run: true,
            ratchet: None,
        },
        maintenance_keys: TrustedKeys::default(),
        max_maintenance: Duration::from_secs(3600),
        expected_root: None,
        cluster: "lab".into(),
        node: "d1".into(),
        signals_are_violations,
        content_every: 1,
        socket: None,
        heartbeat: Heartbeat::new(),
        metrics_file: None,
    }
}

/// Steps: a small tree; `run` with signals not taken as violations (`--stop-on-signal`), in
/// alert mode, dry run, no socket; after its baseline, `Signal::Terminate` is sent on the
/// channel `run` was given: `run` returns `Exit::Stopped` within a second. The same with
/// signals as violations (the default): the signal is an integrity event, not a stop, and
/// `run` is still running a second later.
#[test]
fn certaintyd_stops_on_a_terminate_sent_in_process_only_when_told_signals_stop_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    std::fs::write(dir.path().join("bin/sh"), b"shell").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for violations in [false, true] {
        rt.block_on(async {
            let (tx, rx) = signals::channel();
            let running = tokio::spawn(certaintyd::daemon::run(config(dir.path(), violations), rx));
            // The baseline of a two-file tree is taken well within this.
            tokio::time::sleep(Duration::from_millis(800)).await;
            assert!(!running.is_finished(), "certaintyd ended by itself");
            let asked = Instant::now();
            tx.send(signals::Signal::Terminate).await.unwrap();
            let ended = tokio::time::timeout(Duration::from_secs(1), running).await;
            if violations {
                // A violation in alert mode keeps it running (or ends it as lost, never as
                // a clean stop).
                if let Ok(result) = ended {
                    assert_ne!(result.unwrap().unwrap(), Exit::Stopped);
                }
            } else {
                let exit = ended.expect("still running a second after the stop");
                assert_eq!(exit.unwrap().unwrap(), Exit::Stopped);
                eprintln!(
                    "certaintyd stopped {:?} after the in-process Terminate",
                    asked.elapsed()
                );
            }
        });
    }
}
