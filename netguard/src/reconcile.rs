//! One reconciliation pass: read what is, compare with what should be, change only the
//! difference, and say what was changed (that list is what gets logged).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;

use policy::WgPublicKey;
use wireguard_control::{DeviceUpdate, Key};

use crate::desired::Desired;
use crate::nfnl::SetEditor;
use crate::nft::{self, NftError};
use crate::peers::{ActualPeer, OnDevice, PeerOp, plan};
use crate::routes;
use crate::ruleset::{ElementEdit, RulesetSpec, element_batch};
use crate::wg::{self, Ensured, Interface, WgError};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0}")]
    Wg(#[from] WgError),
    #[error("{0}")]
    Nft(#[from] NftError),
    #[error("configuring the new WireGuard device stopped unexpectedly; its link stays down")]
    DeviceStep,
}

/// Brings the ruleset in line with `spec`: element edits when only the node map changed,
/// a full rebuild (one transaction) when the table is missing, foreign or tampered with.
pub fn sync_ruleset(spec: &RulesetSpec) -> Result<Vec<String>, NftError> {
    let found = nft::read_table()?;
    let why_rebuild = match &found {
        None => Some("table missing".to_string()),
        Some(t) if t.odd_elements > 0 => {
            Some(format!("{} set elements of a foreign form", t.odd_elements))
        }
        Some(t) => spec.drift(&t.shape),
    };
    if let Some(why) = why_rebuild {
        nft::apply(&spec.full_batch())?;
        return Ok(vec![format!("ruleset installed ({why})")]);
    }
    let Some(actual) = found else {
        return Ok(Vec::new());
    };
    let edits = spec.element_edits(&actual.elements);
    match element_batch(&edits) {
        Some(batch) => {
            nft::apply(&batch)?;
            Ok(vec![edited(&edits)])
        }
        None => Ok(Vec::new()),
    }
}

/// The change line for some element edits.
fn edited(edits: &[ElementEdit]) -> String {
    let n: usize = edits.iter().map(|e| e.elems.len()).sum();
    format!("peer sets updated ({n} elements added or removed)")
}

/// Deletes the conntrack entries of addresses that are no longer peers, so their open flows
/// end now rather than when they time out. Best effort: the rules already drop their packets.
pub fn kill_flows(addrs: &[IpAddr]) -> Vec<String> {
    let mut out = Vec::new();
    for a in addrs {
        for dir in ["-s", "-d"] {
            match Command::new("conntrack")
                .args(["-D", dir, &a.to_string()])
                .output()
            {
                Ok(o) if o.status.success() => out.push(format!("flows of {a} deleted ({dir})")),
                Ok(_) => {} // no entries
                Err(e) => {
                    out.push(format!("cannot run conntrack for {a}: {e}"));
                    return out;
                }
            }
        }
    }
    out
}

/// After a policy change, when the rules are the same, edits the sets from the previous
/// desired elements without reading the table back (a 1000-element read-back costs more than
/// the edit), in-process over netlink. Any failure, or different rules, falls back to the full
/// read-back sync through nft.
pub fn update_ruleset(
    previous: Option<&RulesetSpec>,
    spec: &RulesetSpec,
    editor: &mut SetEditor,
) -> Result<Vec<String>, NftError> {
    if let Some(prev) = previous
        && prev.tag() == spec.tag()
    {
        let edits = spec.element_edits(&prev.elements);
        if edits.is_empty() {
            return Ok(Vec::new());
        }
        match editor.apply(&edits) {
            Ok(()) => return Ok(vec![edited(&edits)]),
            Err(e) => {
                tracing::warn!(reason = %e, "set edit over netlink failed; reading the table back")
            }
        }
    }
    sync_ruleset(spec)
}

/// One full pass for a node with a verified policy. `previous` is the desired state this
/// node last converged to, when the pass follows a policy change (not a drift check).
///
/// With the interface in place (traffic may flow), the firewall comes first: it is what keeps
/// service ports closed while the rest settles. With no interface, the one created stays down
/// and carries nothing until its link is configured, last: the firewall (and the route check)
/// and the WireGuard device are then set up at the same time, on two cores, and the link comes
/// up only if both succeeded. At 1000 nodes that hides the firewall's 20 ms behind
/// wireguard-go taking its peers.
pub fn reconcile(
    iface: &mut Interface,
    editor: &mut SetEditor,
    private: &Key,
    desired: &Desired,
    previous: Option<&Desired>,
) -> Result<Vec<String>, ReconcileError> {
    let full_pass = previous.is_none();
    let install_firewall = |editor: &mut SetEditor| {
        update_ruleset(previous.map(|p| &p.ruleset), &desired.ruleset, editor)
    };
    let (mut changes, device, routes) = if iface.link_exists() {
        let changes = install_firewall(editor)?;
        (
            changes,
            configure_device(iface, private, desired, previous)?,
            None,
        )
    } else {
        let name = iface.name.clone();
        // The device in the other thread: the set editor's netlink socket stays in this one.
        let (firewall, device) = std::thread::scope(|s| {
            let device = s.spawn(|| configure_device(iface, private, desired, previous));
            let firewall = install_firewall(editor)
                .map(|changes| (changes, full_pass.then(|| check_routes(desired, &name))));
            (firewall, device.join())
        });
        let device = device.map_err(|_| ReconcileError::DeviceStep)?;
        let (changes, routes) = firewall?;
        (changes, device?, routes)
    };
    changes.extend(device.changes);
    // After a policy change that kept this node's addresses, on an interface that was not
    // re-created, the link is as the last pass left it; drift checks still verify it.
    let link_unchanged =
        !device.created && previous.is_some_and(|p| p.addresses == desired.addresses);
    if !link_unchanged {
        changes.extend(iface.configure_link(&desired.addresses)?);
    }
    // Full passes (start, drift checks) also look for tunnel addresses and routes on other
    // interfaces (a rogue router advertisement's, say) and remove them.
    match routes {
        Some(found) => changes.extend(found),
        None if full_pass => changes.extend(check_routes(desired, &iface.name)),
        None => {}
    }
    let gone = device.gone;
    if !gone.is_empty() {
        // The rules already drop a removed peer's packets; deleting its conntrack entries
        // (two process spawns per address) finishes in the background.
        changes.push(format!(
            "deleting flows of {} removed addresses",
            gone.len()
        ));
        std::thread::spawn(move || {
            for line in kill_flows(&gone) {
                tracing::info!(change = %line, "flows of a removed peer");
            }
        });
    }
    Ok(changes)
}

/// Tunnel-network addresses and routes on other interfaces, removed; a failure is a line too.
fn check_routes(desired: &Desired, iface: &str) -> Vec<String> {
    match routes::repair(&desired.ruleset.tunnel_nets(), iface) {
        Ok(found) => found,
        Err(e) => vec![format!("cannot check routes: {e}")],
    }
}

/// What configuring the WireGuard device did.
struct DeviceChanges {
    /// One line per change, for the log.
    changes: Vec<String>,
    /// Tunnel addresses of removed peers, whose flows are then deleted.
    gone: Vec<IpAddr>,
    /// The interface was created by this pass (its link is not configured yet).
    created: bool,
}

/// The interface made to exist, then its key, port and peers brought to the desired state.
fn configure_device(
    iface: &mut Interface,
    private: &Key,
    desired: &Desired,
    previous: Option<&Desired>,
) -> Result<DeviceChanges, ReconcileError> {
    let mut changes = Vec::new();
    let ensured = iface.ensure()?;
    match ensured {
        Ensured::Created => {
            changes.push(format!("interface {} created ({})", iface.name, iface.kind))
        }
        Ensured::Adopted => changes.push(format!(
            "running interface {} adopted ({}); its sessions are kept",
            iface.name, iface.kind
        )),
        Ensured::Present => {}
    }
    let (ops, gone) = match (plan_from_last_pass(previous, ensured, desired), previous) {
        (Some(ops), Some(p)) => {
            if p.listen_port != desired.listen_port {
                iface.apply(DeviceUpdate::new().set_listen_port(desired.listen_port))?;
                changes.push(format!("listen port {}", desired.listen_port));
            }
            let gone = removed_addresses(&p.peers, &ops);
            (ops, gone)
        }
        _ => {
            let (actual, ops) = read_and_plan(iface, private, desired, &mut changes)?;
            let gone = removed_addresses(&actual, &ops);
            (ops, gone)
        }
    };
    changes.extend(ops.iter().map(ToString::to_string));
    if !ops.is_empty() {
        // All peer changes in one device update, in plan order; none replaces the peer list.
        iface.apply(wg::update_for(&ops))?;
    }
    Ok(DeviceChanges {
        changes,
        gone,
        created: ensured == Ensured::Created,
    })
}

/// Reads the device, sets its private key and listen port if they differ, and plans the peers
/// from what it holds.
fn read_and_plan(
    iface: &Interface,
    private: &Key,
    desired: &Desired,
    changes: &mut Vec<String>,
) -> Result<(BTreeMap<WgPublicKey, ActualPeer>, Vec<PeerOp>), WgError> {
    let dev = iface.read()?;
    let mut update = DeviceUpdate::new();
    let mut touch = false;
    if dev.private_key.as_ref() != Some(private) {
        update = update.set_private_key(private.clone());
        changes.push("private key set".into());
        touch = true;
    }
    if dev.listen_port != Some(desired.listen_port) {
        update = update.set_listen_port(desired.listen_port);
        changes.push(format!("listen port {}", desired.listen_port));
        touch = true;
    }
    // netguard sets no fwmark; one set behind its back changes how the tunnel's own packets
    // are routed (a rule matching it can send them anywhere).
    if let Some(mark) = dev.fwmark.filter(|&m| m != 0) {
        update = update.unset_fwmark();
        changes.push(format!("fwmark {mark:#x} cleared"));
        touch = true;
    }
    if touch {
        iface.apply(update)?;
    }
    let actual = wg::actual_peers(&dev);
    let ops = plan(&actual, &desired.peers);
    Ok((actual, ops))
}

/// The tunnel addresses of the peers `ops` removes from `peers`.
fn removed_addresses<P: OnDevice>(peers: &BTreeMap<WgPublicKey, P>, ops: &[PeerOp]) -> Vec<IpAddr> {
    ops.iter()
        .filter_map(|op| match op {
            PeerOp::Remove { key } => peers.get(key),
            _ => None,
        })
        .flat_map(|p| p.allowed_ips().iter().map(|a| a.addr))
        .collect()
}

/// The peer plan from the state the last pass converged to, without reading the device back
/// (6-9 ms at 1000 peers): after a policy change, on the interface that pass configured, still
/// there. `None` when the device must be read: a full pass, a new or adopted interface, or an
/// endpoint change (judged on the device: a roaming peer's recent handshake keeps the endpoint
/// it roamed to). Drift checks read everything, so a change made behind netguard's back is
/// repaired within the drift interval.
pub fn plan_from_last_pass(
    previous: Option<&Desired>,
    ensured: Ensured,
    desired: &Desired,
) -> Option<Vec<PeerOp>> {
    let previous = previous.filter(|p| p.interface == desired.interface)?;
    if ensured != Ensured::Present {
        return None;
    }
    let ops = plan(&previous.peers, &desired.peers);
    let endpoint_change = ops
        .iter()
        .any(|op| matches!(op, PeerOp::Update { endpoint: true, .. }));
    (!endpoint_change).then_some(ops)
}
