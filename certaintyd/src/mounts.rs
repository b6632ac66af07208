//! The mount table under the monitored root, from `/proc/self/mountinfo`. A mount over any
//! path changes what is there without touching the filesystem itself, so it is watched too.

use std::path::Path;

use crate::entry::{Difference, display_path};
use crate::verdict::Finding;

/// One mount at or below the root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mount {
    pub mount_point: Vec<u8>,
    pub fs_type: String,
    pub source: String,
    pub options: String,
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

/// Parses mountinfo text, keeping mounts at or below `root`, sorted.
pub fn parse_mountinfo(text: &str, root: &Path) -> Vec<Mount> {
    let root = std::os::unix::ffi::OsStrExt::as_bytes(root.as_os_str());
    let mut out: Vec<Mount> = text
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let mount_point = unescape(pre.get(4)?);
            if !under(root, &mount_point) {
                return None;
            }
            Some(Mount {
                mount_point,
                fs_type: post.first()?.to_string(),
                source: post.get(1).map_or(String::new(), |s| s.to_string()),
                options: pre.get(5).map_or(String::new(), |s| s.to_string()),
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

/// Mounts added or removed (or remounted with other options) since the baseline.
pub fn compare_mounts(baseline: &[Mount], now: &[Mount]) -> Vec<Finding> {
    let mut out = Vec::new();
    for m in now.iter().filter(|m| !baseline.contains(m)) {
        out.push(Finding {
            path: display_path(&m.mount_point),
            changes: vec![Difference::Mount, Difference::Added],
            detail: format!("{} {} ({})", m.fs_type, m.source, m.options),
        });
    }
    for m in baseline.iter().filter(|m| !now.contains(m)) {
        out.push(Finding {
            path: display_path(&m.mount_point),
            changes: vec![Difference::Mount, Difference::Removed],
            detail: format!("{} {} ({})", m.fs_type, m.source, m.options),
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
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, b"/srv/my dir");
        assert_eq!(parse_mountinfo(INFO, Path::new("/")).len(), 4);
        assert!(parse_mountinfo(INFO, Path::new("/sr")).is_empty());
    }

    #[test]
    fn reports_added_and_removed_mounts() {
        let before = parse_mountinfo(INFO, Path::new("/"));
        let mut after = before.clone();
        after.remove(0);
        after.push(Mount {
            mount_point: b"/bin".to_vec(),
            fs_type: "tmpfs".into(),
            source: "evil".into(),
            options: "rw".into(),
        });
        let f = compare_mounts(&before, &after);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].path, "/bin");
        assert_eq!(f[0].changes, [Difference::Mount, Difference::Added]);
        assert_eq!(f[1].changes, [Difference::Mount, Difference::Removed]);
    }
}
