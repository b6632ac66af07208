//! A master's JSON state files (the tokens, the joins waiting for approval, the journal of
//! admissions): a missing file is an empty one; each is written whole, atomically, mode
//! 0600.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error(transparent)]
    File(#[from] policy::fsutil::FileError),
    /// `what` names what the file should be ("a token store").
    #[error("{path}: not {what}: {why}")]
    Corrupt {
        path: String,
        what: &'static str,
        why: String,
    },
}

/// The state in `path` (`what` it should be, for the error); a missing file is the default.
pub fn load<T: DeserializeOwned + Default>(
    path: &Path,
    what: &'static str,
) -> Result<T, StateFileError> {
    if !path.exists() {
        return Ok(T::default());
    }
    let bytes = policy::fsutil::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| StateFileError::Corrupt {
        path: path.display().to_string(),
        what,
        why: policy::parse::shown(&e.to_string()),
    })
}

/// Writes `state` to `path`, whole and atomically, mode 0600.
pub fn save<T: Serialize>(path: &Path, state: &T) -> Result<(), StateFileError> {
    let mut bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
    bytes.push(b'\n');
    policy::fsutil::atomic_write(path, &bytes, 0o600)?;
    Ok(())
}
