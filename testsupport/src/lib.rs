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
