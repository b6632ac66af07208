//! What `tyd status --cluster` shows: clusterd's view of every node of the map, written as
//! JSON (`schema` 1) beside the quarantine list each heartbeat interval, and read by tyd.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::Core;
use crate::proto::{Heartbeat, Integrity};

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
    /// RFC 3339, when the view was written.
    pub written_at: String,
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

fn from_heartbeat(h: &Heartbeat) -> (Option<u64>, Option<Integrity>) {
    (Some(h.serial), Some(h.integrity))
}

/// The view from `core` at `now`; `mine` is this node's own heartbeat.
pub fn of(
    core: &Core,
    cluster: &str,
    mine: &Heartbeat,
    my_name: &str,
    now: Duration,
) -> ClusterView {
    let reach = core.config().quarantine_after;
    let mut nodes: Vec<NodeView> = core
        .peers()
        .iter()
        .map(|(id, p)| {
            let (serial, integrity) = p.last.as_ref().map(from_heartbeat).unwrap_or_default();
            let h = p.last.as_ref();
            NodeView {
                id: id.get(),
                name: p.name.clone(),
                this_node: false,
                last_heard_s: p.heard.map(|t| now.saturating_sub(t).as_secs()),
                reachable: p.heard.is_some_and(|t| now.saturating_sub(t) < reach),
                serial,
                digest: h.map(|h| h.digest.clone()),
                integrity,
                root_matches: h.and_then(|h| h.root_matches),
                last_verification: h.and_then(|h| h.last_verification.clone()),
                boot_id: h.map(|h| h.boot_id.clone()),
                uptime_s: h.map(|h| h.uptime_s),
                load1: h.map(|h| h.load1),
                mem_available_kb: h.map(|h| h.mem_available_kb),
                quarantined: p.quarantine.as_ref().map(|q| {
                    if p.damping.flapping() {
                        format!(
                            "{}; flapping (hold {} s)",
                            q.reason,
                            p.damping.hold.as_secs()
                        )
                    } else {
                        q.reason.to_string()
                    }
                }),
            }
        })
        .collect();
    nodes.push(NodeView {
        id: mine.node,
        name: my_name.to_string(),
        this_node: true,
        last_heard_s: Some(0),
        reachable: true,
        serial: Some(mine.serial),
        digest: Some(mine.digest.clone()),
        integrity: Some(mine.integrity),
        root_matches: mine.root_matches,
        last_verification: mine.last_verification.clone(),
        boot_id: Some(mine.boot_id.clone()),
        uptime_s: Some(mine.uptime_s),
        load1: Some(mine.load1),
        mem_available_kb: Some(mine.mem_available_kb),
        quarantined: None,
    });
    ClusterView {
        schema: SCHEMA,
        cluster: cluster.to_string(),
        serial: core.serial(),
        digest: (mine.serial == core.serial()).then(|| mine.digest.clone()),
        written_at: jiff::Timestamp::now().to_string(),
        quarantine_enabled: core.config().quarantine,
        nodes,
    }
    .sorted()
}
