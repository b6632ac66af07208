//! Helpers the test suites share (a dev-dependency only; never in a program).

use std::process::{Command, Stdio};

/// Whether `test` may run here: as root, with each of `programs` on the PATH. Otherwise it
/// says SKIP on stderr and returns false, unless CI is set: CI has all of it, so a missing
/// one there is a failure, not a skip.
pub fn root_or_skip(test: &str, programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !on_path(p)).collect();
    if nix::unistd::geteuid().is_root() && missing.is_empty() {
        return true;
    }
    let needs = if programs.is_empty() {
        "root".to_string()
    } else {
        format!("root and {}", programs.join(", "))
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs {needs}, and CI has them (scripts/install-deps.sh)"
    );
    eprintln!("SKIP {test}: needs {needs} (scripts/install-deps.sh)");
    false
}

/// Whether `program` is on the PATH.
pub fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `test` may run here: each of `programs` on the PATH (no root needed). Otherwise
/// SKIP on stderr, or a failure under CI (as [`root_or_skip`]).
pub fn tools_or_skip(test: &str, programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !on_path(p)).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs {}, and CI has them (scripts/install-deps.sh)",
        missing.join(", ")
    );
    eprintln!(
        "SKIP {test}: needs {} (scripts/install-deps.sh)",
        missing.join(", ")
    );
    false
}

/// A software TPM (swtpm) on a Unix socket, for tyd's shell ([`Swtpm::start`]) or a qemu
/// VM ([`Swtpm::for_qemu`]); stopped by its PID when dropped. Its state lives in `dir`, so
/// a second `Swtpm` on the same `dir` is the same TPM after a reboot (PCRs reset, same
/// keys).
#[derive(Debug)]
pub struct Swtpm {
    pub socket: std::path::PathBuf,
    child: std::process::Child,
}

impl Swtpm {
    /// Raw TPM 2.0 commands on `dir/tpm.sock`, powered on: what tyd's own shell speaks to.
    pub fn start(dir: &std::path::Path) -> Self {
        let socket = dir.join("tpm.sock");
        let ctrl = dir.join("ctrl.sock");
        Self::spawn(
            dir,
            socket.clone(),
            &[
                "--server".into(),
                format!("type=unixio,path={}", socket.display()),
                "--ctrl".into(),
                format!("type=unixio,path={}", ctrl.display()),
                "--flags".into(),
                "not-need-init,startup-clear".into(),
            ],
        )
    }

    /// For qemu's `-tpmdev emulator`: the control socket alone, `dir/qemu.sock` (qemu
    /// powers the TPM on, and its firmware starts it).
    pub fn for_qemu(dir: &std::path::Path) -> Self {
        let socket = dir.join("qemu.sock");
        Self::spawn(
            dir,
            socket.clone(),
            &[
                "--ctrl".into(),
                format!("type=unixio,path={}", socket.display()),
            ],
        )
    }

    fn spawn(dir: &std::path::Path, socket: std::path::PathBuf, args: &[String]) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let _ = std::fs::remove_file(&socket);
        let mut child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // It says "Data client disconnected" at each closed connection.
            .stderr(
                std::fs::File::create(dir.join("swtpm.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("swtpm: {e}"));
        for _ in 0..300 {
            if socket.exists() {
                return Self { socket, child };
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("swtpm made no socket at {} within 3 s", socket.display());
    }

    /// Stops it without ending it (SIGSTOP): a TPM that hangs. [`Swtpm::resume`] lets it go
    /// on.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args([which, &pid]).status();
        assert!(
            sent.as_ref().is_ok_and(|s| s.success()),
            "kill {which} {pid}: {sent:?}"
        );
    }

    /// Stops it now (a power cut: the next start on the same state is a fresh boot).
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}
