//! The test cluster, made the way an operator makes one: release binaries, `tyd` for keys and
//! the signed policy, `drone build` for one image per drone plus one without a key (a
//! machine that is not enrolled). Built once per test process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::lab::Lab;
use crate::vm::{Boot, NicModel, Spec, Vm};
use crate::{scratch, target_dir, workspace};

/// The drones: name, LAN address, tunnel address (as `tyd node add` assigns them).
pub const DRONES: &[(&str, &str, &str)] = &[
    ("drone1", "198.18.0.11", "10.77.0.1"),
    ("drone2", "198.18.0.12", "10.77.0.2"),
    ("drone3", "198.18.0.13", "10.77.0.3"),
];

/// The rogue's own LAN address.
pub const ROGUE_IP: &str = "198.18.0.66";

/// Boot to "ready" can take a while with several TCG guests on two cores.
pub const BOOT: Duration = Duration::from_secs(150);
pub const CMD: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub expected_root: String,
    pub initrd_blake3: String,
    pub kernel_blake3: String,
    /// With `--uki`: the unified kernel image, and the PCR 4 OVMF measures when qemu boots
    /// it with `-kernel`, as `drone build` predicted it.
    pub uki: Option<(PathBuf, String)>,
}

#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub operator_key: PathBuf,
    pub policy: PathBuf,
    /// By drone name, plus "unenrolled".
    pub images: BTreeMap<String, Image>,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Release builds of what goes into the image (a no-op when up to date).
fn build_binaries() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "--release", "--locked", "--quiet"])
        .args([
            "-p",
            "netguard",
            "-p",
            "certaintyd",
            "-p",
            "clusterd",
            "-p",
            "join",
            "-p",
            "tyd",
            "-p",
            "drone",
            "-p",
            "drone-boot",
        ]))?;
    Ok(target_dir().join("release"))
}

/// The test's console and log ports on the kernel command line: a root shell on the console,
/// the daemons' logs on the second serial port.
pub const CONSOLE_ARGS: &str = "console=ttyS0 quiet drone.shell=1 drone.log=/dev/ttyS1";

impl Image {
    /// A VM booting this image with a console shell, daemon logs on the second serial port,
    /// and `args` (its `ip=`, ...) on the kernel command line.
    pub fn spec(&self, name: &str, nic: u8, args: &str) -> Spec {
        Spec {
            name: name.to_string(),
            boot: Boot::Direct {
                kernel: self.dir.join("vmlinuz"),
                initrd: self.dir.join("initrd.img"),
                cmdline: format!("{CONSOLE_ARGS} panic=-1 {args}"),
            },
            nic,
            model: NicModel::Virtio,
            uefi: None,
        }
    }
}

/// `drone build` as an operator runs it; the report's hashes come back.
pub fn build_image(
    bin: &Path,
    policy: &Path,
    node_key: Option<&Path>,
    out: &Path,
) -> Result<Image, String> {
    build_image_with(bin, policy, node_key, out, "cloud", &[])
}

/// `drone build --kernel KERNEL` (cloud, generic or a package file) with `extra` arguments
/// (`--uki`: its unified kernel image and the predicted PCR 4 too; `--mtime 1`: another
/// image of the same files).
pub fn build_image_with(
    bin: &Path,
    policy: &Path,
    node_key: Option<&Path>,
    out: &Path,
    kernel: &str,
    extra: &[&str],
) -> Result<Image, String> {
    let mut cmd = Command::new(bin.join("drone"));
    cmd.arg("build")
        .args(extra)
        .args(["--kernel", kernel])
        .arg("--policy")
        .arg(policy)
        .arg("--trust")
        .arg(policy.with_file_name("operator.key.pub"))
        .arg("--cache")
        .arg(target_dir().join("drone-cache"))
        .arg("--out")
        .arg(out)
        .arg("--json");
    if let Some(k) = node_key {
        cmd.arg("--node-key").arg(k);
    }
    let report: serde_json::Value =
        serde_json::from_str(&run(&mut cmd)?).map_err(|e| e.to_string())?;
    let field = |k: &str| {
        report[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no {k} in the build report"))
    };
    Ok(Image {
        dir: out.to_path_buf(),
        expected_root: field("expected_root")?,
        initrd_blake3: field("initrd_blake3")?,
        kernel_blake3: field("kernel_blake3")?,
        uki: report["uki"].as_str().map(|u| {
            (
                PathBuf::from(u),
                report["pcr4"]["qemu-kernel"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }),
    })
}

impl Cluster {
    fn make() -> Result<Cluster, String> {
        let bin = build_binaries()?;
        let dir = scratch().join("cluster");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tyd = |args: &[&str]| run(Command::new(bin.join("tyd")).current_dir(&dir).args(args));
        tyd(&["keygen", "operator", "--out", "operator.key"])?;
        tyd(&["policy", "init", "--name", "lab"])?;
        for (i, (name, lan, _)) in DRONES.iter().enumerate() {
            let key = format!("{name}.key");
            tyd(&["keygen", "node", "--out", &key])?;
            tyd(&[
                "node",
                "add",
                "cluster.toml",
                "--id",
                &(i + 1).to_string(),
                "--name",
                name,
                "--public-key-file",
                &format!("{key}.pub"),
                "--endpoint",
                &format!("{lan}:51820"),
            ])?;
        }
        // Test timing: a short grace period, and the watchdog on.
        let policy = dir.join("cluster.toml");
        let text = std::fs::read_to_string(&policy).map_err(|e| e.to_string())?;
        let text = text.replace(
            "grace = \"30s\"",
            "grace = \"5s\"\nwatchdog = \"/dev/watchdog\"",
        );
        std::fs::write(&policy, text).map_err(|e| e.to_string())?;
        tyd(&["policy", "sign", "cluster.toml", "--key", "operator.key"])?;

        let mut images = BTreeMap::new();
        for (name, _, _) in DRONES {
            let key = dir.join(format!("{name}.key"));
            let image = build_image(
                &bin,
                &policy,
                Some(&key),
                &dir.join(format!("image-{name}")),
            )?;
            images.insert((*name).to_string(), image);
        }
        let unenrolled = build_image(&bin, &policy, None, &dir.join("image-unenrolled"))?;
        images.insert("unenrolled".to_string(), unenrolled);
        Ok(Cluster {
            operator_key: dir.join("operator.key"),
            policy,
            dir,
            bin,
            images,
        })
    }

    /// The cluster, built on first use.
    pub fn get() -> &'static Cluster {
        static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
        match CLUSTER.get_or_init(Cluster::make) {
            Ok(c) => c,
            Err(e) => panic!("cannot build the test cluster: {e}"),
        }
    }

    pub fn tyd(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new(self.bin.join("tyd"))
            .current_dir(&self.dir)
            .args(args))
    }

    /// Boots `image` as drone `i` (0-based): its address and name, with `extra` on the
    /// kernel command line.
    pub fn boot_image(
        &self,
        lab: &Lab,
        test: &str,
        image: &Image,
        i: usize,
        extra: &str,
    ) -> Result<Vm, String> {
        let (name, lan, _) = DRONES[i];
        let ip = format!("ip={lan}::::{name}:eth0:off {extra}");
        let nic = u8::try_from(11 + i).unwrap_or(99);
        Vm::boot(lab, &image.spec(name, nic, &ip), &scratch().join(test))
    }

    /// Boots drone `i` (0-based) with its image, the pinned root hash and a console shell.
    pub fn boot_drone(&self, lab: &Lab, test: &str, i: usize) -> Result<Vm, String> {
        let image = &self.images[DRONES[i].0];
        let pin = format!("certainty.expect={}", image.expected_root);
        self.boot_image(lab, test, image, i, &pin)
    }

    /// Boots the unenrolled image as a rogue machine on the LAN: it makes its own key, which
    /// the policy does not list; its console is the attacker's. `ip` is `ROGUE_IP`'s static
    /// configuration, or `dhcp`.
    pub fn boot_rogue(&self, lab: &Lab, test: &str, dhcp: bool) -> Result<Vm, String> {
        let ip = if dhcp {
            "ip=::::rogue:eth0:dhcp".to_string()
        } else {
            format!("ip={ROGUE_IP}::::rogue:eth0:off")
        };
        let spec = self.images["unenrolled"].spec("rogue", 66, &ip);
        Vm::boot(lab, &spec, &scratch().join(test))
    }

    /// Signs a new policy version: `tyd <command> <copy of the policy> <args>` (which bumps
    /// the serial), then `tyd policy sign`. Returns the policy and signature bytes.
    pub fn signed_update(
        &self,
        command: &[&str],
        args: &[&str],
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        let work = self.dir.join("update");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let copy = work.join("cluster.toml");
        std::fs::copy(&self.policy, &copy).map_err(|e| e.to_string())?;
        let copy_s = copy.display().to_string();
        let full: Vec<&str> = command
            .iter()
            .copied()
            .chain([copy_s.as_str()])
            .chain(args.iter().copied())
            .collect();
        self.tyd(&full)?;
        let key = self.operator_key.display().to_string();
        self.tyd(&["policy", "sign", &copy_s, "--key", &key, "--bump"])?;
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok((read(&copy)?, read(&policy::signature_path(&copy))?))
    }
}
