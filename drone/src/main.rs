//! drone: builds drone images, and the boot tree that starts them from the network. What a
//! drone itself runs at boot is `drone-boot`, a separate program: an image carries none of
//! this builder.
//!
//! Exit codes: the shared set (`policy::exit`), e.g. 1 runtime failure, 2 usage, 4 bad
//! signature, 6 unusable key file.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Parser;
use drone::build::{self, Inputs};
use drone::cli::{Args, BuildArgs, Cmd, PxeArgs};
use drone::kernel;
use drone::pxe::{self};
use policy::exit::{Exit, Failure};

fn main() -> ExitCode {
    let args = Args::parse();
    logsetup::init("DRONE_LOG", false);
    let result = match args.command {
        Cmd::Build(a) => build_cmd(a),
        Cmd::Pxe(a) => pxe_cmd(a),
    };
    policy::exit::finish("drone", result)
}

fn build_cmd(a: BuildArgs) -> Result<(), Failure> {
    // A bad policy or signature is refused before a kernel is downloaded.
    policy::load_verified(&a.policy, &a.trust, jiff::Timestamp::now())?;
    let deb = match a.kernel {
        kernel::KernelChoice::Deb(d) => d,
        kernel::KernelChoice::Cloud => {
            kernel::fetch(&a.cache, kernel::CLOUD_METAPACKAGE).map_err(|e| e.to_string())?
        }
        kernel::KernelChoice::Generic => {
            kernel::fetch(&a.cache, kernel::GENERIC_METAPACKAGE).map_err(|e| e.to_string())?
        }
    };
    let kernel = kernel::unpack(&deb, &a.cache).map_err(|e| e.to_string())?;
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .ok_or("cannot tell where this program is; pass --bin-dir")?,
    };
    let mtime = a
        .mtime
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok()?.parse().ok())
        .unwrap_or(0);
    let inputs = Inputs {
        policy: a.policy,
        trust: a.trust,
        node_key: a.node_key,
        bin_dir,
        kernel: kernel.clone(),
        extra_modules: a.modules,
        firmware_dir: a.firmware_dir,
        busybox: a.busybox,
        mtime,
        now: jiff::Timestamp::now(),
    };
    let image = build::assemble(&inputs)?;
    let mut report = build::write(&image, &kernel, &a.out)?;
    if a.uki {
        build::add_uki(&mut report, &a.uki_stub, &a.out)?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &build::Report) {
    println!(
        "drone image for {} (cluster {}, policy serial {})",
        r.node
            .as_deref()
            .unwrap_or("a node that makes its key at boot"),
        r.cluster,
        r.serial
    );
    println!(
        "  kernel  {}  {}  blake3 {}",
        r.kernel.display(),
        r.kernel_version,
        r.kernel_blake3
    );
    println!(
        "  initrd  {}  {} bytes ({} entries, {} bytes of content)  blake3 {}",
        r.initrd.display(),
        r.initrd_bytes,
        r.entries,
        r.content_bytes,
        r.initrd_blake3
    );
    println!("  modules {}", r.modules.join(" "));
    println!(
        "  firmware {} file(s) included, {} a driver may ask for not found on this host",
        r.firmware.len(),
        r.firmware_missing.len()
    );
    if let Some(k) = &r.public_key {
        println!("  node public key {k}");
    }
    if let Some(uki) = &r.uki {
        println!(
            "  unified kernel image {} (for UEFI machines)",
            uki.display()
        );
        println!(
            "PCR 4 its firmware will measure (pin it: [attestation] images; docs/attestation.md):"
        );
        for (path, pcr) in &r.pcr4 {
            println!("  {pcr}  booted by {path}");
        }
    }
    println!("image hash (pin it: certainty.expect=<hash> on the kernel command line):");
    println!("{}", r.expected_root);
}

/// What `drone pxe` reads from an image's image.json.
#[derive(serde::Deserialize)]
struct ImageInfo {
    expected_root: String,
    node: Option<String>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Failure + '_ {
    move |e| format!("{}: {e}", path.display()).into()
}

/// Copies `from` to `to` through a temporary name, readable by dnsmasq's unprivileged user.
fn install(from: &Path, to: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = to.with_extension("part");
    std::fs::copy(from, &tmp).map_err(io_err(from))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, to).map_err(io_err(to))
}

fn write_file(to: &Path, text: &str) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = to.with_extension("part");
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, to).map_err(io_err(to))
}

fn make_dir(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io_err(dir))
}

fn pxe_cmd(a: PxeArgs) -> Result<(), Failure> {
    let mut images = Vec::new();
    for (name, dir) in &a.images {
        images.push(read_image(name, dir)?);
    }
    let default = match a.default.as_deref() {
        Some("none") => None,
        Some(name) => Some(name.to_string()),
        None => images.first().map(|i| i.name.clone()),
    };
    make_dir(&a.out)?;
    let root = a.out.canonicalize().map_err(io_err(&a.out))?;
    let setup = pxe::Setup {
        images,
        default,
        hosts: a.hosts,
        append: a.append,
        network: a.network,
        interface: a.interface,
        root: root.clone(),
    };
    let plan = pxe::plan(&setup).map_err(|e| Failure {
        exit: Exit::Usage,
        message: e.to_string(),
    })?;
    install_boot_files(&a.ipxe_dir, &a.images, &root)?;
    write_file(&root.join("boot.ipxe"), &plan.boot_ipxe)?;
    let conf = root.join("dnsmasq.conf");
    write_file(&conf, &plan.dnsmasq_conf)?;
    print_pxe_summary(&root, &setup, &conf);
    if a.run {
        return Err(run_dnsmasq(&root, &conf));
    }
    Ok(())
}

/// Checks the image `drone build` wrote to `dir` and reads what `drone pxe` needs from it.
fn read_image(name: &str, dir: &Path) -> Result<pxe::Image, Failure> {
    let [kernel, initrd, json] = pxe::image_files(dir);
    for f in [&kernel, &initrd, &json] {
        if !f.is_file() {
            return Err(format!(
                "image {name}: {} is missing (is {} a directory `drone build` wrote?)",
                f.display(),
                dir.display()
            )
            .into());
        }
    }
    let text = std::fs::read_to_string(&json).map_err(io_err(&json))?;
    let info: ImageInfo = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not an image.json from drone build: {e}",
            json.display()
        )
    })?;
    if let Some(node) = info.node {
        return Err(Failure {
            exit: Exit::Refused,
            message: format!(
                "image {name} ({}) carries node {node}'s key, and TFTP serves it to anyone on the LAN: build the image without --node-key (drones join by token)",
                dir.display()
            ),
        });
    }
    if info.expected_root.len() != 64 || !info.expected_root.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(format!("{}: expected_root is not a hash", json.display()).into());
    }
    Ok(pxe::Image {
        name: name.to_string(),
        uki: dir.join(pxe::UKI).is_file(),
        expected_root: info.expected_root,
    })
}

/// Installs the iPXE loaders from `ipxe_dir` and each image's files into the boot tree.
fn install_boot_files(
    ipxe_dir: &Path,
    images: &[(String, PathBuf)],
    root: &Path,
) -> Result<(), Failure> {
    for file in [pxe::IPXE_BIOS, pxe::IPXE_UEFI] {
        let from = ipxe_dir.join(file);
        if !from.is_file() {
            return Err(format!(
                "{}: missing (install Debian's ipxe package, or pass --ipxe-dir)",
                from.display()
            )
            .into());
        }
        install(&from, &root.join(file))?;
    }
    for (name, dir) in images {
        let to = root.join(pxe::image_dir(name));
        make_dir(&to)?;
        for from in pxe::image_files(dir) {
            if let Some(file) = from.file_name() {
                install(&from, &to.join(file))?;
            }
        }
        let uki = dir.join(pxe::UKI);
        if uki.is_file() {
            install(&uki, &to.join(pxe::UKI))?;
        }
    }
    Ok(())
}

/// Prints what the boot tree holds, how to serve it and which ports to open.
fn print_pxe_summary(root: &Path, setup: &pxe::Setup, conf: &Path) {
    println!(
        "boot tree {}: {} image(s), {} host entr{}, default {}",
        root.display(),
        setup.images.len(),
        setup.hosts.len(),
        if setup.hosts.len() == 1 { "y" } else { "ies" },
        setup.default.as_deref().unwrap_or("none")
    );
    println!(
        "serve it: dnsmasq --keep-in-foreground --conf-file={}",
        conf.display()
    );
    println!(
        "open its ports on this node's firewall (policy): [firewall.allow.pxe] udp = [67, 69, 4011, \"{}-{}\"] roles = [\"master\"]",
        pxe::TFTP_PORTS.0,
        pxe::TFTP_PORTS.1
    );
}

/// Replaces this process with dnsmasq serving the tree, unless another server holds its
/// ports; returns why it did not.
fn run_dnsmasq(root: &Path, conf: &Path) -> Failure {
    use std::os::unix::process::CommandExt;
    let mut sockets = String::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        sockets.push_str(&std::fs::read_to_string(table).unwrap_or_default());
    }
    let ports: Vec<u16> = pxe::EXCLUSIVE_PORTS.iter().map(|(p, _)| *p).collect();
    if let Some(port) = pxe::bound_udp_ports(&sockets, &ports).first() {
        let what = pxe::EXCLUSIVE_PORTS
            .iter()
            .find(|(p, _)| p == port)
            .map_or("", |(_, w)| *w);
        return format!(
            "udp port {port} ({what}) is already in use on this machine: stop the other server (another dnsmasq or TFTP server), or serve {} with it",
            root.display()
        )
        .into();
    }
    let err = Command::new("dnsmasq")
        .arg("--keep-in-foreground")
        .arg("--log-facility=-")
        .arg(format!("--conf-file={}", conf.display()))
        .exec();
    format!("cannot run dnsmasq: {err} (install Debian's dnsmasq-base)").into()
}
