//! clusterd's view of every node of the map (`proto::view`, which `tyd status --cluster`
//! and joind read), made from the core's state each heartbeat interval.

use std::time::Duration;

pub use proto::view::{ClusterView, NodeView, SCHEMA};

use crate::core::Core;
use proto::cluster::{Heartbeat, Integrity};

fn from_heartbeat(h: &Heartbeat) -> (Option<u64>, Option<Integrity>) {
    (Some(h.serial), Some(h.integrity))
}

/// The view from `core` at `now`; `mine` is this node's own heartbeat; `admitted_by`: the
/// master whose membership lists a node.
pub fn of(
    core: &Core,
    cluster: &str,
    mine: &Heartbeat,
    my_name: &str,
    now: Duration,
    admitted_by: &dyn Fn(u16) -> Option<u16>,
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
                admitted_by: admitted_by(id.get()),
                attested: core.attested(*id, now),
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
        admitted_by: admitted_by(mine.node),
        attested: None,
    });
    ClusterView {
        schema: SCHEMA,
        cluster: cluster.to_string(),
        serial: core.serial(),
        digest: (mine.serial == core.serial()).then(|| mine.digest.clone()),
        written_at: jiff::Timestamp::now(),
        quarantine_enabled: core.config().quarantine,
        nodes,
    }
    .sorted()
}
