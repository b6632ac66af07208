//! The control socket: status for anyone root, maintenance and stop only with a signed request.
//! One JSON request line in, one JSON response line out.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Longest request line accepted: a request and its signature fit in far less.
const MAX_LINE: usize = 16 << 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    /// A signed maintenance::Request of kind `maintain`.
    Maintain {
        request: String,
        signature: String,
    },
    /// A signed maintenance::Request of kind `stop`.
    Stop {
        request: String,
        signature: String,
    },
}

/// Everything `tyd certainty status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub state: String,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

/// A signed request handed to the daemon's loop, which answers on `reply`.
#[derive(Debug)]
pub struct Command {
    pub request: ControlRequest,
    pub reply: oneshot::Sender<ControlResponse>,
}

/// Binds the socket (mode 0600; a stale socket file is replaced).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves connections until the listener fails or the loop goes away.
pub async fn serve(listener: UnixListener, status: Arc<Mutex<Status>>, tx: mpsc::Sender<Command>) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            warn!("control socket accept failed; control socket closed");
            return;
        };
        // Root, or the daemon's own user (tests): nobody else, whatever the file mode says.
        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
        if uid != 0 && uid != me {
            warn!(peer_uid = uid, "control connection refused");
            continue;
        }
        let status = Arc::clone(&status);
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read).take(MAX_LINE as u64);
            let response = match reader.read_line(&mut line).await {
                Ok(_) => handle(&line, &status, &tx).await,
                Err(e) => ControlResponse::err(format!("cannot read request: {e}")),
            };
            let mut out = serde_json::to_vec(&response).unwrap_or_default();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

async fn handle(line: &str, status: &Mutex<Status>, tx: &mpsc::Sender<Command>) -> ControlResponse {
    let request: ControlRequest = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => return ControlResponse::err(format!("malformed request: {e}")),
    };
    if let ControlRequest::Status = request {
        let s = status.lock().map(|s| s.clone()).unwrap_or_default();
        return ControlResponse {
            ok: true,
            status: Some(s),
            ..ControlResponse::default()
        };
    }
    let op = match &request {
        ControlRequest::Status => "status",
        ControlRequest::Maintain { .. } => "maintain",
        ControlRequest::Stop { .. } => "stop",
    };
    info!(op, "signed control request received");
    let (reply, rx) = oneshot::channel();
    if tx.send(Command { request, reply }).await.is_err() {
        return ControlResponse::err("daemon is shutting down");
    }
    rx.await
        .unwrap_or_else(|_| ControlResponse::err("daemon dropped the request"))
}

use tokio::io::AsyncReadExt as _;

/// Blocking client, for `tyd certainty`.
pub fn call(socket: &Path, request: &ControlRequest) -> std::io::Result<ControlResponse> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(std::io::Error::other)
}
