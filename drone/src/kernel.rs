//! The kernel and its modules, from a Debian kernel package (the cloud kernel by default, the
//! generic one for real lab PCs): fetched with `apt-get download` into a cache, unpacked with
//! `dpkg -x`, indexed with `depmod -b`. Nothing is installed on the host.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The metapackage that always depends on the current cloud kernel (virtio only: VMs).
pub const CLOUD_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// The metapackage of Debian's generic kernel, with drivers for real hardware.
pub const GENERIC_METAPACKAGE: &str = "linux-image-amd64";

/// Which kernel an image boots: `cloud`, `generic`, or a kernel package file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelChoice {
    Cloud,
    Generic,
    Deb(PathBuf),
}

impl std::str::FromStr for KernelChoice {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "cloud" => Self::Cloud,
            "generic" => Self::Generic,
            path => Self::Deb(PathBuf::from(path)),
        })
    }
}

/// Wired NIC drivers of common lab PCs (Intel, Realtek with its PHY driver, Broadcom,
/// Atheros), included whenever the kernel has them: Debian's generic kernel has all of them,
/// the cloud kernel none.
pub const NIC_MODULES: &[&str] = &[
    "e1000", "e1000e", "igb", "igc", "ixgbe", "r8169", "realtek", "tg3", "8139too", "alx", "atl1c",
];

/// Modules every drone needs: virtio networking, WireGuard, nftables with conntrack and named
/// counters (objref), conntrack's netlink interface (to cut removed peers' connections), and
/// the software watchdog.
pub const DRONE_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "wireguard",
    "nf_tables",
    "nft_ct",
    "nft_objref",
    "nf_conntrack_netlink",
    "softdog",
];

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot run {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("`apt-cache depends {metapackage}` names no kernel package: {output}")]
    NoDepends { metapackage: String, output: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: the package holds no kernel (boot/vmlinuz-*) or no lib/modules/<version>")]
    NotAKernel(PathBuf),
    #[error("module {0} is neither built into this kernel nor in its modules.dep")]
    UnknownModule(String),
}

fn run(cmd: &mut Command) -> Result<String, KernelError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| KernelError::Spawn {
        cmd: shown.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(KernelError::Failed {
            cmd: shown,
            stderr: policy::parse::one_line(&String::from_utf8_lossy(&out.stderr)),
        })
    }
}

/// The versioned package `apt-cache depends` names for the metapackage.
pub fn parse_depends(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        dep.starts_with("linux-image-").then(|| dep.to_string())
    })
}

/// Downloads the kernel package `metapackage` depends on into `cache`, unless a `.deb` of it
/// is there already. Returns the `.deb`.
pub fn fetch(cache: &Path, metapackage: &str) -> Result<PathBuf, KernelError> {
    std::fs::create_dir_all(cache).map_err(|source| KernelError::Io {
        path: cache.into(),
        source,
    })?;
    let out = run(Command::new("apt-cache").args(["depends", metapackage]))?;
    let package = parse_depends(&out).ok_or_else(|| KernelError::NoDepends {
        metapackage: metapackage.into(),
        output: policy::parse::one_line(&out),
    })?;
    let existing = |cache: &Path| -> Option<PathBuf> {
        let mut debs: Vec<PathBuf> = std::fs::read_dir(cache)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .collect();
        debs.sort();
        debs.pop()
    };
    if let Some(deb) = existing(cache) {
        return Ok(deb);
    }
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        // An operator watching: apt's own progress (bytes, rate) on the terminal, since the
        // generic kernel is tens of megabytes.
        eprintln!("downloading {package} into {}", cache.display());
        let status = Command::new("apt-get")
            .args(["download", &package])
            .current_dir(cache)
            .stdout(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit())
            .status()
            .map_err(|source| KernelError::Spawn {
                cmd: format!("apt-get download {package}"),
                source,
            })?;
        if !status.success() {
            return Err(KernelError::Failed {
                cmd: format!("apt-get download {package}"),
                stderr: format!("{status} (its messages are above)"),
            });
        }
    } else {
        run(Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(cache))?;
    }
    existing(cache).ok_or_else(|| KernelError::Failed {
        cmd: format!("apt-get download {package}"),
        stderr: "no .deb appeared".into(),
    })
}

/// An unpacked kernel package with a module index.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub root: PathBuf,
    pub version: String,
    pub vmlinuz: PathBuf,
}

impl Kernel {
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }
}

/// Unpacks `deb` (once) into a directory of drone's own under `cache`, named after the
/// package's content hash, and runs `depmod -b` on it. Nothing outside `cache/unpacked/` is
/// ever created or removed: the package may sit anywhere, beside anything.
pub fn unpack(deb: &Path, cache: &Path) -> Result<Kernel, KernelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KernelError::Io { path, source }
    };
    let bytes = std::fs::read(deb).map_err(io(deb))?;
    let unpacked = cache.join("unpacked");
    let root = unpacked.join(&blake3::hash(&bytes).to_hex()[..32]);
    drop(bytes);
    let done = root.join(".drone-unpacked");
    if !done.exists() {
        std::fs::create_dir_all(&unpacked).map_err(io(&unpacked))?;
        // Only a half-unpacked directory of drone's own (no marker yet) is ever removed.
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(io(&root))?;
        }
        run(Command::new("dpkg").arg("-x").arg(deb).arg(&root))?;
    }
    let mods = root.join("lib/modules");
    let version = std::fs::read_dir(&mods)
        .map_err(io(&mods))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .min()
        .ok_or_else(|| KernelError::NotAKernel(deb.into()))?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
    if !vmlinuz.exists() {
        return Err(KernelError::NotAKernel(deb.into()));
    }
    if !done.exists() {
        run(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
        std::fs::write(&done, b"").map_err(io(&done))?;
    }
    Ok(Kernel {
        root,
        version,
        vmlinuz,
    })
}

/// A module's name as the kernel knows it: file name without `.ko*`, `-` as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `modules.dep`: module name -> (its path, the paths it depends on).
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let deps = deps.split_whitespace().map(str::to_string).collect();
        out.insert(module_name(path), (path.to_string(), deps));
    }
    out
}

/// `modules.softdep`: each module's `pre:` soft dependencies (module names or aliases), which
/// must be loaded before it (e.g. libcrc32c needs a crc32c implementation, r8169 its PHY
/// driver). modprobe honours them; busybox's does not, so the image lists them in order.
pub fn parse_softdeps(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("softdep") {
            continue;
        }
        let Some(module) = words.next() else { continue };
        let mut pre = false;
        for w in words {
            match w {
                "pre:" => pre = true,
                "post:" => pre = false,
                dep if pre => out
                    .entry(module_name(module))
                    .or_default()
                    .push(dep.to_string()),
                _ => {}
            }
        }
    }
    out
}

/// `modules.alias` lines without wildcards: alias -> the modules providing it, in file order.
pub fn parse_plain_aliases(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("alias"), Some(alias), Some(module)) =
            (words.next(), words.next(), words.next())
            && !alias.contains(['*', '?', '['])
        {
            out.entry(alias.to_string())
                .or_default()
                .push(module_name(module));
        }
    }
    out
}

/// The load order for `wanted`: each module after its dependencies, hard (`hard`: from
/// modules.dep) and soft (`softdeps`, an alias standing for every module that provides it),
/// recursively, each once. `known`: whether a name is a module of this kernel (a file or
/// built in).
pub struct LoadOrder<'a> {
    pub softdeps: &'a BTreeMap<String, Vec<String>>,
    pub aliases: &'a BTreeMap<String, Vec<String>>,
    pub known: &'a dyn Fn(&str) -> bool,
    pub hard: &'a dyn Fn(&str) -> Vec<String>,
}

impl std::fmt::Debug for LoadOrder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOrder")
            .field("softdeps", &self.softdeps.len())
            .field("aliases", &self.aliases.len())
            .finish_non_exhaustive()
    }
}

impl LoadOrder<'_> {
    pub fn of(&self, wanted: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for name in wanted {
            self.visit(name, &mut out, 0);
        }
        out
    }

    /// The modules that provide `name`'s soft dependencies (an alias: every provider).
    pub fn soft_providers(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for dep in self.softdeps.get(&module_name(name)).into_iter().flatten() {
            if (self.known)(&module_name(dep)) {
                out.push(module_name(dep));
            } else {
                out.extend(self.aliases.get(dep).cloned().unwrap_or_default());
            }
        }
        out
    }

    fn visit(&self, name: &str, out: &mut Vec<String>, depth: usize) {
        let name = module_name(name);
        if out.contains(&name) || depth > 16 {
            return;
        }
        for dep in (self.hard)(&name) {
            self.visit(&dep, out, depth + 1);
        }
        for p in self.soft_providers(&name) {
            self.visit(&p, out, depth + 1);
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
}

/// The module files needed for `wanted` (with everything they depend on), in path order.
/// Modules built into the kernel (`modules.builtin`) need no file.
pub fn closure(
    dep: &BTreeMap<String, (String, Vec<String>)>,
    builtin: &BTreeSet<String>,
    wanted: &[String],
) -> Result<BTreeSet<String>, KernelError> {
    let mut out = BTreeSet::new();
    for name in wanted {
        let name = module_name(name);
        if builtin.contains(&name) {
            continue;
        }
        let (path, deps) = dep
            .get(&name)
            .ok_or_else(|| KernelError::UnknownModule(name.clone()))?;
        out.insert(path.clone());
        out.extend(deps.iter().cloned());
    }
    Ok(out)
}

/// The lines of `modules.dep` (or `modules.alias`) that only mention included modules.
pub fn filter_index(text: &str, included: &BTreeSet<String>, alias: bool) -> String {
    let names: BTreeSet<String> = included.iter().map(|p| module_name(p)).collect();
    let mut out = String::new();
    for line in text.lines() {
        let keep = if alias {
            line.split_whitespace()
                .nth(2)
                .is_some_and(|m| names.contains(&module_name(m)))
        } else {
            line.split_once(':').is_some_and(|(p, deps)| {
                included.contains(p) && deps.split_whitespace().all(|d| included.contains(d))
            })
        };
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The firmware files a module may ask for: its `.modinfo` strings `firmware=NAME`, each
/// between NULs (what `modinfo -F firmware` reads). Only uncompressed modules (`.ko`, as in
/// Debian 12) are read this way; names that would leave `/lib/firmware` are dropped.
pub fn firmware_names(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0firmware=";
    let mut out = Vec::new();
    let mut rest = module;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        rest = &rest[at + KEY.len()..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if let Ok(name) = std::str::from_utf8(&rest[..end])
            && !name.is_empty()
            && !name.starts_with('/')
            && !name.split('/').any(|part| part == ".." || part.is_empty())
            && name.bytes().all(|b| b.is_ascii_graphic())
        {
            out.push(name.to_string());
        }
        rest = &rest[end..];
    }
    out
}

/// Names of built-in modules from `modules.builtin` (paths, one a line).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(module_name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/wireguard/wireguard.ko: kernel/net/ipv4/udp_tunnel.ko kernel/lib/crypto/libcurve25519-generic.ko
kernel/net/ipv4/udp_tunnel.ko:
kernel/lib/crypto/libcurve25519-generic.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko
kernel/drivers/net/net_failover.ko:
";

    #[test]
    fn depends_names_the_versioned_package() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_depends("nothing\n"), None);
    }

    #[test]
    fn closure_follows_dependencies_and_skips_builtins() {
        let dep = parse_modules_dep(DEP);
        assert_eq!(
            dep["libcurve25519_generic"].0,
            "kernel/lib/crypto/libcurve25519-generic.ko"
        );
        let builtin = parse_builtin("kernel/fs/ext4/ext4.ko\n");
        let got = closure(&dep, &builtin, &["wireguard".into(), "ext4".into()]).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got.contains("kernel/net/ipv4/udp_tunnel.ko"));
        assert!(matches!(
            closure(&dep, &builtin, &["nope".into()]),
            Err(KernelError::UnknownModule(n)) if n == "nope"
        ));
    }

    #[test]
    fn firmware_names_come_from_modinfo_strings_and_stay_under_lib_firmware() {
        let ko = b"\x7fELF...\0license=GPL\0firmware=rtl_nic/rtl8168d-1.fw\0firmware=tigon/tg3.bin\0firmware=../../etc/shadow\0firmware=/abs\0firmware=\0xfirmware=no\0firmware=last";
        assert_eq!(
            firmware_names(ko),
            vec!["rtl_nic/rtl8168d-1.fw", "tigon/tg3.bin", "last"]
        );
        assert!(firmware_names(b"no strings here").is_empty());
    }

    #[test]
    fn soft_dependencies_come_first_through_their_aliases() {
        let soft = parse_softdeps(
            "# comment\nsoftdep libcrc32c pre: crc32c\nsoftdep r8169 pre: realtek post: x\n",
        );
        let aliases = parse_plain_aliases(
            "alias crc32c crc32c_intel\nalias crc32c crc32c_generic\nalias pci:v*d* e1000\n",
        );
        assert!(!aliases.contains_key("pci:v*d*"));
        let known = |n: &str| {
            [
                "libcrc32c",
                "nf_tables",
                "r8169",
                "realtek",
                "crc32c_intel",
                "crc32c_generic",
            ]
            .contains(&n)
        };
        let hard = |n: &str| match n {
            "nf_tables" => vec!["libcrc32c".to_string()],
            _ => Vec::new(),
        };
        let order = LoadOrder {
            softdeps: &soft,
            aliases: &aliases,
            known: &known,
            hard: &hard,
        };
        let wanted: Vec<String> = ["nf_tables", "r8169"].map(String::from).to_vec();
        // libcrc32c (a hard dependency of nf_tables) needs crc32c first.
        assert_eq!(
            order.of(&wanted),
            [
                "crc32c_intel",
                "crc32c_generic",
                "libcrc32c",
                "nf_tables",
                "realtek",
                "r8169"
            ]
        );
    }

    #[test]
    fn indexes_keep_only_included_modules() {
        let dep = parse_modules_dep(DEP);
        let inc = closure(&dep, &BTreeSet::new(), &["wireguard".into()]).unwrap();
        let filtered = filter_index(DEP, &inc, false);
        assert_eq!(filtered.lines().count(), 3);
        assert!(!filtered.contains("virtio"));
        let alias = "alias net-pf-16-proto-16-family-wireguard wireguard\nalias virtio:d00000001v* virtio_net\n";
        assert_eq!(
            filter_index(alias, &inc, true),
            "alias net-pf-16-proto-16-family-wireguard wireguard\n"
        );
    }
}
