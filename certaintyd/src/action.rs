//! What happens when integrity is lost: reboot, power off, run a hook then reboot, or log.
//!
//! Every path that could end in a reboot is refused at startup unless both the monitored root
//! and the system root are RAM filesystems (or the operator forces it): a disk root changes all
//! the time, and nobody should be able to reboot their own workstation by accident.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use policy::Action;
use tokio::io::AsyncWriteExt;
use tracing::{error, info, warn};

use crate::verdict::Report;

/// statfs magic numbers of filesystems that live in RAM.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

pub fn is_ram_magic(magic: i64) -> bool {
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

pub fn is_ram_fs(path: &Path) -> nix::Result<bool> {
    let st = nix::sys::statfs::statfs(path)?;
    Ok(is_ram_magic(st.filesystem_type().0 as i64))
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(
        "action {action} can reboot, but {} is not a RAM filesystem (tmpfs, ramfs, rootfs); use --dry-run, action alert, or --force-disk-root",
        path.display()
    )]
    NotRam { action: Action, path: PathBuf },
    #[error("{}: cannot check filesystem type: {source}", path.display())]
    Statfs { path: PathBuf, source: nix::Error },
    #[error("action exec needs an exec hook")]
    NoHook,
}

/// Refuses, at startup, an action that could reboot a machine that is not a RAM-root drone.
pub fn check_allowed(
    action: Action,
    root: &Path,
    dry_run: bool,
    force_disk_root: bool,
) -> Result<(), ActionError> {
    if dry_run || force_disk_root || action == Action::Alert {
        return Ok(());
    }
    for path in [root, Path::new("/")] {
        let ram = is_ram_fs(path).map_err(|source| ActionError::Statfs {
            path: path.to_path_buf(),
            source,
        })?;
        if !ram {
            return Err(ActionError::NotRam {
                action,
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// What `perform` did; it returns only when the node is not going down for real.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Dry run: the action was logged, not performed. The daemon exits.
    DryRun,
    /// `alert`: logged only; the daemon keeps watching.
    Alerted,
    /// reboot(2) failed; the daemon exits non-zero (the watchdog, if armed, finishes the job).
    PowerFailed,
}

/// The exec hook, opened when certaintyd starts: what runs at a violation is that file,
/// through its descriptor, whatever its path names by then (a hook replaced on disk, or a
/// path rewritten in certaintyd's memory, runs nothing else).
#[derive(Debug, Clone)]
pub struct Hook {
    /// For the log only.
    pub path: PathBuf,
    file: Arc<OwnedFd>,
}

impl Hook {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Arc::new(file.into()),
        })
    }

    /// A command that executes the opened file: `/proc/self/fd/N`, with N left open in the
    /// child (a `#!` script's interpreter opens it again by that name).
    fn command(&self) -> tokio::process::Command {
        let fd = self.file.as_raw_fd();
        let mut cmd = tokio::process::Command::new(format!("/proc/self/fd/{fd}"));
        // SAFETY: between fork and exec only fcntl(2), which is async-signal-safe, runs; it
        // touches no memory of the parent's.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

#[derive(Debug, Clone)]
pub struct Actuator {
    pub action: Action,
    pub exec: Option<Hook>,
    pub exec_deadline: Duration,
    pub dry_run: bool,
    /// This node's TPM: the ratchet PCR is extended there before any action (issue 29).
    pub ratchet: Option<Ratchet>,
}

/// The one-way "integrity lost" flag in this node's TPM (PCR 15): extended once, before any
/// action, so that until it reboots this node cannot quote a clean PCR 15 to its peers,
/// whatever it runs afterwards.
#[derive(Debug, Clone)]
pub struct Ratchet {
    pub tpm: PathBuf,
    set: Arc<std::sync::atomic::AtomicBool>,
}

/// How long setting the ratchet may take before the action goes ahead without it.
pub const RATCHET_DEADLINE: Duration = Duration::from_secs(3);

impl Ratchet {
    pub fn new(tpm: PathBuf) -> Self {
        Self {
            tpm,
            set: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Extends PCR 15 once per process (a second extend would only make the quote say "not
    /// pinned" instead of "integrity lost"). A TPM that fails or does not answer within
    /// [`RATCHET_DEADLINE`] is logged, and the action goes ahead: its quotes then fail too,
    /// and peers quarantine this node either way.
    pub async fn set(&self) {
        use std::sync::atomic::Ordering;
        if self.set.swap(true, Ordering::SeqCst) {
            return;
        }
        let tpm = self.tpm.clone();
        let job = tokio::task::spawn_blocking(move || {
            attest::tpm::Tpm::open(&tpm, RATCHET_DEADLINE).and_then(|mut t| t.extend_ratchet())
        });
        match tokio::time::timeout(RATCHET_DEADLINE, job).await {
            Ok(Ok(Ok(()))) => {
                info!(tpm = %self.tpm.display(), pcr = attest::RATCHET_PCR, "integrity-lost ratchet set in the TPM: until a reboot this node cannot attest to its peers")
            }
            Ok(Ok(Err(e))) => {
                error!(tpm = %self.tpm.display(), reason = %e, "cannot set the integrity-lost ratchet in the TPM; going ahead with the action")
            }
            Ok(Err(e)) => {
                error!(reason = %e, "the ratchet's thread failed; going ahead with the action")
            }
            Err(_) => error!(
                tpm = %self.tpm.display(),
                deadline_s = RATCHET_DEADLINE.as_secs(),
                "the TPM did not set the ratchet in time; going ahead with the action"
            ),
        }
    }
}

impl Actuator {
    pub async fn perform(&self, report: &Report) -> Outcome {
        if let Some(r) = &self.ratchet {
            r.set().await;
        }
        match self.action {
            Action::Alert => Outcome::Alerted,
            Action::Reboot => self.power(nix::sys::reboot::RebootMode::RB_AUTOBOOT),
            Action::Poweroff => self.power(nix::sys::reboot::RebootMode::RB_POWER_OFF),
            Action::Exec => {
                self.run_hook(report).await;
                self.power(nix::sys::reboot::RebootMode::RB_AUTOBOOT)
            }
        }
    }

    /// Runs the hook with the report as JSON on stdin, and waits for it up to the deadline.
    async fn run_hook(&self, report: &Report) {
        let Some(hook) = &self.exec else {
            error!("exec action without a hook; going straight to reboot");
            return;
        };
        let json = serde_json::to_vec(report).unwrap_or_default();
        let child = hook
            .command()
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                error!(hook = %hook.path.display(), cause = %e, "cannot start exec hook");
                return;
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&json).await;
            drop(stdin);
        }
        match tokio::time::timeout(self.exec_deadline, child.wait()).await {
            Ok(Ok(status)) => info!(hook = %hook.path.display(), %status, "exec hook finished"),
            Ok(Err(e)) => error!(hook = %hook.path.display(), cause = %e, "exec hook failed"),
            Err(_) => {
                warn!(hook = %hook.path.display(), deadline = %policy::model::duration::format(&self.exec_deadline), "exec hook overran its deadline; killing it");
                let _ = child.kill().await;
            }
        }
    }

    fn power(&self, mode: nix::sys::reboot::RebootMode) -> Outcome {
        if self.dry_run {
            let what = match mode {
                nix::sys::reboot::RebootMode::RB_POWER_OFF => "poweroff",
                _ => "reboot",
            };
            warn!(action = what, "dry run: not rebooting");
            return Outcome::DryRun;
        }
        nix::unistd::sync();
        match nix::sys::reboot::reboot(mode) {
            Ok(never) => match never {},
            Err(e) => {
                error!(cause = %e, "reboot(2) failed");
                Outcome::PowerFailed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_magics() {
        assert!(is_ram_magic(0x0102_1994));
        assert!(is_ram_magic(0x8584_58f6));
        assert!(!is_ram_magic(0xEF53)); // ext4
    }

    #[test]
    fn reboot_on_a_disk_root_is_refused() {
        // The test machine's root is never a RAM filesystem in CI; if it is, there is
        // nothing to check here.
        if is_ram_fs(Path::new("/")).unwrap_or(true) {
            eprintln!("SKIP reboot_on_a_disk_root_is_refused: / is a RAM filesystem here");
            return;
        }
        let err = check_allowed(Action::Reboot, Path::new("/"), false, false).unwrap_err();
        assert!(err.to_string().contains("is not a RAM filesystem"), "{err}");
        assert!(check_allowed(Action::Exec, Path::new("/"), false, false).is_err());
        assert!(check_allowed(Action::Poweroff, Path::new("/"), false, false).is_err());
        assert!(check_allowed(Action::Reboot, Path::new("/"), true, false).is_ok());
        assert!(check_allowed(Action::Alert, Path::new("/"), false, false).is_ok());
    }
}
