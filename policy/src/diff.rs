//! What changed between two policies, as an operator reviews it before signing (`tyd policy
//! diff`, `tyd policy sign`): the serial and expiry, the node map node by node, and which other
//! sections changed.

use std::fmt;

use jiff::Timestamp;

use crate::model::Policy;
use crate::nodemap::{NodeMap, NodeMapDiff};

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDiff {
    pub cluster: (String, String),
    pub serial: (u64, u64),
    pub expires: (Timestamp, Timestamp),
    pub nodes: NodeMapDiff,
    /// Other sections that differ (`[cluster]` settings, `[services]`, `[firewall]`...).
    pub sections: Vec<&'static str>,
}

impl PolicyDiff {
    pub fn new(old: &Policy, new: &Policy) -> Self {
        let mut sections = Vec::new();
        let (mut oc, nc) = (old.cluster.clone(), &new.cluster);
        // Shown on their own lines.
        (oc.serial, oc.expires, oc.name) = (nc.serial, nc.expires, nc.name.clone());
        if &oc != nc {
            sections.push("cluster");
        }
        if old.services != new.services {
            sections.push("services");
        }
        if old.firewall != new.firewall {
            sections.push("firewall");
        }
        if old.certainty != new.certainty {
            sections.push("certainty");
        }
        if old.hardening != new.hardening {
            sections.push("hardening");
        }
        if old.distribution != new.distribution {
            sections.push("distribution");
        }
        if old.join != new.join {
            sections.push("join");
        }
        if old.attestation != new.attestation {
            sections.push("attestation");
        }
        if old.admissions != new.admissions {
            sections.push("admission");
        }
        Self {
            cluster: (old.cluster.name.clone(), new.cluster.name.clone()),
            serial: (old.cluster.serial, new.cluster.serial),
            expires: (old.cluster.expires, new.cluster.expires),
            nodes: NodeMapDiff::new(&NodeMap::from(old), &NodeMap::from(new)),
            sections,
        }
    }

    /// Nothing but (perhaps) the serial changed.
    pub fn is_empty(&self) -> bool {
        self.cluster.0 == self.cluster.1
            && self.expires.0 == self.expires.1
            && self.nodes.is_empty()
            && self.sections.is_empty()
    }
}

/// One line per change, `+`/`-`/`~` as in the node-map log lines.
impl fmt::Display for PolicyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cluster.0 != self.cluster.1 {
            writeln!(f, "~ cluster {} -> {}", self.cluster.0, self.cluster.1)?;
        }
        if self.serial.0 != self.serial.1 {
            writeln!(f, "~ serial {} -> {}", self.serial.0, self.serial.1)?;
        }
        if self.expires.0 != self.expires.1 {
            writeln!(
                f,
                "~ expires {:.0} -> {:.0}",
                self.expires.0, self.expires.1
            )?;
        }
        write!(f, "{}", self.nodes)?;
        for s in &self.sections {
            writeln!(f, "~ [{s}] changed")?;
        }
        if self.is_empty() {
            writeln!(f, "  no change but the serial")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::WgPublicKey;

    fn policy(serial: u64, nodes: &[(u16, &str, u8)], extra: &str) -> Policy {
        let expires: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let mut t = crate::template::init_template("lab", expires)
            .replace("serial = 1", &format!("serial = {serial}"));
        t.push_str(extra);
        for (id, name, k) in nodes {
            t.push_str(&format!(
                "\n[[node]]\nid = {id}\nname = \"{name}\"\npublic_key = \"{}\"\naddresses = [\"10.77.0.{id}\"]\n",
                WgPublicKey::from_secret(&[*k; 32])
            ));
        }
        crate::parse_policy("t", t.as_bytes(), "2026-01-01T00:00:00Z".parse().unwrap()).unwrap()
    }

    /// Found by a helper from the docs: `tyd policy sign` showed "no change but the serial"
    /// for a policy whose drones now had to attest, or whose admission key's networks had
    /// moved (which dropped four nodes). Steps: a policy gains `[attestation]`: the review
    /// says `[attestation] changed`, and is not empty.
    #[test]
    fn a_change_of_who_must_attest_is_shown_before_signing() {
        let old = policy(3, &[(1, "a", 1)], "");
        let new = policy(
            4,
            &[(1, "a", 1)],
            &format!("\n[attestation]\nimages = [\"{}\"]\n", "00".repeat(32)),
        );
        let d = PolicyDiff::new(&old, &new);
        assert!(!d.is_empty());
        assert!(d.to_string().contains("~ [attestation] changed"), "{d}");
    }

    #[test]
    fn nodes_serial_and_sections_are_shown_one_line_each() {
        let old = policy(3, &[(1, "a", 1), (2, "b", 2)], "");
        let new = policy(
            4,
            &[(1, "a", 9), (3, "c", 3)],
            "\n[firewall.allow.web]\ntcp = [80]\n",
        );
        let d = PolicyDiff::new(&old, &new);
        let text = d.to_string();
        assert_eq!(
            text,
            "~ serial 3 -> 4\n+ node 3 (c) added\n- node 2 (b) removed\n~ node 1 (a): key rotated\n~ [firewall] changed\n",
            "{text}"
        );
        assert!(!d.is_empty());
        let same = PolicyDiff::new(&old, &policy(4, &[(1, "a", 1), (2, "b", 2)], ""));
        assert!(same.is_empty());
        assert!(same.to_string().ends_with("no change but the serial\n"));
    }
}
