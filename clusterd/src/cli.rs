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
    #[arg(long, default_value = proto::paths::CERTAINTY_SOCKET, value_parser = parse_path_or_none)]
    pub certainty_socket: PathOrNone,
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
    #[arg(long, default_value = "/dev/tpmrm0", value_parser = parse_path_or_none)]
    pub tpm: PathOrNone,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

/// A path, or `none`: where certaintyd answers (`--certainty-socket none` on a node whose
/// root is on disk), or this node's TPM (`--tpm none`: it never quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathOrNone {
    None,
    At(PathBuf),
}

impl PathOrNone {
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            PathOrNone::None => None,
            PathOrNone::At(p) => Some(p),
        }
    }
}

/// `none`, or a path (never empty).
pub fn parse_path_or_none(s: &str) -> Result<PathOrNone, EmptyPath> {
    match s {
        "none" => Ok(PathOrNone::None),
        "" => Err(EmptyPath),
        path => Ok(PathOrNone::At(PathBuf::from(path))),
    }
}

/// An empty path option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a path, or none")]
pub struct EmptyPath;
