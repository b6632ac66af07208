//! Reading a signed policy from disk: the trust file, the policy and its `.sig`, verified.
//! The one way the daemons and `tyd` get a `Verified<Policy>` from files.

use std::path::Path;

use jiff::Timestamp;

use crate::blocks::NodeBlocks;
use crate::fsutil::{self, FileError};
use crate::model::Policy;
use crate::signature::{TrustedKeys, Verified, VerifyError, verify_policy, verify_policy_reusing};
use crate::signature_path;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The policy or the trust file cannot be read.
    #[error("{0}")]
    File(#[from] FileError),
    /// The trust file holds no usable key.
    #[error("{path}: {reason}")]
    Trust {
        path: String,
        reason: crate::signature::TrustFileError,
    },
    /// There is no readable signature next to the policy.
    #[error("{0} (the policy is not signed)")]
    Unsigned(FileError),
    #[error("{0}")]
    Verify(#[from] VerifyError),
}

/// Reads `policy` and `policy.sig` and verifies them against the keys in `trust`.
pub fn load_verified(
    policy: &Path,
    trust: &Path,
    now: Timestamp,
) -> Result<Verified<Policy>, LoadError> {
    load_signed(policy, trust, now).map(|s| s.verified)
}

/// A verified policy with the exact files it was verified from, for whoever passes them on
/// (an image builder must ship what it checked, not a second read).
#[derive(Debug)]
pub struct SignedFiles {
    pub verified: Verified<Policy>,
    pub policy: Vec<u8>,
    pub signature: Vec<u8>,
    pub trust: Vec<u8>,
}

/// The largest policy file read: about 50 times a 1000-node policy. Larger is refused before
/// it is read.
pub const MAX_POLICY_BYTES: u64 = 16 << 20;
/// Signature and trust files are a few lines.
const MAX_SMALL_FILE_BYTES: u64 = 64 << 10;

/// [`load_verified`], keeping the bytes read. The trust file holds one base64 key a line.
pub fn load_signed(policy: &Path, trust: &Path, now: Timestamp) -> Result<SignedFiles, LoadError> {
    load(policy, trust, now, None)
}

/// [`load_signed`] for a daemon that loads one policy after another: only the `[[node]]`
/// blocks not in `blocks` (the last valid policy's) are parsed.
pub fn load_signed_reusing(
    policy: &Path,
    trust: &Path,
    now: Timestamp,
    blocks: &mut NodeBlocks,
) -> Result<SignedFiles, LoadError> {
    load(policy, trust, now, Some(blocks))
}

/// Reads the pair under its directory's shared lock ([`fsutil::read_signed_pair`]): a
/// writer using [`fsutil::write_signed_pair`] (joind, clusterd, `tyd`) is never seen half
/// done.
fn load(
    policy: &Path,
    trust: &Path,
    now: Timestamp,
    blocks: Option<&mut NodeBlocks>,
) -> Result<SignedFiles, LoadError> {
    let (keys, trust_bytes) = read_trust_bytes(trust)?;
    let mut files = load_with(policy, &keys, now, blocks)?;
    files.trust = trust_bytes;
    Ok(files)
}

/// The operator keys in the trust file at `path` (one base64 key a line).
pub fn read_trust(path: &Path) -> Result<TrustedKeys, LoadError> {
    read_trust_bytes(path).map(|(keys, _)| keys)
}

fn read_trust_bytes(path: &Path) -> Result<(TrustedKeys, Vec<u8>), LoadError> {
    let bytes = fsutil::read_limited(path, MAX_SMALL_FILE_BYTES)?;
    let keys = TrustedKeys::parse(&String::from_utf8_lossy(&bytes)).map_err(|reason| {
        LoadError::Trust {
            path: path.display().to_string(),
            reason,
        }
    })?;
    Ok((keys, bytes))
}

/// [`load_signed`] against keys the caller has (`trust` in the result is empty).
pub fn load_signed_with(
    policy: &Path,
    keys: &TrustedKeys,
    now: Timestamp,
) -> Result<SignedFiles, LoadError> {
    load_with(policy, keys, now, None)
}

fn load_with(
    policy: &Path,
    keys: &TrustedKeys,
    now: Timestamp,
    blocks: Option<&mut NodeBlocks>,
) -> Result<SignedFiles, LoadError> {
    let (bytes, sig) = fsutil::read_signed_pair(
        policy,
        &signature_path(policy),
        MAX_POLICY_BYTES,
        MAX_SMALL_FILE_BYTES,
    );
    let (bytes, sig) = (bytes?, sig.map_err(LoadError::Unsigned)?);
    let file = policy.display().to_string();
    let verified = match blocks {
        Some(blocks) => verify_policy_reusing(&file, &bytes, &sig, keys, now, blocks)?,
        None => verify_policy(&file, &bytes, &sig, keys, now)?,
    };
    Ok(SignedFiles {
        verified,
        policy: bytes,
        signature: sig,
        trust: Vec::new(),
    })
}

/// Where a daemon keeps a copy of the signed policy it has in force, beside its rollback
/// state (`accepted.json` -> `in-force.toml` and `in-force.toml.sig`): what `tyd status`
/// shows, and what a restarted daemon falls back to, while the file on disk is refused.
pub fn in_force_path(state: &Path) -> std::path::PathBuf {
    state.with_file_name("in-force.toml")
}

/// Saves a signed policy's bytes as the copy in force ([`write_signed_pair`]).
pub fn save_in_force(state: &Path, policy: &[u8], signature: &[u8]) -> Result<(), FileError> {
    write_signed_pair(&in_force_path(state), policy, signature)
}

/// Puts a signed policy in place at `path`, its signature beside it, so that no reader sees
/// the one new and the other old ([`fsutil::write_signed_pair`]).
pub fn write_signed_pair(path: &Path, policy: &[u8], signature: &[u8]) -> Result<(), FileError> {
    fsutil::write_signed_pair(path, &signature_path(path), policy, signature, 0o644)
}
