//! This node's own facts for its heartbeat: certaintyd's state from its control socket (asked
//! every poll), and the boot id, uptime, load and free memory (what mosmon showed). Blocking reads of small
//! files and one short socket exchange; the daemon runs them off its event loop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::certainty::{ControlRequest, ControlResponse, call};

use proto::cluster::Integrity;

/// How long certaintyd may take to answer a status request before it counts as unreachable.
pub const CERTAINTY_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the facts come from (files, so tests can stand in for `/proc`).
#[derive(Debug, Clone)]
pub struct Sources {
    /// certaintyd's control socket; `None`: this node runs no certaintyd.
    pub certainty_socket: Option<PathBuf>,
    pub boot_id: PathBuf,
    pub proc_root: PathBuf,
}

/// What certaintyd says, reduced to what peers judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertaintyFacts {
    pub integrity: Integrity,
    pub stable_root: Option<String>,
    pub last_verification: Option<String>,
}

/// The host's facts (certaintyd is asked separately, more often).
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub boot_id: String,
    pub uptime_s: u64,
    pub load1: f64,
    pub mem_available_kb: u64,
}

/// certaintyd's state; any failure to get an answer is `Unreachable`.
pub fn certainty(socket: Option<&Path>) -> CertaintyFacts {
    let unreachable = CertaintyFacts {
        integrity: Integrity::Unreachable,
        stable_root: None,
        last_verification: None,
    };
    let Some(socket) = socket else {
        return CertaintyFacts {
            integrity: Integrity::NotRequired,
            ..unreachable
        };
    };
    // An answer that is not certaintyd's (an unknown state included) is no answer: not
    // "lost", which would quarantine every node for a renamed state.
    match call(socket, &ControlRequest::Status, CERTAINTY_TIMEOUT) {
        Ok(ControlResponse {
            ok: true,
            status: Some(st),
            ..
        }) => CertaintyFacts {
            // A violation in this boot is lost integrity for good, even after certaintyd in
            // alert mode has taken the changed tree as its new reference ("verifying" again).
            integrity: if st.violations > 0 {
                Integrity::Lost
            } else {
                Integrity::from_state(st.state)
            },
            stable_root: st.stable_root,
            last_verification: st.last_verification_at,
        },
        _ => unreachable,
    }
}

fn first_number(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `MemAvailable` in kB from `/proc/meminfo` text.
pub fn mem_available_kb(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The host's facts; a file that cannot be read gives zero (it is shown, not judged).
pub fn facts(src: &Sources) -> Facts {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let proc_file = |name: &str| read(&src.proc_root.join(name));
    Facts {
        boot_id: read(&src.boot_id).trim().to_string(),
        uptime_s: first_number(&proc_file("uptime")).unwrap_or(0.0) as u64,
        load1: first_number(&proc_file("loadavg")).unwrap_or(0.0),
        mem_available_kb: mem_available_kb(&proc_file("meminfo")).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_texts_are_read_and_a_dead_socket_is_unreachable() {
        assert_eq!(
            mem_available_kb("MemTotal: 10 kB\nMemAvailable:    2048 kB\n"),
            Some(2048)
        );
        assert_eq!(first_number("0.42 0.30 0.10 1/100 7"), Some(0.42));
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("no.sock");
        assert_eq!(certainty(Some(&gone)).integrity, Integrity::Unreachable);
        assert_eq!(certainty(None).integrity, Integrity::NotRequired);
    }

    /// Issue 27: clusterd read certaintyd's state as text, "anything else is lost": a state
    /// renamed in certaintyd would have quarantined every node. Steps: a certaintyd answers a
    /// state clusterd does not know; it must count as unreachable (the answer is not
    /// certaintyd's), and "integrity lost" as lost.
    #[test]
    fn a_state_clusterd_does_not_know_is_no_answer_not_lost_integrity() {
        use std::io::{BufRead, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for state in ["integrity_lost_v2", "integrity lost", "verifying"] {
                let (s, _) = listener.accept().unwrap();
                let mut line = String::new();
                std::io::BufReader::new(&s).read_line(&mut line).unwrap();
                let mut reply = serde_json::to_value(ControlResponse {
                    ok: true,
                    status: Some(proto::certainty::Status::default()),
                    ..ControlResponse::default()
                })
                .unwrap();
                reply["status"]["state"] = state.into();
                let _ = (&s).write_all(format!("{reply}\n").as_bytes());
            }
        });
        assert_eq!(certainty(Some(&path)).integrity, Integrity::Unreachable);
        assert_eq!(certainty(Some(&path)).integrity, Integrity::Lost);
        assert_eq!(certainty(Some(&path)).integrity, Integrity::Verifying);
    }
}
