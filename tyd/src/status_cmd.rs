//! `tyd status`: every node of the map, its tunnel, and what non-peers tried. When the policy
//! file on disk is refused, the policy netguard has in force (its kept copy) is shown instead,
//! with the refusal: that is when an operator most needs to see the tunnels. Exits 7
//! (unhealthy) when anything is wrong.

use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::failure::{CliResult, Exit, Failure};
use crate::keygen::load_node_secret;
use crate::policy_cmd::{load_verified, print_json};

pub struct StatusArgs<'a> {
    pub policy: &'a Path,
    pub trust: &'a Path,
    /// netguard's rollback state; the copy of the policy in force is kept beside it.
    pub state: &'a Path,
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

/// The policy file, verified and as the daemons of this node would take it: a file whose
/// serial they already accepted with other content, or an older one, is refused here too
/// (netguard's rollback state at `state`), with the store's reason.
fn load_as_daemons_would(
    a: &StatusArgs<'_>,
    path: &std::path::Path,
    now: Timestamp,
) -> CliResult<policy::Verified<policy::Policy>> {
    let p = load_verified(path, a.trust, now)?;
    // No state (nothing accepted yet, or not readable by this user) refuses nothing: the
    // daemons' own logs say more than a guess here.
    if let Ok(store) = policy::RollbackStore::open(a.state, 0)
        && let Err(e) = store.check(&p, now)
    {
        return Err(Failure::new(
            Exit::Refused,
            format!("{}: {e}", path.display()),
        ));
    }
    Ok(p)
}

/// This node's key: the one given, or the node key beside the policy when there is one
/// (the node itself then shows as "self", not as a peer without a handshake).
fn this_node_key(a: &StatusArgs<'_>) -> CliResult<Option<policy::WgPublicKey>> {
    let beside = a.policy.with_file_name("node.key");
    let path = match a.key {
        Some(k) => k.clone(),
        None if beside.exists() => beside,
        None => return Ok(None),
    };
    Ok(Some(policy::WgPublicKey::from_secret(&load_node_secret(
        &path,
    )?)))
}

pub fn run(a: &StatusArgs<'_>, now: Timestamp) -> CliResult {
    let (policy, refused, read_from) = match load_as_daemons_would(a, a.policy, now) {
        Ok(p) => (p, None, a.policy.to_path_buf()),
        Err(refusal) => {
            // The copy netguard falls back to, only as netguard would take it (a copy older
            // than what it accepted is refused by netguard too: shown, it would be a lie).
            let copy = policy::load::in_force_path(a.state);
            match load_as_daemons_would(a, &copy, now) {
                Ok(p) => (p, Some(refusal.message), a.policy.to_path_buf()),
                // Nothing to show: the file's own refusal is the answer, and the node is
                // unhealthy (the daemons refuse it too).
                Err(_) => {
                    return Err(Failure::new(
                        Exit::Unhealthy,
                        format!("policy file refused: {}", refusal.message),
                    ));
                }
            }
        }
    };
    let me = this_node_key(a)?;
    // The node map the daemons enforce: the policy and the masters' memberships beside it.
    let (map, refused_memberships) = policy::Combined::beside(&read_from, &policy, now);
    let mut s = netguard::status::with_other_chains(netguard::status::collect(
        &map,
        a.interface,
        me.as_ref(),
        now,
    ));
    for (master, why) in refused_memberships {
        s.problems.push(format!(
            "the membership of master {master} beside the policy is refused: {why}"
        ));
    }
    if let Some(r) = &refused {
        s.problems.insert(
            0,
            format!(
                "policy file refused ({r}); showing the policy in force, serial {}",
                s.serial
            ),
        );
    }
    let unhealthy = !s.problems.is_empty();
    if a.json {
        print_json(
            &serde_json::to_value(&s).map_err(|e| Failure::new(Exit::Runtime, e.to_string()))?,
        );
    } else {
        print_table(&s).map_err(|e| Failure::new(Exit::Runtime, format!("stdout: {e}")))?;
    }
    if unhealthy {
        return Err(Failure::new(
            Exit::Unhealthy,
            format!("{} problem(s): {}", s.problems.len(), s.problems.join("; ")),
        ));
    }
    Ok(())
}

fn print_table(s: &netguard::status::Status) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let firewall = if !s.firewall_installed {
        "MISSING"
    } else if s.firewall_drift.is_some() {
        "ALTERED"
    } else {
        "installed"
    };
    writeln!(
        out,
        "cluster {} serial {} on {} (firewall {firewall})",
        s.cluster, s.serial, s.interface
    )?;
    for p in &s.problems {
        writeln!(out, "  !  {p}")?;
    }
    writeln!(
        out,
        "{:>5}  {:<12} {:<10} {:<7} {:<11} {:>10} {:>10}  endpoint",
        "id", "name", "authorised", "tunnel", "handshake", "rx", "tx"
    )?;
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
        writeln!(
            out,
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
        )?;
    }
    for c in &s.other_base_chains {
        writeln!(
            out,
            "other table's base chain (cannot undo netguard's drops, can drop tunnel traffic): {c}"
        )?;
    }
    for (svc, packets) in &s.dropped {
        writeln!(
            out,
            "dropped {svc}: {packets} packets from non-peers or outside the tunnel"
        )?;
    }
    Ok(())
}
