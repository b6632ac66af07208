//! The policy schema: what an operator writes in `cluster.toml`.
//!
//! Every struct rejects unknown keys, so a typo never silently turns a setting off.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::keys::{OperatorPublicKey, WgPublicKey};
use crate::ports::PortSet;

mod admission;
mod attestation;
mod certainty;
mod hardening;

pub use admission::*;
pub use attestation::*;
pub use certainty::*;
pub use hardening::*;

/// The whole signed cluster policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub cluster: Cluster,
    /// Services that may only flow between authenticated nodes, through the tunnels.
    #[serde(default)]
    pub services: BTreeMap<String, PortSet>,
    #[serde(default)]
    pub firewall: Firewall,
    #[serde(default)]
    pub certainty: Certainty,
    #[serde(default)]
    pub hardening: Hardening,
    #[serde(default)]
    pub distribution: Distribution,
    /// TPM quotes between peers: who must attest, the pinned images, freshness.
    #[serde(default, skip_serializing_if = "Attestation::is_default")]
    pub attestation: Attestation,
    /// The join service (`tyd join`); absent: nodes are only added by the operator.
    #[serde(default)]
    pub join: Option<Join>,
    /// The masters' admission keys and their limits; none: only the operator adds nodes
    /// (and a master admits with the operator key, the mode before admission keys).
    #[serde(default, rename = "admission", skip_serializing_if = "Vec::is_empty")]
    pub admissions: Vec<Admission>,
    #[serde(default, rename = "node")]
    pub nodes: Vec<Node>,
}

impl Policy {
    pub fn node_by_id(&self, id: NodeId) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn node_by_key(&self, key: &WgPublicKey) -> Option<&Node> {
        self.nodes.iter().find(|n| &n.public_key == key)
    }

    /// The admission key the policy lists for master `master`.
    pub fn admission_of(&self, master: NodeId) -> Option<&Admission> {
        self.admissions.iter().find(|a| a.master == master)
    }

    /// The nodes in the effective node map at `now`: those whose `expires` has not passed.
    /// An expired node stays in the file (the signature covers it) but is nobody's peer.
    pub fn live_nodes(&self, now: Timestamp) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.is_live(now))
    }

    /// The next instant after `now` at which the effective node map changes (a node or an
    /// admission key expires) or the whole policy expires: when a running node must look again.
    pub fn next_expiry(&self, now: Timestamp) -> Option<Timestamp> {
        self.nodes
            .iter()
            .filter_map(|n| n.expires)
            .chain(self.admissions.iter().map(|a| a.expires))
            .chain([self.cluster.expires])
            .filter(|&t| t > now)
            .min()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// Monotonic version: a node never accepts a serial at or below one it accepted.
    pub serial: u64,
    /// After this instant the policy is refused, so a stolen old policy has a shelf life.
    #[serde(with = "timestamp")]
    pub expires: Timestamp,
    #[serde(default = "default_interface")]
    pub interface: String,
    #[serde(default = "default_listen_port")]
    pub listen_port: u16,
    pub tunnel_ipv4: Option<Ipv4Net>,
    pub tunnel_ipv6: Option<Ipv6Net>,
    /// Accept WireGuard handshakes from any source address, not just the listed endpoints.
    #[serde(default)]
    pub allow_roaming: bool,
    /// WireGuard persistent keepalive in seconds, for nodes behind NAT.
    pub persistent_keepalive: Option<u16>,
    /// The policies this one was edited from, newest first, at most [`MAX_PARENTS`]: written
    /// by joind and `tyd` when they sign an edit (`PolicyEdit`), so a master can tell whether
    /// a newer policy descends from the one it admitted a node in (`join::fork`). Absent in a
    /// policy written by hand.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<Parent>,
}

/// How many ancestors a policy names at most.
pub const MAX_PARENTS: usize = 8;

/// A policy another was edited from: its serial and the BLAKE3 digest of its file, written
/// `"SERIAL:HEX"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Parent {
    pub serial: u64,
    /// 64 lowercase hex digits.
    pub digest: String,
}

/// A parent that is not `SERIAL:DIGEST`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not SERIAL:DIGEST (a serial, a colon, 64 hex digits)")]
pub struct ParentError(String);

impl TryFrom<String> for Parent {
    type Error = ParentError;
    fn try_from(s: String) -> Result<Self, ParentError> {
        let bad = || ParentError(s.clone());
        let (serial, digest) = s.split_once(':').ok_or_else(bad)?;
        let serial = serial.parse().map_err(|_| bad())?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Parent {
            serial,
            digest: digest.to_ascii_lowercase(),
        })
    }
}

impl From<Parent> for String {
    fn from(p: Parent) -> String {
        format!("{}:{}", p.serial, p.digest)
    }
}

fn default_interface() -> String {
    "tyd0".to_string()
}

fn default_listen_port() -> u16 {
    51820
}

/// What happens to traffic that no rule mentions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Posture {
    #[default]
    Drop,
    Accept,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firewall {
    #[serde(default)]
    pub default: Posture,
    /// Inbound services open to anyone on the LAN (ssh, dhcp, ntp in CHAOS).
    #[serde(default)]
    pub allow: BTreeMap<String, PortSet>,
    /// Accept IPv6 router advertisements and ICMP redirects from the LAN. Off by default:
    /// on an untrusted LAN anyone can send them, and a rogue one can claim the tunnel network.
    #[serde(default)]
    pub accept_router_advertisements: bool,
}

impl Default for Firewall {
    fn default() -> Self {
        Self {
            default: Posture::Drop,
            allow: BTreeMap::new(),
            accept_router_advertisements: false,
        }
    }
}

/// How members keep each other current (clusterd): the signed policy and each node's own
/// heartbeat travel between members through the tunnels, on `port` (UDP heartbeats, TCP
/// policy fetch), which is guarded like the services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distribution {
    #[serde(default = "default_distribution_port")]
    pub port: u16,
    /// How often each node tells every peer its state.
    #[serde(default = "default_heartbeat", with = "duration")]
    pub heartbeat: Duration,
    /// Take the cluster services away from a node that reports lost integrity, whose
    /// certaintyd does not answer, whose root differs from the pinned one, or that is silent
    /// for `quarantine_after`. Its tunnel and this port stay, so it can come back.
    #[serde(default = "default_true")]
    pub quarantine: bool,
    #[serde(default = "default_quarantine_after", with = "duration")]
    pub quarantine_after: Duration,
    /// Which nodes must run a certaintyd that answers, or be quarantined: `true` every node,
    /// `false` none, or roles (`["drone"]`: masters on ordinary disks run none).
    #[serde(default)]
    pub require_certainty: CertaintyRequired,
}

/// Which nodes must run certaintyd (`[distribution] require_certainty`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CertaintyRequired {
    /// `true`: every node; `false`: none.
    Every(bool),
    /// Nodes with one of these roles.
    Roles(Vec<Role>),
}

impl Default for CertaintyRequired {
    fn default() -> Self {
        CertaintyRequired::Every(true)
    }
}

impl CertaintyRequired {
    /// Must a node with these roles run certaintyd?
    pub fn of(&self, roles: &[Role]) -> bool {
        match self {
            CertaintyRequired::Every(every) => *every,
            CertaintyRequired::Roles(required) => roles.iter().any(|r| required.contains(r)),
        }
    }
}

fn default_distribution_port() -> u16 {
    7946
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_quarantine_after() -> Duration {
    Duration::from_secs(5)
}
fn default_true() -> bool {
    true
}

impl Default for Distribution {
    fn default() -> Self {
        Self {
            port: default_distribution_port(),
            heartbeat: default_heartbeat(),
            quarantine: true,
            quarantine_after: default_quarantine_after(),
            require_certainty: CertaintyRequired::default(),
        }
    }
}

/// Joining with one command: members listen for `tyd join` on this TCP port on the LAN (it
/// must be in `[firewall.allow]`); a master admits the node, other members relay to a master
/// through the tunnels. The exchange is authenticated by a join token (docs/join.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    #[serde(default = "default_join_port")]
    pub port: u16,
}

pub fn default_join_port() -> u16 {
    7947
}

/// An openMosix node number, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NodeId(u16);

impl NodeId {
    /// Node 1, the first valid id.
    pub const MIN: NodeId = NodeId(1);

    pub fn new(id: u16) -> Option<Self> {
        (id != 0).then_some(Self(id))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u16::try_from(n).ok().and_then(NodeId::new).ok_or_else(|| {
            serde::de::Error::custom(format!("node id {n} is outside 1-65535 (openMosix)"))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the operator key: admits joins, signs policies.
    Master,
    /// A RAM-root node (CHAOS's drone): owes certaintyd wherever the policy requires it of
    /// drones.
    Drone,
    /// A member on an ordinary disk root (a Debian machine with the package): runs no
    /// certaintyd, so a policy that requires it of drones only does not quarantine it.
    Server,
}

impl Role {
    /// Every role, in the order the policy documents them.
    pub const ALL: [Role; 3] = [Role::Master, Role::Drone, Role::Server];

    /// The role as the policy spells it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Drone => "drone",
            Role::Server => "server",
        }
    }
}

/// A name that is not a role (shown as the operator wrote it, made printable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is not a role (master, drone or server)", crate::parse::shown(.0))]
pub struct RoleError(String);

impl std::str::FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Self, RoleError> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| RoleError(s.to_string()))
    }
}

fn default_roles() -> Vec<Role> {
    vec![Role::Drone]
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    pub public_key: WgPublicKey,
    /// Where the node's WireGuard listens on the LAN; absent for a node that only dials out.
    pub endpoint: Option<SocketAddr>,
    /// Tunnel addresses: what the node is inside the tunnel, and its WireGuard allowed IPs.
    pub addresses: Vec<IpAddr>,
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
    #[serde(
        default,
        with = "opt_timestamp",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<Timestamp>,
    /// The public part of its TPM's attestation key (recorded at a token join, or pinned by
    /// the operator): what its quotes must verify under.
    #[serde(
        default,
        with = "attestation::opt_key",
        skip_serializing_if = "Option::is_none"
    )]
    pub attestation_key: Option<AttestationKey>,
}

impl Node {
    /// Whether this node is still in the effective node map at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// RFC 3339 instants, written either as a TOML datetime or as a string.
pub(crate) mod timestamp {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Native(toml::value::Datetime),
        Text(String),
    }

    pub(super) fn parse<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = match Raw::deserialize(d)? {
            Raw::Native(dt) => dt.to_string(),
            Raw::Text(s) => s,
        };
        text.parse::<Timestamp>().map_err(|_| {
            serde::de::Error::custom(format!(
                "{text:?} is not an RFC 3339 instant with a UTC offset"
            ))
        })
    }

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        parse(d)
    }
}

mod opt_timestamp {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        timestamp::parse(d).map(Some)
    }
}

/// Durations written as `"2s"`, `"10m"`, `"1h 30m"`.
pub mod duration {
    use super::*;

    /// Why a text is not a duration.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum DurationError {
        #[error("{0:?} is not a duration such as \"2s\" or \"10m\"")]
        NotADuration(String),
        #[error("duration {0:?} is negative")]
        Negative(String),
    }

    pub fn parse(text: &str) -> Result<Duration, DurationError> {
        let signed: jiff::SignedDuration = text
            .parse()
            .map_err(|_| DurationError::NotADuration(text.to_string()))?;
        Duration::try_from(signed).map_err(|_| DurationError::Negative(text.to_string()))
    }

    pub fn format(d: &Duration) -> String {
        match jiff::SignedDuration::try_from(*d) {
            Ok(s) => format!("{s:#}"),
            Err(_) => format!("{}s", d.as_secs()),
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}
