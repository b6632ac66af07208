//! What certaintyd records about one filesystem entry, and how two records differ.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
    /// A directory on another filesystem: recorded, never entered.
    Mount,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            _ => Kind::BlockDev,
        }
    }
}

/// One entry's metadata and content hash. Everything an attacker could change is here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub ino: u64,
    pub dev: u64,
    pub rdev: u64,
    /// (seconds, nanoseconds). ctime cannot be forged back from user space.
    pub ctime: (i64, i64),
    pub mtime: (i64, i64),
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<u8>>,
    /// Sorted (name, value) pairs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// BLAKE3 of a regular file's content (holes of sparse files framed, not read).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "hex_opt")]
    pub content: Option<[u8; 32]>,
}

fn hex_opt<S: serde::Serializer>(h: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
    match h {
        Some(h) => s.serialize_str(&blake3::Hash::from(*h).to_hex()),
        None => s.serialize_none(),
    }
}

/// What differs between the baseline record of a path and what is there now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Difference {
    Added,
    Removed,
    Type,
    Content,
    Size,
    Mode,
    Owner,
    Xattr,
    SymlinkTarget,
    Inode,
    LinkCount,
    Ctime,
    Mtime,
    Device,
    Mount,
    /// The entry could not be read (permissions changed, vanished mid-read, I/O error).
    Unreadable,
    /// What was opened for hashing was not what was walked (a swap mid-verification).
    Swapped,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Difference::Added => "added",
            Difference::Removed => "removed",
            Difference::Type => "type",
            Difference::Content => "content",
            Difference::Size => "size",
            Difference::Mode => "mode",
            Difference::Owner => "owner",
            Difference::Xattr => "xattr",
            Difference::SymlinkTarget => "symlink target",
            Difference::Inode => "inode",
            Difference::LinkCount => "link count",
            Difference::Ctime => "ctime",
            Difference::Mtime => "mtime",
            Difference::Device => "device",
            Difference::Mount => "mount",
            Difference::Unreadable => "unreadable",
            Difference::Swapped => "swapped",
        };
        f.write_str(s)
    }
}

impl Entry {
    /// Every way `now` differs from `self`, most telling first.
    pub fn differences(&self, now: &Entry) -> Vec<Difference> {
        if self.kind == Kind::Mount && now.kind == Kind::Mount {
            // A mounted filesystem's root changes with use (/proc's link count, /tmp's
            // mtime); what is mounted where is the mount table's business, watched apart.
            return if self.dev == now.dev {
                Vec::new()
            } else {
                vec![Difference::Mount]
            };
        }
        let mut out = Vec::new();
        if self.kind != now.kind {
            if self.kind == Kind::Mount || now.kind == Kind::Mount {
                out.push(Difference::Mount);
            }
            out.push(Difference::Type);
        }
        if self.content != now.content {
            out.push(Difference::Content);
        }
        let checks = [
            (self.size != now.size, Difference::Size),
            (self.mode != now.mode, Difference::Mode),
            (
                self.uid != now.uid || self.gid != now.gid,
                Difference::Owner,
            ),
            (self.xattrs != now.xattrs, Difference::Xattr),
            (self.target != now.target, Difference::SymlinkTarget),
            (self.ino != now.ino, Difference::Inode),
            (self.nlink != now.nlink, Difference::LinkCount),
            (self.ctime != now.ctime, Difference::Ctime),
            (self.mtime != now.mtime, Difference::Mtime),
            (self.rdev != now.rdev, Difference::Device),
        ];
        out.extend(checks.iter().filter(|(d, _)| *d).map(|(_, k)| *k));
        if self.dev != now.dev && !out.contains(&Difference::Mount) {
            out.push(Difference::Mount);
        }
        out
    }

    /// Canonical bytes for the Merkle leaf: every field, length-prefixed.
    pub fn leaf_hash(&self, path: &[u8]) -> blake3::Hash {
        match self.kind {
            Kind::Mount => mount_leaf(path, Some(self.dev)),
            _ => self.leaf(path, true),
        }
    }

    /// The leaf without what differs from boot to boot or from one filesystem to another:
    /// what an image builder can predict, and an operator can pin as the expected root.
    /// Left out: inode, device and ctime; a directory's size and link count (filesystem
    /// artefacts; its children are in the tree anyway); and everything about a mount point
    /// but its place (what is mounted there is checked against the mount table instead).
    pub fn stable_leaf_hash(&self, path: &[u8]) -> blake3::Hash {
        match self.kind {
            Kind::Mount => mount_leaf(path, None),
            Kind::Dir => Entry {
                size: 0,
                nlink: 0,
                ..self.clone()
            }
            .leaf(path, false),
            _ => self.leaf(path, false),
        }
    }

    fn leaf(&self, path: &[u8], volatile: bool) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        let mut field = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(path);
        field(&[self.kind as u8]);
        for n in [self.mode, self.uid, self.gid] {
            field(&n.to_le_bytes());
        }
        for n in [self.size, self.nlink, self.rdev] {
            field(&n.to_le_bytes());
        }
        field(&self.mtime.0.to_le_bytes());
        field(&self.mtime.1.to_le_bytes());
        if volatile {
            for n in [self.ino, self.dev] {
                field(&n.to_le_bytes());
            }
            field(&self.ctime.0.to_le_bytes());
            field(&self.ctime.1.to_le_bytes());
        }
        field(self.target.as_deref().unwrap_or(b"\0none"));
        for (k, v) in &self.xattrs {
            field(k);
            field(v);
        }
        field(self.content.as_ref().map_or(&b"\0none"[..], |c| &c[..]));
        h.finalize()
    }
}

/// A mount point's leaf: its place, and (unless stable) which filesystem is mounted there.
fn mount_leaf(path: &[u8], dev: Option<u64>) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(&(path.len() as u64).to_le_bytes());
    h.update(path);
    h.update(b"\0mount");
    if let Some(dev) = dev {
        h.update(&dev.to_le_bytes());
    }
    h.finalize()
}

/// Renders raw path bytes for logs: UTF-8 as is, anything else as `\xNN`.
pub fn display_path(path: &[u8]) -> String {
    let mut out = String::new();
    for chunk in path.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(dev: u64, nlink: u64, mtime: i64) -> Entry {
        Entry {
            kind: Kind::Mount,
            mode: 0o555,
            uid: 0,
            gid: 0,
            size: 0,
            nlink,
            ino: 1,
            dev,
            rdev: 0,
            ctime: (mtime, 0),
            mtime: (mtime, 0),
            target: None,
            xattrs: Vec::new(),
            content: None,
        }
    }

    #[test]
    fn a_mount_point_changes_only_when_another_filesystem_is_mounted_there() {
        // /proc gains links as processes start; /tmp's mtime moves as files are made.
        let before = mount(5, 100, 1);
        let used = mount(5, 180, 99);
        assert!(before.differences(&used).is_empty());
        assert_eq!(before.leaf_hash(b"/proc"), used.leaf_hash(b"/proc"));
        let other = mount(6, 100, 1);
        assert_eq!(before.differences(&other), vec![Difference::Mount]);
        assert_ne!(before.leaf_hash(b"/proc"), other.leaf_hash(b"/proc"));
        assert_eq!(
            before.stable_leaf_hash(b"/proc"),
            other.stable_leaf_hash(b"/proc")
        );
        // Unmounted (a plain directory again): a change.
        let dir = Entry {
            kind: Kind::Dir,
            ..before.clone()
        };
        assert!(before.differences(&dir).contains(&Difference::Mount));
    }
}
