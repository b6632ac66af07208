//! The mount table under the monitored root, from `/proc/self/mountinfo`. A mount over any
//! path changes what is there without touching the filesystem itself, so it is watched too:
//! every mount at or below the root, and every mount the root lies below (a remount
//! read-only or `noexec` of the mount above a root that is a subdirectory). Each is known by
//! its mount id too (a mount swapped for another by two `MS_MOVE` calls, same point, type,
//! source and options, is another mount) and by its superblock's options (a tmpfs remounted
//! with another `size=` or `nr_inodes=`).

use std::path::Path;

use crate::entry::{Difference, display_path};
use crate::verdict::Finding;

/// One mount at or below the root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mount {
    pub mount_point: Vec<u8>,
    /// mountinfo's first field: unique per mount while it exists.
    pub mount_id: u64,
    pub fs_type: String,
    pub source: String,
    pub options: String,
    /// The superblock's options (after the source).
    pub super_options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(digits) = b.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(digits).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn under(root: &[u8], p: &[u8]) -> bool {
    root == b"/" || p == root || (p.starts_with(root) && p.get(root.len()) == Some(&b'/'))
}

/// Whether the mount point `p` is one the root lies below (`/` for any root).
fn above(root: &[u8], p: &[u8]) -> bool {
    p == b"/" || (root.starts_with(p) && root.get(p.len()) == Some(&b'/'))
}

/// Parses mountinfo text, keeping mounts at, below or above `root`, sorted.
pub fn parse_mountinfo(text: &str, root: &Path) -> Vec<Mount> {
    let root = std::os::unix::ffi::OsStrExt::as_bytes(root.as_os_str());
    let mut out: Vec<Mount> = text
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let mount_point = unescape(pre.get(4)?);
            if !under(root, &mount_point) && !above(root, &mount_point) {
                return None;
            }
            Some(Mount {
                mount_point,
                mount_id: pre.first()?.parse().ok()?,
                fs_type: post.first()?.to_string(),
                source: post.get(1).map_or(String::new(), |s| s.to_string()),
                options: pre.get(5).map_or(String::new(), |s| s.to_string()),
                super_options: post.get(2).map_or(String::new(), |s| s.to_string()),
            })
        })
        .collect();
    out.sort();
    out
}

pub fn read_mounts(root: &Path) -> std::io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(
        &std::fs::read_to_string("/proc/self/mountinfo")?,
        root,
    ))
}

fn describe(m: &Mount) -> String {
    format!(
        "mount {} {} {} ({}; superblock {})",
        m.mount_id, m.fs_type, m.source, m.options, m.super_options
    )
}

/// Mounts added or removed (or remounted with other options, or replaced) since the baseline.
pub fn compare_mounts(baseline: &[Mount], now: &[Mount]) -> Vec<Finding> {
    let mut out = Vec::new();
    for m in now.iter().filter(|m| !baseline.contains(m)) {
        out.push(Finding {
            path: display_path(&m.mount_point),
            changes: vec![Difference::Mount, Difference::Added],
            detail: describe(m),
        });
    }
    for m in baseline.iter().filter(|m| !now.contains(m)) {
        out.push(Finding {
            path: display_path(&m.mount_point),
            changes: vec![Difference::Mount, Difference::Removed],
            detail: describe(m),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - tmpfs rootfs rw
23 22 0:22 / /proc rw,nosuid - proc proc rw
40 22 0:21 /bin/sh /srv/my\\040dir rw - tmpfs rootfs rw
41 1 8:1 / /other rw - ext4 /dev/sda1 rw
";

    #[test]
    fn keeps_mounts_under_root_and_unescapes() {
        let m = parse_mountinfo(INFO, Path::new("/srv"));
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, b"/");
        assert_eq!(m[1].mount_point, b"/srv/my dir");
        assert_eq!(parse_mountinfo(INFO, Path::new("/")).len(), 4);
        // Only the mount above it.
        assert_eq!(parse_mountinfo(INFO, Path::new("/sr")).len(), 1);
    }

    #[test]
    fn reports_added_and_removed_mounts() {
        let before = parse_mountinfo(INFO, Path::new("/"));
        let mut after = before.clone();
        after.remove(0);
        after.push(Mount {
            mount_point: b"/bin".to_vec(),
            mount_id: 99,
            fs_type: "tmpfs".into(),
            source: "evil".into(),
            options: "rw".into(),
            super_options: "rw".into(),
        });
        let f = compare_mounts(&before, &after);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].path, "/bin");
        assert_eq!(f[0].changes, [Difference::Mount, Difference::Added]);
        assert_eq!(f[1].changes, [Difference::Mount, Difference::Removed]);
    }

    /// Attack (root on a node, issue 25 #6): a tmpfs remounted with another `size=` (only the
    /// superblock's options change), a mount swapped for an identical-looking one by two
    /// `MS_MOVE` calls (only the mount id changes), and a remount `ro,noexec` of the mount
    /// above a root that is a subdirectory: none was seen by the mount watch. Steps:
    /// mountinfo lines as the kernel writes them, before and after each; each is a finding.
    #[test]
    fn superblock_options_moved_mounts_and_the_mount_above_the_root_are_watched() {
        let before = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:30 / /srv/root rw,relatime - tmpfs ram rw,size=1024k,nr_inodes=100
";
        let root = Path::new("/srv/root");
        let base = parse_mountinfo(before, root);
        assert_eq!(base.len(), 2);
        let resized = before.replace("size=1024k", "size=8192k");
        let moved = before.replace("30 22 0:30", "31 22 0:30");
        let above = before.replace(
            "22 1 0:21 / / rw,relatime",
            "22 1 0:21 / / ro,noexec,relatime",
        );
        for (attack, text) in [
            ("resized", &resized),
            ("moved", &moved),
            ("remounted above", &above),
        ] {
            let f = compare_mounts(&base, &parse_mountinfo(text, root));
            assert_eq!(f.len(), 2, "{attack}: {f:?}");
        }
        assert!(compare_mounts(&base, &parse_mountinfo(before, root)).is_empty());
    }
}
