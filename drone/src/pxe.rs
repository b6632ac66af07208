//! `drone pxe`: what a boot server needs to start drones from the network, decided from the
//! images and the operator's entries. Pure: [`plan`] turns a [`Setup`] into the files to
//! write (an iPXE script and a dnsmasq configuration); `main` copies and writes them.
//!
//! The server is dnsmasq in proxy-DHCP mode beside the LAN's own DHCP server (which keeps
//! handing out addresses) and its TFTP server. A PXE ROM gets iPXE (`undionly.kpxe` for BIOS,
//! `snponly.efi` for UEFI); iPXE (qemu's ROMs are iPXE already) gets `boot.ipxe`, which picks
//! the drone's entry by MAC address, else the default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A NIC's hardware address, written lower-case with colons (as iPXE prints `${netX/mac}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mac([u8; 6]);

impl FromStr for Mac {
    type Err = PxeError;

    /// `52:54:00:12:34:56` or `52-54-00-12-34-56`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PxeError::BadMac(shown(s));
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(Self(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Operator text as shown in an error: bounded, control characters escaped.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_debug).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// What `drone pxe` is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// Images by name, in the order given; each with its pinned root hash (from image.json).
    pub images: Vec<Image>,
    /// The image (and arguments) for a MAC without an entry; `None`: such machines are told
    /// so and boot from their next device.
    pub default: Option<String>,
    pub hosts: Vec<Host>,
    /// Arguments for every entry (`tyd.join=`, `tyd.token=`, `console=`...).
    pub append: String,
    /// The LAN the proxy answers on (dnsmasq's `dhcp-range=<network>,proxy`).
    pub network: Ipv4Addr,
    /// The interface dnsmasq listens on; `None`: every interface.
    pub interface: Option<String>,
    /// The TFTP root, where the plan's files go.
    pub root: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    /// certaintyd's expected root for a drone booted from it (`certainty.expect=`).
    pub expected_root: String,
    /// It has a unified kernel image (`drone build --uki`): UEFI machines chainload it, so
    /// that their firmware measures the whole image into PCR 4 (issue 29).
    pub uki: bool,
}

/// One machine's entry: `MAC IMAGE [ARGS...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub mac: Mac,
    pub image: String,
    pub args: String,
}

impl FromStr for Host {
    type Err = PxeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut words = s.split_whitespace();
        let (Some(mac), Some(image)) = (words.next(), words.next()) else {
            return Err(PxeError::BadHost(shown(s)));
        };
        Ok(Self {
            mac: mac.parse()?,
            image: image.to_string(),
            args: words.collect::<Vec<_>>().join(" "),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PxeError {
    #[error("{0}: not a MAC address (six hex pairs, e.g. 52:54:00:12:34:56)")]
    BadMac(String),
    #[error("--host {0}: expected \"MAC IMAGE [KERNEL ARGS...]\"")]
    BadHost(String),
    #[error("MAC {0} is given twice")]
    MacTwice(Mac),
    #[error("image {0} is given twice")]
    ImageTwice(String),
    #[error("image name {0}: use 1-32 letters, digits, '-' or '_'")]
    BadImageName(String),
    #[error("{what} names image {image}, which is not given (--image NAME=DIR)")]
    UnknownImage { what: String, image: String },
    #[error("no image given (--image NAME=DIR)")]
    NoImage,
    #[error(
        "kernel arguments {0}: only printable ASCII without quotes, backslashes, '$' or ';' (iPXE would interpret them)"
    )]
    BadArgs(String),
    #[error("interface name {0} is not usable")]
    BadInterface(String),
}

/// The files to write under the TFTP root (beside the copied images and iPXE binaries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub boot_ipxe: String,
    pub dnsmasq_conf: String,
}

/// Where an image's files go under the root.
pub fn image_dir(name: &str) -> String {
    format!("images/{name}")
}

/// The iPXE binaries served to PXE ROMs: BIOS, then UEFI (x86-64).
pub const IPXE_BIOS: &str = "undionly.kpxe";
pub const IPXE_UEFI: &str = "snponly.efi";

fn usable_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

/// Kernel arguments go into an iPXE script verbatim: nothing iPXE would expand or split.
fn check_args(args: &str) -> Result<(), PxeError> {
    let ok = args
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && !b"\"'\\$;`{}".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PxeError::BadArgs(shown(args)))
    }
}

/// Checks the setup and writes the iPXE script and dnsmasq configuration.
pub fn plan(setup: &Setup) -> Result<Plan, PxeError> {
    if setup.images.is_empty() {
        return Err(PxeError::NoImage);
    }
    let mut images = BTreeMap::new();
    for image in &setup.images {
        if !usable_image_name(&image.name) {
            return Err(PxeError::BadImageName(shown(&image.name)));
        }
        if images.insert(image.name.as_str(), image).is_some() {
            return Err(PxeError::ImageTwice(image.name.clone()));
        }
    }
    let find = |what: String, name: &str| {
        images
            .get(name)
            .copied()
            .ok_or_else(|| PxeError::UnknownImage {
                what,
                image: shown(name),
            })
    };
    check_args(&setup.append)?;
    let mut seen = BTreeMap::new();
    let mut entries = Vec::new();
    for host in &setup.hosts {
        if seen.insert(host.mac, ()).is_some() {
            return Err(PxeError::MacTwice(host.mac));
        }
        check_args(&host.args)?;
        let image = find(format!("--host {}", host.mac), &host.image)?;
        entries.push((Some(host.mac), image, host.args.as_str()));
    }
    if let Some(name) = &setup.default {
        entries.push((None, find("--default".into(), name)?, ""));
    }
    if let Some(ifname) = &setup.interface
        && (ifname.is_empty()
            || ifname.len() > 15
            || !ifname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    {
        return Err(PxeError::BadInterface(shown(ifname)));
    }
    Ok(Plan {
        boot_ipxe: boot_script(&entries, &setup.append),
        dnsmasq_conf: dnsmasq_conf(setup),
    })
}

/// One entry's kernel command line: the initrd's name (UEFI kernels need it), no hang on a
/// panic, the pinned root, then the common and the entry's own arguments.
pub fn cmdline(image: &Image, append: &str, args: &str) -> String {
    format!("initrd=initrd.img {}", uki_cmdline(image, append, args))
}

/// The command line iPXE passes to a unified kernel image (its initramfs is inside; the
/// stub takes these arguments instead of its own while Secure Boot is off).
pub fn uki_cmdline(image: &Image, append: &str, args: &str) -> String {
    let mut line = format!("panic=-1 certainty.expect={}", image.expected_root);
    for part in [append, args] {
        if !part.trim().is_empty() {
            line.push(' ');
            line.push_str(part.trim());
        }
    }
    line
}

fn boot_script(entries: &[(Option<Mac>, &Image, &str)], append: &str) -> String {
    let mut s = String::from(
        "#!ipxe\n# Written by `drone pxe`: each drone's entry by MAC address, else the default.\n",
    );
    for (i, (mac, _, _)) in entries.iter().enumerate() {
        if let Some(mac) = mac {
            s.push_str(&format!("iseq ${{netX/mac}} {mac} && goto entry{i} ||\n"));
        }
    }
    match entries.iter().position(|(mac, _, _)| mac.is_none()) {
        Some(i) => s.push_str(&format!("goto entry{i}\n")),
        None => s.push_str(
            "echo drone: no entry for ${netX/mac} and no default image; booting from the next device\nexit 1\n",
        ),
    }
    for (i, (mac, image, args)) in entries.iter().enumerate() {
        let dir = image_dir(&image.name);
        let who = mac.map_or("default".to_string(), |m| m.to_string());
        s.push_str(&format!(
            "\n:entry{i}\necho drone: {who}: image {name}\n",
            name = image.name
        ));
        if image.uki {
            // UEFI: the unified kernel image, which the firmware measures whole.
            s.push_str(&format!(
                "iseq ${{platform}} efi || goto entry{i}bios\n\
                 chain {dir}/{UKI} {line} || goto failed\n\
                 :entry{i}bios\n",
                line = uki_cmdline(image, append, args),
            ));
        }
        s.push_str(&format!(
            "kernel {dir}/vmlinuz {line} || goto failed\n\
             initrd {dir}/initrd.img || goto failed\n\
             boot || goto failed\n",
            line = cmdline(image, append, args),
        ));
    }
    s.push_str(
        "\n:failed\necho drone: network boot failed; trying again in 10 s\nsleep 10\nreboot\n",
    );
    s
}

fn dnsmasq_conf(setup: &Setup) -> String {
    let mut s = String::from(
        "# Written by `drone pxe`: proxy DHCP (the LAN's DHCP server keeps handing out\n\
         # addresses) and TFTP for drone images. Run: dnsmasq --keep-in-foreground --conf-file=THIS\n\
         port=0\n",
    );
    if let Some(ifname) = &setup.interface {
        s.push_str(&format!("interface={ifname}\nbind-interfaces\n"));
    }
    s.push_str(&format!(
        "dhcp-range={network},proxy\n\
         enable-tftp\n\
         tftp-root={root}\n\
         # Transfers from these ports: open them with 67, 69 and 4011 on the serving node\n\
         # (udp = [67, 69, 4011, \"{tftp_first}-{tftp_last}\"]), so its firewall lets the data leave even to a\n\
         # client port inside a cluster service's range.\n\
         tftp-port-range={tftp_first},{tftp_last}\n\
         # iPXE says so in option 175: it gets the script; a PXE ROM gets iPXE first.\n\
         dhcp-match=set:ipxe,175\n\
         pxe-prompt=\"drone\",0\n\
         pxe-service=tag:!ipxe,x86PC,\"drone: iPXE\",{bios}\n\
         pxe-service=tag:!ipxe,X86-64_EFI,\"drone: iPXE\",{uefi}\n\
         pxe-service=tag:!ipxe,BC_EFI,\"drone: iPXE\",{uefi}\n\
         pxe-service=tag:ipxe,x86PC,\"drone\",boot.ipxe\n\
         pxe-service=tag:ipxe,X86-64_EFI,\"drone\",boot.ipxe\n\
         dhcp-boot=tag:ipxe,boot.ipxe\n\
         log-dhcp\n",
        network = setup.network,
        root = setup.root.display(),
        bios = IPXE_BIOS,
        uefi = IPXE_UEFI,
        tftp_first = TFTP_PORTS.0,
        tftp_last = TFTP_PORTS.1,
    ));
    s
}

/// The UDP ports TFTP transfers use on the server (dnsmasq's `tftp-port-range`): with 67, 69
/// and 4011 they make the boot server's allow-list entry (`udp = [67, 69, 4011, "6900-6999"]`).
pub const TFTP_PORTS: (u16, u16) = (6900, 6999);

/// The UDP ports a boot server needs to itself: TFTP and the PXE boot server (port 67 is
/// shared: the LAN's own DHCP server may run on the same machine, and the proxy answers beside
/// it).
pub const EXCLUSIVE_PORTS: [(u16, &str); 2] = [(69, "TFTP"), (4011, "PXE boot server")];

/// Which of `ports` have a socket bound in `/proc/net/udp` or `/proc/net/udp6` text (this
/// network namespace's). Another TFTP server would otherwise share the port silently (dnsmasq
/// binds with SO_REUSEADDR) and answer half the requests.
pub fn bound_udp_ports(proc_net_udp: &str, ports: &[u16]) -> Vec<u16> {
    let mut out: Vec<u16> = proc_net_udp
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|local| local.rsplit_once(':'))
        .filter_map(|(_, port)| u16::from_str_radix(port, 16).ok())
        .filter(|p| ports.contains(p))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The unified kernel image's name in an image directory (`drone build --uki`).
pub const UKI: &str = "drone.efi";

/// The files of an image directory `drone build` wrote.
pub fn image_files(dir: &Path) -> [PathBuf; 3] {
    [
        dir.join("vmlinuz"),
        dir.join("initrd.img"),
        dir.join("image.json"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            images: vec![
                Image {
                    name: "generic".into(),
                    expected_root: "aa".repeat(32),
                    uki: true,
                },
                Image {
                    name: "e1000".into(),
                    expected_root: "bb".repeat(32),
                    uki: false,
                },
            ],
            default: Some("generic".into()),
            hosts: vec![
                "52:54:00:12:34:01 e1000 ip=dhcp"
                    .parse()
                    .expect("a valid host line"),
            ],
            append: "tyd.join=any tyd.token=abc.def console=ttyS0".into(),
            network: Ipv4Addr::new(198, 18, 0, 0),
            interface: Some("br0".into()),
            root: "/srv/drone".into(),
        }
    }

    #[test]
    fn bound_ports_are_read_from_proc_net_udp() {
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
   1: 011212C6:0045 00000000:0000 07 00000000:00000000 00:00000000 00000000   0        0 1 2 0 0 0\n\
   2: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000   0        0 1 2 0 0 0\n";
        assert_eq!(bound_udp_ports(udp, &[69, 4011]), vec![69]);
        let udp6 = "  sl  local_address remote_address st\n   0: 00000000000000000000000000000000:0FAB 00000000000000000000000000000000:0000 07\n";
        assert_eq!(bound_udp_ports(udp6, &[69, 4011]), vec![4011]);
        assert!(bound_udp_ports("header only\n", &[69]).is_empty());
    }

    #[test]
    fn macs_parse_in_either_notation_and_print_as_ipxe_does() {
        let m: Mac = "52-54-00-AB-cd-0F".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "5254.00ab.cd0f",
            "",
            "1:2:3:4:5:6",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_host_gets_its_image_and_arguments_and_others_the_default() {
        let plan = plan(&setup()).unwrap();
        let s = &plan.boot_ipxe;
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("iseq ${netX/mac} 52:54:00:12:34:01 && goto entry0 ||\n"));
        assert!(s.contains("goto entry1\n"));
        let host = &s[s.find(":entry0").unwrap()..s.find(":entry1").unwrap()];
        assert!(host.contains(&format!(
            "kernel images/e1000/vmlinuz initrd=initrd.img panic=-1 certainty.expect={} tyd.join=any tyd.token=abc.def console=ttyS0 ip=dhcp || goto failed",
            "bb".repeat(32)
        )));
        assert!(host.contains("initrd images/e1000/initrd.img || goto failed"));
        // An image with a unified kernel image: UEFI machines chainload it (the firmware
        // measures it whole), BIOS machines boot the kernel and initrd.
        assert!(s.contains("iseq ${platform} efi || goto entry1bios\nchain images/generic/drone.efi panic=-1 certainty.expect="), "{s}");
        assert!(!s.contains("images/e1000/drone.efi"));
        let default = &s[s.find(":entry1").unwrap()..s.find(":failed").unwrap()];
        assert!(default.contains(&format!("certainty.expect={}", "aa".repeat(32))));
        assert!(!default.contains("ip=dhcp"));
    }

    #[test]
    fn without_a_default_an_unknown_machine_boots_from_its_next_device() {
        let mut s = setup();
        s.default = None;
        let plan = plan(&s).unwrap();
        assert!(plan.boot_ipxe.contains("no default image"));
        assert!(plan.boot_ipxe.contains("exit 1"));
        assert!(!plan.boot_ipxe.contains("goto entry1"));
    }

    #[test]
    fn dnsmasq_is_a_proxy_with_tftp_in_the_root_on_the_interface_only() {
        let conf = plan(&setup()).unwrap().dnsmasq_conf;
        for line in [
            "port=0",
            "interface=br0",
            "bind-interfaces",
            "dhcp-range=198.18.0.0,proxy",
            "enable-tftp",
            "tftp-root=/srv/drone",
            "dhcp-match=set:ipxe,175",
            "pxe-service=tag:!ipxe,x86PC,\"drone: iPXE\",undionly.kpxe",
            "pxe-service=tag:!ipxe,X86-64_EFI,\"drone: iPXE\",snponly.efi",
            "dhcp-boot=tag:ipxe,boot.ipxe",
            "tftp-port-range=6900,6999",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} missing:\n{conf}");
        }
        let mut s = setup();
        s.interface = None;
        let conf = plan(&s).unwrap().dnsmasq_conf;
        assert!(!conf.contains("interface="));
    }

    #[test]
    fn bad_entries_are_refused_naming_what() {
        let mut s = setup();
        s.hosts.push("52-54-00-12-34-01 generic".parse().unwrap());
        assert_eq!(
            plan(&s).unwrap_err().to_string(),
            "MAC 52:54:00:12:34:01 is given twice"
        );
        let mut s = setup();
        s.hosts[0].image = "nope".into();
        assert_eq!(
            plan(&s).unwrap_err().to_string(),
            "--host 52:54:00:12:34:01 names image nope, which is not given (--image NAME=DIR)"
        );
        let mut s = setup();
        s.default = Some("missing".into());
        assert!(matches!(plan(&s), Err(PxeError::UnknownImage { .. })));
        let mut s = setup();
        s.images.push(s.images[0].clone());
        assert!(matches!(plan(&s), Err(PxeError::ImageTwice(_))));
        let mut s = setup();
        s.images[0].name = "../x".into();
        assert!(matches!(plan(&s), Err(PxeError::BadImageName(_))));
        for args in ["a\nchain http://x/", "x ${net0/ip}", "a;b", "q=\"x\""] {
            let mut s = setup();
            s.append = args.into();
            assert!(matches!(plan(&s), Err(PxeError::BadArgs(_))), "{args:?}");
        }
        let mut s = setup();
        s.images.clear();
        assert_eq!(plan(&s), Err(PxeError::NoImage));
        assert!("52:54:00:12:34:01".parse::<Host>().is_err());
        let mut s = setup();
        s.interface = Some("br0\nport=53".into());
        assert!(matches!(plan(&s), Err(PxeError::BadInterface(_))));
    }
}
