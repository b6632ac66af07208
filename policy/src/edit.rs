//! In-place policy edits that keep the operator's comments and layout (toml_edit), bump the
//! serial, and are written only if the result is a valid policy. Used by `tyd node ...` and
//! by a master admitting a joining node.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};

use crate::fsutil::{self, FileError, atomic_write};
use crate::{Invalid, NodeId, Policy, Role, WgPublicKey, parse_policy};

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: not valid UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("{path}: {why}")]
    Toml { path: PathBuf, why: String },
    #[error("`node` must be an array of tables ([[node]])")]
    NodesNotTables,
    #[error("no node {0} in the policy")]
    NoSuchNode(NodeId),
    #[error("master {0} has no admission key in the policy")]
    NoSuchAdmission(NodeId),
    #[error("serial would overflow")]
    SerialOverflow,
    /// The edited policy would be invalid: nothing was written.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// A policy file opened for editing.
#[derive(Debug)]
pub struct PolicyEdit {
    path: PathBuf,
    pub doc: DocumentMut,
    /// The BLAKE3 digest (hex) of the bytes opened: the parent a committed edit names.
    origin: String,
}

impl PolicyEdit {
    pub fn open(path: &Path) -> Result<Self, EditError> {
        Self::from_bytes(path, fsutil::read(path)?)
    }

    /// An edit of `bytes`, already read from `path` (where [`Self::write`] puts the result):
    /// a caller that checked these bytes edits exactly them, not whatever the file holds now.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, EditError> {
        let origin = blake3::hash(&bytes).to_hex().to_string();
        let text =
            String::from_utf8(bytes).map_err(|_| EditError::NotUtf8 { path: path.into() })?;
        let doc = text.parse::<DocumentMut>().map_err(|e| EditError::Toml {
            path: path.into(),
            why: crate::parse::one_line(e.message()),
        })?;
        Ok(Self {
            path: path.into(),
            doc,
            origin,
        })
    }

    /// Names the policy opened as the newest parent of the one being made (and keeps at most
    /// [`crate::model::MAX_PARENTS`] in all): called as the serial is bumped.
    fn record_parent(&mut self) {
        let parent = format!("{}:{}", self.serial(), self.origin);
        let mut parents = toml_edit::Array::new();
        parents.push(parent);
        if let Some(old) = self.doc["cluster"]
            .get("parents")
            .and_then(|p| p.as_array())
        {
            for p in old.iter().take(crate::model::MAX_PARENTS - 1) {
                if let Some(s) = p.as_str() {
                    parents.push(s);
                }
            }
        }
        self.doc["cluster"]["parents"] = value(parents);
    }

    /// The policy as it is now (validated), to decide what to edit.
    pub fn current(&self, now: Timestamp) -> Result<Policy, EditError> {
        Ok(parse_policy(
            &self.path.display().to_string(),
            self.doc.to_string().as_bytes(),
            now,
        )?)
    }

    pub fn serial(&self) -> u64 {
        self.doc["cluster"]["serial"]
            .as_integer()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    }

    pub fn set_serial(&mut self, serial: u64) -> Result<(), EditError> {
        let n = i64::try_from(serial).map_err(|_| EditError::SerialOverflow)?;
        self.doc["cluster"]["serial"] = value(n);
        Ok(())
    }

    fn nodes_mut(&mut self) -> Result<&mut ArrayOfTables, EditError> {
        if self.doc.get("node").is_none() {
            self.doc["node"] = Item::ArrayOfTables(ArrayOfTables::new());
        }
        self.doc["node"]
            .as_array_of_tables_mut()
            .ok_or(EditError::NodesNotTables)
    }

    fn node_index(&mut self, id: NodeId) -> Result<usize, EditError> {
        let nodes = self.nodes_mut()?;
        nodes
            .iter()
            .position(|t| t.get("id").and_then(Item::as_integer) == Some(i64::from(id.get())))
            .ok_or(EditError::NoSuchNode(id))
    }

    pub fn add_node(&mut self, node: &NewNode) -> Result<(), EditError> {
        let mut t = Table::new();
        t["id"] = value(i64::from(node.id.get()));
        t["name"] = value(node.name.clone());
        t["public_key"] = value(node.public_key.to_base64());
        if let Some(ep) = node.endpoint {
            t["endpoint"] = value(ep.to_string());
        }
        let addrs: Array = node.addresses.iter().map(|a| a.to_string()).collect();
        t["addresses"] = value(addrs);
        t["roles"] = value(role_names(&node.roles));
        if let Some(exp) = node.expires {
            t["expires"] = value(exp.to_string());
        }
        if let Some(k) = &node.attestation_key {
            t["attestation_key"] = value(k.to_string());
        }
        self.nodes_mut()?.push(t);
        Ok(())
    }

    /// `[distribution] require_certainty = [roles]`: only nodes with these roles must run
    /// certaintyd.
    pub fn require_certainty_of(&mut self, roles: &[Role]) {
        self.doc["distribution"]["require_certainty"] = value(role_names(roles));
    }

    pub fn remove_node(&mut self, id: NodeId) -> Result<(), EditError> {
        let i = self.node_index(id)?;
        self.nodes_mut()?.remove(i);
        Ok(())
    }

    /// The `[[admission]]` table of master `master`.
    fn admission_mut(&mut self, master: NodeId) -> Result<&mut Table, EditError> {
        self.doc
            .get_mut("admission")
            .and_then(Item::as_array_of_tables_mut)
            .and_then(|a| {
                a.iter_mut().find(|t| {
                    t.get("master").and_then(Item::as_integer) == Some(i64::from(master.get()))
                })
            })
            .ok_or(EditError::NoSuchAdmission(master))
    }

    /// Gives master `master`'s admission a new key (`tyd admission rotate`).
    pub fn set_admission_key(
        &mut self,
        master: NodeId,
        key: &crate::OperatorPublicKey,
    ) -> Result<(), EditError> {
        self.admission_mut(master)?["key"] = value(key.to_base64());
        Ok(())
    }

    /// Revokes the node with WireGuard key `key` that master `master` admitted (`tyd
    /// admission revoke`): every member leaves it out of the node map.
    pub fn revoke_admitted(&mut self, master: NodeId, key: &WgPublicKey) -> Result<(), EditError> {
        let t = self.admission_mut(master)?;
        let text = key.to_base64();
        if t.get("revoked").and_then(Item::as_array).is_none() {
            t["revoked"] = value(Array::new());
        }
        if let Some(list) = t.get_mut("revoked").and_then(Item::as_array_mut)
            && !list.iter().any(|v| v.as_str() == Some(text.as_str()))
        {
            list.push(text);
        }
        Ok(())
    }

    /// Removes master `master`'s admission key (`tyd admission remove`).
    pub fn remove_admission(&mut self, master: NodeId) -> Result<(), EditError> {
        self.admission_mut(master)?;
        let Some(all) = self
            .doc
            .get_mut("admission")
            .and_then(Item::as_array_of_tables_mut)
        else {
            return Err(EditError::NoSuchAdmission(master));
        };
        all.retain(|t| t.get("master").and_then(Item::as_integer) != Some(i64::from(master.get())));
        if all.is_empty() {
            self.doc.remove("admission");
        }
        Ok(())
    }

    pub fn set_node_key(&mut self, id: NodeId, key: &WgPublicKey) -> Result<(), EditError> {
        let i = self.node_index(id)?;
        let nodes = self.nodes_mut()?;
        if let Some(t) = nodes.get_mut(i) {
            t["public_key"] = value(key.to_base64());
        }
        Ok(())
    }

    /// Adds a master's admission key and its limits, as an `[[admission]]` table before the
    /// first node (where a daemon's block-by-block parse expects it). Checked with the rest
    /// when the edit is written.
    pub fn add_admission(&mut self, a: &crate::model::Admission) -> Result<(), EditError> {
        let text = self.doc.to_string();
        let block = crate::template::admission_block(a);
        let at = text.find("\n[[node]]").map_or(text.len(), |i| i + 1);
        let edited = format!("{}{block}\n{}", &text[..at], &text[at..]);
        self.doc = edited.parse::<DocumentMut>().map_err(|e| EditError::Toml {
            path: self.path.clone(),
            why: crate::parse::one_line(e.message()),
        })?;
        Ok(())
    }

    /// Bumps the serial, validates the result, and replaces the file atomically.
    /// Nothing is written if the edited policy would be invalid.
    pub fn commit(mut self, now: Timestamp) -> Result<Policy, EditError> {
        let next = self.serial() + 1;
        self.record_parent();
        self.set_serial(next)?;
        self.write(now)
    }

    /// Bumps the serial and validates, writing nothing: the text and the policy, for a caller
    /// that signs first and then writes the signature and the policy in its own order.
    pub fn commit_text(mut self, now: Timestamp) -> Result<(String, Policy), EditError> {
        let next = self.serial() + 1;
        self.record_parent();
        self.set_serial(next)?;
        let text = self.doc.to_string();
        let policy = parse_policy(&self.path.display().to_string(), text.as_bytes(), now)?;
        Ok((text, policy))
    }

    /// Validates and writes without touching the serial.
    pub fn write(self, now: Timestamp) -> Result<Policy, EditError> {
        self.write_text(now).map(|(_, policy)| policy)
    }

    /// [`Self::write`], returning the bytes written too (to sign exactly them).
    pub fn write_text(self, now: Timestamp) -> Result<(String, Policy), EditError> {
        let text = self.doc.to_string();
        let policy = parse_policy(&self.path.display().to_string(), text.as_bytes(), now)?;
        let mode = std::fs::metadata(&self.path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap_or(0o644);
        atomic_write(&self.path, text.as_bytes(), mode)?;
        Ok((text, policy))
    }
}

/// A node to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    pub id: NodeId,
    pub name: String,
    pub public_key: WgPublicKey,
    pub endpoint: Option<SocketAddr>,
    pub addresses: Vec<IpAddr>,
    pub roles: Vec<Role>,
    pub expires: Option<Timestamp>,
    /// Its TPM's attestation key, proved at its join (issue 29).
    pub attestation_key: Option<crate::AttestationKey>,
}

/// Roles as the policy spells them.
fn role_names(roles: &[Role]) -> Array {
    roles.iter().map(|r| r.name()).collect()
}

/// Tunnel addresses derived from the node id: the id-th host of each tunnel network.
pub fn default_addresses(policy: &Policy, id: NodeId) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Some(net) = policy.cluster.tunnel_ipv4 {
        let addr = Ipv4Addr::from(u32::from(net.network()).wrapping_add(u32::from(id.get())));
        if net.contains(&addr) && addr != net.broadcast() {
            out.push(IpAddr::V4(addr));
        }
    }
    if let Some(net) = policy.cluster.tunnel_ipv6 {
        let addr = Ipv6Addr::from(u128::from(net.network()).wrapping_add(u128::from(id.get())));
        if net.contains(&addr) {
            out.push(IpAddr::V6(addr));
        }
    }
    out
}
