//! The command line, apart from `main` so the man page and completions are made from it
//! (`gendocs`).

use std::path::PathBuf;

use clap::Parser;
use policy::exit::EXIT_CODES_HELP;

#[derive(Debug, Parser)]
#[command(
    name = "clusterd",
    version,
    about,
    after_help = format!("SIGTERM/SIGINT stop; the quarantine list stays in force.\n\n{EXIT_CODES_HELP}")
)]
pub struct Args {
    /// The policy netguard and certaintyd read; a newer one fetched from a peer is written here.
    #[arg(long, default_value = proto::paths::POLICY)]
    pub policy: PathBuf,
    /// The operator public keys the policy must be signed by, one base64 key a line.
    #[arg(long, default_value = proto::paths::TRUST)]
    pub trust: PathBuf,
    /// This node's WireGuard private key (mode 0600): who this node is in the map.
    #[arg(long, default_value = proto::paths::NODE_KEY)]
    pub key: PathBuf,
    /// clusterd's own anti-rollback state.
    #[arg(long, default_value = proto::paths::CLUSTERD_STATE)]
    pub state: PathBuf,
    /// Refuse policies with a lower serial (for nodes that keep no state across boots).
    #[arg(long, default_value_t = 0)]
    pub min_serial: u64,
    /// certaintyd's control socket; "none" when this node runs no certaintyd.
    #[arg(long, default_value = proto::paths::CERTAINTY_SOCKET, value_parser = parse_certainty_socket)]
    pub certainty_socket: CertaintySocket,
    #[arg(long, default_value = "/proc/sys/kernel/random/boot_id")]
    pub boot_id: PathBuf,
    /// Where the quarantine list for netguard is written.
    #[arg(long, default_value = proto::paths::QUARANTINE)]
    pub quarantine: PathBuf,
    /// Where the cluster view for `tyd status --cluster` is written.
    #[arg(long, default_value = proto::paths::VIEW)]
    pub view: PathBuf,
    /// This node's TPM, for the quotes its peers check when the policy says its role must
    /// attest ([attestation] require): a device, or swtpm's server socket; "none": never
    /// quote (such a node is then quarantined by its peers as not attested).
    #[arg(long, default_value = "/dev/tpmrm0", value_parser = parse_certainty_socket)]
    pub tpm: CertaintySocket,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

/// Where certaintyd answers, or that this node runs none (`--certainty-socket none`, as on a
/// node whose root is on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertaintySocket {
    None,
    At(PathBuf),
}

impl CertaintySocket {
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            CertaintySocket::None => None,
            CertaintySocket::At(p) => Some(p),
        }
    }
}

/// `none`, or a socket path (never empty).
pub fn parse_certainty_socket(s: &str) -> Result<CertaintySocket, EmptySocket> {
    match s {
        "none" => Ok(CertaintySocket::None),
        "" => Err(EmptySocket),
        path => Ok(CertaintySocket::At(PathBuf::from(path))),
    }
}

/// An empty `--certainty-socket`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a socket path, or none when this node runs no certaintyd")]
pub struct EmptySocket;
