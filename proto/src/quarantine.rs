//! The quarantine list clusterd decides and netguard enforces: the nodes whose tunnel
//! addresses are kept out of the service sets (their tunnels, and the distribution port, stay
//! open so they can report good integrity again). A local file, written atomically by
//! clusterd, read by netguard (and by clusterd after a restart); whoever can write it is root
//! on this node already.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use policy::NodeId;
use policy::fsutil::{self, FileError};
use serde::{Deserialize, Serialize};

/// Why a node has no services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its certaintyd found a change.
    IntegrityLost,
    /// Its certaintyd does not answer.
    CertaintyUnreachable,
    /// Its root is not the pinned one.
    RootMismatch,
    /// Not heard from for this long (whole seconds in the file).
    Silent(#[serde(with = "whole_seconds")] Duration),
    /// It booted and has no verified baseline yet (grace period).
    NotVerified,
    /// Its role must attest with TPM quotes, and it did not (issue 29).
    NotAttested(AttestFault),
}

/// Why a node is not attested, as this peer decided from what it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttestFault {
    /// The policy pins no attestation key for it.
    NoKey,
    /// No valid quote over this peer's challenge within the bound.
    NoFreshQuote,
    /// Its quote shows the integrity-lost PCR set: integrity was lost in this boot.
    RatchetSet,
    /// Its quote shows PCRs of an image that is not pinned.
    NotPinned,
    /// Its quote does not verify under its pinned key (another TPM, or forged).
    Signature,
    /// Its quote is over other challenges than the ones it names, or its proof does not
    /// cover this peer's challenge (stale, replayed or forged).
    Nonce,
    /// Its TPM's clock or counters went backwards within one boot (a replayed quote).
    Replayed,
    /// Its quote is over other PCRs, of another kind, or malformed.
    Malformed,
}

impl fmt::Display for AttestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttestFault::NoKey => "no attestation key is pinned for it",
            AttestFault::NoFreshQuote => "no valid quote over this node's challenge in time",
            AttestFault::RatchetSet => "its quote shows integrity lost in this boot",
            AttestFault::NotPinned => "its quote shows an image that is not pinned",
            AttestFault::Signature => "its quote is not signed by its pinned TPM key",
            AttestFault::Nonce => "its quote is not over this node's challenge as it claims",
            AttestFault::Replayed => "its TPM clock went backwards (a replayed quote)",
            AttestFault::Malformed => "its quote is malformed or over other PCRs",
        })
    }
}

impl Reason {
    /// Whether readmission needs a fresh boot: a node that lost integrity stays out until it
    /// has rebooted into a verified image.
    pub fn needs_reboot(&self) -> bool {
        matches!(
            self,
            Reason::IntegrityLost
                | Reason::RootMismatch
                | Reason::NotAttested(AttestFault::RatchetSet)
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::IntegrityLost => f.write_str("it reports lost integrity"),
            Reason::CertaintyUnreachable => f.write_str("its certaintyd does not answer"),
            Reason::RootMismatch => f.write_str("its root is not the pinned one"),
            Reason::Silent(d) => write!(f, "silent for {} s", d.as_secs()),
            Reason::NotVerified => f.write_str("no verified baseline yet"),
            Reason::NotAttested(why) => write!(f, "not attested: {why}"),
        }
    }
}

mod whole_seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// One quarantined node and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quarantined {
    pub id: NodeId,
    pub name: String,
    pub reason: Reason,
    pub since: Timestamp,
    /// The boot it was quarantined in, and whether only a reboot (a new boot id) can end it:
    /// kept so that a restarted clusterd does not readmit a node that lost integrity.
    #[serde(default)]
    pub boot_id: Option<String>,
    #[serde(default)]
    pub until_reboot: bool,
}

/// The list; `schema` says which version of it a file is (a file from before it had one
/// is refused, and netguard keeps the list it last applied).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineList {
    pub schema: Schema,
    pub nodes: Vec<Quarantined>,
}

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("{0}")]
    File(#[from] FileError),
    #[error("{path}: not a quarantine list: {reason}")]
    Malformed { path: String, reason: String },
}

impl QuarantineList {
    /// Reads the list; a missing file is an empty list (no clusterd, no quarantine).
    pub fn read(path: &Path) -> Result<Self, QuarantineError> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let bytes = fsutil::read_limited(path, 1 << 20)?;
        serde_json::from_slice(&bytes).map_err(|e| QuarantineError::Malformed {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn write(&self, path: &Path) -> Result<(), FileError> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        // Lives in /run: atomic, but not worth an fsync in clusterd's event loop.
        fsutil::replace_volatile(path, &bytes, 0o644)
    }

    pub fn ids(&self) -> std::collections::BTreeSet<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }
}

/// The list's version: 2 (1 had the reason and the time as free text and no `schema`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schema;

impl Default for Schema {
    fn default() -> Self {
        Schema
    }
}

const SCHEMA: u32 = 2;

impl Serialize for Schema {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(SCHEMA)
    }
}

impl<'de> Deserialize<'de> for Schema {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            SCHEMA => Ok(Schema),
            other => Err(serde::de::Error::custom(format!(
                "quarantine list schema {other}, expected {SCHEMA}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The file netguard reads is typed end to end: the reason round-trips as an enum, the
    /// time as a timestamp, and a list of another schema (or none) is refused whole.
    #[test]
    fn the_list_round_trips_typed_and_another_schema_is_refused() {
        let list = QuarantineList {
            schema: Schema,
            nodes: vec![Quarantined {
                id: NodeId::new(3).unwrap(),
                name: "d3".into(),
                reason: Reason::Silent(Duration::from_secs(5)),
                since: Timestamp::UNIX_EPOCH,
                boot_id: Some("b".into()),
                until_reboot: false,
            }],
        };
        let text = serde_json::to_string(&list).unwrap();
        assert!(text.contains(r#""reason":{"silent":5}"#), "{text}");
        assert_eq!(serde_json::from_str::<QuarantineList>(&text).unwrap(), list);
        let other = text.replace(r#""schema":2"#, r#""schema":3"#);
        assert!(serde_json::from_str::<QuarantineList>(&other).is_err());
        let old = r#"{"nodes":[{"id":3,"name":"d3","reason":"x","since":"2026-01-01T00:00:00Z"}]}"#;
        assert!(serde_json::from_str::<QuarantineList>(old).is_err());
    }
}
