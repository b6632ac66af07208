//! Anti-rollback: a node accepts a policy only if it is newer than the last one it accepted.
//!
//! The last accepted serial and digest are persisted atomically, so a crash never leaves a
//! node willing to accept an older policy. A RAM-only node, which loses that file at every
//! boot, is given a floor (`min_serial`) from its boot media instead.

use std::io;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::fsutil::{FileError, atomic_write};
use crate::load::SignedFiles;
use crate::model::Policy;
use crate::signature::Verified;

/// What the store remembers about the last accepted policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptedRecord {
    pub cluster: String,
    pub serial: u64,
    /// BLAKE3 of the exact accepted bytes.
    pub digest: String,
    pub accepted_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: cannot read rollback state: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: rollback state is corrupt ({reason}); refusing to guess", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot persist rollback state: {0}")]
    Write(#[from] FileError),
    #[error("serial {offered} is older than accepted serial {accepted}: rollback refused")]
    Rollback { offered: u64, accepted: u64 },
    #[error("serial {serial} was already accepted with different content: replay refused")]
    Replay { serial: u64 },
    #[error("serial {offered} is below this node's floor {floor}: rollback refused")]
    BelowFloor { offered: u64, floor: u64 },
    #[error("policy is for cluster {offered:?} but this node belongs to {accepted:?}")]
    WrongCluster { offered: String, accepted: String },
    #[error("policy expired at {0}")]
    Expired(Timestamp),
}

/// A verified policy this node's [`RollbackStore`] accepted, with the exact files it was
/// verified from: the only form in which a daemon holds a policy to act on. Only
/// [`RollbackStore::accept`] makes one (its field is private), so a policy that skipped the
/// rollback check cannot be put in force by mistake.
#[derive(Debug)]
pub struct Accepted {
    files: SignedFiles,
}

impl Accepted {
    /// The files the policy was verified from (served to peers, kept as the copy in force).
    pub fn files(&self) -> &SignedFiles {
        &self.files
    }

    pub fn verified(&self) -> &Verified<Policy> {
        &self.files.verified
    }
}

impl std::ops::Deref for Accepted {
    type Target = Verified<Policy>;

    fn deref(&self) -> &Verified<Policy> {
        &self.files.verified
    }
}

/// The persisted high-water mark of accepted policies.
#[derive(Debug)]
pub struct RollbackStore {
    path: PathBuf,
    floor: u64,
    last: Option<AcceptedRecord>,
}

/// Whether an accepted policy is new, or the one already in force read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    New,
    Unchanged,
}

impl RollbackStore {
    /// Opens the store at `path` (a missing file means nothing accepted yet).
    pub fn open(path: &Path, min_serial: u64) -> Result<Self, StoreError> {
        let last = match std::fs::read(path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            floor: min_serial,
            last,
        })
    }

    pub fn last(&self) -> Option<&AcceptedRecord> {
        self.last.as_ref()
    }

    /// Would `policy` be accepted now? Pure: changes nothing.
    pub fn check(
        &self,
        policy: &Verified<Policy>,
        now: Timestamp,
    ) -> Result<Acceptance, StoreError> {
        let c = &policy.cluster;
        if c.expires <= now {
            return Err(StoreError::Expired(c.expires));
        }
        if c.serial < self.floor {
            return Err(StoreError::BelowFloor {
                offered: c.serial,
                floor: self.floor,
            });
        }
        let Some(last) = &self.last else {
            return Ok(Acceptance::New);
        };
        if last.cluster != c.name {
            return Err(StoreError::WrongCluster {
                offered: c.name.clone(),
                accepted: last.cluster.clone(),
            });
        }
        match c.serial.cmp(&last.serial) {
            std::cmp::Ordering::Greater => Ok(Acceptance::New),
            std::cmp::Ordering::Equal if last.digest == policy.digest_hex() => {
                Ok(Acceptance::Unchanged)
            }
            std::cmp::Ordering::Equal => Err(StoreError::Replay { serial: c.serial }),
            std::cmp::Ordering::Less => Err(StoreError::Rollback {
                offered: c.serial,
                accepted: last.serial,
            }),
        }
    }

    /// Accepts the verified `files` and persists them as the new high-water mark before
    /// returning them as [`Accepted`].
    pub fn accept(
        &mut self,
        files: SignedFiles,
        now: Timestamp,
    ) -> Result<(Accepted, Acceptance), StoreError> {
        let policy = &files.verified;
        let acceptance = self.check(policy, now)?;
        if acceptance == Acceptance::New {
            let record = AcceptedRecord {
                cluster: policy.cluster.name.clone(),
                serial: policy.cluster.serial,
                digest: policy.digest_hex(),
                accepted_at: now.to_string(),
            };
            let mut bytes =
                serde_json::to_vec_pretty(&record).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
            bytes.push(b'\n');
            atomic_write(&self.path, &bytes, 0o600)?;
            self.last = Some(record);
        }
        Ok((Accepted { files }, acceptance))
    }
}
