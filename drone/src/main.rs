//! drone: builds drone images, and sets a drone up at boot (run by its init).
//!
//! Exit codes: the shared set (`policy::exit`), e.g. 1 runtime failure, 2 usage, 4 bad
//! signature, 6 unusable key file.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use drone::build::BuildError;
use drone::build::{self, Inputs};
use drone::netcfg::{self, NetConfig};
use drone::{harden, kernel};
use policy::exit::{EXIT_CODES_HELP, Exit};
use tracing::{info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "drone",
    version,
    about,
    after_help = EXIT_CODES_HELP
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build a drone image: OUT/vmlinuz, OUT/initrd.img and OUT/image.json. Prints the hash
    /// to pin as certaintyd's expected root (`certainty.expect=` on the kernel command line).
    Build(BuildArgs),
    /// (At boot) configure the LAN from `ip=` on the kernel command line, or by DHCP; set the
    /// host name.
    Net {
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
    },
    /// (At boot) apply the policy's sysctls and lockdown level, or with --lock-modules forbid
    /// module loading.
    Harden {
        #[arg(long, default_value = "/etc/tyd/cluster.toml")]
        policy: PathBuf,
        #[arg(long, default_value = "/etc/tyd/operator.pub")]
        trust: PathBuf,
        #[arg(long, default_value = "/proc/sys")]
        proc_sys: PathBuf,
        #[arg(long, default_value = "/sys/kernel/security")]
        securityfs: PathBuf,
        #[arg(long)]
        lock_modules: bool,
    },
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// The signed cluster policy (its signature is POLICY.sig).
    #[arg(long)]
    policy: PathBuf,
    /// Trusted operator public keys.
    #[arg(long)]
    trust: PathBuf,
    /// This drone's WireGuard private key (its public key must be in the policy).
    /// Without it the drone makes one at boot and prints the public key.
    #[arg(long)]
    node_key: Option<PathBuf>,
    #[arg(long, short)]
    out: PathBuf,
    /// A linux-image-*-cloud-amd64 .deb; default: download the current one.
    #[arg(long)]
    kernel_deb: Option<PathBuf>,
    /// Where downloaded kernels are kept and unpacked (drone writes nowhere else).
    #[arg(long, default_value = "/var/cache/drone")]
    cache: PathBuf,
    /// Where netguard, certaintyd, clusterd, drone and tyd are (default: next to this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// More kernel modules to include and load at boot.
    #[arg(long = "module")]
    modules: Vec<String>,
    /// The static busybox to use.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// mtime of every entry (default: $SOURCE_DATE_EPOCH, else 0).
    #[arg(long)]
    mtime: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DRONE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let result = match args.command {
        Cmd::Build(a) => build_cmd(a),
        Cmd::Net { cmdline } => net(&cmdline).map_err(Failure::from),
        Cmd::Harden {
            policy,
            trust,
            proc_sys,
            securityfs,
            lock_modules,
        } => harden_cmd(&policy, &trust, &proc_sys, &securityfs, lock_modules),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("drone: {}", f.message);
            f.exit.into()
        }
    }
}

/// A failure at drone's edge: one line, and its code from the shared set.
#[derive(Debug)]
struct Failure {
    exit: Exit,
    message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            exit: Exit::Runtime,
            message,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

impl From<BuildError> for Failure {
    fn from(e: BuildError) -> Self {
        let exit = match &e {
            BuildError::Policy(e) => e.into(),
            BuildError::Key { source, .. } => source.into(),
            BuildError::BadKey { .. } => Exit::KeyFile,
            BuildError::NotInPolicy { .. } => Exit::Refused,
            _ => Exit::Runtime,
        };
        Self {
            exit,
            message: e.to_string(),
        }
    }
}

impl From<policy::LoadError> for Failure {
    fn from(e: policy::LoadError) -> Self {
        Self {
            exit: (&e).into(),
            message: e.to_string(),
        }
    }
}

fn build_cmd(a: BuildArgs) -> Result<(), Failure> {
    // A bad policy or signature is refused before a kernel is downloaded.
    policy::load_verified(&a.policy, &a.trust, jiff::Timestamp::now())?;
    let deb = match a.kernel_deb {
        Some(d) => d,
        None => kernel::fetch(&a.cache, None).map_err(|e| e.to_string())?,
    };
    let kernel = kernel::unpack(&deb, &a.cache).map_err(|e| e.to_string())?;
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .ok_or("cannot tell where this program is; pass --bin-dir")?,
    };
    let mtime = a
        .mtime
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok()?.parse().ok())
        .unwrap_or(0);
    let inputs = Inputs {
        policy: a.policy,
        trust: a.trust,
        node_key: a.node_key,
        bin_dir,
        kernel: kernel.clone(),
        extra_modules: a.modules,
        busybox: a.busybox,
        mtime,
        now: jiff::Timestamp::now(),
    };
    let image = build::assemble(&inputs)?;
    let report = build::write(&image, &kernel, &a.out)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &build::Report) {
    println!(
        "drone image for {} (cluster {}, policy serial {})",
        r.node
            .as_deref()
            .unwrap_or("a node that makes its key at boot"),
        r.cluster,
        r.serial
    );
    println!(
        "  kernel  {}  {}  blake3 {}",
        r.kernel.display(),
        r.kernel_version,
        r.kernel_blake3
    );
    println!(
        "  initrd  {}  {} bytes ({} entries, {} bytes of content)  blake3 {}",
        r.initrd.display(),
        r.initrd_bytes,
        r.entries,
        r.content_bytes,
        r.initrd_blake3
    );
    println!("  modules {}", r.modules.join(" "));
    if let Some(k) = &r.public_key {
        println!("  node public key {k}");
    }
    println!("image hash (pin it: certainty.expect=<hash> on the kernel command line):");
    println!("{}", r.expected_root);
}

fn run_ip(args: &[String]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn net(cmdline: &Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(cmdline).map_err(|e| format!("{}: {e}", cmdline.display()))?;
    let cfg = netcfg::parse_cmdline(&text).map_err(|e| format!("{}: {e}", cmdline.display()))?;
    let from_image = std::fs::read_to_string("/etc/drone/hostname")
        .ok()
        .map(|s| s.trim().to_string());
    let hostname = match &cfg {
        NetConfig::Static { hostname, .. } | NetConfig::Dhcp { hostname, .. } => hostname.clone(),
        NetConfig::Off => None,
    }
    .or(from_image)
    .unwrap_or_else(|| "drone".into());
    nix::unistd::sethostname(&hostname).map_err(|e| format!("sethostname {hostname}: {e}"))?;
    match &cfg {
        NetConfig::Static { .. } => {
            for cmd in netcfg::static_commands(&cfg) {
                run_ip(&cmd)?;
            }
        }
        NetConfig::Dhcp { device, .. } => {
            run_ip(&["link".into(), "set".into(), "lo".into(), "up".into()])?;
            let status = Command::new("udhcpc")
                .args([
                    "-i",
                    device,
                    "-s",
                    "/etc/drone/udhcpc",
                    "-t",
                    "5",
                    "-T",
                    "2",
                    "-b",
                ])
                .args([
                    "-p",
                    "/run/udhcpc.pid",
                    "-x",
                    &format!("hostname:{hostname}"),
                ])
                .status()
                .map_err(|e| format!("cannot run udhcpc: {e}"))?;
            if !status.success() {
                return Err(format!("udhcpc on {device}: {status}"));
            }
        }
        NetConfig::Off => warn!("ip=off: network left to the operator"),
    }
    info!(config = %cfg, hostname = %hostname, "network configured");
    Ok(())
}

fn harden_cmd(
    policy: &Path,
    trust: &Path,
    proc_sys: &Path,
    securityfs: &Path,
    lock: bool,
) -> Result<(), Failure> {
    let verified = policy::load_verified(policy, trust, jiff::Timestamp::now())?;
    let writes = if lock {
        if !verified.hardening.lock_modules {
            info!("policy leaves module loading open (hardening.lock_modules = false)");
            return Ok(());
        }
        vec![harden::module_lock(proc_sys)]
    } else {
        let mut writes = harden::plan(&verified.hardening, proc_sys);
        writes.extend(harden::lockdown(verified.hardening.lockdown, securityfs));
        writes
    };
    let failures = harden::apply(&writes);
    if failures.is_empty() {
        info!(applied = writes.len(), "hardening applied");
        Ok(())
    } else {
        Err(format!(
            "hardening: {} of {} not applied: {}",
            failures.len(),
            writes.len(),
            failures.join("; ")
        )
        .into())
    }
}
