//! netguard's Prometheus metrics, written as a node_exporter textfile (`--metrics-file`):
//! rewritten atomically after every pass, so a scrape sees one pass's numbers and nothing
//! listens on a port. prometheus-client does the exposition; this module only says what is
//! measured. `Metrics::render` is pure: tests feed it a `Status`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use policy::NodeId;
use policy::fsutil::ReplacedFile;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::status::Status;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    trigger: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    node: String,
    name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

/// Every metric netguard exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    serial: Gauge,
    member: Gauge,
    firewall_installed: Gauge,
    passes: Family<PassLabels, Counter>,
    pass_seconds: Histogram,
    handshake_age: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    tunnel_up: Family<PeerLabels, Gauge>,
    quarantined: Family<PeerLabels, Gauge>,
    rx: Family<PeerLabels, Counter>,
    tx: Family<PeerLabels, Counter>,
    dropped: Family<ServiceLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("netguard");
        let m = Metrics {
            serial: Gauge::default(),
            member: Gauge::default(),
            firewall_installed: Gauge::default(),
            passes: Family::default(),
            // 1 ms to about 4 s.
            pass_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
            handshake_age: Family::default(),
            tunnel_up: Family::default(),
            quarantined: Family::default(),
            rx: Family::default(),
            tx: Family::default(),
            dropped: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "policy_serial",
            "Serial of the signed policy in force (0: none, protective ruleset)",
            m.serial.clone(),
        );
        registry.register(
            "member",
            "1 when this node is in the policy's node map, 0 when it holds the protective ruleset",
            m.member.clone(),
        );
        registry.register(
            "firewall_installed",
            "1 when the inet netguard table is installed as the policy says",
            m.firewall_installed.clone(),
        );
        registry.register(
            "reconciles",
            "Passes that brought the tunnels and the firewall in step, by trigger and result",
            m.passes.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long one pass took",
            m.pass_seconds.clone(),
        );
        registry.register(
            "peer_handshake_age_seconds",
            "Seconds since the last WireGuard handshake with each peer (absent: never)",
            m.handshake_age.clone(),
        );
        registry.register(
            "peer_tunnel_up",
            "1 when the peer had a recent handshake",
            m.tunnel_up.clone(),
        );
        registry.register(
            "peer_quarantined",
            "1 when clusterd quarantined the peer: tunnel kept, services withheld",
            m.quarantined.clone(),
        );
        registry.register(
            "peer_received_bytes",
            "Bytes received through the tunnel from each peer",
            m.rx.clone(),
        );
        registry.register(
            "peer_sent_bytes",
            "Bytes sent through the tunnel to each peer",
            m.tx.clone(),
        );
        registry.register(
            "dropped_packets",
            "Packets to a cluster service dropped: from outside the tunnel or from non-members",
            m.dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One pass: its trigger (as logged), whether it succeeded, how long it took.
    pub fn pass(&self, trigger: &str, ok: bool, took: Duration) {
        self.passes
            .get_or_create(&PassLabels {
                trigger: trigger.to_string(),
                result: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
        self.pass_seconds.observe(took.as_secs_f64());
    }

    /// The state read back after a pass. Peers and services are replaced, so a node gone from
    /// the map leaves the metrics too.
    pub fn state(&self, s: Option<&Status>, quarantined: &BTreeSet<NodeId>) {
        for f in [&self.tunnel_up, &self.quarantined] {
            f.clear();
        }
        self.handshake_age.clear();
        self.rx.clear();
        self.tx.clear();
        self.dropped.clear();
        let Some(s) = s else {
            self.serial.set(0);
            self.member.set(0);
            self.firewall_installed.set(0);
            return;
        };
        self.serial.set(i64::try_from(s.serial).unwrap_or(i64::MAX));
        self.member
            .set(i64::from(s.nodes.iter().any(|n| n.this_node)));
        self.firewall_installed.set(i64::from(
            s.firewall_installed && s.firewall_drift.is_none(),
        ));
        for n in s.nodes.iter().filter(|n| !n.this_node) {
            let l = PeerLabels {
                node: n.id.to_string(),
                name: n.name.clone(),
            };
            if let Some(age) = n.handshake_age_s {
                self.handshake_age.get_or_create(&l).set(age as f64);
            }
            self.tunnel_up.get_or_create(&l).set(i64::from(n.tunnel_up));
            let q = NodeId::new(n.id).is_some_and(|id| quarantined.contains(&id));
            self.quarantined.get_or_create(&l).set(i64::from(q));
            self.rx.get_or_create(&l).inc_by(n.rx_bytes);
            self.tx.get_or_create(&l).inc_by(n.tx_bytes);
        }
        for (service, packets) in &s.dropped {
            self.dropped
                .get_or_create(&ServiceLabels {
                    service: service.clone(),
                })
                .inc_by(*packets);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The metrics and the file they are written to (replaced atomically). A failed write is
/// logged once until the reason changes: a full disk must not flood the log.
#[derive(Debug)]
pub struct Exporter {
    pub metrics: Metrics,
    file: ReplacedFile,
}

impl Exporter {
    pub fn new(path: PathBuf) -> Self {
        Self {
            metrics: Metrics::new(),
            file: ReplacedFile::new(path, 0o644),
        }
    }

    /// Replaces the file with `text`.
    pub fn write(&mut self, text: &str) {
        if let Some(reason) = self.file.replace(text.as_bytes()) {
            tracing::warn!(reason = %reason, "cannot write the metrics file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::NodeStatus;

    fn node(id: u16, this: bool, age: Option<u64>) -> NodeStatus {
        NodeStatus {
            id,
            name: format!("n{id}"),
            this_node: this,
            authorised: true,
            peer_configured: !this,
            tunnel_up: age.is_some_and(|a| a < 180),
            handshake_age_s: age,
            rx_bytes: 1000 * u64::from(id),
            tx_bytes: 10 * u64::from(id),
            endpoint: None,
        }
    }

    fn status(nodes: Vec<NodeStatus>) -> Status {
        Status {
            schema: crate::status::STATUS_SCHEMA,
            cluster: "lab".into(),
            serial: 7,
            interface: "tyd0".into(),
            nodes,
            unknown_peers: Vec::new(),
            dropped: [("openmosix".to_string(), 42)].into(),
            firewall_installed: true,
            firewall_drift: None,
            other_base_chains: Vec::new(),
            problems: Vec::new(),
        }
    }

    #[test]
    fn peers_services_and_passes_are_exported_in_prometheus_text() {
        let m = Metrics::new();
        m.pass("start", true, Duration::from_millis(12));
        m.pass("drift check", true, Duration::from_millis(3));
        let q = BTreeSet::from([NodeId::new(3).unwrap()]);
        m.state(
            Some(&status(vec![
                node(1, true, None),
                node(2, false, Some(4)),
                node(3, false, None),
            ])),
            &q,
        );
        let text = m.render();
        for line in [
            "netguard_policy_serial 7",
            "netguard_member 1",
            "netguard_firewall_installed 1",
            r#"netguard_reconciles_total{trigger="start",result="ok"} 1"#,
            "netguard_reconcile_duration_seconds_count 2",
            r#"netguard_peer_handshake_age_seconds{node="2",name="n2"} 4.0"#,
            r#"netguard_peer_tunnel_up{node="2",name="n2"} 1"#,
            r#"netguard_peer_tunnel_up{node="3",name="n3"} 0"#,
            r#"netguard_peer_quarantined{node="3",name="n3"} 1"#,
            r#"netguard_peer_quarantined{node="2",name="n2"} 0"#,
            r#"netguard_peer_received_bytes_total{node="2",name="n2"} 2000"#,
            r#"netguard_peer_sent_bytes_total{node="3",name="n3"} 30"#,
            r#"netguard_dropped_packets_total{service="openmosix"} 42"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // This node is not its own peer; a peer never heard from has no handshake age.
        assert!(!text.contains(r#"node="1""#), "{text}");
        assert!(
            !text.contains(r#"netguard_peer_handshake_age_seconds{node="3""#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_node_leaving_the_map_leaves_the_metrics_and_no_policy_reads_as_protective() {
        let m = Metrics::new();
        m.state(
            Some(&status(vec![node(1, true, None), node(2, false, Some(1))])),
            &BTreeSet::new(),
        );
        m.state(Some(&status(vec![node(1, true, None)])), &BTreeSet::new());
        assert!(!m.render().contains(r#"node="2""#));
        m.state(None, &BTreeSet::new());
        let text = m.render();
        assert!(text.contains("netguard_policy_serial 0\n"), "{text}");
        assert!(text.contains("netguard_member 0\n"), "{text}");
    }
}
