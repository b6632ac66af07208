//! The kernel's neighbour (ARP/NDP) table must hold an entry per peer on the tunnel and per
//! peer endpoint on the LAN. Its hard limit, `gc_thresh3`, defaults to 1024 for the whole
//! kernel: a cluster of about 500 nodes or more overflows it, and the kernel then drops
//! packets silently ("neighbor table overflow"), heartbeats and services alike. netguard
//! raises the limits (never lowers them) when the policy's map needs more.

use std::path::{Path, PathBuf};

/// The three garbage-collection thresholds of one table, as the kernel names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Below this many entries, nothing is collected.
    pub gc_thresh1: u64,
    /// Above this, entries older than 5 s are collected.
    pub gc_thresh2: u64,
    /// The hard limit.
    pub gc_thresh3: u64,
}

/// Headroom for what the node talks to besides the cluster (gateway, servers, other links).
const HEADROOM: u64 = 256;

/// What `nodes` cluster members need: a tunnel and a LAN neighbour per peer, twice over so
/// entries being collected do not crowd out live ones, plus headroom.
pub fn needed(nodes: usize) -> u64 {
    let peers = u64::try_from(nodes.saturating_sub(1)).unwrap_or(u64::MAX);
    peers.saturating_mul(4).saturating_add(HEADROOM)
}

/// The thresholds to write, or `None` when `current` is already enough. Only ever raises.
pub fn raised(current: Thresholds, nodes: usize) -> Option<Thresholds> {
    let want = needed(nodes);
    if current.gc_thresh3 >= want {
        return None;
    }
    Some(Thresholds {
        gc_thresh1: current.gc_thresh1.max(want / 8),
        gc_thresh2: current.gc_thresh2.max(want / 2),
        gc_thresh3: want,
    })
}

/// The IPv4 and IPv6 tables' sysctl directories. They exist only in the initial network
/// namespace (the tables are the kernel's, shared by every namespace).
pub fn tables(proc_sys: &Path) -> [(&'static str, PathBuf); 2] {
    [
        ("ipv4", proc_sys.join("net/ipv4/neigh/default")),
        ("ipv6", proc_sys.join("net/ipv6/neigh/default")),
    ]
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SysctlError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn read_one(path: PathBuf) -> Result<u64, SysctlError> {
    let text = std::fs::read_to_string(&path).map_err(|source| SysctlError {
        path: path.clone(),
        source,
    })?;
    text.trim().parse().map_err(|_| SysctlError {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a number"),
    })
}

/// Reads a table's thresholds; `Ok(None)` when the table is not visible here (a network
/// namespace other than the first).
pub fn read(dir: &Path) -> Result<Option<Thresholds>, SysctlError> {
    if !dir.join("gc_thresh3").exists() {
        return Ok(None);
    }
    Ok(Some(Thresholds {
        gc_thresh1: read_one(dir.join("gc_thresh1"))?,
        gc_thresh2: read_one(dir.join("gc_thresh2"))?,
        gc_thresh3: read_one(dir.join("gc_thresh3"))?,
    }))
}

/// Writes raised thresholds: the hard limit first, so thresh2 is never above thresh3.
pub fn write(dir: &Path, t: Thresholds) -> Result<(), SysctlError> {
    for (name, value) in [
        ("gc_thresh3", t.gc_thresh3),
        ("gc_thresh2", t.gc_thresh2),
        ("gc_thresh1", t.gc_thresh1),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, format!("{value}\n"))
            .map_err(|source| SysctlError { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Thresholds = Thresholds {
        gc_thresh1: 128,
        gc_thresh2: 512,
        gc_thresh3: 1024,
    };

    #[test]
    fn small_clusters_leave_the_kernel_defaults_alone() {
        assert_eq!(raised(DEFAULTS, 1), None);
        assert_eq!(raised(DEFAULTS, 3), None);
    }

    #[test]
    fn a_thousand_nodes_overflow_the_default_table_so_it_is_raised() {
        let t = raised(DEFAULTS, 1000).unwrap();
        assert!(t.gc_thresh3 >= 2 * 999, "{t:?}");
        assert!(t.gc_thresh1 <= t.gc_thresh2 && t.gc_thresh2 <= t.gc_thresh3);
    }

    #[test]
    fn limits_an_operator_raised_further_are_never_lowered() {
        let big = Thresholds {
            gc_thresh1: 50_000,
            gc_thresh2: 60_000,
            gc_thresh3: 100_000,
        };
        assert_eq!(raised(big, 1000), None);
        let odd = Thresholds {
            gc_thresh1: 4000,
            gc_thresh2: 4000,
            gc_thresh3: 1024,
        };
        let t = raised(odd, 1000).unwrap();
        assert_eq!((t.gc_thresh1, t.gc_thresh2), (4000, 4000));
    }

    #[test]
    fn reads_and_raises_a_table_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read(dir.path()).unwrap(),
            None,
            "no table: not visible here"
        );
        for (n, v) in [(1, 128), (2, 512), (3, 1024)] {
            std::fs::write(dir.path().join(format!("gc_thresh{n}")), format!("{v}\n")).unwrap();
        }
        let t = read(dir.path()).unwrap().unwrap();
        assert_eq!(t, DEFAULTS);
        let up = raised(t, 1000).unwrap();
        write(dir.path(), up).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(up));
        std::fs::write(dir.path().join("gc_thresh2"), "lots\n").unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("gc_thresh2") && e.contains("not a number"),
            "{e}"
        );
    }
}
