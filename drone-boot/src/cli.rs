//! The command line, apart from `main` so the man page and completions are made from it
//! (`gendocs`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use policy::exit::EXIT_CODES_HELP;

#[derive(Debug, Parser)]
#[command(
    name = "drone-boot",
    version,
    about,
    after_help = EXIT_CODES_HELP
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Configure the LAN from `ip=` on the kernel command line, or by DHCP; set the host name.
    Net {
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
    },
    /// Apply the policy's sysctls and lockdown level, or with --lock-modules forbid module
    /// loading.
    Harden {
        #[arg(long, default_value = proto::paths::POLICY)]
        policy: PathBuf,
        #[arg(long, default_value = proto::paths::TRUST)]
        trust: PathBuf,
        #[arg(long, default_value = "/proc/sys")]
        proc_sys: PathBuf,
        #[arg(long, default_value = "/sys/kernel/security")]
        securityfs: PathBuf,
        #[arg(long)]
        lock_modules: bool,
    },
}
