//! A master's admission key and its limits (`[[admission]]`): what the operator lets one
//! master admit on its own, signing only its membership (`crate::membership`), never the
//! policy.

use std::fmt;

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{NodeId, Role, timestamp};
use crate::keys::OperatorPublicKey;

/// One master's admission key, signed into the policy by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    /// The node id of the master that holds the key (a node of the policy, role master).
    pub master: NodeId,
    /// The ed25519 public key its membership is signed with.
    pub key: OperatorPublicKey,
    /// The roles it may admit (never `master`).
    pub roles: Vec<Role>,
    /// The node ids it may hand out, `"FIRST-LAST"`: no other key's, no node's of the policy.
    pub ids: IdRange,
    /// The tunnel networks its nodes' addresses must lie in: inside the cluster's tunnel
    /// networks, overlapping no other key's, holding no address of a node of the policy.
    pub addresses: Vec<IpNet>,
    /// How many nodes its membership may list at most.
    pub max_nodes: u16,
    /// After this instant its membership is dropped (fail closed) until the operator signs a
    /// policy with a new expiry.
    #[serde(with = "timestamp")]
    pub expires: Timestamp,
    /// WireGuard keys of nodes this master admitted that the operator removed (`tyd admission
    /// revoke`): every member leaves them out of the node map whatever the membership says,
    /// and the master drops them from its membership when it next signs it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<crate::keys::WgPublicKey>,
}

impl Admission {
    /// Whether `addr` is inside one of this key's networks.
    pub fn holds_address(&self, addr: std::net::IpAddr) -> bool {
        self.addresses.iter().any(|net| net.contains(&addr))
    }

    /// Its roles as the policy spells them, comma-separated ("drone, server").
    pub fn role_names(&self) -> String {
        let names: Vec<&str> = self.roles.iter().map(|r| r.name()).collect();
        names.join(", ")
    }

    /// Whether the key may sign at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires > now
    }
}

/// Node ids `first..=last`, written `"FIRST-LAST"` (or one id alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdRange {
    pub first: NodeId,
    pub last: NodeId,
}

impl IdRange {
    pub fn contains(&self, id: NodeId) -> bool {
        self.first <= id && id <= self.last
    }

    pub fn overlaps(&self, other: &IdRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// How many ids it holds.
    pub fn len(&self) -> usize {
        usize::from(self.last.get() - self.first.get()) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn iter(&self) -> impl Iterator<Item = NodeId> {
        (self.first.get()..=self.last.get()).filter_map(NodeId::new)
    }
}

/// A text that is not an id range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is not an id range such as \"100-199\" (ids 1-65535, the first not above the last)", crate::parse::shown(.0))]
pub struct IdRangeError(String);

impl TryFrom<String> for IdRange {
    type Error = IdRangeError;
    fn try_from(s: String) -> Result<Self, IdRangeError> {
        let id = |t: &str| t.trim().parse::<u16>().ok().and_then(NodeId::new);
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (id(a), id(b)),
            None => (id(&s), id(&s)),
        };
        match (first, last) {
            (Some(first), Some(last)) if first <= last => Ok(IdRange { first, last }),
            _ => Err(IdRangeError(s)),
        }
    }
}

impl From<IdRange> for String {
    fn from(r: IdRange) -> String {
        r.to_string()
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_ranges_read_as_written_and_refuse_the_rest() {
        let r = IdRange::try_from("100-199".to_string()).unwrap();
        assert_eq!((r.first.get(), r.last.get(), r.len()), (100, 199, 100));
        assert_eq!(String::from(r), "100-199");
        assert_eq!(IdRange::try_from("7".to_string()).unwrap().len(), 1);
        for bad in ["0-5", "9-3", "1-70000", "a-b", "", "-", "5-"] {
            assert!(IdRange::try_from(bad.to_string()).is_err(), "{bad}");
        }
        let a = IdRange::try_from("100-199".to_string()).unwrap();
        let b = IdRange::try_from("199-250".to_string()).unwrap();
        let c = IdRange::try_from("200-250".to_string()).unwrap();
        assert!(a.overlaps(&b) && !a.overlaps(&c));
    }
}
