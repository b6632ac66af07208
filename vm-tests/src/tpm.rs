//! A software TPM per VM (issue 29): swtpm serving qemu's TPM device on a control socket,
//! its state kept in a directory so that a reboot of the VM (or a new qemu on the same
//! state) is the same TPM, and the attestation key that state makes, read before qemu
//! starts. Stopped by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One swtpm process.
#[derive(Debug)]
pub struct Swtpm {
    pub state: PathBuf,
    /// qemu's `-chardev socket,path=` (control channel) or, with `server`, the raw command
    /// socket tyd's shell speaks to.
    pub socket: PathBuf,
    child: Child,
}

fn spawn(state: &Path, args: &[String]) -> Result<Child, String> {
    std::fs::create_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
    let log = std::fs::File::create(state.join("swtpm.log"))
        .map_err(|e| format!("{}: {e}", state.display()))?;
    Command::new("swtpm")
        .arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start swtpm: {e}"))
}

fn wait_for(path: &Path) -> Result<(), String> {
    for _ in 0..300 {
        if path.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("swtpm made no socket at {}", path.display()))
}

impl Swtpm {
    /// The TPM of one VM: qemu connects to `socket` (`vm::Uefi::tpm`).
    pub fn for_qemu(state: &Path) -> Result<Self, String> {
        let socket = state.join("qemu.sock");
        let _ = std::fs::remove_file(&socket);
        let child = spawn(
            state,
            &[
                "--ctrl".into(),
                format!("type=unixio,path={}", socket.display()),
            ],
        )?;
        let me = Self {
            state: state.to_path_buf(),
            socket,
            child,
        };
        wait_for(&me.socket)?;
        Ok(me)
    }

    /// The attestation key the TPM with this state makes (the same at every boot): swtpm
    /// serves raw commands for a moment, tyd's own shell asks, swtpm stops.
    pub fn attestation_key(state: &Path) -> Result<String, String> {
        let socket = state.join("raw.sock");
        let _ = std::fs::remove_file(&socket);
        let child = spawn(
            state,
            &[
                "--server".into(),
                format!("type=unixio,path={}", socket.display()),
                "--ctrl".into(),
                format!("type=unixio,path={}", state.join("raw-ctrl.sock").display()),
                "--flags".into(),
                "not-need-init,startup-clear".into(),
            ],
        )?;
        let mut me = Self {
            state: state.to_path_buf(),
            socket,
            child,
        };
        wait_for(&me.socket)?;
        let key = attest::tpm::Tpm::open(&me.socket, Duration::from_secs(10))
            .and_then(|mut t| t.attestation_key())
            .map(|k| k.to_string())
            .map_err(|e| format!("reading the attestation key: {e}"));
        me.stop();
        key
    }

    /// Stops it now: the TPM is gone from under its VM.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}
