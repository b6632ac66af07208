//! The command line, apart from `main` so the man page and completions are made from it
//! (`gendocs`).

use std::path::PathBuf;

use clap::Parser;
use policy::exit::EXIT_CODES_HELP;

#[derive(Debug, Parser)]
#[command(
    name = "joind",
    version,
    about = "The join endpoint: admits nodes with a join token (on a master) or relays to a master.",
    after_help = format!("SIGTERM/SIGINT stop it.\n\n{EXIT_CODES_HELP}")
)]
pub struct Args {
    /// The policy netguard and clusterd read; a master edits, signs and replaces it.
    #[arg(long, default_value = proto::paths::POLICY)]
    pub policy: PathBuf,
    /// The operator public keys the policy must be signed by, one base64 key a line.
    #[arg(long, default_value = proto::paths::TRUST)]
    pub trust: PathBuf,
    /// This node's WireGuard private key: who this node is in the map.
    #[arg(long, default_value = proto::paths::NODE_KEY)]
    pub key: PathBuf,
    /// The operator's signing key: this node is a master and admits joins itself, signing
    /// the policy (clusters without admission keys).
    #[arg(long, conflicts_with = "admission_key")]
    pub operator_key: Option<PathBuf>,
    /// This master's admission key: it admits joins within the limits the policy gives the
    /// key, signing only its membership (`tyd init` writes /etc/tyd/admission.key).
    #[arg(long)]
    pub admission_key: Option<PathBuf>,
    /// joind's own anti-rollback state: the last accepted serial and digest (joind takes a
    /// policy in force only through it, as netguard and clusterd do).
    #[arg(long, default_value = proto::paths::JOIND_STATE)]
    pub state: PathBuf,
    /// Refuse policies with a lower serial (for nodes that keep no state across boots).
    #[arg(long, default_value_t = 0)]
    pub min_serial: u64,
    /// The master's join tokens (`tyd token create`).
    #[arg(long, default_value = proto::paths::TOKENS)]
    pub tokens: PathBuf,
    /// clusterd's view of the cluster (its --view): an ephemeral drone coming back at its
    /// address with a new key takes over its entry only once this view says it is lost.
    #[arg(long, default_value = proto::paths::VIEW)]
    pub view: PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}
