//! `tyd admission add | rotate | revoke | remove`: the operator's side of admission keys, on the
//! operator's copy of the policy (signed after with `tyd policy sign --bump`, then pushed).

use std::path::PathBuf;

use clap::Subcommand;
use ipnet::IpNet;
use jiff::{SignedDuration, Timestamp};
use policy::model::{Admission, IdRange};
use policy::{NodeId, OperatorPublicKey, Role};

use crate::edit::{NewNode, PolicyEdit};
use crate::failure::{CliResult, EXIT_CODES_HELP, Exit, Failure};
use crate::keygen;
use crate::node_cmd::parse_role;

#[derive(Debug, Subcommand)]
pub enum AdmissionCmd {
    /// Give a master an admission key: it admits nodes within these limits, signing only the
    /// list of the nodes it admitted, never the policy. The key is written to --key-out
    /// (0600): copy it to the master's /etc/tyd/admission.key.
    #[command(after_help = EXIT_CODES_HELP)]
    Add {
        /// The policy file.
        file: PathBuf,
        /// The master's node id (a node of the policy with role master).
        #[arg(long)]
        master: u16,
        /// Where to write the new admission key.
        #[arg(long)]
        key_out: PathBuf,
        /// Roles it may admit (repeat; default drone and server; never master).
        #[arg(long = "role", value_parser = parse_role)]
        roles: Vec<Role>,
        /// Node ids it hands out, e.g. 200-299 (default, for the first key: 100-199).
        #[arg(long)]
        ids: Option<String>,
        /// A network its nodes' tunnel addresses come from (repeat; default, for the first
        /// key: a block of each tunnel network).
        #[arg(long = "network")]
        networks: Vec<IpNet>,
        /// How many nodes it may admit (default: as many as its ids and first network hold).
        #[arg(long)]
        max_nodes: Option<u16>,
        /// How long the key admits, e.g. 365d (past it every member drops its nodes).
        #[arg(long, default_value = "365d", value_parser = crate::parse_span)]
        valid_for: SignedDuration,
    },
    /// Give a master's admission a new key (a stolen or lost one). The master signs its
    /// membership again with the new key once it has it (copy --key-out to its
    /// /etc/tyd/admission.key and restart joind); meanwhile its nodes are out of the map.
    #[command(after_help = EXIT_CODES_HELP)]
    Rotate {
        file: PathBuf,
        #[arg(long)]
        master: u16,
        #[arg(long)]
        key_out: PathBuf,
    },
    /// Remove a node a master admitted (`tyd node remove` is for the nodes the policy
    /// lists): every member leaves its WireGuard key out of the node map, and the master
    /// drops it from its membership when it next signs it.
    #[command(after_help = EXIT_CODES_HELP)]
    Revoke {
        file: PathBuf,
        #[arg(long)]
        master: u16,
        /// The node's WireGuard public key, base64 (its id may be given to another node).
        #[arg(long)]
        public_key: policy::WgPublicKey,
    },
    /// Take a master's admission key away: every member drops its membership and the nodes
    /// in it (the default), unless --keep-nodes names that membership (a member's
    /// /etc/tyd/membership-<id>.toml, checked against the key): its nodes are then copied
    /// into the policy, the operator's from now on.
    #[command(after_help = EXIT_CODES_HELP)]
    Remove {
        file: PathBuf,
        #[arg(long)]
        master: u16,
        #[arg(long)]
        keep_nodes: Option<PathBuf>,
    },
}

fn master_id(id: u16) -> CliResult<NodeId> {
    NodeId::new(id).ok_or_else(|| Failure::new(Exit::Usage, "--master: a node id is 1-65535"))
}

pub fn run(cmd: AdmissionCmd, now: Timestamp) -> CliResult {
    match cmd {
        AdmissionCmd::Add {
            file,
            master,
            key_out,
            roles,
            ids,
            networks,
            max_nodes,
            valid_for,
        } => {
            let master = master_id(master)?;
            let mut edit = PolicyEdit::open(&file)?;
            let current = edit.current(now)?;
            let expires = now
                .checked_add(valid_for)
                .map_err(|e| Failure::new(Exit::Usage, e.to_string()))?;
            let roles = if roles.is_empty() {
                vec![Role::Drone, Role::Server]
            } else {
                roles
            };
            // The key is made only once the limits are known to be usable.
            let placeholder =
                OperatorPublicKey::from(&ed25519_dalek::SigningKey::from_bytes(&[0; 32]));
            let mut limits =
                limits_of(&current, master, placeholder, roles, ids, networks, expires)?;
            if let Some(max) = max_nodes {
                limits.max_nodes = max;
            }
            let mut trial = PolicyEdit::open(&file)?;
            trial.add_admission(&limits)?;
            trial.current(now)?;
            let key = keygen::admission(&key_out)?;
            limits.key = OperatorPublicKey::from(&key);
            edit.add_admission(&limits)?;
            let p = edit.commit(now)?;
            println!(
                "master {master} admits {} with ids {} in {}, {} nodes at most, until {}; key in {} (copy it to the master's /etc/tyd/admission.key); serial is now {}: sign the policy",
                limits.role_names(),
                limits.ids,
                limits
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                limits.max_nodes,
                limits.expires,
                key_out.display(),
                p.cluster.serial
            );
        }
        AdmissionCmd::Rotate {
            file,
            master,
            key_out,
        } => {
            let master = master_id(master)?;
            let mut edit = PolicyEdit::open(&file)?;
            if edit.current(now)?.admission_of(master).is_none() {
                return Err(policy::edit::EditError::NoSuchAdmission(master).into());
            }
            let key = keygen::admission(&key_out)?;
            edit.set_admission_key(master, &OperatorPublicKey::from(&key))?;
            let p = edit.commit(now)?;
            println!(
                "master {master} has a new admission key in {}: copy it to the master's /etc/tyd/admission.key and restart its joind; serial is now {}: sign the policy",
                key_out.display(),
                p.cluster.serial
            );
        }
        AdmissionCmd::Revoke {
            file,
            master,
            public_key,
        } => {
            let master = master_id(master)?;
            let mut edit = PolicyEdit::open(&file)?;
            edit.revoke_admitted(master, &public_key)?;
            let p = edit.commit(now)?;
            println!(
                "the node with key {public_key} is out of master {master}'s nodes on every member once this policy is signed and pushed; serial is now {}",
                p.cluster.serial
            );
        }
        AdmissionCmd::Remove {
            file,
            master,
            keep_nodes,
        } => {
            let master = master_id(master)?;
            let mut edit = PolicyEdit::open(&file)?;
            let current = edit.current(now)?;
            let kept = match &keep_nodes {
                None => Vec::new(),
                Some(path) => membership_nodes(&current, master, path, now)?,
            };
            for n in &kept {
                edit.add_node(&NewNode {
                    id: n.id,
                    name: n.name.clone(),
                    public_key: n.public_key,
                    endpoint: n.endpoint,
                    addresses: n.addresses.clone(),
                    roles: n.roles.clone(),
                    expires: n.expires,
                    attestation_key: None,
                })?;
            }
            edit.remove_admission(master)?;
            let p = edit.commit(now)?;
            println!(
                "master {master}'s admission key removed; {}; serial is now {}: sign the policy",
                if kept.is_empty() {
                    "every member drops the nodes it admitted".to_string()
                } else {
                    format!("its {} nodes are the policy's now", kept.len())
                },
                p.cluster.serial
            );
        }
    }
    Ok(())
}

/// The limits asked for; the first key's defaults where ids or networks are not given.
fn limits_of(
    current: &policy::Policy,
    master: NodeId,
    key: OperatorPublicKey,
    roles: Vec<Role>,
    ids: Option<String>,
    networks: Vec<IpNet>,
    expires: Timestamp,
) -> CliResult<Admission> {
    let defaults = policy::template::first_admission(current, master, key, roles.clone(), expires);
    let first = current.admissions.is_empty();
    let ids = match ids {
        Some(text) => {
            IdRange::try_from(text).map_err(|e| Failure::new(Exit::Usage, format!("--ids: {e}")))?
        }
        None if first => defaults
            .as_ref()
            .map(|d| d.ids)
            .ok_or_else(|| Failure::new(Exit::Usage, "--ids is needed"))?,
        None => {
            return Err(Failure::new(
                Exit::Usage,
                "--ids is needed: the first key's default is taken",
            ));
        }
    };
    let addresses = match (networks.is_empty(), first) {
        (false, _) => networks,
        (true, true) => defaults
            .as_ref()
            .map(|d| d.addresses.clone())
            .ok_or_else(|| Failure::new(Exit::Usage, "--network is needed"))?,
        (true, false) => {
            return Err(Failure::new(
                Exit::Usage,
                "--network is needed: the first key's default is taken",
            ));
        }
    };
    let hosts = addresses
        .first()
        .map_or(0, |n| n.hosts().take(65_535).count());
    let max_nodes = u16::try_from(hosts.min(ids.len()))
        .unwrap_or(u16::MAX)
        .max(1);
    Ok(Admission {
        master,
        key,
        roles,
        ids,
        addresses,
        max_nodes,
        expires,
        revoked: Vec::new(),
    })
}

/// The nodes of master `master`'s membership at `path`, checked against its key in `policy`;
/// refused if one of them is another node's too (the policy's: copied, it would be listed
/// twice).
fn membership_nodes(
    policy: &policy::Policy,
    master: NodeId,
    path: &std::path::Path,
    now: Timestamp,
) -> CliResult<Vec<policy::Node>> {
    let bytes = policy::fsutil::read(path)?;
    let sig = policy::fsutil::read(&policy::signature_path(path))?;
    let mut in_force = policy::membership::MembershipsInForce::default();
    let mut store = policy::membership::MembershipStore::in_memory();
    let refused =
        |e: &dyn std::fmt::Display| Failure::new(Exit::Refused, format!("{}: {e}", path.display()));
    in_force
        .offer(
            policy,
            &mut store,
            master,
            &path.display().to_string(),
            bytes,
            sig,
            now,
        )
        .map_err(|e| refused(&e))?;
    if let Some(((_, id), why)) = in_force.excluded().iter().next() {
        return Err(refused(&format!("node {id}: {why}")));
    }
    Ok(in_force
        .of(master)
        .map(|m| m.verified.nodes.clone())
        .unwrap_or_default())
}
