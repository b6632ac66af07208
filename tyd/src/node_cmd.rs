//! `tyd node add | remove | rotate-key`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use jiff::Timestamp;
use policy::{NodeId, Role, WgPublicKey};

use crate::edit::{NewNode, PolicyEdit, default_addresses, find_node};
use crate::failure::{ArgError, CliResult, EXIT_CODES_HELP, Exit, Failure};
use crate::keygen::read_public_key_file;

/// A node id: 1 to 65535 (0 is not a node), said plainly for any other input.
fn parse_id(s: &str) -> Result<u16, ArgError> {
    match s.trim().parse::<u64>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(ArgError::NodeId),
    }
}

/// An endpoint is an IP address and a port; host names are not resolved (a policy pins
/// addresses, and a resolver on an untrusted LAN could be lied to).
fn parse_endpoint(s: &str) -> Result<SocketAddr, ArgError> {
    s.parse().map_err(|_| ArgError::Endpoint)
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Add a node. Tunnel addresses default to the node id's host in each tunnel network.
    #[command(after_help = EXIT_CODES_HELP)]
    Add {
        /// The policy file.
        file: PathBuf,
        /// openMosix node number, 1-65535.
        #[arg(long, value_parser = parse_id)]
        id: u16,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        key: KeyArg,
        /// LAN address and WireGuard port, e.g. 192.168.1.10:51820.
        #[arg(long, value_parser = parse_endpoint)]
        endpoint: Option<SocketAddr>,
        /// Tunnel address (repeat for several).
        #[arg(long = "address")]
        addresses: Vec<IpAddr>,
        /// master, drone or server (repeat for several; default drone).
        #[arg(long = "role", value_parser = parse_role)]
        roles: Vec<Role>,
        /// When the node stops being accepted (RFC 3339).
        #[arg(long)]
        expires: Option<Timestamp>,
        /// Pins the node's TPM attestation key (base64, as `tyd join` prints it): what its
        /// quotes must verify under when its role must attest.
        #[arg(long)]
        attestation_key: Option<policy::AttestationKey>,
    },
    /// Remove a node, by id or name (`id:3` or `name:3` when "3" could be either).
    #[command(after_help = EXIT_CODES_HELP)]
    Remove { file: PathBuf, node: String },
    /// Give a node a new WireGuard public key.
    #[command(name = "rotate-key", after_help = EXIT_CODES_HELP)]
    RotateKey {
        file: PathBuf,
        node: String,
        #[command(flatten)]
        key: KeyArg,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct KeyArg {
    /// The node's WireGuard public key, base64.
    #[arg(long)]
    public_key: Option<WgPublicKey>,
    /// A file holding it (KEY.pub from `tyd keygen node`).
    #[arg(long)]
    public_key_file: Option<PathBuf>,
}

impl KeyArg {
    fn resolve(&self) -> CliResult<WgPublicKey> {
        match (&self.public_key, &self.public_key_file) {
            (Some(k), _) => Ok(*k),
            (None, Some(path)) => read_public_key_file(path),
            (None, None) => Err(Failure::new(Exit::Usage, "a public key is required")),
        }
    }
}

pub fn parse_role(s: &str) -> Result<Role, policy::model::RoleError> {
    s.parse()
}

pub fn run(cmd: NodeCmd, now: Timestamp) -> CliResult {
    match cmd {
        NodeCmd::Add {
            file,
            id,
            name,
            key,
            endpoint,
            addresses,
            roles,
            expires,
            attestation_key,
        } => {
            let id = NodeId::new(id)
                .ok_or_else(|| Failure::new(Exit::Usage, "node id must be 1-65535"))?;
            let mut edit = PolicyEdit::open(&file)?;
            let current = edit.current(now)?;
            let addresses = if addresses.is_empty() {
                default_addresses(&current, id)
            } else {
                addresses
            };
            edit.add_node(&NewNode {
                id,
                name: name.clone(),
                public_key: key.resolve()?,
                endpoint,
                addresses,
                roles: if roles.is_empty() {
                    vec![Role::Drone]
                } else {
                    roles
                },
                expires,
                attestation_key,
            })?;
            let p = edit.commit(now)?;
            println!(
                "added node {id} ({name}); serial is now {}; re-sign the policy",
                p.cluster.serial
            );
        }
        NodeCmd::Remove { file, node } => {
            let mut edit = PolicyEdit::open(&file)?;
            let id = find_node(&edit.current(now)?, &node)?;
            edit.remove_node(id)?;
            let p = edit.commit(now)?;
            println!(
                "removed node {id}; serial is now {}; re-sign the policy",
                p.cluster.serial
            );
        }
        NodeCmd::RotateKey { file, node, key } => {
            let mut edit = PolicyEdit::open(&file)?;
            let id = find_node(&edit.current(now)?, &node)?;
            edit.set_node_key(id, &key.resolve()?)?;
            let p = edit.commit(now)?;
            println!(
                "rotated key of node {id}; serial is now {}; re-sign the policy",
                p.cluster.serial
            );
        }
    }
    Ok(())
}
