//! `drone build`: gathers the kernel, busybox, the project's binaries with their libraries,
//! the tools netguard drives, the modules and the signed policy into a [`Tree`], and writes
//! `vmlinuz` and `initrd.img`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use jiff::Timestamp;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::elf::{self, ElfError};
use crate::kernel::{self, DRONE_MODULES, Kernel, KernelError, NIC_MODULES};
use crate::tree::{Content, Tree, TreeError};

/// The project's programs, looked up in the build's binary directory.
pub const PROJECT_BINARIES: &[(&str, &str)] = &[
    ("netguard", "/sbin/netguard"),
    ("certaintyd", "/sbin/certaintyd"),
    ("clusterd", "/sbin/clusterd"),
    ("drone-boot", "/sbin/drone-boot"),
    ("tyd", "/bin/tyd"),
];

/// Host programs netguard drives, with where they go in the image (they replace busybox's
/// applets of the same name, which lack `ip -j` and `nft` altogether).
pub const HOST_TOOLS: &[(&str, &str)] = &[
    ("nft", "/usr/sbin/nft"),
    ("conntrack", "/usr/sbin/conntrack"),
    ("ip", "/sbin/ip"),
];

/// Directories init mounts filesystems on; nothing else in the image is ever written.
pub const MOUNT_POINTS: &[&str] = &["/dev", "/proc", "/sys", "/run", "/tmp"];

const RC: &str = include_str!("../init/rc");
const INITTAB: &str = include_str!("../init/inittab");
const CONSOLE: &str = include_str!("../init/console");
const UDHCPC: &str = include_str!("../init/udhcpc");
const PROFILE: &str = include_str!("../init/profile");
/// nft resolves protocol names (`"protocol": "tcp"`) through this file.
const PROTOCOLS: &str = include_str!("../init/protocols");

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Policy(#[from] policy::LoadError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Uki(#[from] crate::uki::UkiError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not found (looked in the binary directory, or PATH for host tools)")]
    Missing(String),
    /// The file error names the path already.
    #[error("{source}")]
    Key {
        path: PathBuf,
        source: policy::fsutil::FileError,
    },
    #[error("{path}: not a WireGuard private key: {why}")]
    BadKey {
        path: PathBuf,
        why: policy::keys::KeyTextError,
    },
    #[error(
        "{path}: this node key (public {public}) is not in the policy; add it with `tyd node add`"
    )]
    NotInPolicy { path: PathBuf, public: String },
    #[error("cannot run busybox --list-full: {0}")]
    Busybox(String),
}

/// At `drone build`'s edge: the shared exit code for each kind of failure.
impl From<BuildError> for policy::exit::Failure {
    fn from(e: BuildError) -> Self {
        let exit = match &e {
            BuildError::Policy(e) => e.into(),
            BuildError::Key { source, .. } => source.into(),
            BuildError::BadKey { .. } => policy::exit::Exit::KeyFile,
            BuildError::NotInPolicy { .. } => policy::exit::Exit::Refused,
            _ => policy::exit::Exit::Runtime,
        };
        Self {
            exit,
            message: e.to_string(),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::Io {
        path: path.into(),
        source,
    })
}

/// What the image is made of.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub policy: PathBuf,
    pub trust: PathBuf,
    /// The node's WireGuard private key; without it the drone generates one at boot and
    /// prints the public key on the console.
    pub node_key: Option<PathBuf>,
    /// Where netguard, certaintyd, drone and tyd are.
    pub bin_dir: PathBuf,
    pub kernel: Kernel,
    pub extra_modules: Vec<String>,
    /// Where the firmware the modules ask for is looked up (the host's `/lib/firmware`).
    pub firmware_dir: PathBuf,
    pub busybox: PathBuf,
    /// Every entry's mtime (seconds since the epoch), for reproducible images.
    pub mtime: u32,
    pub now: Timestamp,
}

/// An assembled image, not yet written.
#[derive(Debug, Clone)]
pub struct Image {
    pub tree: Tree,
    pub cluster: String,
    pub serial: u64,
    pub node: Option<String>,
    pub public_key: Option<String>,
    pub kernel_version: String,
    pub modules: Vec<String>,
    /// Firmware files included, and those some module may ask for that were not found.
    pub firmware: Vec<String>,
    pub firmware_missing: Vec<String>,
}

/// Finds a host program in PATH (and the sbin directories, which root's PATH may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Adds a dynamically linked program and every library it loads, at their host paths.
fn add_program(tree: &mut Tree, src: &Path, dest: &str) -> Result<(), BuildError> {
    tree.file(dest, read(src)?, 0o755)?;
    for lib in elf::libraries(src)? {
        let at = lib.to_string_lossy().into_owned();
        if tree.get(&at).is_none() {
            tree.file(&at, read(&lib)?, 0o755)?;
        }
    }
    Ok(())
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>, BuildError> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| BuildError::Busybox(e.to_string()))?;
    if !out.status.success() {
        return Err(BuildError::Busybox(format!("exit {}", out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .map(|l| format!("/{l}"))
        .collect())
}

/// The node key's file, its public half, and the node the policy lists with it.
fn node_identity(
    key_path: &Path,
    policy: &policy::Policy,
) -> Result<(Vec<u8>, String, String), BuildError> {
    let text = Zeroizing::new(policy::fsutil::read_secret(key_path).map_err(|source| {
        BuildError::Key {
            path: key_path.into(),
            source,
        }
    })?);
    let secret = Zeroizing::new(
        policy::keys::parse_key_file(&text, policy::keys::KeyKind::NodeSecret).map_err(|why| {
            BuildError::BadKey {
                path: key_path.into(),
                why,
            }
        })?,
    );
    let public = policy::WgPublicKey::from_secret(&secret);
    let node = policy
        .node_by_key(&public)
        .ok_or_else(|| BuildError::NotInPolicy {
            path: key_path.into(),
            public: public.to_base64(),
        })?;
    Ok((
        text.as_bytes().to_vec(),
        node.name.clone(),
        public.to_base64(),
    ))
}

/// Assembles the image tree. Reads files; writes nothing.
pub fn assemble(inputs: &Inputs) -> Result<Image, BuildError> {
    // What is verified here is what goes into the image: the same bytes, read once.
    let signed = policy::load_signed(&inputs.policy, &inputs.trust, inputs.now)?;
    let verified = &signed.verified;
    let mut tree = Tree::new(inputs.mtime);

    add_skeleton(&mut tree)?;
    add_busybox(&mut tree, &inputs.busybox)?;
    add_programs(&mut tree, &inputs.bin_dir)?;
    let modules = add_modules(&mut tree, inputs)?;
    add_boot_config(&mut tree, verified.cluster.serial)?;
    let (node, public_key) = add_policy_and_key(&mut tree, &signed, inputs.node_key.as_deref())?;

    Ok(Image {
        tree,
        cluster: verified.cluster.name.clone(),
        serial: verified.cluster.serial,
        node,
        public_key,
        kernel_version: inputs.kernel.version.clone(),
        modules: modules.ordered,
        firmware: modules.firmware_found,
        firmware_missing: modules.firmware_missing,
    })
}

/// Adds the mount points, the console device and root's home.
fn add_skeleton(tree: &mut Tree) -> Result<(), BuildError> {
    for dir in MOUNT_POINTS {
        tree.mount_point(dir)?;
    }
    tree.put(
        "/dev/console",
        Content::CharDev { major: 5, minor: 1 },
        0o600,
    )?;
    tree.dir("/root", 0o700)?;
    Ok(())
}

/// Adds busybox, a link to it for each of its applets, and `/init` pointing at it.
fn add_busybox(tree: &mut Tree, busybox: &Path) -> Result<(), BuildError> {
    tree.file("/bin/busybox", read(busybox)?, 0o755)?;
    for applet in busybox_applets(busybox)? {
        if applet != "/bin/busybox" {
            tree.symlink(&applet, "/bin/busybox")?;
        }
    }
    tree.symlink("/init", "/bin/busybox")?;
    Ok(())
}

/// Adds the project's binaries from `bin_dir` and the host tools netguard drives.
fn add_programs(tree: &mut Tree, bin_dir: &Path) -> Result<(), BuildError> {
    for (name, dest) in PROJECT_BINARIES {
        let src = bin_dir.join(name);
        if !src.is_file() {
            return Err(BuildError::Missing(src.display().to_string()));
        }
        add_program(tree, &src, dest)?;
    }
    for (name, dest) in HOST_TOOLS {
        let src = find_program(name).ok_or_else(|| BuildError::Missing((*name).into()))?;
        add_program(tree, &src, dest)?;
    }
    Ok(())
}

/// The kernel's module indexes, as read and as parsed.
struct ModuleIndexes {
    dep_text: String,
    dep: BTreeMap<String, (String, Vec<String>)>,
    builtin_text: String,
    builtin: BTreeSet<String>,
    alias_text: String,
}

/// What [`add_modules`] put in the image: the modules in load order and the firmware.
struct AddedModules {
    ordered: Vec<String>,
    firmware_found: Vec<String>,
    firmware_missing: Vec<String>,
}

/// Reads `modules.dep`, `modules.builtin` and `modules.alias` from the modules directory.
fn read_module_indexes(mods: &Path) -> Result<ModuleIndexes, BuildError> {
    let index = |name: &str| -> Result<String, BuildError> {
        Ok(String::from_utf8_lossy(&read(&mods.join(name))?).into_owned())
    };
    let dep_text = index("modules.dep")?;
    let dep = kernel::parse_modules_dep(&dep_text);
    let builtin_text = index("modules.builtin")?;
    let builtin = kernel::parse_builtin(&builtin_text);
    let alias_text = index("modules.alias")?;
    Ok(ModuleIndexes {
        dep_text,
        dep,
        builtin_text,
        builtin,
        alias_text,
    })
}

/// Kernel modules: what the drone needs, with their dependencies, and indexes of just those.
fn add_modules(tree: &mut Tree, inputs: &Inputs) -> Result<AddedModules, BuildError> {
    let mods = inputs.kernel.modules_dir();
    let ix = read_module_indexes(&mods)?;
    // Real NICs' drivers, where this kernel has them (a VM-only kernel has none). They are
    // in the image, and load at boot only for the hardware present (by PCI modalias).
    let nics: Vec<String> = NIC_MODULES
        .iter()
        .map(|m| kernel::module_name(m))
        .filter(|name| ix.dep.contains_key(name) || ix.builtin.contains(name))
        .collect();
    let wanted = wanted_modules(&ix, &mods, &inputs.extra_modules, &nics);
    let mut included = wanted.clone();
    included.extend(nics.iter().cloned());
    let files = kernel::closure(&ix.dep, &ix.builtin, &included)?;
    let dest_root = format!("/lib/modules/{}", inputs.kernel.version);
    let mut firmware = BTreeSet::new();
    for rel in &files {
        let bytes = read(&mods.join(rel))?;
        firmware.extend(kernel::firmware_names(&bytes));
        tree.file(&format!("{dest_root}/{rel}"), bytes, 0o644)?;
    }
    let (firmware_found, firmware_missing) = add_firmware(tree, &inputs.firmware_dir, firmware)?;
    add_module_indexes(tree, &dest_root, &ix, &files)?;
    let ordered = add_load_order(tree, &wanted, &nics, &ix.builtin)?;
    Ok(AddedModules {
        ordered,
        firmware_found,
        firmware_missing,
    })
}

/// The drone's modules and `extra`, in load order with their dependencies.
fn wanted_modules(
    ix: &ModuleIndexes,
    mods: &Path,
    extra: &[String],
    nics: &[String],
) -> Vec<String> {
    let mut wanted: Vec<String> = DRONE_MODULES.iter().map(|m| (*m).to_string()).collect();
    wanted.extend(extra.iter().cloned());
    // Hard dependencies come from modules.dep; soft ones (libcrc32c's crc32c, r8169's PHY
    // driver) are added and listed first, since busybox's modprobe ignores them.
    let softdeps = match std::fs::read_to_string(mods.join("modules.softdep")) {
        Ok(text) => kernel::parse_softdeps(&text),
        Err(_) => Default::default(),
    };
    let known = |name: &str| ix.dep.contains_key(name) || ix.builtin.contains(name);
    let hard = |name: &str| -> Vec<String> {
        ix.dep
            .get(name)
            .map(|(_, deps)| deps.iter().map(|d| kernel::module_name(d)).collect())
            .unwrap_or_default()
    };
    let aliases = kernel::parse_plain_aliases(&ix.alias_text);
    let order = kernel::LoadOrder {
        softdeps: &softdeps,
        aliases: &aliases,
        known: &known,
        hard: &hard,
    };
    for nic in nics {
        wanted.extend(order.soft_providers(nic));
    }
    order.of(&wanted)
}

/// Firmware the modules may ask for, when the build host has it (Debian's non-free
/// firmware packages); a module finds the rest missing, as on any system without it.
fn add_firmware(
    tree: &mut Tree,
    firmware_dir: &Path,
    firmware: BTreeSet<String>,
) -> Result<(Vec<String>, Vec<String>), BuildError> {
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    for name in firmware {
        let src = firmware_dir.join(&name);
        if src.is_file() {
            tree.file(&format!("/lib/firmware/{name}"), read(&src)?, 0o644)?;
            found.push(name);
        } else {
            missing.push(name);
        }
    }
    Ok((found, missing))
}

/// Adds `modules.dep` and `modules.alias` cut to the included `files`, and `modules.builtin`.
fn add_module_indexes(
    tree: &mut Tree,
    dest_root: &str,
    ix: &ModuleIndexes,
    files: &BTreeSet<String>,
) -> Result<(), BuildError> {
    tree.file(
        &format!("{dest_root}/modules.dep"),
        kernel::filter_index(&ix.dep_text, files, false).into_bytes(),
        0o644,
    )?;
    tree.file(
        &format!("{dest_root}/modules.alias"),
        kernel::filter_index(&ix.alias_text, files, true).into_bytes(),
        0o644,
    )?;
    tree.file(
        &format!("{dest_root}/modules.builtin"),
        ix.builtin_text.as_bytes().to_vec(),
        0o644,
    )?;
    Ok(())
}

/// Writes the load order to `/etc/drone/modules` and returns it followed by the NIC drivers.
fn add_load_order(
    tree: &mut Tree,
    wanted: &[String],
    nics: &[String],
    builtin: &BTreeSet<String>,
) -> Result<Vec<String>, BuildError> {
    // Load order: as listed (virtio first), each once, builtins left out.
    let mut ordered: Vec<String> = Vec::new();
    for m in wanted.iter().map(|m| kernel::module_name(m)) {
        if !builtin.contains(&m) && !ordered.contains(&m) {
            ordered.push(m);
        }
    }
    tree.file(
        "/etc/drone/modules",
        format!("{}\n", ordered.join("\n")).into_bytes(),
        0o644,
    )?;
    ordered.extend(nics.iter().filter(|m| !builtin.contains(*m)).cloned());
    Ok(ordered)
}

/// Boot scripts and configuration.
fn add_boot_config(tree: &mut Tree, serial: u64) -> Result<(), BuildError> {
    tree.file("/etc/inittab", INITTAB.as_bytes().to_vec(), 0o644)?;
    tree.file("/etc/drone/rc", RC.as_bytes().to_vec(), 0o755)?;
    tree.file("/etc/drone/console", CONSOLE.as_bytes().to_vec(), 0o755)?;
    tree.file("/etc/drone/udhcpc", UDHCPC.as_bytes().to_vec(), 0o755)?;
    tree.file("/etc/profile", PROFILE.as_bytes().to_vec(), 0o644)?;
    tree.file(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        0o644,
    )?;
    tree.file("/etc/group", b"root:x:0:\n".to_vec(), 0o644)?;
    tree.file("/etc/protocols", PROTOCOLS.as_bytes().to_vec(), 0o644)?;
    tree.symlink("/etc/resolv.conf", "/run/resolv.conf")?;
    tree.file(
        "/etc/drone/min-serial",
        format!("{serial}\n").into_bytes(),
        0o644,
    )?;
    Ok(())
}

/// The signed policy, the operator keys it is checked against, and the node's key; returns
/// the node's name and public key when there is a key.
fn add_policy_and_key(
    tree: &mut Tree,
    signed: &policy::SignedFiles,
    node_key: Option<&Path>,
) -> Result<(Option<String>, Option<String>), BuildError> {
    let signature = format!("{}.sig", proto::paths::POLICY);
    tree.file(proto::paths::POLICY, signed.policy.clone(), 0o644)?;
    tree.file(&signature, signed.signature.clone(), 0o644)?;
    tree.file(proto::paths::TRUST, signed.trust.clone(), 0o644)?;
    let Some(path) = node_key else {
        return Ok((None, None));
    };
    let (secret, node, public) = node_identity(path, &signed.verified)?;
    tree.file(proto::paths::NODE_KEY, secret, 0o600)?;
    tree.file(
        "/etc/drone/hostname",
        format!("{node}\n").into_bytes(),
        0o644,
    )?;
    Ok((Some(node), Some(public)))
}

/// What `drone build` prints and writes to `image.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub cluster: String,
    pub serial: u64,
    pub node: Option<String>,
    pub public_key: Option<String>,
    pub kernel_version: String,
    pub kernel: PathBuf,
    pub kernel_blake3: String,
    pub initrd: PathBuf,
    pub initrd_blake3: String,
    pub initrd_bytes: u64,
    pub entries: usize,
    pub content_bytes: u64,
    pub modules: Vec<String>,
    pub firmware: Vec<String>,
    /// Firmware some included module may ask for, not found on the build host.
    pub firmware_missing: Vec<String>,
    /// certaintyd's stable root of the booted drone: pin it with `certainty.expect=`.
    pub expected_root: String,
    /// A kernel command line to start from.
    pub cmdline: String,
    /// The unified kernel image (`--uki`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uki: Option<PathBuf>,
    /// PCR 4 as UEFI firmware will measure the unified kernel image, by boot path
    /// (`firmware`: from a disk; `qemu-kernel`: qemu's -kernel under OVMF).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub pcr4: std::collections::BTreeMap<String, String>,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.into(),
        source,
    }
}

/// Writes `vmlinuz` and `initrd.img` (gzip, fixed header) into `out`, atomically each.
pub fn write(image: &Image, kernel: &Kernel, out: &Path) -> Result<Report, BuildError> {
    std::fs::create_dir_all(out).map_err(io_at(out))?;
    let initrd = out.join("initrd.img");
    let tmp = out.join(".initrd.img.tmp");
    let file = std::fs::File::create(&tmp).map_err(io_at(&tmp))?;
    let gz = flate2::GzBuilder::new().mtime(0).write(
        std::io::BufWriter::new(file),
        flate2::Compression::default(),
    );
    let gz = image.tree.write_cpio(gz).map_err(io_at(&tmp))?;
    let mut buf = gz.finish().map_err(io_at(&tmp))?;
    buf.flush().map_err(io_at(&tmp))?;
    drop(buf);
    std::fs::rename(&tmp, &initrd).map_err(io_at(&initrd))?;

    let vmlinuz = out.join("vmlinuz");
    let kbytes = read(&kernel.vmlinuz)?;
    let ktmp = out.join(".vmlinuz.tmp");
    std::fs::write(&ktmp, &kbytes).map_err(io_at(&ktmp))?;
    std::fs::rename(&ktmp, &vmlinuz).map_err(io_at(&vmlinuz))?;

    let ibytes = read(&initrd)?;
    let expected_root = image.tree.expected_root().to_hex().to_string();
    let report = Report {
        cluster: image.cluster.clone(),
        serial: image.serial,
        node: image.node.clone(),
        public_key: image.public_key.clone(),
        kernel_version: image.kernel_version.clone(),
        kernel: vmlinuz,
        kernel_blake3: blake3::hash(&kbytes).to_hex().to_string(),
        initrd: initrd.clone(),
        initrd_blake3: blake3::hash(&ibytes).to_hex().to_string(),
        initrd_bytes: ibytes.len() as u64,
        entries: image.tree.len(),
        content_bytes: image.tree.content_bytes(),
        modules: image.modules.clone(),
        firmware: image.firmware.clone(),
        firmware_missing: image.firmware_missing.clone(),
        cmdline: format!("console=ttyS0 quiet panic=-1 ip=dhcp certainty.expect={expected_root}"),
        expected_root,
        uki: None,
        pcr4: std::collections::BTreeMap::new(),
    };
    write_report(&report, out)?;
    Ok(report)
}

fn write_report(report: &Report, out: &Path) -> Result<(), BuildError> {
    let json = serde_json::to_vec_pretty(report).unwrap_or_default();
    let meta = out.join("image.json");
    std::fs::write(&meta, json).map_err(io_at(&meta))
}

/// `--uki`: OUT/drone.efi from the image just written, with its command line and an
/// os-release naming the cluster and serial; the report gets its path and the PCR 4 values
/// UEFI firmware will measure (image.json is written again).
pub fn add_uki(report: &mut Report, stub: &Path, out: &Path) -> Result<(), BuildError> {
    let uki = out.join("drone.efi");
    let osrel = format!(
        "NAME=\"tyd drone\"\nID=tyd-drone\nVERSION_ID=\"{}-{}\"\n",
        report.cluster, report.serial
    );
    crate::uki::build(
        stub,
        &report.kernel,
        &report.initrd,
        &report.cmdline,
        &osrel,
        &uki,
    )?;
    // Through iPXE too, when this host has the one `drone pxe` serves.
    let ipxe = std::fs::read(crate::uki::IPXE_EFI).ok();
    let predictions =
        crate::uki::predictions(&read(&uki)?, &read(&report.kernel)?, ipxe.as_deref())
            .ok_or_else(|| crate::uki::UkiError::NotPe(uki.clone()))?;
    report.pcr4 = predictions
        .into_iter()
        .map(|(path, pcr)| (path.name().to_string(), hex::encode(pcr)))
        .collect();
    report.uki = Some(uki);
    write_report(report, out)
}
