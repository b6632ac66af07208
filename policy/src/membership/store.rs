//! Anti-rollback for memberships: per master, the last serial accepted and its digest,
//! persisted before a membership is put in force (as [`crate::RollbackStore`] does for the
//! policy), in a file of its own beside the policy's record.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::check::Refusal;
use crate::fsutil::atomic_write;
use crate::model::NodeId;
use crate::store::{Acceptance, StoreError};

/// The last membership accepted from one master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipRecord {
    pub serial: u64,
    /// BLAKE3 of the exact accepted bytes, hex.
    pub digest: String,
}

/// Per master (by node id), the last membership accepted.
#[derive(Debug)]
pub struct MembershipStore {
    /// None: kept in memory only (a joiner checking the memberships of its join answer).
    path: Option<PathBuf>,
    last: BTreeMap<u16, MembershipRecord>,
}

impl MembershipStore {
    /// Opens the store at `path` (missing: nothing accepted yet). A file that does not parse
    /// is refused, never guessed at.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let last = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(Self {
            path: Some(path.to_path_buf()),
            last,
        })
    }

    /// A store that records nothing on disk: for checking memberships once (a join answer).
    pub fn in_memory() -> Self {
        Self {
            path: None,
            last: BTreeMap::new(),
        }
    }

    /// Where the daemon whose policy record is `state` keeps the memberships' record: beside
    /// it, named after it (`netguard.json` -> `netguard.memberships.json`): each daemon keeps
    /// its own, as it does the policy's.
    pub fn path_beside(state: &Path) -> PathBuf {
        let stem = state
            .file_stem()
            .map_or_else(|| "policy".into(), |s| s.to_string_lossy().into_owned());
        state.with_file_name(format!("{stem}.memberships.json"))
    }

    pub fn last(&self, master: NodeId) -> Option<&MembershipRecord> {
        self.last.get(&master.get())
    }

    /// Would master `master`'s membership of `serial` with `digest` be accepted? Pure.
    pub fn check(&self, master: NodeId, serial: u64, digest: &str) -> Result<Acceptance, Refusal> {
        let Some(last) = self.last(master) else {
            return Ok(Acceptance::New);
        };
        match serial.cmp(&last.serial) {
            std::cmp::Ordering::Greater => Ok(Acceptance::New),
            std::cmp::Ordering::Equal if last.digest == digest => Ok(Acceptance::Unchanged),
            std::cmp::Ordering::Equal => Err(Refusal::Replay { master, serial }),
            std::cmp::Ordering::Less => Err(Refusal::Rollback {
                master,
                offered: serial,
                accepted: last.serial,
            }),
        }
    }

    /// Checks, then records and persists a new high-water mark for `master`.
    pub fn accept(
        &mut self,
        master: NodeId,
        serial: u64,
        digest: &str,
    ) -> Result<Acceptance, Refusal> {
        let acceptance = self.check(master, serial, digest)?;
        if acceptance == Acceptance::New {
            let mut next = self.last.clone();
            next.insert(
                master.get(),
                MembershipRecord {
                    serial,
                    digest: digest.to_string(),
                },
            );
            if let Some(path) = &self.path {
                let mut bytes = serde_json::to_vec_pretty(&next).unwrap_or_default();
                bytes.push(b'\n');
                atomic_write(path, &bytes, 0o600)?;
            }
            self.last = next;
        }
        Ok(acceptance)
    }
}
