//! What can go wrong at the CLI's edge, as one line and a documented exit code.

use std::fmt;

use policy::fsutil::FileError;
use policy::{Invalid, LoadError, StoreError, VerifyError};

/// Exit codes, so scripts can tell failures apart. Listed in `tyd --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// I/O and other runtime failures.
    Runtime = 1,
    /// Bad command line (clap uses 2 as well).
    Usage = 2,
    /// The policy is malformed or fails validation.
    InvalidPolicy = 3,
    /// The signature is missing, malformed, or by an untrusted key.
    BadSignature = 4,
    /// Refused by the rules: serial not newer, rollback, key file exists.
    Refused = 5,
    /// A secret key file is unsafe (readable by others) or unreadable.
    KeyFile = 6,
}

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  runtime failure (I/O, missing file)
  2  usage error
  3  invalid policy (syntax, schema, validation, expiry)
  4  signature missing, malformed, or not by a trusted key
  5  refused: serial not newer than the one signed or accepted, file exists
  6  secret key file unsafe (readable by group or others)";

#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Invalid> for Failure {
    fn from(e: Invalid) -> Self {
        Self::new(Exit::InvalidPolicy, e.to_string())
    }
}

impl From<VerifyError> for Failure {
    fn from(e: VerifyError) -> Self {
        let exit = match e {
            VerifyError::Invalid(_) | VerifyError::Content { .. } => Exit::InvalidPolicy,
            _ => Exit::BadSignature,
        };
        Self::new(exit, e.to_string())
    }
}

impl From<FileError> for Failure {
    fn from(e: FileError) -> Self {
        let exit = match e {
            FileError::TooOpen { .. } => Exit::KeyFile,
            FileError::Exists { .. } => Exit::Refused,
            FileError::Io { .. } => Exit::Runtime,
        };
        Self::new(exit, e.to_string())
    }
}

impl From<LoadError> for Failure {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::File(e) => e.into(),
            LoadError::Verify(e) => e.into(),
            LoadError::Trust { .. } | LoadError::Unsigned(_) => {
                Self::new(Exit::BadSignature, e.to_string())
            }
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let exit = match e {
            StoreError::Read { .. } | StoreError::Write(_) => Exit::Runtime,
            _ => Exit::Refused,
        };
        Self::new(exit, e.to_string())
    }
}

pub type CliResult<T = ()> = Result<T, Failure>;
