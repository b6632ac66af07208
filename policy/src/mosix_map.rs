//! The openMosix node map (`/etc/openmosix.map`, `setpe -w`): `first-id address count` lines,
//! consecutive ids at consecutive addresses coalesced, and `id address ALIAS` lines for a
//! node's further addresses.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use crate::model::{NodeId, Policy};

/// Node ids and their IPv4 addresses; openMosix speaks IPv4 only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MosixMap {
    /// Each node's primary address.
    pub nodes: BTreeMap<NodeId, Ipv4Addr>,
    /// Further addresses of a node (gateways with several interfaces).
    pub aliases: BTreeMap<NodeId, Vec<Ipv4Addr>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct MapError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl MosixMap {
    /// The map openMosix should use: each node's IPv4 tunnel addresses, so migration traffic
    /// goes through the tunnels. Nodes without an IPv4 tunnel address cannot take part.
    pub fn from_policy(policy: &Policy) -> Self {
        let mut map = Self::default();
        for node in &policy.nodes {
            let mut v4 = node.addresses.iter().filter_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            });
            if let Some(primary) = v4.next() {
                map.nodes.insert(node.id, primary);
                let rest: Vec<Ipv4Addr> = v4.collect();
                if !rest.is_empty() {
                    map.aliases.insert(node.id, rest);
                }
            }
        }
        map
    }

    /// Renders the map, coalescing runs of consecutive ids at consecutive addresses.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut run: Option<(NodeId, Ipv4Addr, u32)> = None;
        for (&id, &addr) in &self.nodes {
            run = match run {
                Some((first, start, count))
                    if u32::from(first.get()) + count == u32::from(id.get())
                        && u32::from(start).checked_add(count) == Some(u32::from(addr)) =>
                {
                    Some((first, start, count + 1))
                }
                Some((first, start, count)) => {
                    let _ = writeln!(out, "{first} {start} {count}");
                    Some((id, addr, 1))
                }
                None => Some((id, addr, 1)),
            };
        }
        if let Some((first, start, count)) = run {
            let _ = writeln!(out, "{first} {start} {count}");
        }
        for (id, addrs) in &self.aliases {
            for a in addrs {
                let _ = writeln!(out, "{id} {a} ALIAS");
            }
        }
        out
    }

    /// Parses a map file. Hostnames are refused: resolving names is not something a
    /// security tool should do behind the operator's back.
    pub fn parse(file: &str, text: &str) -> Result<Self, MapError> {
        let mut map = Self::default();
        for (n, raw) in text.lines().enumerate() {
            let err = |message: String| MapError {
                file: file.to_string(),
                line: n + 1,
                message,
            };
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [id, addr, count] = fields[..] else {
                return Err(err(format!(
                    "expected `first-id address count` or `id address ALIAS`, got {line:?}"
                )));
            };
            let first: u16 = id
                .parse()
                .ok()
                .filter(|&i| i != 0)
                .ok_or_else(|| err(format!("node id {id:?} is not a number in 1-65535")))?;
            let addr: Ipv4Addr = addr.parse().map_err(|_| {
                err(format!(
                    "{addr:?} is not an IPv4 address (hostnames are not resolved)"
                ))
            })?;
            let node = NodeId::new(first).ok_or_else(|| err("node id 0".into()))?;
            if count.eq_ignore_ascii_case("ALIAS") {
                map.aliases.entry(node).or_default().push(addr);
                continue;
            }
            let count: u32 = count
                .parse()
                .ok()
                .filter(|&c| c > 0)
                .ok_or_else(|| err(format!("count {count:?} is not a positive number")))?;
            if u32::from(first) + count - 1 > u32::from(u16::MAX) {
                return Err(err(format!("ids {first}+{count} run past 65535")));
            }
            let base = u32::from(addr);
            if base.checked_add(count - 1).is_none() {
                return Err(err(format!(
                    "addresses {addr}+{count} run past 255.255.255.255"
                )));
            }
            for i in 0..count {
                let id = NodeId::new((u32::from(first) + i) as u16)
                    .ok_or_else(|| err("node id 0".into()))?;
                if map.nodes.insert(id, Ipv4Addr::from(base + i)).is_some() {
                    return Err(err(format!("node id {id} is listed twice")));
                }
            }
        }
        for id in map.aliases.keys() {
            if !map.nodes.contains_key(id) {
                return Err(MapError {
                    file: file.to_string(),
                    line: 0,
                    message: format!("ALIAS for node {id}, which has no address line"),
                });
            }
        }
        Ok(map)
    }
}
