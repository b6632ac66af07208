//! Reading a signed policy from disk: the trust file, the policy and its `.sig`, verified.
//! The one way the daemons and `tyd` get a `Verified<Policy>` from files.

use std::path::Path;

use jiff::Timestamp;

use crate::fsutil::{self, FileError};
use crate::model::Policy;
use crate::signature::{TrustedKeys, Verified, VerifyError, verify_policy};
use crate::signature_path;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The policy or the trust file cannot be read.
    #[error("{0}")]
    File(#[from] FileError),
    /// The trust file holds no usable key.
    #[error("{path}: {reason}")]
    Trust { path: String, reason: String },
    /// There is no readable signature next to the policy.
    #[error("{0} (the policy is not signed)")]
    Unsigned(FileError),
    #[error("{0}")]
    Verify(#[from] VerifyError),
}

/// Reads trusted operator keys, one base64 key a line.
pub fn load_trust(path: &Path) -> Result<TrustedKeys, LoadError> {
    let bytes = fsutil::read(path)?;
    TrustedKeys::parse(&String::from_utf8_lossy(&bytes)).map_err(|reason| LoadError::Trust {
        path: path.display().to_string(),
        reason,
    })
}

/// Reads `policy` and `policy.sig` and verifies them against the keys in `trust`.
pub fn load_verified(
    policy: &Path,
    trust: &Path,
    now: Timestamp,
) -> Result<Verified<Policy>, LoadError> {
    let trust = load_trust(trust)?;
    let bytes = fsutil::read(policy)?;
    let sig = fsutil::read(&signature_path(policy)).map_err(LoadError::Unsigned)?;
    Ok(verify_policy(
        &policy.display().to_string(),
        &bytes,
        &sig,
        &trust,
        now,
    )?)
}
