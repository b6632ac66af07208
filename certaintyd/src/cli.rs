//! The command line, apart from `main` so the man page and completions are made from it
//! (`gendocs`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use policy::Action;
use policy::exit::EXIT_CODES_HELP;

#[derive(Debug, Parser)]
#[command(
    name = "certaintyd",
    version,
    about,
    after_help = format!("SIGTERM/SIGINT/SIGHUP are integrity events unless --stop-on-signal.\n\n{EXIT_CODES_HELP}")
)]
pub struct Args {
    /// The signed cluster policy (its signature is POLICY.sig).
    #[arg(long, default_value = proto::paths::POLICY)]
    pub policy: PathBuf,
    /// Trusted operator public keys, one base64 key a line.
    #[arg(long, default_value = proto::paths::TRUST)]
    pub trust: PathBuf,
    /// certaintyd's own anti-rollback state: the last accepted serial and digest (it starts
    /// only on a policy no older than the last it accepted).
    #[arg(long, default_value = proto::paths::CERTAINTYD_STATE)]
    pub state: PathBuf,
    /// Refuse policies with a lower serial (for nodes that keep no state across boots).
    #[arg(long, default_value_t = 0)]
    pub min_serial: u64,
    /// This node's name in the policy (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Override the policy's monitored root.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Override the policy's interval, e.g. "500ms".
    #[arg(long, value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Override the policy's grace period, e.g. "0s" for tests.
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// Loss of certainty if a full verification takes longer than this.
    #[arg(long, value_parser = parse_duration)]
    pub deadline: Option<Duration>,
    /// Override the policy's action: reboot, poweroff, exec or alert.
    #[arg(long, value_parser = parse_action)]
    pub action: Option<Action>,
    /// Override the policy's exec hook.
    #[arg(long)]
    pub exec: Option<PathBuf>,
    /// Override the policy's content_every: re-hash file content every N verifications.
    #[arg(long)]
    pub content_every: Option<u32>,
    /// Do everything except reboot or power off; exit 8 (integrity lost without a reboot)
    /// instead.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow reboot, poweroff and exec although the root is not a RAM filesystem.
    #[arg(long)]
    pub force_disk_root: bool,
    /// Treat SIGTERM, SIGINT and SIGHUP as a request to stop, not as integrity events.
    #[arg(long)]
    pub stop_on_signal: bool,
    /// Control socket (root only): status, maintenance windows, authorised stop.
    #[arg(long, default_value = proto::paths::CERTAINTY_SOCKET)]
    pub socket: PathBuf,
    /// Skip mlockall, undumpable and OOM protection (development only).
    #[arg(long)]
    pub no_harden: bool,
    /// Take one snapshot of --root, print its hashes and coverage as JSON, and exit (no
    /// policy needed). The `stable_root` it prints is what `certainty.expected_root` pins.
    #[arg(long, requires = "root")]
    pub hash_only: bool,
    /// Write Prometheus metrics here (node_exporter's textfile collector), on another
    /// filesystem than the root, e.g. /run/tyd/certaintyd.prom.
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// This node's TPM (a device, or swtpm's socket): at a violation, before any action,
    /// PCR 15 is extended with "integrity lost", so the node's TPM quotes say so until it
    /// reboots (issue 29). Skipped when the path does not exist (a machine without a TPM).
    #[arg(long, default_value = "/dev/tpmrm0")]
    pub tpm: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, policy::model::duration::DurationError> {
    policy::model::duration::parse(s)
}

pub fn parse_action(s: &str) -> Result<Action, policy::model::ActionError> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Issue 25 #7: `--help` said a dry run exits 3 (invalid policy) while it exits 8. Steps:
    /// the help of `--dry-run` names the code of `Exit::IntegrityLost`.
    #[test]
    fn the_dry_run_help_names_the_code_it_exits_with() {
        let cmd = Args::command();
        let help = cmd
            .get_arguments()
            .find(|a| a.get_id() == "dry_run")
            .and_then(|a| a.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        let code = policy::exit::Exit::IntegrityLost as i32;
        assert!(help.contains(&format!("exit {code}")), "{help}");
    }
}
