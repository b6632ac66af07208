//! A unified kernel image (UKI): systemd-boot's EFI stub with the kernel, the initramfs, the
//! command line and an os-release added as PE sections (with objcopy, as ukify does). UEFI
//! firmware measures the PE it starts into PCR 4, so one measurement covers the whole drone,
//! and a peer can predict PCR 4 from the file alone ([`predict_pcr4`]; issue 29).

use std::path::{Path, PathBuf};
use std::process::Command;

use authenticode::authenticode_digest;
use object::read::pe::PeFile64;
use sha2::{Digest, Sha256};

/// Debian's `systemd-boot-efi` stub.
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// What EDK2 (OVMF) extends into PCR 4 before the first boot application: the action
/// event's text (its SHA-256 is the digest), then the separator (four zero bytes).
pub const CALLING_EFI_APPLICATION: &[u8] = b"Calling EFI Application from Boot Option";
pub const SEPARATOR: [u8; 4] = [0; 4];

#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not a 64-bit PE image")]
    NotPe(PathBuf),
    #[error("objcopy (binutils) failed: {0}")]
    Objcopy(String),
}

fn read(path: &Path) -> Result<Vec<u8>, UkiError> {
    std::fs::read(path).map_err(|source| UkiError::Io {
        path: path.into(),
        source,
    })
}

/// Where each added section goes: after the stub's last section, each aligned to 4 KiB (and
/// to the stub's section alignment), in the order given. Returns (name, VMA).
pub fn layout(stub: &[u8], sizes: &[(&str, u64)]) -> Option<Vec<(String, u64)>> {
    let pe = PeFile64::parse(stub).ok()?;
    let opt = &pe.nt_headers().optional_header;
    let base = opt.image_base.get(object::LittleEndian);
    let align = u64::from(opt.section_alignment.get(object::LittleEndian)).max(0x1000);
    let end = pe
        .section_table()
        .iter()
        .map(|s| {
            u64::from(s.virtual_address.get(object::LittleEndian))
                + u64::from(s.virtual_size.get(object::LittleEndian))
        })
        .max()?;
    let up = |v: u64| v.div_ceil(align) * align;
    let mut at = up(end);
    let mut out = Vec::with_capacity(sizes.len());
    for (name, size) in sizes {
        out.push(((*name).to_string(), base + at));
        at = up(at + size);
    }
    Some(out)
}

/// Writes `out`: the stub with `.osrel`, `.cmdline`, `.linux` and `.initrd`.
pub fn build(
    stub: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    osrel: &str,
    out: &Path,
) -> Result<(), UkiError> {
    let stub_bytes = read(stub)?;
    let dir = out.parent().unwrap_or(Path::new("."));
    let write = |name: &str, text: &str| -> Result<PathBuf, UkiError> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|source| UkiError::Io {
            path: p.clone(),
            source,
        })?;
        Ok(p)
    };
    let osrel_file = write(".uki-osrel", osrel)?;
    let cmdline_file = write(".uki-cmdline", cmdline)?;
    let len = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|source| UkiError::Io {
                path: p.into(),
                source,
            })
    };
    let parts: [(&str, &Path); 4] = [
        (".osrel", &osrel_file),
        (".cmdline", &cmdline_file),
        (".linux", kernel),
        (".initrd", initrd),
    ];
    let mut sizes = Vec::new();
    for (name, p) in &parts {
        sizes.push((*name, len(p)?));
    }
    let vmas = layout(&stub_bytes, &sizes).ok_or_else(|| UkiError::NotPe(stub.into()))?;
    let tmp = dir.join(".uki.tmp");
    let mut cmd = Command::new("objcopy");
    for ((name, path), (_, vma)) in parts.iter().zip(&vmas) {
        cmd.arg("--add-section")
            .arg(format!("{name}={}", path.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={vma:#x}"));
    }
    let result = cmd.arg(stub).arg(&tmp).output();
    let _ = std::fs::remove_file(&osrel_file);
    let _ = std::fs::remove_file(&cmdline_file);
    let output = result.map_err(|e| UkiError::Objcopy(e.to_string()))?;
    if !output.status.success() {
        return Err(UkiError::Objcopy(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    std::fs::rename(&tmp, out).map_err(|source| UkiError::Io {
        path: out.into(),
        source,
    })
}

/// The Authenticode SHA-256 of a PE image: what UEFI firmware measures when it starts it.
pub fn authenticode_sha256(pe: &[u8]) -> Option<[u8; 32]> {
    let file = PeFile64::parse(pe).ok()?;
    let mut h = Sha256::new();
    authenticode_digest(&file, &mut h).ok()?;
    Some(h.finalize().into())
}

/// How UEFI firmware came to start the UKI: each path leaves its own events in PCR 4 (read
/// from OVMF's event log, issue 29).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPath {
    /// The firmware's boot manager starts it from a disk (an ESP, a USB stick): the action
    /// event, the separator, the UKI, then the kernel the stub loads from its `.linux`.
    Firmware,
    /// qemu's `-kernel` under OVMF: the firmware measures the UKI as it loads it, before
    /// the action event and the separator; then the kernel.
    QemuKernel,
    /// Network boot through iPXE (`snponly.efi`, as `drone pxe` serves it to UEFI PXE
    /// ROMs), whose Authenticode hash this is: iPXE, then the UKI twice (iPXE loads it once
    /// to check it is an image, then again to start it), then the kernel.
    Ipxe([u8; 32]),
}

impl BootPath {
    pub fn name(self) -> &'static str {
        match self {
            BootPath::Firmware => "firmware",
            BootPath::QemuKernel => "qemu-kernel",
            BootPath::Ipxe(_) => "ipxe",
        }
    }
}

/// Debian's iPXE for UEFI, which `drone pxe` serves.
pub const IPXE_EFI: &str = "/usr/lib/ipxe/snponly.efi";

fn extend(pcr: [u8; 32], digest: [u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

/// PCR 4 after booting a UKI whose Authenticode hash is `uki`, its embedded kernel's `kernel`
/// (systemd-stub starts the kernel with LoadImage, which the firmware measures too).
pub fn predict_pcr4(path: BootPath, uki: [u8; 32], kernel: [u8; 32]) -> [u8; 32] {
    let action: [u8; 32] = Sha256::digest(CALLING_EFI_APPLICATION).into();
    let separator: [u8; 32] = Sha256::digest(SEPARATOR).into();
    let events: Vec<[u8; 32]> = match path {
        BootPath::Firmware => vec![action, separator, uki, kernel],
        BootPath::QemuKernel => vec![uki, action, separator, kernel],
        BootPath::Ipxe(ipxe) => vec![action, separator, ipxe, uki, uki, kernel],
    };
    events.into_iter().fold([0u8; 32], extend)
}

/// The predictions for `uki`'s file and its kernel's, by boot path; through iPXE too when
/// `ipxe` (its `snponly.efi`) is given.
pub fn predictions(
    uki: &[u8],
    kernel: &[u8],
    ipxe: Option<&[u8]>,
) -> Option<Vec<(BootPath, [u8; 32])>> {
    let (u, k) = (authenticode_sha256(uki)?, authenticode_sha256(kernel)?);
    let mut paths = vec![BootPath::Firmware, BootPath::QemuKernel];
    if let Some(i) = ipxe {
        paths.push(BootPath::Ipxe(authenticode_sha256(i)?));
    }
    Some(
        paths
            .into_iter()
            .map(|p| (p, predict_pcr4(p, u, k)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What OVMF (Debian's 2022.11, under qemu 7.2 with swtpm) extended into PCR 4 for one
    /// UKI, read from its event log in the guest, and the PCR 4 the guest read: the
    /// prediction replays both boot paths from the two Authenticode hashes alone.
    #[test]
    fn the_prediction_replays_what_ovmf_measured() {
        let h = |s: &str| -> [u8; 32] {
            let mut out = [0u8; 32];
            hex::decode_to_slice(s, &mut out).unwrap_or_default();
            out
        };
        let uki = h("28ab810f08d84cf9d79ebf99451af7eca2cf79f026f1e1d8109b3f9ecf948cce");
        let kernel = h("65c89335d8a5d25a8eeffd4de4a02087ac8dcf26165dbff8806a19f68ecd2842");
        assert_eq!(
            hex::encode(predict_pcr4(BootPath::QemuKernel, uki, kernel)),
            "87e4d4e29b1da7029867c4ad636ccbf6854b4afdcea3f0758d244a4f83d8cc4f"
        );
        assert_eq!(
            hex::encode(predict_pcr4(BootPath::Firmware, uki, kernel)),
            "f3d3b766592449fbe1e69defc621993aee559f38f18866b55ed4b1b55180d281"
        );
        // Debian 12's snponly.efi (ipxe 1.0.0+git-20190125.36a4c85-5.1).
        let ipxe = h("ea7ed161f290138786ab59485e7bb160b1029523c24b7c55674d9d1cc0409e6c");
        assert_eq!(
            hex::encode(predict_pcr4(BootPath::Ipxe(ipxe), uki, kernel)),
            "68cb2d75452c5acfcbb06b58687c6f06e247c7d0fdaea708605dceb0a7b51b64"
        );
        assert_eq!(
            hex::encode(&Sha256::digest(CALLING_EFI_APPLICATION)[..8]),
            "3d6772b4f84ed475"
        );
        assert_eq!(
            hex::encode(&Sha256::digest(SEPARATOR)[..8]),
            "df3f619804a92fdb"
        );
    }
}
