//! The operator's workflow through the real `tyd` binary: exit codes and messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }
    fn p(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn tyd(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tyd"))
            .args(args)
            .current_dir(self.0.path())
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.tyd(args);
        assert!(
            out.status.success(),
            "tyd {args:?} failed: {}",
            stderr(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.tyd(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "tyd {args:?}: {}",
            stderr(&out)
        );
        stderr(&out)
    }
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.p(name)).unwrap()
    }
    /// Operator key, policy with three drones, signed.
    fn cluster(&self) {
        self.ok(&["keygen", "operator", "--out", "op.key"]);
        self.ok(&["policy", "init", "--name", "lab"]);
        for i in 1..=3 {
            let key = format!("n{i}.key");
            self.ok(&["keygen", "node", "--out", &key]);
            self.ok(&[
                "node",
                "add",
                "cluster.toml",
                "--id",
                &i.to_string(),
                "--name",
                &format!("drone{i}"),
                "--public-key-file",
                &format!("{key}.pub"),
                "--endpoint",
                &format!("192.168.50.{i}:51820"),
            ]);
        }
        self.ok(&["policy", "sign", "cluster.toml", "--key", "op.key"]);
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_writes_private_keys_and_never_overwrites() {
    let d = Dir::new();
    let public = d.ok(&["keygen", "operator", "--out", "op.key"]);
    assert_eq!(mode(&d.p("op.key")), 0o600);
    assert_eq!(d.read("op.key.pub"), public);
    let err = d.fails(&["keygen", "operator", "--out", "op.key"], 5);
    assert_eq!(err, "tyd: op.key: already exists, refusing to overwrite\n");
    let node_pub = d.ok(&["keygen", "node", "--out", "n.key"]);
    assert_eq!(mode(&d.p("n.key")), 0o600);
    assert_eq!(node_pub.trim().len(), 44);
    assert_eq!(d.read("n.key.pub"), node_pub);
}

#[test]
fn sign_verify_and_showmap() {
    let d = Dir::new();
    d.cluster();
    let out = d.ok(&["policy", "verify", "cluster.toml", "--trust", "op.key.pub"]);
    assert!(
        out.starts_with("cluster.toml: verified (cluster lab, serial 4, 3 nodes"),
        "{out}"
    );
    let map = d.ok(&["showmap", "cluster.toml", "--trust", "op.key.pub"]);
    assert_eq!(map, "1 10.77.0.1 3\n");
    let json = d.ok(&[
        "policy",
        "verify",
        "cluster.toml",
        "--trust",
        "op.key.pub",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["serial"], 4);
    assert_eq!(v["nodes"], 3);
}

#[test]
fn node_edits_keep_comments_and_bump_the_serial() {
    let d = Dir::new();
    d.cluster();
    let before = d.read("cluster.toml");
    assert!(before.contains("# Raised on every change"));
    d.ok(&["node", "remove", "cluster.toml", "drone2"]);
    let after = d.read("cluster.toml");
    assert!(after.contains("# Raised on every change"));
    assert!(after.contains("serial = 5"));
    assert!(!after.contains("drone2"));
    // The edit invalidated the signature: nodes would refuse it until re-signed.
    let err = d.fails(
        &["policy", "verify", "cluster.toml", "--trust", "op.key.pub"],
        4,
    );
    assert!(err.contains("signature does not match"), "{err}");
    d.ok(&["policy", "sign", "cluster.toml", "--key", "op.key"]);
    d.ok(&["keygen", "node", "--out", "new.key"]);
    let new_pub = d.read("new.key.pub");
    d.ok(&[
        "node",
        "rotate-key",
        "cluster.toml",
        "3",
        "--public-key",
        new_pub.trim(),
    ]);
    assert!(d.read("cluster.toml").contains(new_pub.trim()));
    assert!(d.read("cluster.toml").contains("serial = 6"));
}

#[test]
fn an_edit_that_would_be_invalid_changes_nothing() {
    let d = Dir::new();
    d.cluster();
    let before = d.read("cluster.toml");
    let pub1 = d.read("n1.key.pub");
    let err = d.fails(
        &[
            "node",
            "add",
            "cluster.toml",
            "--id",
            "2",
            "--name",
            "x",
            "--public-key",
            pub1.trim(),
        ],
        3,
    );
    assert!(err.contains("duplicate node id 2"), "{err}");
    assert!(err.contains("duplicate public key"), "{err}");
    assert_eq!(d.read("cluster.toml"), before);
    let err = d.fails(&["node", "remove", "cluster.toml", "drone9"], 1);
    assert_eq!(err, "tyd: no node \"drone9\" in the policy\n");
}

#[test]
fn sign_refuses_an_old_serial_unless_bumped() {
    let d = Dir::new();
    d.cluster();
    let text = d.read("cluster.toml").replace("serial = 4", "serial = 2");
    std::fs::write(d.p("cluster.toml"), text).unwrap();
    let err = d.fails(&["policy", "sign", "cluster.toml", "--key", "op.key"], 5);
    assert_eq!(
        err,
        "tyd: cluster.toml: serial 2 is not greater than serial 4 already signed for cluster \"lab\"; raise it or pass --bump\n"
    );
    d.ok(&[
        "policy",
        "sign",
        "cluster.toml",
        "--key",
        "op.key",
        "--bump",
    ]);
    assert!(d.read("cluster.toml").contains("serial = 5"));
    d.ok(&["policy", "verify", "cluster.toml", "--trust", "op.key.pub"]);
    // Re-signing identical content is harmless and allowed.
    d.ok(&["policy", "sign", "cluster.toml", "--key", "op.key"]);
}

#[test]
fn refusals_have_one_line_and_their_exit_code() {
    let d = Dir::new();
    d.cluster();
    std::fs::remove_file(d.p("cluster.toml.sig")).unwrap();
    let err = d.fails(
        &["policy", "verify", "cluster.toml", "--trust", "op.key.pub"],
        4,
    );
    assert!(err.starts_with("tyd: cluster.toml.sig: "), "{err}");
    assert!(
        err.trim_end().ends_with("(the policy is not signed)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);

    std::fs::set_permissions(d.p("op.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = d.fails(&["policy", "sign", "cluster.toml", "--key", "op.key"], 6);
    assert_eq!(
        err,
        "tyd: op.key: secret key file is readable by group or others (mode 644); chmod 600 it\n"
    );

    let bad = d.read("cluster.toml").replace("serial = 4", "serial = 0");
    std::fs::write(d.p("cluster.toml"), bad).unwrap();
    let err = d.fails(&["policy", "check", "cluster.toml"], 3);
    assert_eq!(
        err,
        "tyd: cluster.toml:7:10: cluster.serial: serial must be greater than 0\n"
    );
    let out = d.tyd(&["policy", "check", "cluster.toml", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["field"], "cluster.serial");
    assert_eq!(v["errors"][0]["line"], 7);

    let err = d.fails(&["policy", "check", "missing.toml"], 1);
    assert!(err.starts_with("tyd: missing.toml: "), "{err}");
}

#[test]
fn expired_policy_is_refused() {
    let d = Dir::new();
    d.ok(&["policy", "init", "--name", "old", "--valid-for", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let err = d.fails(&["policy", "check", "cluster.toml"], 3);
    assert!(err.contains("cluster.expires: policy expired at"), "{err}");
}

#[test]
fn init_from_an_openmosix_map() {
    let d = Dir::new();
    std::fs::write(
        d.p("openmosix.map"),
        "# lab\n1 192.168.1.10 3\n7 192.168.1.40 1\n",
    )
    .unwrap();
    let out = d.ok(&[
        "policy",
        "init",
        "--name",
        "lab",
        "--from-map",
        "openmosix.map",
        "--keys-dir",
        "keys",
    ]);
    assert!(out.starts_with("wrote cluster.toml with 4 nodes"), "{out}");
    assert_eq!(mode(&d.p("keys/node7.key")), 0o600);
    let text = d.read("cluster.toml");
    assert!(text.contains("endpoint = \"192.168.1.40:51820\""));
    assert!(text.contains(d.read("keys/node7.key.pub").trim()));
    // The exported map speaks tunnel addresses: openMosix then talks through the tunnels.
    assert_eq!(
        d.ok(&["showmap", "cluster.toml"]),
        "1 10.77.0.1 3\n7 10.77.0.7 1\n"
    );
}

#[test]
fn every_subcommand_has_help() {
    let d = Dir::new();
    for args in [
        &["--help"][..],
        &["keygen", "operator", "--help"],
        &["keygen", "node", "--help"],
        &["policy", "init", "--help"],
        &["policy", "check", "--help"],
        &["policy", "sign", "--help"],
        &["policy", "verify", "--help"],
        &["policy", "show", "--help"],
        &["node", "add", "--help"],
        &["node", "remove", "--help"],
        &["node", "rotate-key", "--help"],
        &["showmap", "--help"],
    ] {
        let out = d.ok(args);
        assert!(out.contains("Exit codes:"), "{args:?}: {out}");
    }
}
