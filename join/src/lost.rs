//! Which nodes the master's cluster has lost, from the view clusterd writes beside the
//! quarantine list (`--view`, `tyd status --cluster` reads the same file): quarantined, or
//! silent past the quarantine delay. Only an ephemeral drone's entry is ever handed to a new
//! key, and only when lost. A view that is missing, unreadable or stale says nothing is lost
//! (no takeover: the joiner is asked to retry).

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use policy::NodeId;
use proto::view::{ClusterView, SCHEMA};

/// A view older than this is not trusted to say anything (clusterd writes one a second).
pub const FRESH: SignedDuration = SignedDuration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("not a cluster view: {0}")]
    Malformed(String),
    #[error("cluster view schema {0}, expected {SCHEMA}")]
    Schema(u32),
    #[error("cluster view written at {0}: stale")]
    Stale(Timestamp),
}

/// The nodes `text` (clusterd's view) says are lost at `now`.
pub fn lost_nodes(text: &[u8], now: Timestamp) -> Result<BTreeSet<NodeId>, ViewError> {
    let view: ClusterView = serde_json::from_slice(text)
        .map_err(|e| ViewError::Malformed(policy::parse::shown(&e.to_string())))?;
    if view.schema != SCHEMA {
        return Err(ViewError::Schema(view.schema));
    }
    let age = now.duration_since(view.written_at);
    if age > FRESH || age < -FRESH {
        return Err(ViewError::Stale(view.written_at));
    }
    Ok(view
        .nodes
        .iter()
        .filter(|n| !n.this_node && (!n.reachable || n.quarantined.is_some()))
        .filter_map(|n| NodeId::new(n.id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(at: Timestamp) -> String {
        format!(
            r#"{{"schema":1,"cluster":"lab","serial":3,"written_at":"{at}","quarantine_enabled":true,"nodes":[
            {{"id":1,"name":"m","this_node":true,"reachable":true,"quarantined":null}},
            {{"id":2,"name":"a","this_node":false,"reachable":true,"quarantined":null,"load1":0.1}},
            {{"id":3,"name":"b","this_node":false,"reachable":false,"quarantined":null}},
            {{"id":4,"name":"c","this_node":false,"reachable":true,"quarantined":"integrity lost"}}]}}"#
        )
    }

    #[test]
    fn quarantined_and_silent_nodes_are_lost_when_the_view_is_fresh() {
        let now = Timestamp::now();
        let lost = lost_nodes(view(now).as_bytes(), now).unwrap();
        let ids: Vec<u16> = lost.iter().map(|i| i.get()).collect();
        assert_eq!(ids, vec![3, 4]);
    }

    #[test]
    fn a_stale_foreign_or_broken_view_says_nothing() {
        let now = Timestamp::now();
        let old = now - SignedDuration::from_secs(60);
        assert!(matches!(
            lost_nodes(view(old).as_bytes(), now),
            Err(ViewError::Stale(_))
        ));
        let other = view(now).replace("\"schema\":1", "\"schema\":2");
        assert_eq!(lost_nodes(other.as_bytes(), now), Err(ViewError::Schema(2)));
        assert!(matches!(
            lost_nodes(b"{", now),
            Err(ViewError::Malformed(_))
        ));
    }
}
