//! Before the baseline: refuse if any process could change the monitored filesystem without
//! producing an event. Writes through a shared writable mapping produce no inotify event and
//! may not even change timestamps; a file held open for writing can be written at any time.

use std::path::Path;

use serde::Serialize;

/// A process that could write to the monitored filesystem unseen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Writer {
    pub pid: u32,
    pub command: String,
    pub path: String,
    /// The inode written to: matched against the monitored tree's, so a writer elsewhere on
    /// the same filesystem is not a finding, and one through a hard link from outside is.
    pub inode: u64,
    /// `shared writable mapping` or `open for writing`.
    pub how: &'static str,
}

/// One `/proc/PID/maps` line: is it a shared writable mapping of a file on `dev`?
/// Format: `start-end perms offset major:minor inode path`.
pub fn maps_line_writes(line: &str, dev: (u64, u64)) -> Option<(u64, String)> {
    let mut f = line.split_whitespace();
    let _range = f.next()?;
    let perms = f.next()?;
    let _offset = f.next()?;
    let (maj, min) = f.next()?.split_once(':')?;
    let inode: u64 = f.next()?.parse().ok()?;
    let path = f.collect::<Vec<_>>().join(" ");
    let writable_shared =
        perms.as_bytes().get(1) == Some(&b'w') && perms.as_bytes().get(3) == Some(&b's');
    let same_dev =
        u64::from_str_radix(maj, 16).ok()? == dev.0 && u64::from_str_radix(min, 16).ok()? == dev.1;
    (writable_shared && same_dev && inode != 0).then_some((inode, path))
}

/// One `/proc/PID/maps` line: a shared mapping of a file on `dev` that is read-only now?
/// (mprotect can make it writable if the file was opened for writing: see
/// [`smaps_may_write`].)
fn maps_line_shared_readonly(line: &str, dev: (u64, u64)) -> bool {
    let mut f = line.split_whitespace();
    let (Some(_), Some(perms), Some(_), Some(devs)) = (f.next(), f.next(), f.next(), f.next())
    else {
        return false;
    };
    let shared_ro =
        perms.as_bytes().get(1) == Some(&b'-') && perms.as_bytes().get(3) == Some(&b's');
    let same_dev = devs.split_once(':').is_some_and(|(maj, min)| {
        u64::from_str_radix(maj, 16).ok() == Some(dev.0)
            && u64::from_str_radix(min, 16).ok() == Some(dev.1)
    });
    shared_ro && same_dev
}

/// Shared mappings of files on `dev` that are read-only now but may be made writable
/// (`VmFlags` has `mw`: the file was opened for writing), from a `/proc/PID/smaps` text. A
/// process holding one can mprotect it writable, change the file, restore it and protect it
/// again, with no descriptor open and no close event: it is a writer.
pub fn smaps_may_write(smaps: &str, dev: (u64, u64)) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut current: Option<(u64, String)> = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(m) = current.take()
                && flags.split_whitespace().any(|f| f == "mw")
            {
                out.push(m);
            }
            continue;
        }
        // A mapping's header is the only line whose first field is a range.
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            current = None;
            if maps_line_shared_readonly(line, dev) {
                let mut f = line.split_whitespace().skip(4);
                let inode = f.next().and_then(|i| i.parse::<u64>().ok()).unwrap_or(0);
                if inode != 0 {
                    current = Some((inode, f.collect::<Vec<_>>().join(" ")));
                }
            }
        }
    }
    out
}

/// The access mode from a `/proc/PID/fdinfo/N` text: does it allow writing?
pub fn fdinfo_writes(text: &str) -> bool {
    text.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|flags| {
            let mode = flags & libc::O_ACCMODE as u32;
            mode == libc::O_WRONLY as u32 || mode == libc::O_RDWR as u32
        })
}

/// The writers whose inode is one of the monitored tree's (by inode, to the tree path it
/// has there). With `--root` below the top of a filesystem, a log file written beside the
/// tree is not the tree's business; a hard link into the tree from outside is, and is named
/// by its path in the tree.
pub fn in_tree(
    writers: Vec<Writer>,
    tree: &std::collections::HashMap<u64, String>,
) -> Vec<(Writer, String)> {
    writers
        .into_iter()
        .filter_map(|w| tree.get(&w.inode).map(|p| (w, p.clone())))
        .collect()
}

/// Scans every process for writers on the filesystem whose device is `dev`.
pub fn scan(dev: u64, proc_root: &Path) -> Vec<Writer> {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id();
    let split = (libc::major(dev) as u64, libc::minor(dev) as u64);
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir(proc_root) else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = p.path();
        let command = std::fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if let Ok(maps) = std::fs::read_to_string(dir.join("maps")) {
            for line in maps.lines() {
                if let Some((inode, path)) = maps_line_writes(line, split) {
                    out.push(Writer {
                        pid,
                        command: command.clone(),
                        path,
                        inode,
                        how: "shared writable mapping",
                    });
                }
            }
            // smaps costs a page-table walk: read only for a process with a shared
            // read-only mapping on this filesystem.
            if maps.lines().any(|l| maps_line_shared_readonly(l, split))
                && let Ok(smaps) = std::fs::read_to_string(dir.join("smaps"))
            {
                for (inode, path) in smaps_may_write(&smaps, split) {
                    out.push(Writer {
                        pid,
                        command: command.clone(),
                        path,
                        inode,
                        how: "shared mapping that may be made writable",
                    });
                }
            }
        }
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if meta.dev() != dev || !meta.is_file() {
                continue;
            }
            let info = std::fs::read_to_string(dir.join("fdinfo").join(fd.file_name()))
                .unwrap_or_default();
            if fdinfo_writes(&info) {
                let path = std::fs::read_link(fd.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                out.push(Writer {
                    pid,
                    command: command.clone(),
                    path,
                    inode: meta.ino(),
                    how: "open for writing",
                });
            }
        }
    }
    out.sort_by(|a, b| (a.pid, &a.path).cmp(&(b.pid, &b.path)));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_shared_writable_mappings_on_the_device() {
        let line = "7f00-7f10 rw-s 00000000 00:1a 1234 /srv/data file";
        assert_eq!(
            maps_line_writes(line, (0, 0x1a)),
            Some((1234, "/srv/data file".into()))
        );
        assert_eq!(maps_line_writes(line, (0, 0x1b)), None);
        assert_eq!(
            maps_line_writes("7f00-7f10 rw-p 0 00:1a 1234 /x", (0, 0x1a)),
            None
        );
        assert_eq!(
            maps_line_writes("7f00-7f10 r--s 0 00:1a 1234 /x", (0, 0x1a)),
            None
        );
        assert_eq!(maps_line_writes("7f00-7f10 rw-s 0 00:00 0", (0, 0)), None);
    }

    /// Regression (issue 9 item 6): with `--root` below the top of a filesystem, any file open
    /// for writing anywhere on it (a log file beside the tree) was a violation at the baseline.
    #[test]
    fn only_writers_of_the_trees_inodes_count_and_are_named_by_their_tree_path() {
        let w = |inode, path: &str| Writer {
            pid: 7,
            command: "x".into(),
            path: path.into(),
            inode,
            how: "open for writing",
        };
        let tree: std::collections::HashMap<u64, String> =
            [(10, "/bin/sh".to_string())].into_iter().collect();
        let found = in_tree(
            vec![w(99, "/var/log/app.log"), w(10, "/outside/link")],
            &tree,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0.path, "/outside/link");
        assert_eq!(found[0].1, "/bin/sh");
    }

    /// Attack (found by a helper attacking from the docs): open a tree file read-write, map
    /// it shared but read-only, close the descriptor and keep the mapping: `r--s` in maps,
    /// so the scan passed it, and the mapping keeps the file open, so no close event came;
    /// later mprotect it writable, change, run, restore, protect again. Steps: smaps as the
    /// kernel (6.18) writes it for that mapping and for the same file mapped from a
    /// read-only descriptor: only the first (VmFlags `mw`) is a writer.
    #[test]
    fn a_read_only_shared_mapping_that_may_be_made_writable_is_a_writer() {
        let smaps = "\
7f4c123bf000-7f4c123c0000 r--s 00000000 fe:00 10018834                   /srv/bin/hello
Size:                  4 kB
Rss:                   4 kB
VmFlags: rd mr me ms 
7f4c123c0000-7f4c123c1000 r--s 00000000 fe:00 10018834                   /srv/bin/hello
Size:                  4 kB
VmFlags: rd sh mr mw me ms 
7f4c123c1000-7f4c123c2000 r--p 00000000 fe:00 777                        /srv/lib/x.so
VmFlags: rd mr mw me
";
        assert_eq!(
            smaps_may_write(smaps, (0xfe, 0)),
            vec![(10018834, "/srv/bin/hello".to_string())]
        );
        assert!(smaps_may_write(smaps, (0xfe, 1)).is_empty());
    }

    #[test]
    fn reads_access_mode_from_fdinfo() {
        assert!(fdinfo_writes("pos:\t0\nflags:\t0100002\nmnt_id:\t1\n"));
        assert!(fdinfo_writes("flags:\t02000001\n"));
        assert!(!fdinfo_writes("flags:\t0100000\n"));
        assert!(!fdinfo_writes("garbage"));
    }
}
