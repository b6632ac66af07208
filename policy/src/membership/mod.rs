//! A master's membership: the nodes it admitted, signed with its admission key (never the
//! operator key), as a document of its own beside the policy (`membership-<master>.toml` and
//! its `.sig`), with its own serial.
//!
//! A member accepts one only if the policy in force lists that master's admission key, live,
//! and the document is signed by it, for this cluster and this master, and every node in it is
//! within the key's limits (roles, ids, addresses, count), apart from every node of the policy
//! and of the other masters' memberships ([`check`]), and newer than the last accepted from
//! that master ([`store`]). The node map in force is the policy's nodes and those of each
//! membership accepted ([`in_force`]).
//!
//! ```toml
//! [membership]
//! cluster = "lab"
//! master = 1
//! serial = 12
//!
//! [[node]]
//! id = 101
//! name = "drone-101"
//! public_key = "..."
//! addresses = ["10.77.1.101"]
//! roles = ["drone"]
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{Node, NodeId};

pub mod check;
pub mod in_force;
pub mod store;
mod verify;

pub use check::{Refusal, check_limits};
pub use in_force::{Dropped, MembershipsInForce, SignedMembership, read_beside};
pub use store::{MembershipRecord, MembershipStore};
pub use verify::{MAX_MEMBERSHIP_BYTES, parse_membership, verify_membership};

/// One master's signed list of the nodes it admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    pub membership: Header,
    #[serde(default, rename = "node")]
    pub nodes: Vec<Node>,
}

/// What a membership is for, and which one it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The cluster's name, as its policy says it.
    pub cluster: String,
    /// The master whose admission key signs it.
    pub master: NodeId,
    /// Per master, rising: a member never accepts a serial below one it accepted from that
    /// master, nor the same serial with other bytes.
    pub serial: u64,
}

/// Where master `master`'s membership lives beside `policy`: `membership-<id>.toml` in the
/// same directory (its signature is [`crate::signature_path`] of it).
pub fn membership_path(policy: &Path, master: NodeId) -> PathBuf {
    policy.with_file_name(format!("membership-{master}.toml"))
}

/// A membership file and its signature, read as a signed pair (under the directory's shared
/// lock, each bounded: one byte past the limit is read, for the size refusal to say so);
/// `None` when either is missing or cannot be read.
pub fn read_pair(path: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    let (bytes, sig) = crate::fsutil::read_signed_pair(
        path,
        &crate::signature_path(path),
        MAX_MEMBERSHIP_BYTES as u64 + 1,
        64 << 10,
    );
    Some((bytes.ok()?, sig.ok()?))
}

/// The text of a membership, as a master writes and signs it.
pub fn render(m: &Membership) -> Result<String, toml::ser::Error> {
    toml::to_string(m)
}
