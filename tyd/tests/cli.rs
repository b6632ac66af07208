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
    /// The key in a key file (its last line; the first is the `# tyd ...` label).
    fn key(&self, name: &str) -> String {
        self.read(name).lines().last().unwrap().to_string()
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
    assert_eq!(
        d.read("op.key.pub"),
        format!("# tyd operator public key\n{public}")
    );
    let err = d.fails(&["keygen", "operator", "--out", "op.key"], 5);
    assert_eq!(err, "tyd: op.key: already exists, refusing to overwrite\n");
    let node_pub = d.ok(&["keygen", "node", "--out", "n.key"]);
    assert_eq!(mode(&d.p("n.key")), 0o600);
    assert_eq!(node_pub.trim().len(), 44);
    assert_eq!(
        d.read("n.key.pub"),
        format!("# tyd node public key\n{node_pub}")
    );
    assert!(d.read("n.key").starts_with("# tyd node secret key\n"));
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
    let new_pub = d.key("new.key.pub");
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
fn sign_shows_what_changed_since_the_last_signing_and_diff_compares_two_files() {
    let d = Dir::new();
    d.cluster();
    std::fs::copy(d.p("cluster.toml"), d.p("before.toml")).unwrap();
    d.ok(&["node", "remove", "cluster.toml", "drone2"]);
    d.ok(&["keygen", "node", "--out", "new.key"]);
    let new_pub = d.key("new.key.pub");
    d.ok(&[
        "node",
        "rotate-key",
        "cluster.toml",
        "3",
        "--public-key",
        new_pub.trim(),
    ]);
    // Not a terminal: shown, then signed.
    let out = d.tyd(&["policy", "sign", "cluster.toml", "--key", "op.key"]);
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("changes since the last policy signed with this key:")
            && err.contains("- node 2 (drone2) removed")
            && err.contains("~ node 3 (drone3): key rotated"),
        "{err}"
    );
    let diff = d.ok(&["policy", "diff", "before.toml", "cluster.toml"]);
    assert!(diff.contains("- node 2 (drone2) removed"), "{diff}");
    assert!(diff.contains("~ node 3 (drone3): key rotated"), "{diff}");
    assert!(diff.lines().any(|l| l.starts_with("~ serial ")), "{diff}");
    // Signing the same again: nothing but the serial.
    let out = d.tyd(&["policy", "sign", "cluster.toml", "--key", "op.key"]);
    assert!(
        stderr(&out).contains("no change but the serial"),
        "{}",
        stderr(&out)
    );
    let err = d.fails(&["policy", "diff", "before.toml", "missing.toml"], 1);
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn an_edit_that_would_be_invalid_changes_nothing() {
    let d = Dir::new();
    d.cluster();
    let before = d.read("cluster.toml");
    let pub1 = d.key("n1.key.pub");
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
        "tyd: cluster.toml: serial 2 of cluster \"lab\" is taken: serial 4 was already signed with this key (op.key.signed.json) with other content, and every node would refuse this; raise it or pass --bump\n"
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

/// Attack (a tired operator, README's edit step): after `tyd init` and joins, joind has
/// signed serials this key's signing log never saw; `--bump` counted from the log, re-signed
/// a taken serial with other content and exited 0, and every daemon refused the file.
/// Steps: a cluster signed at serial 4; the daemons' record (netguard's state) says serial 6
/// was accepted; the file, edited, still says 6: signing refuses (exit 5) and names the
/// record; `--bump` makes it 7; identical bytes at the accepted serial sign as they are; a
/// corrupt record is refused, and the largest serial taken leaves nothing to bump to.
#[test]
fn a_serial_taken_by_init_or_joind_is_never_signed_again_with_other_content() {
    let d = Dir::new();
    d.cluster();
    let state = d.p("accepted.json");
    std::fs::write(
        &state,
        r#"{"cluster":"lab","serial":6,"digest":"00","accepted_at":"2026-12-04T00:00:00Z"}"#,
    )
    .unwrap();
    let text = d.read("cluster.toml").replace("serial = 4", "serial = 6");
    std::fs::write(d.p("cluster.toml"), &text).unwrap();
    let sign = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "sign",
            "cluster.toml",
            "--key",
            "op.key",
            "--state",
            "accepted.json",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let args = sign(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = d.fails(&args, 5);
    assert!(
        err.contains("serial 6 was already accepted by this node's daemons (accepted.json)"),
        "{err}"
    );
    let args = sign(&["--bump"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.ok(&args);
    assert!(out.contains("serial bumped to 7"), "{out}");
    assert!(d.read("cluster.toml").contains("serial = 7"));
    // The very bytes the daemons accepted sign as they are (re-signing is no replay).
    let bytes = std::fs::read(d.p("cluster.toml")).unwrap();
    std::fs::write(
        &state,
        format!(
            r#"{{"cluster":"lab","serial":7,"digest":"{}","accepted_at":"2026-12-04T00:00:00Z"}}"#,
            blake3::hash(&bytes).to_hex()
        ),
    )
    .unwrap();
    let args = sign(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.ok(&args);
    assert!(d.read("cluster.toml").contains("serial = 7"));
    // A record that cannot be read is no licence: refused, with the way out.
    std::fs::write(&state, "{").unwrap();
    let err = d.fails(&args, 1);
    assert!(err.contains("corrupt") && err.contains("--state"), "{err}");
    // The largest serial taken leaves none for --bump: refused, nothing wraps to 0.
    std::fs::write(
        &state,
        r#"{"cluster":"lab","serial":18446744073709551615,"digest":"00","accepted_at":"2026-12-04T00:00:00Z"}"#,
    )
    .unwrap();
    let args = sign(&["--bump"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = d.fails(&args, 5);
    assert!(err.contains("no serial is left"), "{err}");
    assert!(d.read("cluster.toml").contains("serial = 7"));
}

/// Attack (a replayed serial): a policy file validly signed at a serial the daemons already
/// accepted with other content is refused by every daemon, yet `tyd status` verified only
/// the signature and exited 0 with "(firewall installed)".
/// Steps: a signed cluster; netguard's state says its serial was accepted with another
/// digest and no copy in force exists: `tyd status` exits 7 and says "replay refused".
#[test]
fn status_is_unhealthy_when_the_file_replays_a_serial_the_daemons_accepted() {
    let d = Dir::new();
    d.cluster();
    std::fs::write(
        d.p("accepted.json"),
        r#"{"cluster":"lab","serial":4,"digest":"00","accepted_at":"2026-12-04T00:00:00Z"}"#,
    )
    .unwrap();
    let out = d.tyd(&[
        "status",
        "--policy",
        "cluster.toml",
        "--trust",
        "op.key.pub",
        "--state",
        "accepted.json",
        "--interface",
        "nosuchif0",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("replay refused"), "{}", stderr(&out));
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
    let public = d.read("keys/node7.key.pub");
    assert!(text.contains(public.lines().last().unwrap()));
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
        &["policy", "push", "--help"],
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

/// Regression (issue 9 item 4): keys had no type.
/// 1. `tyd node add --public-key-file drone1.key` (the secret, by mistake) was accepted: the
///    private key sat in the policy and in every drone image.
/// 2. `tyd policy sign --key drone1.key` (a WireGuard key) signed without complaint.
///
/// Now each is refused with one line saying what was expected; a bare `wg genkey`-style key
/// still works where the command expects that kind.
#[test]
fn a_key_of_the_wrong_kind_is_refused_with_what_was_expected() {
    let d = Dir::new();
    d.ok(&["keygen", "operator", "--out", "op.key"]);
    d.ok(&["policy", "init", "--name", "lab"]);
    d.ok(&["keygen", "node", "--out", "n1.key"]);
    let add = |file: &str| {
        d.tyd(&[
            "node",
            "add",
            "cluster.toml",
            "--id",
            "1",
            "--name",
            "n1",
            "--public-key-file",
            file,
        ])
    };
    let out = add("n1.key");
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(
        stderr(&out),
        "tyd: n1.key: this is a node secret key, expected a node public key\n"
    );
    assert!(!d.read("cluster.toml").contains("[[node]]"));
    let err = d.fails(&["policy", "sign", "cluster.toml", "--key", "n1.key"], 6);
    assert_eq!(
        err,
        "tyd: n1.key: this is a node secret key, expected an operator secret key\n"
    );
    let err = d.fails(
        &["policy", "sign", "cluster.toml", "--key", "op.key.pub"],
        6,
    );
    assert!(err.contains("op.key.pub: "), "{err}");
    // Trusting a node's public key as an operator key is refused too.
    let err = d.fails(
        &["policy", "verify", "cluster.toml", "--trust", "n1.key.pub"],
        4,
    );
    assert!(
        err.contains("this is a node public key, expected operator public keys"),
        "{err}"
    );
    // A bare public key line (as `wg pubkey` prints it) is still taken.
    let public = d.read("n1.key.pub").lines().last().unwrap().to_string();
    std::fs::write(d.p("bare.pub"), format!("{public}\n")).unwrap();
    assert!(
        add("bare.pub").status.success(),
        "{}",
        stderr(&add("bare.pub"))
    );
    // A directory is not a key file.
    std::fs::create_dir(d.p("keys")).unwrap();
    let err = d.fails(&["policy", "sign", "cluster.toml", "--key", "keys"], 6);
    assert_eq!(
        err,
        "tyd: keys: not a regular file (a key file is expected)\n"
    );
}

/// Regression (issue 9 item 11): bad input gets a clear one-line answer that names what and
/// where, and nothing is left half done.
#[test]
fn bad_input_is_refused_plainly() {
    let d = Dir::new();
    d.ok(&["keygen", "operator", "--out", "op.key"]);
    let err = d.fails(&["policy", "init", "--valid-for", "1y"], 2);
    assert!(err.contains("for a year write 365d"), "{err}");
    assert!(!err.contains("Span") && !err.contains("relative"), "{err}");
    d.ok(&["policy", "init", "--name", "lab"]);
    d.ok(&["keygen", "node", "--out", "n.key"]);
    let add = |extra: &[&str]| {
        let mut args = vec![
            "node",
            "add",
            "cluster.toml",
            "--name",
            "n3",
            "--public-key-file",
            "n.key.pub",
        ];
        args.extend_from_slice(extra);
        d.tyd(&args)
    };
    for id in ["0", "70000", "99999999999999999999"] {
        let out = add(&["--id", id]);
        assert_eq!(out.status.code(), Some(2), "{id}");
        assert!(
            stderr(&out).contains("--id") && stderr(&out).contains("from 1 to 65535"),
            "{}",
            stderr(&out)
        );
    }
    let out = add(&["--id", "3", "--endpoint", "drone3.lan:51820"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("an IP address and a port"),
        "{}",
        stderr(&out)
    );

    // "3" is node 3's id and node 5's name: nothing is guessed.
    assert!(add(&["--id", "3"]).status.success());
    d.ok(&["keygen", "node", "--out", "m.key"]);
    d.ok(&[
        "node",
        "add",
        "cluster.toml",
        "--id",
        "5",
        "--name",
        "3",
        "--public-key-file",
        "m.key.pub",
    ]);
    let err = d.fails(&["node", "remove", "cluster.toml", "3"], 2);
    assert!(err.contains("say id:3 or name:3"), "{err}");
    d.ok(&["node", "remove", "cluster.toml", "name:3"]);
    assert!(d.read("cluster.toml").contains("name = \"n3\""));

    // A huge value is not echoed back whole, and a huge file is not read.
    let big = d.read("cluster.toml").replace(
        "name = \"lab\"",
        &format!("name = \"{}\"", "x".repeat(100_000)),
    );
    std::fs::write(d.p("big.toml"), big).unwrap();
    let err = d.fails(&["policy", "check", "big.toml"], 3);
    assert!(err.len() < 400, "{} bytes", err.len());
    assert!(err.contains("(100000 bytes)"), "{err}");
    let f = std::fs::File::create(d.p("huge.toml")).unwrap();
    f.set_len(17 << 20).unwrap();
    std::fs::write(d.p("huge.toml.sig"), "x").unwrap();
    let err = d.fails(
        &["policy", "verify", "huge.toml", "--trust", "op.key.pub"],
        3,
    );
    assert!(
        err.contains("more than the 16777216 bytes allowed"),
        "{err}"
    );
}

/// Regression (issue 9 item 11): a failed `policy init --from-map` left a node-less
/// cluster.toml and keys behind, so a retry failed even with --force. Now it is all or
/// nothing, and showmap refuses to leave nodes out silently.
#[test]
fn a_failed_import_leaves_nothing_and_showmap_never_drops_nodes_silently() {
    let d = Dir::new();
    // Node 7's key file exists already: the import must fail at node 7, after node 1's keys.
    std::fs::create_dir(d.p("keys")).unwrap();
    std::fs::write(d.p("keys/node7.key"), "taken").unwrap();
    std::fs::write(d.p("openmosix.map"), "1 192.168.1.10 1\n7 192.168.1.40 1\n").unwrap();
    let init = [
        "policy",
        "init",
        "--name",
        "lab",
        "--from-map",
        "openmosix.map",
        "--keys-dir",
        "keys",
    ];
    let err = d.fails(&init, 5);
    assert!(err.contains("node7.key: already exists"), "{err}");
    assert!(!d.p("cluster.toml").exists());
    let mut left: Vec<String> = std::fs::read_dir(d.p("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["node7.key"]);
    assert_eq!(
        std::fs::read_dir(d.p(".")).unwrap().count(),
        2,
        "scratch files left"
    );
    std::fs::remove_file(d.p("keys/node7.key")).unwrap();
    d.ok(&init);

    // 300 nodes in a /24: ids 255 and up have no IPv4 tunnel address.
    let map: String = (1..=300)
        .map(|i| format!("{i} 192.168.{}.{} 1\n", i / 200, i % 200 + 1))
        .collect();
    let e = Dir::new();
    std::fs::write(e.p("big.map"), map).unwrap();
    e.ok(&[
        "policy",
        "init",
        "--name",
        "big",
        "--from-map",
        "big.map",
        "--keys-dir",
        "k",
    ]);
    let err = e.fails(&["showmap", "cluster.toml"], 5);
    assert!(
        err.contains("46 node(s) have no IPv4 tunnel address"),
        "{err}"
    );
    let out = e.tyd(&["showmap", "cluster.toml", "--partial"]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("warning: 46 node(s)"),
        "{}",
        stderr(&out)
    );
}

/// Regression (issue 9 item 9): `tyd status | head` panicked with a backtrace (broken pipe),
/// and `tyd status` exited 0 with the firewall missing. Here (no netguard, no table in this
/// namespace, or no nft at all) the firewall is missing: exit 7, and a closed pipe ends tyd
/// quietly.
#[test]
fn status_exits_unhealthy_without_a_firewall_and_a_closed_pipe_is_no_panic() {
    let d = Dir::new();
    d.cluster();
    let out = d.tyd(&[
        "status",
        "--policy",
        "cluster.toml",
        "--trust",
        "op.key.pub",
        "--state",
        "accepted.json",
        "--interface",
        "nosuchif0",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("firewall table inet netguard is missing"),
        "{}",
        stderr(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(firewall MISSING)"), "{stdout}");
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} status --policy cluster.toml --trust op.key.pub --state accepted.json \
             --interface nosuchif0 --json | head -c 1",
            env!("CARGO_BIN_EXE_tyd")
        ))
        .current_dir(d.p("."))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// `tyd policy push` puts a verified, newer policy in place on a member (clusterd then carries
/// it to the others); anything unverified or not newer is refused and nothing is written.
#[test]
fn push_places_only_a_verified_newer_policy() {
    let d = Dir::new();
    d.cluster();
    std::fs::create_dir(d.p("member")).unwrap();
    let to = d.p("member/cluster.toml").display().to_string();
    let push = |file: &str| d.tyd(&["policy", "push", file, "--trust", "op.key.pub", "--to", &to]);
    assert!(push("cluster.toml").status.success());
    assert_eq!(d.read("member/cluster.toml"), d.read("cluster.toml"));
    assert_eq!(
        d.read("member/cluster.toml.sig"),
        d.read("cluster.toml.sig")
    );
    // The same serial again: refused, exit 5.
    let out = push("cluster.toml");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not newer than serial"),
        "{}",
        stderr(&out)
    );
    // Changed after signing: refused, exit 4, the member's copy untouched.
    let before = d.read("member/cluster.toml");
    let mut text = d.read("cluster.toml");
    text.push_str("\n# edited after signing\n");
    std::fs::write(d.p("cluster.toml"), text).unwrap();
    let out = push("cluster.toml");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(d.read("member/cluster.toml"), before);
    // A directory as the target (a typo): refused, nothing written beside it.
    let out = d.tyd(&[
        "policy",
        "push",
        "cluster.toml",
        "--trust",
        "op.key.pub",
        "--to",
        "member/",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a directory; name the policy file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(d.p("member")).unwrap().count(), 2);
    // Re-signed with a new serial: placed.
    d.ok(&[
        "policy",
        "sign",
        "cluster.toml",
        "--key",
        "op.key",
        "--bump",
    ]);
    assert!(push("cluster.toml").status.success());
    assert_eq!(d.read("member/cluster.toml"), d.read("cluster.toml"));
}

#[test]
fn tokens_are_shown_once_kept_hashed_listed_and_revoked() {
    let d = Dir::new();
    d.ok(&["keygen", "operator", "--out", "op.key"]);
    let out = d.tyd(&[
        "token",
        "create",
        "--tokens",
        "t.json",
        "--trust",
        "op.key.pub",
        "--uses",
        "3",
        "--expires",
        "2h",
        "--member",
        "198.18.0.1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_string();
    let (id, secret) = token.split_once('.').unwrap();
    assert_eq!((id.len(), secret.len()), (6, 16), "{token}");
    // The join command to hand out: member, token, operator fingerprint.
    assert!(
        stderr(&out).contains(&format!(
            "tyd join 198.18.0.1 --token {token} --operator blake3:"
        )),
        "{}",
        stderr(&out)
    );
    let store = std::fs::read_to_string(d.p("t.json")).unwrap();
    assert!(!store.contains(secret), "the secret is kept: {store}");
    assert_eq!(
        std::fs::metadata(d.p("t.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let list = d.ok(&["token", "list", "--tokens", "t.json"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(id) && l.contains("0/3") && l.ends_with("valid")),
        "{list}"
    );
    d.ok(&["token", "revoke", id, "--tokens", "t.json"]);
    let list = d.ok(&["token", "list", "--tokens", "t.json"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(id) && l.ends_with("revoked")),
        "{list}"
    );
    let e = d.fails(&["token", "revoke", "zzzzzz", "--tokens", "t.json"], 1);
    assert!(e.contains("no token \"zzzzzz\""), "{e}");
    d.fails(
        &[
            "token",
            "create",
            "--tokens",
            "t.json",
            "--trust",
            "op.key.pub",
            "--uses",
            "0",
        ],
        2,
    );
    // A secret key offered as the trusted public key is refused, and nothing is created.
    let e = d.fails(
        &[
            "token", "create", "--tokens", "t2.json", "--trust", "op.key",
        ],
        6,
    );
    assert!(e.contains("op.key"), "{e}");
    assert!(!d.p("t2.json").exists());
}

/// `tyd init` on a disk root (this machine's): the policy asks certaintyd of drones only, and
/// without systemd the daemons are not started: tyd says why and prints their command lines.
#[test]
fn init_on_a_disk_root_requires_certaintyd_of_drones_and_says_why_it_starts_nothing() {
    let d = Dir::new();
    let dir = d.p("etc");
    let tokens = d.p("tokens.json");
    let out = d.ok(&[
        "init",
        "--endpoint",
        "192.0.2.1",
        "--name",
        "m1",
        "--dir",
        dir.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    let fs = nix_free_fs_type();
    let policy = std::fs::read_to_string(dir.join("cluster.toml")).unwrap();
    if fs == "tmpfs" || fs == "ramfs" {
        assert!(policy.contains("\nrequire_certainty = true\n"), "{policy}");
    } else {
        assert!(
            policy.contains("\nrequire_certainty = [\"drone\"]\n"),
            "{policy}"
        );
        assert!(out.contains("runs none"), "{out}");
        assert!(out.contains("--certainty-socket none"), "{out}");
        // Nodes joined with the first token are disk roots like this one: servers, which
        // the policy does not quarantine for running no certaintyd.
        assert!(out.contains("join further nodes as server"), "{out}");
    }
    // The join line comes before anything that can fail in starting the daemons.
    let join_at = out
        .find("  tyd join 192.0.2.1 --token ")
        .expect("join line");
    let start_at = out.find("daemons not started").expect("start line");
    assert!(join_at < start_at, "{out}");
    // Files outside /etc/tyd are not what the units read: nothing is started.
    assert!(
        out.contains(&format!(
            "daemons not started ({} is not where the units read (/etc/tyd))",
            dir.display()
        )),
        "{out}"
    );
    assert!(out.contains("  joind --policy"), "{out}");
    // The signed policy verifies.
    d.ok(&[
        "policy",
        "verify",
        dir.join("cluster.toml").to_str().unwrap(),
        "--trust",
        dir.join("operator.pub").to_str().unwrap(),
    ]);
}

/// The root filesystem's type, as `stat -f` names it.
fn nix_free_fs_type() -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T", "/"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `tyd status --json` carries its schema version and the names `--cluster --json` uses for
/// the same things (cluster, serial, nodes with id, name, this_node). Here no tunnel or table
/// exists, so it also says so and exits 7.
#[test]
fn status_json_has_a_schema_version_and_the_cluster_views_field_names() {
    let d = Dir::new();
    d.cluster();
    let state = d.p("accepted.json");
    let out = d.tyd(&[
        "status",
        "--policy",
        "cluster.toml",
        "--trust",
        "op.key.pub",
        "--interface",
        "tydabsent0",
        "--state",
        state.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["cluster"], "lab");
    assert_eq!(v["serial"], 4);
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for key in ["id", "name", "this_node"] {
        assert!(nodes[0].get(key).is_some(), "nodes[0] has no {key}: {v}");
    }
}

/// `tyd admission`: the operator gives master 1 an admission key (0600, labelled), signs, and
/// the policy names it with its limits; a second key for the same master, a key for a node
/// that is no master, or overlapping ids are refused with a placed line and change nothing;
/// rotate gives a new key; remove takes it away, and with --keep-nodes copies the nodes of
/// the master's membership (checked against the key) into the policy.
#[test]
fn admission_keys_are_added_rotated_and_removed_on_the_operators_copy() {
    let d = Dir::new();
    d.cluster();
    d.ok(&["node", "remove", "cluster.toml", "drone1"]);
    d.ok(&["keygen", "node", "--out", "m1.key"]);
    d.ok(&[
        "node",
        "add",
        "cluster.toml",
        "--id",
        "1",
        "--name",
        "m1",
        "--public-key-file",
        "m1.key.pub",
        "--endpoint",
        "192.168.50.1:51820",
        "--role",
        "master",
    ]);
    let out = d.ok(&[
        "admission",
        "add",
        "cluster.toml",
        "--master",
        "1",
        "--key-out",
        "adm.key",
    ]);
    assert!(out.contains("ids 100-199"), "{out}");
    assert_eq!(mode(&d.p("adm.key")), 0o600);
    assert!(d.read("adm.key").starts_with("# tyd admission secret key"));
    d.ok(&[
        "policy",
        "sign",
        "cluster.toml",
        "--key",
        "op.key",
        "--bump",
        "--yes",
    ]);
    let text = d.read("cluster.toml");
    assert!(
        text.contains("[[admission]]") && text.contains("master = 1"),
        "{text}"
    );
    // The table sits before the nodes: a daemon parses the policy block by block.
    assert!(text.find("[[admission]]").unwrap() < text.find("[[node]]").unwrap());

    let before = d.read("cluster.toml");
    let err = d.fails(
        &[
            "admission",
            "add",
            "cluster.toml",
            "--master",
            "1",
            "--key-out",
            "b.key",
            "--ids",
            "200-210",
            "--network",
            "10.77.0.192/28",
        ],
        3,
    );
    assert!(
        err.contains("master 1 already has an admission key"),
        "{err}"
    );
    let err = d.fails(
        &[
            "admission",
            "add",
            "cluster.toml",
            "--master",
            "2",
            "--key-out",
            "c.key",
            "--ids",
            "150-210",
            "--network",
            "10.77.0.192/28",
        ],
        3,
    );
    assert!(err.contains("node 2 is no master"), "{err}");
    assert!(err.contains("overlap"), "{err}");
    assert_eq!(d.read("cluster.toml"), before);
    assert!(
        !d.p("b.key").exists() && !d.p("c.key").exists(),
        "a key made for a refused edit"
    );

    // A node master 1 admitted, removed by the operator: by its key.
    let err = d.fails(&["node", "remove", "cluster.toml", "d100"], 1);
    assert!(err.contains("tyd admission revoke"), "{err}");
    d.ok(&["keygen", "node", "--out", "gone.key"]);
    let gone = d.key("gone.key.pub");
    d.ok(&[
        "admission",
        "revoke",
        "cluster.toml",
        "--master",
        "1",
        "--public-key",
        gone.trim(),
    ]);
    d.ok(&[
        "admission",
        "revoke",
        "cluster.toml",
        "--master",
        "1",
        "--public-key",
        gone.trim(),
    ]);
    let text = d.read("cluster.toml");
    assert_eq!(text.matches(gone.trim()).count(), 1, "{text}");
    assert!(text.contains("revoked = ["), "{text}");

    let old_key = d.read("cluster.toml");
    d.ok(&[
        "admission",
        "rotate",
        "cluster.toml",
        "--master",
        "1",
        "--key-out",
        "adm2.key",
    ]);
    assert_ne!(d.read("cluster.toml"), old_key);

    // Master 1's membership (as its joind writes it), signed with the new key.
    let seed = d.key("adm2.key");
    let membership = "[membership]\ncluster = \"lab\"\nmaster = 1\nserial = 4\n\n[[node]]\nid = 100\nname = \"d100\"\npublic_key = \"".to_string()
        + d.key("n2.key.pub").trim()
        + "\"\naddresses = [\"10.77.0.129\"]\nroles = [\"drone\"]\n";
    let signing =
        ed25519_dalek::SigningKey::from_bytes(&policy::keys::decode_key32(seed.trim()).unwrap());
    // n2's key is drone2's: the membership collides with the policy and is refused.
    std::fs::write(d.p("membership-1.toml"), &membership).unwrap();
    std::fs::write(
        d.p("membership-1.toml.sig"),
        policy::sign(membership.as_bytes(), &signing),
    )
    .unwrap();
    let err = d.fails(
        &[
            "admission",
            "remove",
            "cluster.toml",
            "--master",
            "1",
            "--keep-nodes",
            "membership-1.toml",
        ],
        5,
    );
    assert!(err.contains("is also node 2's"), "{err}");
    d.ok(&["keygen", "node", "--out", "n9.key"]);
    let membership = membership.replace(d.key("n2.key.pub").trim(), d.key("n9.key.pub").trim());
    std::fs::write(d.p("membership-1.toml"), &membership).unwrap();
    std::fs::write(
        d.p("membership-1.toml.sig"),
        policy::sign(membership.as_bytes(), &signing),
    )
    .unwrap();
    let out = d.ok(&[
        "admission",
        "remove",
        "cluster.toml",
        "--master",
        "1",
        "--keep-nodes",
        "membership-1.toml",
    ]);
    assert!(out.contains("its 1 nodes are the policy's now"), "{out}");
    let text = d.read("cluster.toml");
    assert!(
        !text.contains("[[admission]]") && text.contains("name = \"d100\""),
        "{text}"
    );
}

/// Issue 29 (found by an attack from the docs: reading a TPM's key took a dummy join).
/// Steps: `tyd tpm key` on a swtpm prints the key a join would pin; `tyd policy check`
/// refuses a policy whose drones must attest while one has no key, naming it; pinning the
/// printed key with `tyd node add --attestation-key` passes; `tyd tpm pcrs` prints PCR 4
/// and a zero ratchet; a missing TPM is one line, exit 1 (runtime).
#[test]
fn tpm_key_prints_what_to_pin_and_a_drone_that_must_attest_needs_one() {
    if !testsupport::tools_or_skip("tyd tpm", &["swtpm"]) {
        return;
    }
    let d = Dir::new();
    let sw = testsupport::Swtpm::start(&d.p("tpm"));
    let sock = sw.socket.display().to_string();
    let key = d.ok(&["tpm", "key", "--tpm", &sock]).trim().to_string();
    assert_eq!(key.len(), 88, "{key}");
    let pcrs = d.ok(&["tpm", "pcrs", "--tpm", &sock]);
    assert!(
        pcrs.contains(&format!("pcr15 {}", "0".repeat(64))),
        "{pcrs}"
    );
    d.ok(&["policy", "init", "--name", "lab"]);
    let text = std::fs::read_to_string(d.p("cluster.toml")).unwrap();
    std::fs::write(
        d.p("cluster.toml"),
        format!(
            "{text}\n[attestation]\nrequire = [\"drone\"]\nimages = [\"{}\"]\n",
            "00".repeat(32)
        ),
    )
    .unwrap();
    d.ok(&["keygen", "node", "--out", "d1.key"]);
    d.ok(&[
        "node",
        "add",
        "cluster.toml",
        "--id",
        "1",
        "--name",
        "d1",
        "--public-key-file",
        "d1.key.pub",
        "--attestation-key",
        &key,
    ]);
    d.ok(&["policy", "check", "cluster.toml"]);
    d.ok(&["keygen", "node", "--out", "d2.key"]);
    let out = d.tyd(&[
        "node",
        "add",
        "cluster.toml",
        "--id",
        "2",
        "--name",
        "d2",
        "--public-key-file",
        "d2.key.pub",
    ]);
    let err = stderr(&out);
    assert!(
        err.contains("node 2 (d2) must attest ([attestation] require) but has no attestation_key"),
        "{err}"
    );
    let missing = d.fails(&["tpm", "key", "--tpm", "/nonexistent/tpm"], 1);
    assert!(missing.contains("/nonexistent/tpm"), "{missing}");
}

/// Attack (found by a helper from the docs): the README says `--bump` raises the serial past
/// every one taken, "which includes what `tyd init` ... signed"; yet after `tyd init
/// --no-start`, an edited policy still at serial 1 was signed as a "first signing": a
/// second serial 1 with other content. Steps: `tyd init --no-start` in a directory; the
/// policy edited, its serial kept; `tyd policy sign`: refused, serial 1 was signed with
/// this key; with `--bump`: signed as serial 2.
#[test]
fn the_policy_tyd_init_signed_takes_its_serial_for_tyd_policy_sign() {
    let d = Dir::new();
    let dir = d.p("node").display().to_string();
    d.ok(&[
        "init",
        "--endpoint",
        "198.18.0.1",
        "--cluster",
        "lab",
        "--name",
        "d1",
        "--dir",
        &dir,
        "--tokens",
        &format!("{dir}/tokens.json"),
        "--no-start",
    ]);
    let policy = format!("{dir}/cluster.toml");
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str("# edited after tyd init\n");
    std::fs::write(&policy, text).unwrap();
    let mut args = vec![
        "policy",
        "sign",
        &policy,
        "--key",
        "node/operator.key",
        "--state",
        "node/accepted.json",
        "--yes",
    ];
    let refused = d.fails(&args, 5);
    assert!(
        refused.contains("serial 1 was already signed with this key"),
        "{refused}"
    );
    args.push("--bump");
    let out = d.ok(&args);
    assert!(out.contains("serial bumped to 2"), "{out}");
}
