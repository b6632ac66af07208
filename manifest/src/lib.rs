//! A snapshot of the monitored tree: entries by path (`entry`), and their Merkle root. What
//! certaintyd records and verifies, and what `drone build` computes for an image's pinned
//! root without linking the daemon.
//!
//! The Merkle tree follows the directory tree: a directory's node hashes its own record and
//! its children's nodes in name order, so a change shows up only along its path to the root.

use std::collections::{BTreeMap, HashMap};

pub mod entry;

use crate::entry::{Difference, Entry, Kind};

/// Entries keyed by their path below the root (`/`, `/bin`, `/bin/sh`), as raw bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: BTreeMap<Vec<u8>, Entry>,
}

/// Something that went wrong reading one entry: a violation after the baseline, a startup
/// error before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Vec<u8>,
    pub kind: Difference,
    pub detail: String,
}

/// A walk's result: what was read, and what could not be.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub manifest: Manifest,
    pub problems: Vec<Problem>,
}

/// The parent of a manifest path (`/a/b` -> `/a`, `/a` -> `/`).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) | None => b"/",
        Some(i) => &path[..i],
    }
}

/// `dir` joined with `name` in manifest form.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if dir != b"/" {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Manifest {
    /// The Merkle root. Children sort after their parent in byte order (a parent is a prefix),
    /// so one pass in reverse order sees every child before its parent: no recursion, any depth.
    pub fn root_hash(&self) -> blake3::Hash {
        self.merkle(|path, e| e.leaf_hash(path))
    }

    /// The Merkle root over boot-stable fields only; the root directory's own metadata (set
    /// by the kernel, not the image) is left out. This is what `expected_root` pins.
    pub fn stable_root(&self) -> blake3::Hash {
        self.merkle(|path, e| {
            if path == b"/" {
                blake3::hash(b"root")
            } else {
                e.stable_leaf_hash(path)
            }
        })
    }

    fn merkle(&self, leaf: impl Fn(&[u8], &Entry) -> blake3::Hash) -> blake3::Hash {
        let mut pending: HashMap<&[u8], Vec<(&[u8], blake3::Hash)>> = HashMap::new();
        let mut root = None;
        for (path, entry) in self.entries.iter().rev() {
            let mut h = blake3::Hasher::new();
            h.update(leaf(path, entry).as_bytes());
            if let Some(mut children) = pending.remove(path.as_slice()) {
                children.sort_by(|a, b| a.0.cmp(b.0));
                for (_, child) in children {
                    h.update(child.as_bytes());
                }
            }
            let node = h.finalize();
            if path.as_slice() == b"/" {
                root = Some(node);
            } else {
                pending.entry(parent(path)).or_default().push((path, node));
            }
        }
        // Orphans (no parent in the manifest) still count, so no entry is ever left out.
        let mut h = blake3::Hasher::new();
        h.update(root.unwrap_or_else(|| blake3::hash(b"")).as_bytes());
        let mut orphans: Vec<_> = pending.into_values().flatten().collect();
        orphans.sort_by(|a, b| a.0.cmp(b.0));
        for (_, node) in orphans {
            h.update(node.as_bytes());
        }
        h.finalize()
    }

    pub fn files(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.kind == Kind::File)
            .count()
    }

    pub fn bytes(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.size)
            .sum()
    }
}
