//! `drone::build` on a stand-in kernel package and stand-in binaries: what goes into the image,
//! that the same inputs give the same image, and the refusals an operator can meet. No root,
//! no download (the real kernel and boots are in vm-tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use drone::build::{self, BuildError, Inputs};
use drone::kernel::Kernel;
use drone::tree::Content;

const VERSION: &str = "6.1.0-99-cloud-amd64";

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

fn write(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn node_public(secret: [u8; 32]) -> String {
    policy::WgPublicKey::from_secret(&secret).to_base64()
}

/// A signed one-node policy, the node's key, a kernel package with a few modules, and the
/// project's binaries (copies of /bin/true: dynamically linked, like the real ones).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture { dir };
    let operator = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let secret = [9u8; 32];
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let text = format!(
        "{}\n[[node]]\nid = 1\nname = \"drone1\"\npublic_key = \"{}\"\n\
         endpoint = \"198.18.0.11:51820\"\naddresses = [\"10.77.0.1\"]\n",
        policy::template::init_template("lab", expires),
        node_public(secret)
    );
    write(&f.p("cluster.toml"), text.as_bytes(), 0o644);
    write(
        &f.p("cluster.toml.sig"),
        policy::sign(text.as_bytes(), &operator).as_bytes(),
        0o644,
    );
    let op_pub = policy::OperatorPublicKey::from(&operator).to_base64();
    write(
        &f.p("operator.pub"),
        format!("{op_pub}\n").as_bytes(),
        0o644,
    );
    write(
        &f.p("drone1.key"),
        format!("{}\n", policy::keys::encode(&secret)).as_bytes(),
        0o600,
    );
    let stranger = [3u8; 32];
    write(
        &f.p("stranger.key"),
        format!("{}\n", policy::keys::encode(&stranger)).as_bytes(),
        0o600,
    );

    let mods = f.p(&format!("kernel/lib/modules/{VERSION}"));
    let all = drone::kernel::DRONE_MODULES.iter().copied().chain([
        "udp_tunnel",
        "unrelated",
        "e1000e",
        "tg3",
    ]);
    let mut dep = String::new();
    for m in all {
        let content = if m == "tg3" {
            b"tg3\0firmware=tigon/tg3.bin\0firmware=tigon/tg3_tso.bin\0".to_vec()
        } else {
            m.as_bytes().to_vec()
        };
        write(&mods.join(format!("kernel/{m}.ko")), &content, 0o644);
        let deps = if m == "wireguard" {
            " kernel/udp_tunnel.ko"
        } else {
            ""
        };
        dep.push_str(&format!("kernel/{m}.ko:{deps}\n"));
    }
    write(&mods.join("modules.dep"), dep.as_bytes(), 0o644);
    write(
        &mods.join("modules.alias"),
        b"alias net-pf-16-proto-16-family-wireguard wireguard\nalias x unrelated\n",
        0o644,
    );
    write(&mods.join("modules.builtin"), b"kernel/fs/ext4.ko\n", 0o644);
    write(&f.p("firmware/tigon/tg3.bin"), b"tg3 firmware", 0o644);
    write(
        &f.p(&format!("kernel/boot/vmlinuz-{VERSION}")),
        b"kernel",
        0o644,
    );
    for b in ["netguard", "certaintyd", "clusterd", "drone-boot", "tyd"] {
        std::fs::create_dir_all(f.p("bin")).unwrap();
        std::fs::copy("/bin/true", f.p(&format!("bin/{b}"))).unwrap();
    }
    f
}

fn inputs(f: &Fixture, key: Option<&str>) -> Inputs {
    Inputs {
        policy: f.p("cluster.toml"),
        trust: f.p("operator.pub"),
        node_key: key.map(|k| f.p(k)),
        bin_dir: f.p("bin"),
        kernel: Kernel {
            root: f.p("kernel"),
            version: VERSION.into(),
            vmlinuz: f.p(&format!("kernel/boot/vmlinuz-{VERSION}")),
        },
        extra_modules: Vec::new(),
        firmware_dir: f.p("firmware"),
        busybox: PathBuf::from("/bin/busybox"),
        mtime: 0,
        now: jiff::Timestamp::now(),
    }
}

fn have_tools() -> bool {
    let ok = Path::new("/bin/busybox").exists()
        && ["nft", "ip", "conntrack"]
            .iter()
            .all(|t| build::find_program(t).is_some());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI lacks busybox-static, nft, ip or conntrack"
        );
        eprintln!("SKIP: needs busybox-static, nft, ip and conntrack (scripts/install-deps.sh)");
    }
    ok
}

#[test]
fn the_image_holds_what_a_drone_needs_and_only_the_modules_it_needs() {
    if !have_tools() {
        return;
    }
    let f = fixture();
    let image = build::assemble(&inputs(&f, Some("drone1.key"))).unwrap();
    let t = &image.tree;
    assert_eq!(image.node.as_deref(), Some("drone1"));
    assert_eq!(image.serial, 1);
    assert_eq!(t.get("/etc/tyd/node.key").unwrap().mode, 0o600);
    assert_eq!(
        t.get("/init").unwrap().content,
        Content::Symlink("/bin/busybox".into())
    );
    for path in [
        "/sbin/netguard",
        "/sbin/certaintyd",
        "/sbin/clusterd",
        "/sbin/drone-boot",
        "/bin/tyd",
        "/usr/sbin/nft",
        "/sbin/ip",
        "/usr/sbin/conntrack",
        "/etc/drone/rc",
        "/etc/inittab",
        "/etc/protocols",
        "/etc/tyd/cluster.toml.sig",
        "/etc/tyd/operator.pub",
        "/dev/console",
    ] {
        assert!(t.get(path).is_some(), "{path} missing");
    }
    // The builder stays on the operator's machine: a drone runs drone-boot only.
    for path in [
        "/sbin/drone",
        "/bin/drone",
        "/usr/bin/drone",
        "/usr/sbin/drone",
    ] {
        assert!(
            t.get(path).is_none(),
            "the image builder is in the image at {path}"
        );
    }
    // Libraries the programs load come along (the loader at least).
    assert!(
        t.paths().any(|p| p.contains("ld-linux")),
        "no dynamic loader"
    );
    let mods = format!("/lib/modules/{VERSION}/kernel");
    assert!(
        t.get(&format!("{mods}/udp_tunnel.ko")).is_some(),
        "dependency left out"
    );
    assert!(
        t.get(&format!("{mods}/unrelated.ko")).is_none(),
        "unneeded module in"
    );
    let Content::File(alias) = &t
        .get(&format!("/lib/modules/{VERSION}/modules.alias"))
        .unwrap()
        .content
    else {
        panic!("modules.alias is not a file")
    };
    assert!(!String::from_utf8_lossy(alias).contains("unrelated"));
    let Content::File(list) = &t.get("/etc/drone/modules").unwrap().content else {
        panic!("no module list")
    };
    assert!(String::from_utf8_lossy(list).starts_with("virtio_pci\nvirtio_net\n"));
}

#[test]
fn same_inputs_same_image_and_root_hash() {
    if !have_tools() {
        return;
    }
    let f = fixture();
    let a = build::assemble(&inputs(&f, Some("drone1.key"))).unwrap();
    let b = build::assemble(&inputs(&f, Some("drone1.key"))).unwrap();
    let ra = build::write(&a, &inputs(&f, None).kernel, &f.p("out-a")).unwrap();
    let rb = build::write(&b, &inputs(&f, None).kernel, &f.p("out-b")).unwrap();
    assert_eq!(ra.initrd_blake3, rb.initrd_blake3);
    assert_eq!(ra.expected_root, rb.expected_root);
    assert!(
        ra.cmdline
            .contains(&format!("certainty.expect={}", ra.expected_root))
    );
    // Without a key the image differs (the drone makes its key at boot).
    let c = build::assemble(&inputs(&f, None)).unwrap();
    assert_ne!(c.tree.expected_root(), a.tree.expected_root());
    assert!(c.tree.get("/etc/tyd/node.key").is_none());
}

#[test]
fn refusals_name_what_is_wrong() {
    if !have_tools() {
        return;
    }
    let f = fixture();
    let e = build::assemble(&inputs(&f, Some("stranger.key"))).unwrap_err();
    assert!(matches!(e, BuildError::NotInPolicy { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("stranger.key") && msg.contains(&node_public([3; 32])),
        "{msg}"
    );

    std::fs::set_permissions(f.p("drone1.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = build::assemble(&inputs(&f, Some("drone1.key"))).unwrap_err();
    // Regression (issue 9 item 11): the path was printed twice (`loose.key: loose.key: ...`).
    assert_eq!(e.to_string().matches("drone1.key").count(), 1, "{e}");

    let mut text = std::fs::read_to_string(f.p("cluster.toml")).unwrap();
    text.push_str("\n# tampered\n");
    std::fs::write(f.p("cluster.toml"), text).unwrap();
    let e = build::assemble(&inputs(&f, None)).unwrap_err();
    assert!(matches!(e, BuildError::Policy(_)), "{e}");

    let f = fixture();
    std::fs::remove_file(f.p("bin/certaintyd")).unwrap();
    let e = build::assemble(&inputs(&f, None)).unwrap_err();
    assert!(e.to_string().contains("bin/certaintyd: not found"), "{e}");

    let f = fixture();
    let mut i = inputs(&f, None);
    i.extra_modules.push("no_such_module".into());
    let e = build::assemble(&i).unwrap_err();
    assert!(e.to_string().contains("no_such_module"), "{e}");
}

/// Regression (adversarial testing, issue 9 item 5): a kernel package path next to a
/// directory of the same stem must never cost that directory.
/// 1. The operator passes `--kernel /etc/sysctl.conf` by mistake.
/// 2. The builder used to unpack into `deb.with_extension("d")` and remove it first:
///    `/etc/sysctl.d` was wiped before dpkg even looked at the file.
///
/// Now: the build fails on the bad package, and `X.d` beside it is untouched.
#[test]
fn a_wrong_kernel_package_never_deletes_the_directory_beside_it() {
    let f = fixture();
    write(&f.p("etc/sysctl.conf"), b"kernel.panic = 10\n", 0o644);
    write(
        &f.p("etc/sysctl.d/99-local.conf"),
        b"vm.swappiness = 1\n",
        0o644,
    );
    let cache = f.p("cache");
    let e = drone::kernel::unpack(&f.p("etc/sysctl.conf"), &cache).unwrap_err();
    assert!(e.to_string().contains("dpkg"), "{e}");
    assert_eq!(
        std::fs::read(f.p("etc/sysctl.d/99-local.conf")).unwrap(),
        b"vm.swappiness = 1\n"
    );
    // Whatever drone made, it made under its cache.
    let made: Vec<_> = std::fs::read_dir(f.p("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(made.len(), 2, "{made:?}");
}

/// Regression (issue 9 item 11): `drone` exited 1 for a bad signature where `tyd` exits 4:
/// every binary now uses the one set of exit codes.
#[test]
fn drone_uses_the_shared_exit_codes() {
    let f = fixture();
    let mut text = std::fs::read_to_string(f.p("cluster.toml")).unwrap();
    text.push_str("\n# tampered\n");
    std::fs::write(f.p("cluster.toml"), text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drone"))
        .args(["build", "--policy"])
        .arg(f.p("cluster.toml"))
        .arg("--trust")
        .arg(f.p("operator.pub"))
        .arg("--out")
        .arg(f.p("out"))
        .arg("--cache")
        .arg(f.p("cache"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("signature does not match"), "{err}");
    assert!(
        !f.p("cache").exists(),
        "nothing downloaded or unpacked before the refusal"
    );
}

#[test]
fn the_nic_drivers_the_kernel_has_come_with_the_firmware_the_host_has() {
    let f = fixture();
    let image = build::assemble(&inputs(&f, None)).unwrap();
    let t = &image.tree;
    let Content::File(list) = &t.get("/etc/drone/modules").unwrap().content else {
        panic!("modules list is not a file");
    };
    let list = String::from_utf8_lossy(list);
    let names: Vec<&str> = list.lines().collect();
    // Loaded at boot: the drone's own modules, each after what it needs (udp_tunnel before
    // wireguard). The NIC drivers this kernel has (no igb here) are in the image but load by
    // the hardware's modalias only.
    let mut want: Vec<&str> = drone::kernel::DRONE_MODULES.to_vec();
    let at = want.iter().position(|m| *m == "wireguard").unwrap();
    want.insert(at, "udp_tunnel");
    assert_eq!(names, want);
    assert!(
        t.get(&format!("/lib/modules/{VERSION}/kernel/e1000e.ko"))
            .is_some()
    );
    assert!(
        image
            .modules
            .ends_with(&["e1000e".to_string(), "tg3".to_string()])
    );
    assert!(
        t.get(&format!("/lib/modules/{VERSION}/kernel/tg3.ko"))
            .is_some()
    );
    assert_eq!(
        t.get("/lib/firmware/tigon/tg3.bin").unwrap().content,
        Content::File(b"tg3 firmware".to_vec())
    );
    assert_eq!(image.firmware, vec!["tigon/tg3.bin"]);
    assert_eq!(image.firmware_missing, vec!["tigon/tg3_tso.bin"]);
}
