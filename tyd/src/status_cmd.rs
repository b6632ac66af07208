//! `tyd status`: every node of the map, its tunnel, and what non-peers tried.

use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::failure::{CliResult, Exit, Failure};
use crate::keygen::load_secret_key;
use crate::policy_cmd::{load_verified, print_json};

pub struct StatusArgs<'a> {
    pub policy: &'a Path,
    pub trust: &'a Path,
    pub interface: Option<&'a str>,
    pub key: Option<&'a PathBuf>,
    pub json: bool,
}

fn age(s: Option<u64>) -> String {
    match s {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s}s ago"),
        Some(s) => format!("{}m ago", s / 60),
    }
}

pub fn run(a: &StatusArgs<'_>, now: Timestamp) -> CliResult {
    let policy = load_verified(a.policy, a.trust, now)?;
    let me = match a.key {
        Some(k) => Some(policy::WgPublicKey::from_secret(&load_secret_key(k)?)),
        None => None,
    };
    let s = netguard::status::collect(&policy, a.interface, me.as_ref());
    if a.json {
        print_json(
            &serde_json::to_value(&s).map_err(|e| Failure::new(Exit::Runtime, e.to_string()))?,
        );
        return Ok(());
    }
    println!(
        "cluster {} serial {} on {} (firewall {})",
        s.cluster,
        s.serial,
        s.interface,
        if s.firewall_installed {
            "installed"
        } else {
            "MISSING"
        }
    );
    println!(
        "{:>5}  {:<12} {:<10} {:<7} {:<11} {:>10} {:>10}  endpoint",
        "id", "name", "authorised", "tunnel", "handshake", "rx", "tx"
    );
    for n in &s.nodes {
        let tunnel = if n.this_node {
            "self"
        } else if n.tunnel_up {
            "up"
        } else if n.peer_configured {
            "down"
        } else {
            "no peer"
        };
        println!(
            "{:>5}  {:<12} {:<10} {:<7} {:<11} {:>10} {:>10}  {}",
            n.id,
            n.name,
            if n.authorised { "yes" } else { "no" },
            tunnel,
            if n.this_node {
                "-".into()
            } else {
                age(n.handshake_age_s)
            },
            n.rx_bytes,
            n.tx_bytes,
            n.endpoint.as_deref().unwrap_or("-")
        );
    }
    for k in &s.unknown_peers {
        println!("  !  peer {k} is configured but not in the policy");
    }
    for (svc, packets) in &s.dropped {
        println!("dropped {svc}: {packets} packets from non-peers or outside the tunnel");
    }
    Ok(())
}
