//! The image's root filesystem as a plain value: what goes into the initramfs, and the
//! certaintyd root hash the booted drone will compute over it.
//!
//! Pure: no filesystem access. Everything that ends up in the archive is decided here, so
//! the same tree always gives the same bytes and the same expected root.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use manifest::Manifest;
use manifest::entry::{Entry, Kind};

/// What one path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub content: Content,
    /// Permission bits (setuid, setgid, sticky included), no file type.
    pub mode: u32,
}

/// A root filesystem: absolute paths (`/bin/sh`) to nodes, plus the directories the drone
/// mounts something on at boot (their contents are hidden from certaintyd then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
    mounts: BTreeSet<String>,
    /// Every entry's modification time, seconds since the epoch (reproducible builds).
    mtime: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("{0}: image paths must be absolute, normalised and free of NUL")]
    BadPath(String),
    #[error("{path}: {what} is larger than the 4 GiB cpio limit")]
    TooLarge { path: String, what: &'static str },
    #[error("{0}: a parent of this path is not a directory in the image")]
    ParentNotDir(String),
}

fn check_path(path: &str) -> Result<(), TreeError> {
    let ok = path.starts_with('/')
        && path.len() > 1
        && !path.ends_with('/')
        && !path.contains('\0')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(TreeError::BadPath(path.to_string()))
    }
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

impl Tree {
    pub fn new(mtime: u32) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "/".to_string(),
            Node {
                content: Content::Dir,
                mode: 0o755,
            },
        );
        Self {
            nodes,
            mounts: BTreeSet::new(),
            mtime,
        }
    }

    /// Puts `node` at `path`, creating missing parents (0755) and replacing what was there.
    pub fn put(&mut self, path: &str, content: Content, mode: u32) -> Result<(), TreeError> {
        check_path(path)?;
        let mut missing = Vec::new();
        let mut p = parent(path);
        while p != "/" {
            match self.nodes.get(p) {
                Some(Node {
                    content: Content::Dir,
                    ..
                }) => break,
                Some(_) => return Err(TreeError::ParentNotDir(path.to_string())),
                None => missing.push(p.to_string()),
            }
            p = parent(p);
        }
        for dir in missing {
            self.nodes.insert(
                dir,
                Node {
                    content: Content::Dir,
                    mode: 0o755,
                },
            );
        }
        if let Content::File(bytes) = &content
            && u32::try_from(bytes.len()).is_err()
        {
            return Err(TreeError::TooLarge {
                path: path.into(),
                what: "file",
            });
        }
        if matches!(self.nodes.get(path), Some(n) if n.content == Content::Dir)
            && content != Content::Dir
        {
            // Replacing a directory drops what was under it.
            let prefix = format!("{path}/");
            self.nodes.retain(|k, _| !k.starts_with(&prefix));
        }
        self.nodes.insert(
            path.to_string(),
            Node {
                content,
                mode: mode & 0o7777,
            },
        );
        Ok(())
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        self.put(path, Content::Dir, mode)
    }

    pub fn file(&mut self, path: &str, bytes: Vec<u8>, mode: u32) -> Result<(), TreeError> {
        self.put(path, Content::File(bytes), mode)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), TreeError> {
        self.put(path, Content::Symlink(target.to_string()), 0o777)
    }

    /// A directory that init mounts a filesystem on (`/proc`, `/run`...).
    pub fn mount_point(&mut self, path: &str) -> Result<(), TreeError> {
        self.dir(path, 0o755)?;
        self.mounts.insert(path.to_string());
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// Total bytes of file content.
    pub fn content_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.content {
                Content::File(b) => b.len() as u64,
                _ => 0,
            })
            .sum()
    }

    fn hidden_by_mount(&self, path: &str) -> bool {
        self.mounts.iter().any(|m| {
            path.len() > m.len() && path.starts_with(m.as_str()) && path.as_bytes()[m.len()] == b'/'
        })
    }

    /// What certaintyd will record for this tree once the drone has booted and mounted its
    /// filesystems: the manifest whose `stable_root` the operator pins.
    pub fn manifest(&self) -> Manifest {
        let mut m = Manifest::default();
        for (path, node) in &self.nodes {
            if self.hidden_by_mount(path) {
                continue;
            }
            let (kind, size, rdev, target, content) = match &node.content {
                Content::Dir if self.mounts.contains(path) => (Kind::Mount, 0, 0, None, None),
                Content::Dir => (Kind::Dir, 0, 0, None, None),
                Content::File(b) => (
                    Kind::File,
                    b.len() as u64,
                    0,
                    None,
                    Some(*blake3::hash(b).as_bytes()),
                ),
                Content::Symlink(t) => (
                    Kind::Symlink,
                    t.len() as u64,
                    0,
                    Some(t.as_bytes().to_vec()),
                    None,
                ),
                Content::CharDev { major, minor } => (
                    Kind::CharDev,
                    0,
                    nix::sys::stat::makedev(u64::from(*major), u64::from(*minor)),
                    None,
                    None,
                ),
            };
            m.entries.insert(
                path.as_bytes().to_vec(),
                Entry {
                    kind,
                    mode: node.mode,
                    uid: 0,
                    gid: 0,
                    size,
                    nlink: 1,
                    ino: 0,
                    dev: 0,
                    rdev,
                    ctime: (0, 0),
                    mtime: (i64::from(self.mtime), 0),
                    target,
                    xattrs: Vec::new(),
                    content,
                },
            );
        }
        m
    }

    /// The root hash to pin as `certainty.expect=` (certaintyd's boot-stable root).
    pub fn expected_root(&self) -> blake3::Hash {
        self.manifest().stable_root()
    }

    /// Writes the tree as a newc cpio archive: parents first, inode numbers in path order,
    /// owner root, one fixed mtime. Same tree, same bytes.
    pub fn write_cpio<W: Write>(&self, mut out: W) -> io::Result<W> {
        for (ino, (path, node)) in self.nodes.iter().enumerate().skip(1) {
            let (type_bits, data, rdev): (u32, &[u8], (u32, u32)) = match &node.content {
                Content::Dir => (0o040000, &[], (0, 0)),
                Content::File(b) => (0o100000, b, (0, 0)),
                Content::Symlink(t) => (0o120000, t.as_bytes(), (0, 0)),
                Content::CharDev { major, minor } => (0o020000, &[], (*major, *minor)),
            };
            let len = u32::try_from(data.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "entry over 4 GiB"))?;
            let builder = cpio::NewcBuilder::new(&path[1..])
                .ino(u32::try_from(ino).unwrap_or(u32::MAX))
                .mode(type_bits | node.mode)
                .uid(0)
                .gid(0)
                .nlink(if node.content == Content::Dir { 2 } else { 1 })
                .mtime(self.mtime)
                .rdev_major(rdev.0)
                .rdev_minor(rdev.1);
            let mut w = builder.write(out, len);
            w.write_all(data)?;
            out = w.finish()?;
        }
        cpio::newc::trailer(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut t = Tree::new(0);
        t.file("/bin/busybox", b"bb".to_vec(), 0o755).unwrap();
        t.symlink("/bin/sh", "/bin/busybox").unwrap();
        t.mount_point("/proc").unwrap();
        t.put(
            "/dev/console",
            Content::CharDev { major: 5, minor: 1 },
            0o600,
        )
        .unwrap();
        t.mount_point("/dev").unwrap();
        t
    }

    #[test]
    fn parents_are_created_and_bad_paths_refused() {
        let mut t = Tree::new(0);
        t.file("/a/b/c", vec![], 0o644).unwrap();
        assert_eq!(t.get("/a/b").unwrap().content, Content::Dir);
        for bad in ["a", "/", "/a/", "/a/../b", "/a//b", "/a/./b", "/a\0"] {
            assert!(
                matches!(t.file(bad, vec![], 0o644), Err(TreeError::BadPath(_))),
                "{bad}"
            );
        }
        assert_eq!(
            t.file("/a/b/c/d", vec![], 0o644),
            Err(TreeError::ParentNotDir("/a/b/c/d".into()))
        );
    }

    #[test]
    fn same_tree_same_bytes_and_root() {
        let a = sample().write_cpio(Vec::new()).unwrap();
        let b = sample().write_cpio(Vec::new()).unwrap();
        assert_eq!(a, b);
        assert_eq!(sample().expected_root(), sample().expected_root());
        let mut c = sample();
        c.file("/bin/busybox", b"bB".to_vec(), 0o755).unwrap();
        assert_ne!(c.expected_root(), sample().expected_root());
        let mut d = sample();
        d.file("/bin/busybox", b"bb".to_vec(), 0o4755).unwrap();
        assert_ne!(d.expected_root(), sample().expected_root());
    }

    #[test]
    fn what_a_mount_hides_is_not_in_the_manifest() {
        let m = sample().manifest();
        assert!(!m.entries.contains_key(b"/dev/console".as_slice()));
        assert_eq!(m.entries[b"/dev".as_slice()].kind, Kind::Mount);
        assert_eq!(m.entries[b"/proc".as_slice()].kind, Kind::Mount);
        // ...but it is in the archive, for the kernel's first console.
        let bytes = sample().write_cpio(Vec::new()).unwrap();
        let names = archive_names(&bytes);
        assert!(names.contains(&"dev/console".to_string()), "{names:?}");
    }

    #[test]
    fn parents_come_before_children_in_the_archive() {
        let mut t = Tree::new(7);
        t.file("/bin-x/y", vec![1], 0o644).unwrap();
        t.file("/bin/z", vec![2], 0o644).unwrap();
        let names = archive_names(&t.write_cpio(Vec::new()).unwrap());
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert!(pos("bin") < pos("bin/z"));
        assert!(pos("bin-x") < pos("bin-x/y"));
    }

    fn archive_names(mut bytes: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        loop {
            let r = cpio::NewcReader::new(bytes).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            names.push(r.entry().name().to_string());
            bytes = r.finish().unwrap();
        }
        names
    }
}
