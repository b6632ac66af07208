//! What netguard's node logs about a pass and a node-map change, and the neighbour tables it
//! sizes for the map.

use policy::{NodeMap, NodeMapDiff, Policy};
use tracing::{debug, info, warn};

/// How many per-node lines a node-map change logs at info level; a larger change logs one
/// summary line (the details go to debug).
const DETAILED_CHANGES: usize = 8;

/// A pass's changes for one log line: all of them when few, else the first few and a count.
pub(super) fn summary(changes: &[String]) -> String {
    if changes.len() <= DETAILED_CHANGES {
        return changes.join("; ");
    }
    for c in changes {
        debug!(change = %c, "change");
    }
    format!(
        "{}; and {} more (details at debug level)",
        changes[..DETAILED_CHANGES].join("; "),
        changes.len() - DETAILED_CHANGES
    )
}

/// One line per node-map change when it is small; one summary line with counts otherwise
/// (a 500-node change is one line, not 500), the details at debug level.
pub(super) fn log_node_map_change(old: &Policy, new: &Policy) {
    let diff = NodeMapDiff::new(&NodeMap::from(old), &NodeMap::from(new));
    let serial = new.cluster.serial;
    let lines: Vec<String> = diff.to_string().lines().map(str::to_string).collect();
    if lines.len() <= DETAILED_CHANGES {
        for line in &lines {
            info!(change = %line, serial, "node map change");
        }
        return;
    }
    for line in &lines {
        debug!(change = %line, serial, "node map change");
    }
    info!(
        serial,
        added = diff.added.len(),
        removed = diff.removed.len(),
        changed = diff.changed.len(),
        "node map changed (details at debug level)"
    );
}

/// Raises the kernel's neighbour-table limits when the map needs more (see `neighbours`).
pub(super) fn size_neighbour_tables(nodes: usize) {
    for (family, dir) in crate::neighbours::tables(std::path::Path::new("/proc/sys")) {
        let current = match crate::neighbours::read(&dir) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                warn!(reason = %e, "cannot read the neighbour table limits");
                continue;
            }
        };
        let Some(up) = crate::neighbours::raised(current, nodes) else {
            continue;
        };
        match crate::neighbours::write(&dir, up) {
            Ok(()) => info!(
                family,
                nodes,
                gc_thresh3 = up.gc_thresh3,
                was = current.gc_thresh3,
                "neighbour table limit raised for the node map"
            ),
            Err(e) => warn!(family, nodes, reason = %e,
                "cannot raise the neighbour table limit; packets to some peers may be dropped"),
        }
    }
}

/// Logs what reading or being offered a membership did, one line; whether the node map in
/// force changed. A refusal is an error the first time it is seen, debug after.
pub(super) fn log_membership(event: &policy::MembershipEvent) -> bool {
    use policy::MembershipEvent as E;
    match event {
        E::Accepted {
            master,
            serial,
            nodes,
        } => {
            info!(master = master.get(), serial, nodes, "membership accepted");
            true
        }
        E::Refused {
            master,
            origin,
            reason,
            first: true,
        } => {
            tracing::error!(master = master.get(), origin = %origin, reason = %reason,
                "membership refused; that master's last accepted membership stays in force");
            false
        }
        E::Refused { reason, .. } => {
            tracing::debug!(reason = %reason, "membership still refused");
            false
        }
        E::Dropped(d) => {
            tracing::warn!(master = d.master.get(), serial = d.serial, reason = %d.reason,
                "membership dropped with its nodes: the policy in force no longer allows it");
            true
        }
        E::LeftOut { master, node, why } => {
            tracing::warn!(master = master.get(), node = node.get(), reason = %why,
                "a node of a membership left out of the node map: a node of the policy (which stays) or of another master's membership (also left out) has its identity too");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 9 item 10): a 500-node change logged 497 lines and a 12-29 KB line.
    #[test]
    fn a_large_change_is_one_short_line() {
        let changes: Vec<String> = (0..500).map(|i| format!("peer n{i} added")).collect();
        let line = summary(&changes);
        assert!(line.len() < 400, "{} bytes", line.len());
        assert!(
            line.ends_with("and 492 more (details at debug level)"),
            "{line}"
        );
        let few = &changes[..3];
        assert_eq!(summary(few), "peer n0 added; peer n1 added; peer n2 added");
    }
}
