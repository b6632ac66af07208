//! `drone pxe` as an operator runs it: refusals of bad entries and images (no root), and the
//! boot server in a network namespace (root): it serves the boot tree over TFTP and nothing
//! outside it, and a second server on the same ports says why it cannot start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DRONE: &str = env!("CARGO_BIN_EXE_drone");

/// An image directory as `drone build` writes it (stand-in kernel and initrd).
fn image(dir: &Path, node: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(dir.join("initrd.img"), b"initrd").unwrap();
    let node = node.map_or("null".to_string(), |n| format!("\"{n}\""));
    std::fs::write(
        dir.join("image.json"),
        format!(
            "{{\"cluster\":\"lab\",\"node\":{node},\"expected_root\":\"{}\"}}",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    dir.to_path_buf()
}

fn pxe(args: &[&str]) -> Output {
    Command::new(DRONE).arg("pxe").args(args).output().unwrap()
}

fn one_line_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

#[test]
fn bad_images_and_entries_are_refused_with_one_line_naming_them() {
    let t = tempfile::tempdir().unwrap();
    let good = image(&t.path().join("generic"), None);
    let keyed = image(&t.path().join("drone1"), Some("drone1"));
    let out = t.path().join("boot");
    let out_s = out.display().to_string();
    let generic = format!("generic={}", good.display());

    // A missing image: named, nothing written.
    let o = pxe(&[
        "--image",
        &format!("gone={}", t.path().join("nope").display()),
        "--network",
        "198.18.0.0",
        "--out",
        &out_s,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = one_line_error(&o);
    assert!(
        e.contains("image gone") && e.contains("vmlinuz is missing"),
        "{e}"
    );
    // An image carrying a node key: TFTP would hand the key to anyone on the LAN.
    let o = pxe(&[
        "--image",
        &format!("d1={}", keyed.display()),
        "--network",
        "198.18.0.0",
        "--out",
        &out_s,
    ]);
    assert_eq!(o.status.code(), Some(5));
    assert!(one_line_error(&o).contains("carries node drone1's key"));
    // A MAC given twice, an entry naming an unknown image.
    for (hosts, want) in [
        (
            [
                "52:54:00:12:34:01 generic",
                "52-54-00-12-34-01 generic ip=dhcp",
            ],
            "MAC 52:54:00:12:34:01 is given twice",
        ),
        (
            ["52:54:00:12:34:01 generic", "52:54:00:12:34:02 other"],
            "names image other, which is not given",
        ),
    ] {
        let o = pxe(&[
            "--image",
            &generic,
            "--network",
            "198.18.0.0",
            "--host",
            hosts[0],
            "--host",
            hosts[1],
            "--out",
            &out_s,
        ]);
        assert_eq!(o.status.code(), Some(2));
        assert!(one_line_error(&o).contains(want));
    }
    assert!(!out.join("boot.ipxe").exists(), "written despite a refusal");
    // No iPXE binaries where they are looked for.
    let o = pxe(&[
        "--image",
        &generic,
        "--network",
        "198.18.0.0",
        "--ipxe-dir",
        &t.path().display().to_string(),
        "--out",
        &out_s,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("undionly.kpxe: missing"));
}

/// A network namespace with a bridge at 198.18.0.1, deleted (with what runs in it) on drop.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn new() -> Self {
        let name = format!("pxetest-{}", std::process::id());
        let ns = Self {
            name,
            children: Vec::new(),
        };
        ns.ip(&["netns", "add", &ns.name]);
        for args in [
            &["link", "add", "br0", "type", "bridge"][..],
            &["link", "set", "br0", "up"],
            &["link", "set", "lo", "up"],
            &["addr", "add", "198.18.0.1/24", "dev", "br0"],
        ] {
            let mut all = vec!["-n", ns.name.as_str()];
            all.extend_from_slice(args);
            ns.ip(&all);
        }
        ns
    }

    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn can_serve() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tools = Path::new("/usr/sbin/dnsmasq").exists()
        && Path::new("/usr/lib/ipxe/undionly.kpxe").exists()
        && Path::new("/bin/busybox").exists();
    if root && tools {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the boot server test: needs root, dnsmasq-base, ipxe, busybox-static"
    );
    eprintln!("SKIP: needs root, dnsmasq-base, ipxe and busybox-static");
    false
}

fn tftp_get(ns: &Netns, path: &str, to: &Path) -> Output {
    ns.cmd("busybox")
        .args(["tftp", "-g", "-r", path, "-l"])
        .arg(to)
        .arg("198.18.0.1")
        .output()
        .unwrap()
}

#[test]
fn the_boot_server_serves_the_tree_only_and_a_second_one_says_why_it_cannot_start() {
    if !can_serve() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // dnsmasq serves as an unprivileged user: the tree must be reachable by it.
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let good = image(&t.path().join("generic"), None);
    std::fs::write(t.path().join("secret"), b"outside the tree").unwrap();
    let out = t.path().join("boot");
    let mut ns = Netns::new();
    let args = |out: &Path| -> Vec<String> {
        [
            "pxe",
            "--image",
            &format!("generic={}", good.display()),
            "--network",
            "198.18.0.0",
            "--interface",
            "br0",
            "--out",
            &out.display().to_string(),
            "--run",
        ]
        .map(String::from)
        .to_vec()
    };
    let log = t.path().join("server.log");
    let f = std::fs::File::create(&log).unwrap();
    ns.children.push(
        ns.cmd(DRONE)
            .args(args(&out))
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("TFTP root is")
    {
        assert!(
            Instant::now() < until,
            "the server did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The tree is served...
    let got = t.path().join("got");
    let o = tftp_get(&ns, "boot.ipxe", &got);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_to_string(&got).unwrap().starts_with("#!ipxe"));
    let o = tftp_get(&ns, "images/generic/initrd.img", &got);
    assert!(o.status.success());
    // ...and nothing outside it, however the path is written.
    let secret = t.path().join("secret").display().to_string();
    for path in [
        "../secret",
        "images/../../secret",
        secret.as_str(),
        "/etc/shadow",
    ] {
        let _ = std::fs::remove_file(&got);
        let o = tftp_get(&ns, path, &got);
        let leaked = std::fs::read(&got).unwrap_or_default();
        assert!(
            !o.status.success() && !leaked.starts_with(b"outside") && !leaked.starts_with(b"root:"),
            "{path} was served"
        );
    }

    // A second server on the same ports: one line saying why, at once.
    let started = Instant::now();
    let o = ns
        .cmd(DRONE)
        .args(args(&t.path().join("boot2")))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("udp port 69 (TFTP) is already in use"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
