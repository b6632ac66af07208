//! drone-boot: what a drone's init runs at boot. `net` configures the LAN from `ip=` on the
//! kernel command line (or DHCP) and sets the host name; `harden` applies the policy's
//! sysctls and lockdown level, or with --lock-modules forbids module loading.
//!
//! Exit codes: the shared set (`policy::exit`), e.g. 1 runtime failure, 2 usage, 4 bad
//! signature.

use std::path::Path;
use std::process::{Command, ExitCode};

use clap::Parser;
use drone_boot::cli::{Args, Cmd};
use drone_boot::harden;
use drone_boot::netcfg::{self, NetConfig};
use policy::exit::Failure;
use tracing::{info, warn};

fn main() -> ExitCode {
    let args = Args::parse();
    logsetup::init("DRONE_LOG", false);
    let result = match args.command {
        Cmd::Net { cmdline } => net(&cmdline),
        Cmd::Harden {
            policy,
            trust,
            proc_sys,
            securityfs,
            lock_modules,
        } => harden_cmd(&policy, &trust, &proc_sys, &securityfs, lock_modules),
    };
    policy::exit::finish("drone-boot", result)
}

fn run_ip(args: &[String]) -> Result<(), Failure> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Failure::from(format!("cannot run ip: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Failure::from(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn net(cmdline: &Path) -> Result<(), Failure> {
    let text = std::fs::read_to_string(cmdline)
        .map_err(|e| Failure::from(format!("{}: {e}", cmdline.display())))?;
    let cfg = netcfg::parse_cmdline(&text)
        .map_err(|e| Failure::from(format!("{}: {e}", cmdline.display())))?;
    let from_image = std::fs::read_to_string("/etc/drone/hostname")
        .ok()
        .map(|s| s.trim().to_string());
    let hostname = match &cfg {
        NetConfig::Static { hostname, .. } | NetConfig::Dhcp { hostname, .. } => hostname.clone(),
        NetConfig::Off => None,
    }
    .or(from_image)
    .unwrap_or_else(|| "drone".into());
    nix::unistd::sethostname(&hostname)
        .map_err(|e| Failure::from(format!("sethostname {hostname}: {e}")))?;
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
                .map_err(|e| Failure::from(format!("cannot run udhcpc: {e}")))?;
            if !status.success() {
                return Err(Failure::from(format!("udhcpc on {device}: {status}")));
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
