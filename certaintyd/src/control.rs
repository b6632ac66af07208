//! The control socket: status for anyone root, maintenance and stop only with a signed request.
//! One JSON request line in, one JSON response line out.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use proto::certainty::MAX_REQUEST as MAX_LINE;
pub use proto::certainty::{ControlRequest, ControlResponse, State, Status};

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
    info!(op = request.op(), "signed control request received");
    let (reply, rx) = oneshot::channel();
    if tx.send(Command { request, reply }).await.is_err() {
        return ControlResponse::err("daemon is shutting down");
    }
    rx.await
        .unwrap_or_else(|_| ControlResponse::err("daemon dropped the request"))
}

use tokio::io::AsyncReadExt as _;
