//! `tyd certainty status | maintain | stop`: talk to certaintyd over its control socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use jiff::Timestamp;
use proto::certainty::{ControlRequest, ControlResponse, Status, call};
use proto::maintenance::{Request, RequestKind};
use rand_core::{OsRng, RngCore};

use crate::failure::{CliResult, EXIT_CODES_HELP, Exit, Failure};
use crate::keygen::load_operator;
use crate::policy_cmd::print_json;

#[derive(Debug, Subcommand)]
pub enum CertaintyCmd {
    /// Baseline, root hash, coverage, last verification, maintenance window.
    #[command(after_help = EXIT_CODES_HELP)]
    Status {
        #[arg(long, default_value = proto::paths::CERTAINTY_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Open a signed maintenance window: changes are logged, not acted on, until it ends.
    #[command(after_help = EXIT_CODES_HELP)]
    Maintain {
        /// How long, e.g. "10m" (at most the policy's max_maintenance).
        #[arg(long = "for", value_parser = policy::model::duration::parse)]
        duration: Duration,
        /// A maintenance key listed in the policy (ed25519 secret key file).
        #[arg(long)]
        key: PathBuf,
        /// At the end, take a new baseline instead of verifying against the old one.
        #[arg(long)]
        rebaseline: bool,
        #[arg(long, default_value = proto::paths::CERTAINTY_SOCKET)]
        socket: PathBuf,
    },
    /// Stop certaintyd cleanly (and disarm its watchdog) with a signed request.
    #[command(after_help = EXIT_CODES_HELP)]
    Stop {
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = proto::paths::CERTAINTY_SOCKET)]
        socket: PathBuf,
    },
}

/// How long certaintyd may take to answer (a maintenance request that re-baselines the root
/// answers after the new baseline).
const CONTROL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn send(socket: &Path, request: &ControlRequest) -> CliResult<ControlResponse> {
    let response = call(socket, request, CONTROL_TIMEOUT).map_err(|e| {
        Failure::new(
            Exit::Runtime,
            format!("{}: cannot reach certaintyd: {e}", socket.display()),
        )
    })?;
    if !response.ok {
        let why = response.error.unwrap_or_else(|| "refused".into());
        return Err(Failure::new(
            Exit::Refused,
            format!("certaintyd refused: {why}"),
        ));
    }
    Ok(response)
}

fn status(socket: &Path) -> CliResult<Status> {
    send(socket, &ControlRequest::Status)?
        .status
        .ok_or_else(|| Failure::new(Exit::Runtime, "certaintyd sent no status"))
}

/// Builds and signs a request for the node behind `socket` (it names its cluster and node).
fn signed(
    socket: &Path,
    key: &Path,
    kind: RequestKind,
    duration: Duration,
    rebaseline: bool,
) -> CliResult<(String, String)> {
    let signing_key = load_operator(key)?;
    let s = status(socket)?;
    let mut nonce = [0u8; 16];
    OsRng.fill_bytes(&mut nonce);
    let request = Request {
        kind,
        cluster: s.cluster,
        node: Some(s.node),
        issued_at: Timestamp::now(),
        duration,
        rebaseline,
        nonce: nonce.iter().map(|b| format!("{b:02x}")).collect(),
    };
    let text =
        serde_json::to_string(&request).map_err(|e| Failure::new(Exit::Runtime, e.to_string()))?;
    let signature = policy::sign(text.as_bytes(), &signing_key);
    Ok((text, signature))
}

pub fn run(cmd: CertaintyCmd) -> CliResult {
    match cmd {
        CertaintyCmd::Status { socket, json } => {
            let s = status(&socket)?;
            if json {
                print_json(&serde_json::to_value(&s).unwrap_or_default());
                return Ok(());
            }
            let or_dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
            println!(
                "state         {} (node {}, cluster {})",
                s.state, s.node, s.cluster
            );
            println!("root          {} (action {})", s.root, s.action);
            println!(
                "baseline      {}  {}",
                or_dash(&s.baseline_at),
                or_dash(&s.root_hash)
            );
            println!(
                "covered       {} entries, {} files, {} bytes",
                s.entries, s.files, s.bytes
            );
            println!(
                "last verified {} ({} ms); next by {}",
                or_dash(&s.last_verification_at),
                s.last_verification_ms.map_or("-".into(), |m| m.to_string()),
                or_dash(&s.next_verification_by)
            );
            println!(
                "maintenance   {}",
                s.maintenance_until.as_deref().unwrap_or("none")
            );
            println!("violations    {}", s.violations);
            Ok(())
        }
        CertaintyCmd::Maintain {
            duration,
            key,
            rebaseline,
            socket,
        } => {
            let (request, signature) =
                signed(&socket, &key, RequestKind::Maintain, duration, rebaseline)?;
            let r = send(&socket, &ControlRequest::Maintain { request, signature })?;
            println!("{}", r.message.unwrap_or_default());
            Ok(())
        }
        CertaintyCmd::Stop { key, socket } => {
            let (request, signature) =
                signed(&socket, &key, RequestKind::Stop, Duration::ZERO, false)?;
            let r = send(&socket, &ControlRequest::Stop { request, signature })?;
            println!("{}", r.message.unwrap_or_default());
            Ok(())
        }
    }
}
