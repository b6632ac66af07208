//! Talks to nftables: applies one JSON batch per call (`nft -j -f -`, one kernel transaction)
//! and reads back only netguard's own table. nft's stderr is kept, so a refused batch says why.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::ruleset::{FAMILY, Shape, TABLE};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the batch: {0}")]
    Refused(String),
    #[error("nft output is not JSON: {0}")]
    Parse(String),
}

fn nft_binary() -> String {
    std::env::var("NFT").unwrap_or_else(|_| "nft".into())
}

/// Applies a batch atomically: all of it, or (on error) none of it.
pub fn apply(batch: &Value) -> Result<(), NftError> {
    let mut child = Command::new(nft_binary())
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(batch.to_string().as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(NftError::Refused(policy::parse::one_line(&err)))
    }
}

/// netguard's table as it is in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualTable {
    /// Everything but the run-time state, to compare with the desired [`Shape`].
    pub shape: Shape,
    pub elements: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Set elements that are not plain addresses (intervals, timeouts, anything that does not
    /// parse as one): never netguard's.
    pub odd_elements: usize,
    /// Named counter -> (packets, bytes).
    pub counters: BTreeMap<String, (u64, u64)>,
}

/// Reads netguard's table; `None` if it does not exist.
pub fn read_table() -> Result<Option<ActualTable>, NftError> {
    let out = Command::new(nft_binary())
        .args(["-j", "list", "table", FAMILY, TABLE])
        .output()
        .map_err(NftError::Spawn)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(NftError::Refused(policy::parse::one_line(&err)));
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| NftError::Parse(e.to_string()))?;
    Ok(Some(parse_table(&v)))
}

/// Picks netguard's objects out of `nft -j list table` output.
pub fn parse_table(v: &Value) -> ActualTable {
    let mut t = ActualTable::default();
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for item in items {
        t.shape.insert(&item);
        if let Some(set) = item.get("set") {
            let name = set
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut elems = BTreeSet::new();
            for e in set
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match e.as_str().and_then(|a| a.parse::<IpAddr>().ok()) {
                    Some(addr) => {
                        elems.insert(addr);
                    }
                    None => t.odd_elements += 1,
                }
            }
            t.elements.insert(name, elems);
        } else if let Some(counter) = item.get("counter") {
            let name = counter
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let packets = counter.get("packets").and_then(Value::as_u64).unwrap_or(0);
            let bytes = counter.get("bytes").and_then(Value::as_u64).unwrap_or(0);
            t.counters.insert(name, (packets, bytes));
        }
    }
    t
}

/// Base chains of other tables, on any hook of any family (`nft -j list chains` output), as
/// an operator reads them: `inet evil in: input priority -200, policy accept`. None can
/// undo a drop of netguard's (a drop in any base chain is final), so nothing leaks through
/// them; but one can drop tunnel traffic (a denial of service, on prerouting, netdev
/// ingress or egress as well as on netguard's own hooks), and whoever added one meant
/// something: `tyd status` names them all.
pub fn other_base_chains(json: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(json).unwrap_or_default();
    v.get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("chain"))
        .filter(|c| c.get("table").and_then(Value::as_str) != Some(TABLE))
        .filter_map(|c| {
            let hook = c.get("hook").and_then(Value::as_str)?;
            let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("?");
            Some(format!(
                "{} {} {}: {hook} priority {}, policy {}",
                s("family"),
                s("table"),
                s("name"),
                c.get("prio").and_then(Value::as_i64).unwrap_or(0),
                s("policy")
            ))
        })
        .collect()
}

/// [`other_base_chains`] as the kernel has them now (empty when nft cannot be asked).
pub fn read_other_base_chains() -> Vec<String> {
    Command::new(nft_binary())
        .args(["-j", "list", "chains"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| other_base_chains(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 25 #10: a second table with an accepting base chain before netguard's on the
    /// same hook exposes nothing (netguard's drops still apply) but went unreported. Steps:
    /// `nft -j list chains` as nft 1.0.6 prints it with such a table, a regular chain and
    /// netguard's own: every foreign base chain is named, on any hook (a helper dropped
    /// tunnel traffic from prerouting and netdev ingress, which were not listed).
    #[test]
    fn a_foreign_base_chain_on_netguards_hooks_is_named() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"chain": {"family": "inet", "table": "evil", "name": "in", "handle": 1, "type": "filter", "hook": "input", "prio": -200, "policy": "accept"}},
          {"chain": {"family": "inet", "table": "evil", "name": "regular", "handle": 2}},
          {"chain": {"family": "ip", "table": "nat", "name": "pre", "handle": 3, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
          {"chain": {"family": "inet", "table": "netguard", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": -10, "policy": "drop"}}]}"#;
        assert_eq!(
            other_base_chains(json),
            [
                "inet evil in: input priority -200, policy accept",
                "ip nat pre: prerouting priority -100, policy accept"
            ]
        );
        assert!(other_base_chains("not json").is_empty());
    }
}
