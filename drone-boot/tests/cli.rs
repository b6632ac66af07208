//! drone-boot at its edge: the shared exit codes, one line naming what and where.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BOOT: &str = env!("CARGO_BIN_EXE_drone-boot");

#[test]
fn a_tampered_policy_or_a_bad_command_line_is_one_line_with_the_shared_code() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let operator = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let text = policy::template::init_template("lab", expires);
    std::fs::write(
        p("cluster.toml.sig"),
        policy::sign(text.as_bytes(), &operator),
    )
    .unwrap();
    std::fs::write(p("cluster.toml"), format!("{text}\n# tampered\n")).unwrap();
    std::fs::write(
        p("operator.pub"),
        format!(
            "{}\n",
            policy::OperatorPublicKey::from(&operator).to_base64()
        ),
    )
    .unwrap();
    let out = Command::new(BOOT)
        .args(["harden", "--policy"])
        .arg(p("cluster.toml"))
        .arg("--trust")
        .arg(p("operator.pub"))
        .arg("--proc-sys")
        .arg(p("proc-sys"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cluster.toml"), "{err}");

    std::fs::write(p("cmdline"), "console=ttyS0 ip=300.1.1.1::::x:eth0:off\n").unwrap();
    let out = Command::new(BOOT)
        .args(["net", "--cmdline"])
        .arg(p("cmdline"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cmdline"), "{err}");
}
