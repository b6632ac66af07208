//! What clusterd knows of every node of the map, written as JSON beside the quarantine list
//! each heartbeat interval (`clusterd --view`): `tyd status --cluster` shows it, and joind on
//! a master reads which nodes the cluster has lost. One definition for the writer and both
//! readers; `schema` says which version of it a file is.

use serde::{Deserialize, Serialize};

use crate::cluster::Integrity;

/// Bumped when a field changes meaning.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: u16,
    pub name: String,
    pub this_node: bool,
    /// Seconds since its last heartbeat here (none yet: null).
    pub last_heard_s: Option<u64>,
    pub reachable: bool,
    pub serial: Option<u64>,
    /// BLAKE3 of the policy in force there (from its heartbeat). Absent in views written
    /// before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub integrity: Option<Integrity>,
    pub root_matches: Option<bool>,
    pub last_verification: Option<String>,
    pub boot_id: Option<String>,
    pub uptime_s: Option<u64>,
    pub load1: Option<f64>,
    pub mem_available_kb: Option<u64>,
    /// Why it has no services, when quarantined.
    pub quarantined: Option<String>,
    /// The master whose membership lists it (None: the operator's policy lists it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_by: Option<u16>,
    /// Whether this node holds a valid TPM quote of it, over this node's own recent
    /// challenge (issue 29); None: it need not attest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attested: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub schema: u32,
    pub cluster: String,
    /// The serial in force on the node that wrote this view.
    pub serial: u64,
    /// BLAKE3 of that policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// When the view was written (RFC 3339 in the file).
    pub written_at: jiff::Timestamp,
    pub quarantine_enabled: bool,
    pub nodes: Vec<NodeView>,
}

impl NodeView {
    /// Something an operator should look at: quarantined, unreachable, on another serial, or
    /// on this serial with other content (two policies signed at one serial: a split that
    /// no serial comparison heals).
    pub fn problem(&self, serial: u64, digest: Option<&str>) -> Option<String> {
        if let Some(q) = &self.quarantined {
            return Some(format!("quarantined: {q}"));
        }
        if !self.reachable {
            return Some("unreachable".into());
        }
        match (self.serial, self.digest.as_deref(), digest) {
            (Some(s), _, _) if s != serial => Some(format!("on serial {s}, not {serial}")),
            (Some(s), Some(theirs), Some(ours)) if theirs != ours => Some(format!(
                "serial {s} with other content ({}..., this node {}...): two policies at one serial",
                theirs.get(..8).unwrap_or(theirs),
                ours.get(..8).unwrap_or(ours)
            )),
            _ => None,
        }
    }
}

impl ClusterView {
    /// Nodes with a problem first, then by id.
    pub fn sorted(mut self) -> Self {
        let (serial, digest) = (self.serial, self.digest.clone());
        self.nodes
            .sort_by_key(|n| (n.problem(serial, digest.as_deref()).is_none(), n.id));
        self
    }

    /// `node`'s problem, judged against this view's serial and digest.
    pub fn problem_of(&self, node: &NodeView) -> Option<String> {
        node.problem(self.serial, self.digest.as_deref())
    }

    pub fn problems(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| self.problem_of(n).is_some())
            .count()
    }
}
