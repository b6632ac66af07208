//! The node map and how it changes between two policies: what netguard reconciles against.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::{Node, NodeId, Policy};

/// The nodes of a policy, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMap(pub BTreeMap<NodeId, Node>);

impl From<&Policy> for NodeMap {
    fn from(p: &Policy) -> Self {
        Self(p.nodes.iter().map(|n| (n.id, n.clone())).collect())
    }
}

/// What changed about one node that is in both maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    KeyRotated,
    EndpointMoved,
    AddressesChanged,
    Renamed,
    RolesChanged,
    ExpiryChanged,
    /// The TPM attestation key pinned in its entry (issue 29).
    AttestationKeyChanged,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::KeyRotated => "key rotated",
            Change::EndpointMoved => "endpoint moved",
            Change::AddressesChanged => "addresses changed",
            Change::Renamed => "renamed",
            Change::RolesChanged => "roles changed",
            Change::ExpiryChanged => "expiry changed",
            Change::AttestationKeyChanged => "TPM key changed",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeChange {
    pub old: Node,
    pub new: Node,
    pub changes: Vec<Change>,
}

/// Old map to new map: nodes added, removed, and changed (in id order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMapDiff {
    pub added: Vec<Node>,
    pub removed: Vec<Node>,
    pub changed: Vec<NodeChange>,
}

fn changes(old: &Node, new: &Node) -> Vec<Change> {
    let mut out = Vec::new();
    if old.public_key != new.public_key {
        out.push(Change::KeyRotated);
    }
    if old.endpoint != new.endpoint {
        out.push(Change::EndpointMoved);
    }
    if old.addresses != new.addresses {
        out.push(Change::AddressesChanged);
    }
    if old.name != new.name {
        out.push(Change::Renamed);
    }
    if old.roles != new.roles {
        out.push(Change::RolesChanged);
    }
    if old.expires != new.expires {
        out.push(Change::ExpiryChanged);
    }
    if old.attestation_key != new.attestation_key {
        out.push(Change::AttestationKeyChanged);
    }
    out
}

impl NodeMapDiff {
    pub fn new(old: &NodeMap, new: &NodeMap) -> Self {
        let mut diff = Self::default();
        for (id, node) in &new.0 {
            match old.0.get(id) {
                None => diff.added.push(node.clone()),
                Some(prev) => {
                    let changes = changes(prev, node);
                    if !changes.is_empty() {
                        diff.changed.push(NodeChange {
                            old: prev.clone(),
                            new: node.clone(),
                            changes,
                        });
                    }
                }
            }
        }
        diff.removed = old
            .0
            .iter()
            .filter(|(id, _)| !new.0.contains_key(id))
            .map(|(_, n)| n.clone())
            .collect();
        diff
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// `old` with this diff applied; `diff(a, b).apply(a) == b`.
    pub fn apply(&self, old: &NodeMap) -> NodeMap {
        let mut map = old.clone();
        for n in &self.removed {
            map.0.remove(&n.id);
        }
        for n in &self.added {
            map.0.insert(n.id, n.clone());
        }
        for c in &self.changed {
            map.0.insert(c.new.id, c.new.clone());
        }
        map
    }
}

/// One human-readable line per change: what gets logged.
impl fmt::Display for NodeMapDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.added {
            writeln!(f, "+ node {} ({}) added", n.id, n.name)?;
        }
        for n in &self.removed {
            writeln!(f, "- node {} ({}) removed", n.id, n.name)?;
        }
        for c in &self.changed {
            let what: Vec<String> = c.changes.iter().map(ToString::to_string).collect();
            writeln!(
                f,
                "~ node {} ({}): {}",
                c.new.id,
                c.new.name,
                what.join(", ")
            )?;
        }
        Ok(())
    }
}
