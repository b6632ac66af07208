//! certaintyd's control socket: one JSON request line in, one JSON response line out. Status
//! for anyone root; maintenance and stop only with a request signed by the operator key.
//!
//! The state is an enum on both ends: clusterd turned the text back into a state with
//! "anything else is lost", so renaming a state in certaintyd would have quarantined every
//! node with nothing at compile time to say so. An unknown state now fails to parse, and the
//! reader says so (clusterd: certaintyd unreachable, with the reason).

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest request line certaintyd accepts: a request and its signature fit in far less.
pub const MAX_REQUEST: usize = 16 << 10;
/// Longest response line a client reads: a status is under 2 KiB.
pub const MAX_RESPONSE: u64 = 64 << 10;

/// What certaintyd is doing, as its status says it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    /// Booted; no baseline yet.
    #[default]
    #[serde(rename = "grace")]
    Grace,
    /// Baseline taken; every pass matches it.
    #[serde(rename = "verifying")]
    Verifying,
    /// In a maintenance window the operator signed: changes are logged, not acted on.
    #[serde(rename = "maintenance")]
    Maintenance,
    /// A change was found.
    #[serde(rename = "integrity lost")]
    IntegrityLost,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Grace,
        State::Verifying,
        State::Maintenance,
        State::IntegrityLost,
    ];

    /// Its name on the wire and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Grace => "grace",
            State::Verifying => "verifying",
            State::Maintenance => "maintenance",
            State::IntegrityLost => "integrity lost",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    /// A signed maintenance request of kind `maintain`.
    Maintain {
        request: String,
        signature: String,
    },
    /// A signed maintenance request of kind `stop`.
    Stop {
        request: String,
        signature: String,
    },
}

impl ControlRequest {
    /// Its name in the log.
    pub fn op(&self) -> &'static str {
        match self {
            ControlRequest::Status => "status",
            ControlRequest::Maintain { .. } => "maintain",
            ControlRequest::Stop { .. } => "stop",
        }
    }
}

/// Everything `tyd certainty status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub cluster: String,
    pub node: String,
    pub root: String,
    pub action: String,
    pub baseline_at: Option<String>,
    pub root_hash: Option<String>,
    /// Boot-stable root: what `certainty.expected_root` pins.
    #[serde(default)]
    pub stable_root: Option<String>,
    pub files: u64,
    pub bytes: u64,
    pub entries: u64,
    pub last_verification_at: Option<String>,
    pub last_verification_ms: Option<u64>,
    pub next_verification_by: Option<String>,
    pub maintenance_until: Option<String>,
    pub violations: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl ControlResponse {
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: Some(message.into()),
            ..Self::default()
        }
    }

    pub fn err(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            ..Self::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the answer is over {MAX_RESPONSE} bytes")]
    TooLong,
    #[error("the answer is not certaintyd's: {0}")]
    Malformed(String),
}

/// Sends `request` to certaintyd at `socket` and reads its answer, each way within `timeout`
/// (per read and per write), the answer at most [`MAX_RESPONSE`] bytes.
pub fn call(
    socket: &Path,
    request: &ControlRequest,
    timeout: Duration,
) -> Result<ControlResponse, CallError> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request).map_err(|e| CallError::Malformed(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream)
        .take(MAX_RESPONSE)
        .read_line(&mut reply)?;
    if !reply.ends_with('\n') && reply.len() as u64 >= MAX_RESPONSE {
        return Err(CallError::TooLong);
    }
    serde_json::from_str(&reply).map_err(|e| CallError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The names on the wire are the ones certaintyd always wrote (a node on an older
    /// release reads them), and an unknown one is an error, never a state.
    #[test]
    fn states_keep_their_names_and_an_unknown_one_is_an_error() {
        for s in State::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
        }
        assert!(serde_json::from_str::<State>("\"integrity_lost\"").is_err());
        assert!(serde_json::from_str::<State>("\"ok\"").is_err());
    }

    /// A server that answers too much, or nothing, or garbage, is an error within the
    /// timeout, not a hang or a huge allocation.
    #[test]
    fn a_hostile_or_silent_server_is_an_error_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            // Too long; then silent; then garbage.
            for answer in [
                vec![b'x'; 200_000],
                Vec::new(),
                b"{\"ok\":true,\"status\":{\"state\":\"fine\"}}\n".to_vec(),
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let _ = s.write_all(&answer);
                // Until the client has given up or read it (it closes the connection).
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            }
        });
        let t = Duration::from_millis(200);
        assert!(matches!(
            call(&path, &ControlRequest::Status, t),
            Err(CallError::TooLong)
        ));
        let started = std::time::Instant::now();
        assert!(matches!(
            call(&path, &ControlRequest::Status, t),
            Err(CallError::Io(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(
            call(&path, &ControlRequest::Status, t),
            Err(CallError::Malformed(_))
        ));
        server.join().unwrap();
    }
}
