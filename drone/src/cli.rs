//! The command line, apart from `main` so the man page and completions are made from it
//! (`gendocs`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use policy::exit::EXIT_CODES_HELP;

use crate::kernel;
use crate::pxe::Host;

#[derive(Debug, Parser)]
#[command(
    name = "drone",
    version,
    about,
    after_help = EXIT_CODES_HELP
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Build a drone image: OUT/vmlinuz, OUT/initrd.img and OUT/image.json. Prints the hash
    /// to pin as certaintyd's expected root (`certainty.expect=` on the kernel command line).
    Build(BuildArgs),
    /// Write a network boot tree for drones into OUT: the images, iPXE for BIOS and UEFI PXE
    /// ROMs, boot.ipxe (an entry per MAC address, else the default) and dnsmasq.conf (proxy
    /// DHCP beside the LAN's own DHCP server, and TFTP). With --run, serve it with dnsmasq.
    Pxe(PxeArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The signed cluster policy (its signature is POLICY.sig).
    #[arg(long)]
    pub policy: PathBuf,
    /// Trusted operator public keys.
    #[arg(long)]
    pub trust: PathBuf,
    /// This drone's WireGuard private key (its public key must be in the policy).
    /// Without it the drone makes one at boot and prints the public key.
    #[arg(long)]
    pub node_key: Option<PathBuf>,
    #[arg(long, short)]
    pub out: PathBuf,
    /// Also write OUT/drone.efi, a unified kernel image (kernel, initramfs and command line
    /// in one PE, on systemd-boot's stub) for UEFI machines, and print the PCR 4 value
    /// their firmware will measure: what `[attestation] images` pins (docs/attestation.md).
    #[arg(long)]
    pub uki: bool,
    /// The EFI stub of --uki (Debian's systemd-boot-efi).
    #[arg(long, default_value = crate::uki::STUB)]
    pub uki_stub: PathBuf,
    /// The kernel: `cloud` (Debian's cloud kernel: virtio NICs only, for VMs), `generic`
    /// (Debian's generic kernel, with the drivers of real lab PCs' NICs: e1000, e1000e, igb,
    /// r8169, tg3...), or a linux-image .deb file. cloud and generic are downloaded.
    #[arg(long, default_value = "cloud")]
    pub kernel: kernel::KernelChoice,
    /// Where the firmware the NIC drivers ask for is looked up (install Debian's
    /// firmware-realtek, firmware-misc-nonfree... on the build host to include it).
    #[arg(long, default_value = "/lib/firmware")]
    pub firmware_dir: PathBuf,
    /// Where downloaded kernels are kept and unpacked (drone writes nowhere else).
    #[arg(long, default_value = "/var/cache/drone")]
    pub cache: PathBuf,
    /// Where netguard, certaintyd, clusterd, drone and tyd are (default: next to this program).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// More kernel modules to include and load at boot.
    #[arg(long = "module")]
    pub modules: Vec<String>,
    /// The static busybox to use.
    #[arg(long, default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// mtime of every entry (default: $SOURCE_DATE_EPOCH, else 0).
    #[arg(long)]
    pub mtime: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PxeArgs {
    /// An image directory written by `drone build`, by name: NAME=DIR (repeatable). An image
    /// carrying a node key is refused: TFTP serves it to anyone on the LAN.
    #[arg(long = "image", required = true, value_parser = parse_named_dir)]
    pub images: Vec<(String, PathBuf)>,
    /// The image for machines without a --host entry (default: the first --image); `none`:
    /// they are told so and boot from their next device.
    #[arg(long)]
    pub default: Option<String>,
    /// One machine's entry, "MAC IMAGE [KERNEL ARGS...]" (repeatable), e.g.
    /// "52:54:00:12:34:01 generic ip=192.168.1.11::192.168.1.1:24:drone1:eth0:off".
    #[arg(long = "host")]
    pub hosts: Vec<Host>,
    /// Kernel arguments for every entry, e.g. "tyd.join=any tyd.token=ID.SECRET". Each entry
    /// also gets certainty.expect= with its image's hash.
    #[arg(long, default_value = "")]
    pub append: String,
    /// The LAN's network address, where the proxy answers (e.g. 192.168.1.0).
    #[arg(long)]
    pub network: Ipv4Addr,
    /// The interface dnsmasq listens on (default: all).
    #[arg(long)]
    pub interface: Option<String>,
    /// Where iPXE's undionly.kpxe and snponly.efi are (Debian's ipxe package).
    #[arg(long, default_value = "/usr/lib/ipxe")]
    pub ipxe_dir: PathBuf,
    /// The boot tree (the TFTP root).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Then replace this program with dnsmasq in the foreground, logging to stderr.
    #[arg(long)]
    pub run: bool,
}

/// A `NAME=DIR` option that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}: expected NAME=DIR")]
pub struct NamedDirError(String);

pub fn parse_named_dir(s: &str) -> Result<(String, PathBuf), NamedDirError> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(NamedDirError(s.to_string())),
    }
}
