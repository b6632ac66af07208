//! Prints what netguard's metrics file holds for a small cluster (three peers, one
//! quarantined, drops on one service): scripts/check-metrics.sh feeds it to node_exporter.

use std::collections::BTreeSet;
use std::time::Duration;

use netguard::metrics::Metrics;
use netguard::status::{NodeStatus, STATUS_SCHEMA, Status};

fn main() {
    let node = |id: u16, age: Option<u64>| NodeStatus {
        id,
        name: format!("drone{id}"),
        this_node: id == 1,
        authorised: true,
        peer_configured: id != 1,
        tunnel_up: age.is_some(),
        handshake_age_s: age,
        rx_bytes: 4096 * u64::from(id),
        tx_bytes: 512 * u64::from(id),
        endpoint: None,
    };
    let status = Status {
        schema: STATUS_SCHEMA,
        cluster: "lab".into(),
        serial: 12,
        interface: "tyd0".into(),
        nodes: vec![
            node(1, None),
            node(2, Some(3)),
            node(3, Some(40)),
            node(4, None),
        ],
        unknown_peers: Vec::new(),
        dropped: [("openmosix".to_string(), 17)].into(),
        firewall_installed: true,
        firewall_drift: None,
        other_base_chains: Vec::new(),
        problems: Vec::new(),
    };
    let m = Metrics::new();
    m.pass("start", true, Duration::from_millis(40));
    m.pass("drift check", true, Duration::from_millis(6));
    m.pass("policy change", false, Duration::from_millis(9));
    let quarantined: BTreeSet<_> = policy::NodeId::new(3).into_iter().collect();
    m.state(Some(&status), &quarantined);
    print!("{}", m.render());
}
