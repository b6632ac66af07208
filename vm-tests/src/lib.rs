//! A harness that boots drone images under `qemu-system-x86_64 -accel tcg`, each VM on a tap
//! device attached to a bridge inside a network namespace made for the test (no traffic
//! leaves the machine), reads each VM's serial console and log port, and types into the
//! console.
//!
//! Every wait is bounded; a VM dropped while its test panics prints its console and log.

pub mod cluster;
pub mod lab;
pub mod master;
pub mod tpm;
pub mod vm;

use std::path::{Path, PathBuf};

/// The workspace root (this crate lives one level below it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (a relative one is taken from the
/// workspace, where the release build below runs), else `target/` in the workspace. The
/// binaries the images carry are built there.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace().join(dir),
        _ => workspace().join("target"),
    }
}

/// Where tests keep images, consoles and logs (kept after the run for inspection).
pub fn scratch() -> PathBuf {
    target_dir().join("vm-tests")
}

/// Whether VM tests can run here. Outside CI a missing qemu or root skips with a message;
/// in CI (`CI` set) it is a failure, so a broken runner never passes silently.
pub fn can_run(test: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces, tap devices)");
    }
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        missing.push("qemu-system-x86_64 (scripts/install-deps.sh installs it)");
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun");
    }
    if test == "pxe" {
        for (path, what) in [
            ("/usr/sbin/dnsmasq", "dnsmasq (dnsmasq-base)"),
            ("/usr/lib/ipxe/undionly.kpxe", "iPXE (ipxe)"),
            (
                "/usr/lib/ipxe/qemu/pxe-virtio.rom",
                "qemu's boot ROMs (ipxe-qemu)",
            ),
        ] {
            if !Path::new(path).exists() {
                missing.push(what);
            }
        }
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI must run the VM tests, but this machine lacks: {}",
        missing.join(", ")
    );
    eprintln!("SKIP {test}: needs {}", missing.join(", "));
    false
}
