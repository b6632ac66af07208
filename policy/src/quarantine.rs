//! The quarantine list clusterd decides and netguard enforces: the nodes whose tunnel
//! addresses are kept out of the service sets (their tunnels, and the distribution port, stay
//! open so they can report good integrity again). A local file, written atomically by
//! clusterd, read by netguard; whoever can write it is root on this node already.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FileError};
use crate::model::NodeId;

/// One quarantined node and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quarantined {
    pub id: NodeId,
    pub name: String,
    pub reason: String,
    /// RFC 3339.
    pub since: String,
    /// The boot it was quarantined in, and whether only a reboot (a new boot id) can end it:
    /// kept so that a restarted clusterd does not readmit a node that lost integrity.
    #[serde(default)]
    pub boot_id: Option<String>,
    #[serde(default)]
    pub until_reboot: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineList {
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
