//! `tyd`: the operator's tool for a tyd cluster: keys, the signed policy, the node map.
//!
//! A library only so that `gendocs` can make the man page and completions from the command
//! line (`command`); the binary is `main`.

mod admission_cmd;
mod certainty_cmd;
mod cluster_cmd;
mod edit;
mod failure;
mod init_cmd;
mod join_cmd;
mod keygen;
mod node_cmd;
mod policy_cmd;
mod services;
mod sign_cmd;
mod status_cmd;
mod token_cmd;
mod tpm_cmd;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jiff::{SignedDuration, Timestamp};

use failure::{CliResult, EXIT_CODES_HELP};

#[derive(Debug, Parser)]
#[command(
    name = "tyd",
    version,
    about = "The operator's tool for a tyd cluster: keys, policy, node map, joins, status.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create keys: an operator signing key, or a node's WireGuard key.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Keygen(KeygenCmd),
    /// Create, check, sign, verify and show cluster policies.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Policy(PolicyCmd),
    /// Add, remove and re-key nodes in a policy (edits in place, bumps the serial).
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Node(node_cmd::NodeCmd),
    /// Masters' admission keys, on the operator's copy of the policy: add (a master admits
    /// within limits, signing only its own list of nodes), rotate, remove.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Admission(admission_cmd::AdmissionCmd),
    /// Every node of the map: authorised, tunnel up, last handshake, traffic, endpoint; and
    /// what non-peers tried (per-service drops). Run it on the node (in its namespace).
    /// Exits 7 when something is wrong (firewall missing or altered, policy file refused).
    #[command(after_help = EXIT_CODES_HELP)]
    Status {
        #[arg(long, default_value = proto::paths::POLICY)]
        policy: PathBuf,
        #[arg(long, default_value = proto::paths::TRUST)]
        trust: PathBuf,
        /// Override the policy's interface name.
        #[arg(long)]
        interface: Option<String>,
        /// netguard's rollback state; the copy of the policy in force is kept beside it and
        /// shown when the policy file is refused.
        #[arg(long, default_value = proto::paths::NETGUARD_STATE)]
        state: PathBuf,
        /// This node's WireGuard private key: marks which node is this one, and lets the
        /// firewall be checked against the policy.
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// The whole cluster as clusterd on this node sees it: every node's reachability,
        /// serial, integrity, root, load and memory; problems first.
        #[arg(long)]
        cluster: bool,
        /// With --cluster: only the nodes with a problem.
        #[arg(long, requires = "cluster")]
        problems: bool,
        /// With --cluster: redraw every second, like mosmon (Ctrl-C ends it).
        #[arg(long, requires = "cluster")]
        watch: bool,
        /// clusterd's view of the cluster.
        #[arg(long, default_value = proto::paths::VIEW)]
        view: PathBuf,
    },
    /// Start a cluster on this node (CHAOS: `tyd -f init`): the operator key, a signed policy
    /// with this node as node 1 (master), a first join token and the command that joins
    /// further nodes.
    #[command(after_help = EXIT_CODES_HELP)]
    Init {
        /// This node's LAN address (its WireGuard endpoint, and where nodes join).
        #[arg(long)]
        endpoint: IpAddr,
        /// The cluster's name.
        #[arg(long, default_value = "cluster")]
        cluster: String,
        /// This node's name in the map (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// Where the keys and the policy go.
        #[arg(long, default_value = proto::paths::ETC)]
        dir: PathBuf,
        #[arg(long, default_value = proto::paths::TOKENS)]
        tokens: PathBuf,
        /// How many nodes the first token admits.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        uses: u32,
        /// How long the first token is valid.
        #[arg(long, default_value = "1h", value_parser = parse_span)]
        expires: SignedDuration,
        /// Do not enable and start the daemons' systemd units; print their command lines.
        #[arg(long)]
        no_start: bool,
        /// Where to write the new operator key (a removable disk): it signs the policy and
        /// belongs off the cluster. Default DIR/operator.key, to be moved off.
        #[arg(long, conflicts_with = "operator_key")]
        operator_key_out: Option<PathBuf>,
        /// Sign the first policy with this operator key, made before (`tyd keygen
        /// operator`, on another machine): nothing of it is written here.
        #[arg(long)]
        operator_key: Option<PathBuf>,
        /// Keep the operator key on this master and let it sign the policy itself (the mode
        /// before admission keys: root on this master is the operator).
        #[arg(long, conflicts_with_all = ["operator_key_out", "operator_key"])]
        no_admission_key: bool,
    },
    /// Join a cluster through any member (CHAOS: `tyd -m <member>`): a token from a master and
    /// the operator key's fingerprint, both printed by `tyd init` or `tyd token create`.
    #[command(after_help = EXIT_CODES_HELP)]
    Join(JoinArgs),
    /// Leave the cluster: a master removes this node (asked through the tunnel) and every
    /// member drops it. `tyd node remove` on the operator's copy stays the forced way.
    #[command(after_help = EXIT_CODES_HELP)]
    Leave {
        #[arg(long, default_value = proto::paths::ETC)]
        dir: PathBuf,
        /// This node's WireGuard key (default DIR/node.key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Join tokens on a master: create (printed once, with the join command), list, revoke.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Token(token_cmd::TokenCmd),
    /// Talk to certaintyd: status, signed maintenance windows, authorised stop.
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Certainty(certainty_cmd::CertaintyCmd),
    /// This machine's TPM: its attestation key and the PCRs its quotes cover, for pinning
    /// (docs/attestation.md).
    #[command(subcommand, after_help = EXIT_CODES_HELP)]
    Tpm(tpm_cmd::TpmCmd),
    /// Print the node map in openMosix format (/etc/openmosix.map, `setpe -w`).
    #[command(after_help = EXIT_CODES_HELP)]
    Showmap {
        /// The policy file.
        file: PathBuf,
        /// Verify the policy's signature against these operator public keys first.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Print the map even when some nodes have no IPv4 tunnel address (they are left
        /// out, with a warning); without it such a map is refused.
        #[arg(long)]
        partial: bool,
    },
}

/// `tyd join <member> ...`, or `tyd join list|approve|deny` on a master.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct JoinArgs {
    #[command(subcommand)]
    decide: Option<join_cmd::Decide>,
    /// A member's LAN address (port 7947 unless given), or "any": the first member that
    /// answers a broadcast on the local segment.
    member: Option<String>,
    /// A join token from a master; without one the join waits for the operator's approval
    /// (`tyd join list` and `tyd join approve ID` on the master; compare the codes).
    #[arg(long)]
    token: Option<String>,
    /// The operator key's fingerprint (blake3:...): the cluster must prove it.
    #[arg(long, required_unless_present = "trust", conflicts_with = "trust")]
    operator: Option<String>,
    /// Or the operator's public key file itself (a drone image carries it).
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Where the keys and the policy go.
    #[arg(long, default_value = proto::paths::ETC)]
    dir: PathBuf,
    /// This node's WireGuard key (made if missing; default DIR/node.key).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The name this node asks for (default: its host name; node<ID> when the master
    /// refuses that). "-": none, the master picks node<ID>.
    #[arg(long)]
    name: Option<String>,
    /// Do not enable and start the daemons' systemd units; print their command lines.
    #[arg(long)]
    no_start: bool,
    /// This machine's TPM (a device, or swtpm's socket): the join carries its attestation
    /// key and a quote over this node's WireGuard key; skipped when it does not exist. A
    /// cluster whose nodes of this role must attest refuses a join without one.
    #[arg(long, default_value = "/dev/tpmrm0")]
    tpm: PathBuf,
}

#[derive(Debug, Subcommand)]
enum KeygenCmd {
    /// Write an ed25519 operator key to FILE (mode 0600) and its public key to FILE.pub.
    #[command(after_help = EXIT_CODES_HELP)]
    Operator {
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Write a WireGuard private key to FILE (mode 0600), its public key to FILE.pub, and
    /// print the public key.
    #[command(after_help = EXIT_CODES_HELP)]
    Node {
        #[arg(long, short)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Write a new policy with CHAOS's defaults (openMosix services, drop posture).
    #[command(after_help = EXIT_CODES_HELP)]
    Init {
        /// Where to write the policy.
        #[arg(long, short, default_value = "cluster.toml")]
        out: PathBuf,
        /// The cluster's name.
        #[arg(long, default_value = "cluster")]
        name: String,
        /// How long the policy stays valid, e.g. "90d" or "8760h".
        #[arg(long, default_value = "365d", value_parser = parse_span)]
        valid_for: SignedDuration,
        /// Import the nodes of an existing openMosix map (its addresses become endpoints).
        #[arg(long, requires = "keys_dir")]
        from_map: Option<PathBuf>,
        /// Where to write the WireGuard keys generated for imported nodes.
        #[arg(long)]
        keys_dir: Option<PathBuf>,
        /// Overwrite an existing policy file.
        #[arg(long)]
        force: bool,
    },
    /// Check syntax, schema and validity (not the signature).
    #[command(after_help = EXIT_CODES_HELP)]
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Sign FILE with an operator key, writing FILE.sig.
    #[command(after_help = EXIT_CODES_HELP)]
    Sign {
        file: PathBuf,
        /// The operator's secret key (from `tyd keygen operator`).
        #[arg(long)]
        key: PathBuf,
        /// Raise the serial past the last one taken (signed with this key, or accepted by
        /// this node's daemons), instead of refusing.
        #[arg(long)]
        bump: bool,
        /// This node's record of the policies its daemons accepted (netguard's rollback
        /// state): a serial they took is not signed again with other content.
        #[arg(long, default_value = proto::paths::NETGUARD_STATE)]
        state: PathBuf,
        /// Sign without asking. On a terminal, sign shows what changed since the last policy
        /// this key signed for the cluster and asks first; elsewhere it shows it and signs.
        #[arg(long, short)]
        yes: bool,
    },
    /// Show what changed from OLD to NEW: serial, expiry, nodes added, removed or changed
    /// (key, endpoint, addresses, name, roles, expiry), and other sections that differ.
    #[command(after_help = EXIT_CODES_HELP)]
    Diff { old: PathBuf, new: PathBuf },
    /// Verify FILE.sig against trusted operator public keys, then validate FILE.
    #[command(after_help = EXIT_CODES_HELP)]
    Verify {
        file: PathBuf,
        /// File of trusted operator public keys, one base64 key a line.
        #[arg(long)]
        trust: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Put a signed policy in force on this member: verified first, refused if it is not newer
    /// than the one in place; clusterd then carries it to every other member by itself.
    /// From the operator's machine: `scp cluster.toml cluster.toml.sig MEMBER:/tmp/ && ssh
    /// MEMBER tyd policy push /tmp/cluster.toml`.
    #[command(after_help = EXIT_CODES_HELP)]
    Push {
        file: PathBuf,
        #[arg(long, default_value = proto::paths::TRUST)]
        trust: PathBuf,
        /// The policy the member's clusterd and netguard read.
        #[arg(long, default_value = proto::paths::POLICY)]
        to: PathBuf,
    },
    /// Show a policy: cluster, services, firewall, certainty, nodes.
    #[command(after_help = EXIT_CODES_HELP)]
    Show {
        file: PathBuf,
        /// Verify the signature against these operator public keys first.
        #[arg(long)]
        trust: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// Accepts calendar-free spans such as "90d", "12h", "1h 30m".
/// A validity period in whole units a policy can be reasoned about with: seconds to weeks.
/// Years and months vary in length, so they are refused with what to write instead.
fn parse_span(s: &str) -> Result<SignedDuration, failure::ArgError> {
    let plain = || failure::ArgError::Span(s.to_string());
    let span: jiff::Span = s.parse().map_err(|_| plain())?;
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(plain());
    }
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| plain())?;
    if d.is_negative() || d.is_zero() {
        return Err(failure::ArgError::NotPositive(s.to_string()));
    }
    Ok(d)
}

fn run(cli: Cli, now: Timestamp) -> CliResult {
    match cli.command {
        Command::Keygen(cmd) => run_keygen(cmd),
        Command::Policy(cmd) => run_policy(cmd, now),
        Command::Node(cmd) => node_cmd::run(cmd, now),
        Command::Admission(cmd) => admission_cmd::run(cmd, now),
        Command::Certainty(cmd) => certainty_cmd::run(cmd),
        Command::Tpm(cmd) => tpm_cmd::run(cmd),
        Command::Token(cmd) => token_cmd::run(cmd, now),
        Command::Leave { dir, key } => join_cmd::leave(&dir, key.as_deref(), now),
        Command::Init {
            endpoint,
            cluster,
            name,
            dir,
            tokens,
            uses,
            expires,
            no_start,
            operator_key_out,
            operator_key,
            no_admission_key,
        } => {
            let host = name
                .or_else(join_cmd::default_name)
                .unwrap_or_else(|| "node1".into());
            join_cmd::init(
                &join_cmd::InitArgs {
                    dir: &dir,
                    cluster: &cluster,
                    node_name: &host,
                    endpoint,
                    tokens: &tokens,
                    uses,
                    expires,
                    no_start,
                    operator_key_out: operator_key_out.as_deref(),
                    operator_key: operator_key.as_deref(),
                    no_admission_key,
                },
                now,
            )
        }
        Command::Join(JoinArgs {
            decide: Some(d), ..
        }) => join_cmd::decide(d, now),
        Command::Join(a) => run_join(a),
        Command::Status {
            json,
            cluster: true,
            problems,
            watch,
            view,
            ..
        } => cluster_cmd::run(&view, json, problems, watch, now),
        Command::Status {
            policy,
            trust,
            state,
            interface,
            key,
            json,
            ..
        } => status_cmd::run(
            &status_cmd::StatusArgs {
                policy: &policy,
                trust: &trust,
                state: &state,
                interface: interface.as_deref(),
                key: key.as_ref(),
                json,
            },
            now,
        ),
        Command::Showmap {
            file,
            trust,
            partial,
        } => policy_cmd::showmap(&file, trust.as_deref(), partial, now),
    }
}

/// `tyd keygen`: makes an operator or a node key.
fn run_keygen(cmd: KeygenCmd) -> CliResult {
    match cmd {
        KeygenCmd::Operator { out } => {
            let public = keygen::operator(&out)?;
            println!("{public}");
            eprintln!(
                "wrote {} (secret, 0600) and {} (key id {})",
                out.display(),
                keygen::pub_path(&out).display(),
                public.key_id()
            );
            Ok(())
        }
        KeygenCmd::Node { out } => {
            let public = keygen::node(&out)?;
            println!("{public}");
            Ok(())
        }
    }
}

/// `tyd policy`: one policy subcommand.
fn run_policy(cmd: PolicyCmd, now: Timestamp) -> CliResult {
    match cmd {
        PolicyCmd::Init {
            out,
            name,
            valid_for,
            from_map,
            keys_dir,
            force,
        } => policy_cmd::init(
            &policy_cmd::InitArgs {
                out: &out,
                name: &name,
                valid_for,
                from_map: from_map.as_deref(),
                keys_dir: keys_dir.as_deref(),
                force,
            },
            now,
        ),
        PolicyCmd::Check { file, json } => policy_cmd::check(&file, json, now),
        PolicyCmd::Sign {
            file,
            key,
            bump,
            state,
            yes,
        } => policy_cmd::sign_cmd(&file, &key, &state, bump, yes, now),
        PolicyCmd::Diff { old, new } => policy_cmd::diff_cmd(&old, &new),
        PolicyCmd::Verify { file, trust, json } => policy_cmd::verify(&file, &trust, json, now),
        PolicyCmd::Push { file, trust, to } => policy_cmd::push(&file, &trust, &to, now),
        PolicyCmd::Show { file, trust, json } => {
            policy_cmd::show(&file, trust.as_deref(), json, now)
        }
    }
}

/// `tyd join <member>`: joins this node through a member (`--decide` is handled apart).
fn run_join(a: JoinArgs) -> CliResult {
    let member = a.member.ok_or_else(|| {
        failure::Failure::new(
            failure::Exit::Usage,
            "tyd join needs a member's address, \"any\", or list|approve|deny",
        )
    })?;
    let operator = match (a.operator, a.trust) {
        (Some(fp), _) => fp,
        (None, Some(t)) => keygen::operator_fingerprint(&t)?,
        (None, None) => unreachable_usage()?,
    };
    join_cmd::join(&join_cmd::JoinArgs {
        member: &member,
        token: a.token.as_deref(),
        operator: &operator,
        dir: &a.dir,
        key: a.key.as_deref(),
        name: a.name.as_deref(),
        no_start: a.no_start,
        tpm: &a.tpm,
    })
}

/// Restores the default SIGPIPE action (Rust ignores it), so `tyd status | head` ends tyd
/// quietly when `head` has read enough, as any Unix tool does, instead of a panic.
fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no handler code; nothing else in tyd touches SIGPIPE, and this
    // runs first in main, before any thread exists.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// clap requires --operator or --trust; this keeps the match total without a panic.
fn unreachable_usage() -> CliResult<String> {
    Err(failure::Failure::new(
        failure::Exit::Usage,
        "tyd join needs --operator or --trust",
    ))
}

/// CHAOS's spellings: `tyd -f init ...` is `tyd init ...`, `tyd -m <member> ...` is
/// `tyd join <member> ...`.
fn chaos_spelling(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    match args.get(1).and_then(|a| a.to_str()) {
        Some("-f") if args.get(2).and_then(|a| a.to_str()) == Some("init") => {
            args.remove(1);
        }
        Some("-m") => args[1] = "join".into(),
        _ => {}
    }
    args
}

/// tyd's whole command line, for man pages and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// The `tyd` program.
pub fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse_from(chaos_spelling(std::env::args_os().collect()));
    match run(cli, Timestamp::now()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            for line in f.message.lines() {
                eprintln!("tyd: {line}");
            }
            f.exit.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn usage_exit_code_matches_clap() {
        assert_eq!(super::failure::Exit::Usage.code(), 2);
    }
}
