//! One set of exit codes for every binary (tyd, netguard, certaintyd, drone), so scripts and
//! service managers can tell failures apart the same way everywhere. Documented once here and
//! printed by each binary's `--help`.

use std::fmt;

use crate::fsutil::FileError;
use crate::load::LoadError;
use crate::signature::VerifyError;
use crate::store::StoreError;

/// Why a binary exited. `0` is success (or, for a daemon, stopped on request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// I/O and other runtime failures.
    Runtime = 1,
    /// Bad command line (clap uses 2 as well).
    Usage = 2,
    /// The policy is malformed, fails validation, or has expired.
    InvalidPolicy = 3,
    /// The signature is missing, malformed, or by an untrusted key.
    BadSignature = 4,
    /// Refused by the rules: serial not newer, rollback, file exists, unsafe action.
    Refused = 5,
    /// A key file is unsafe (readable by others), unreadable, or the wrong kind of key.
    KeyFile = 6,
    /// A status check found something wrong (firewall missing or altered, policy refused).
    Unhealthy = 7,
    /// certaintyd: integrity was lost and the node was not rebooted (dry run, alert).
    IntegrityLost = 8,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// The table every `--help` ends with.
pub const EXIT_CODES_HELP: &str = "\
Exit codes: the same for tyd, netguard, certaintyd, clusterd, joind and drone.
  0  success (a daemon: stopped on request)
  1  runtime failure (I/O, missing file)
  2  usage error
  3  invalid policy (syntax, schema, validation, expiry)
  4  signature missing, malformed, or not by a trusted key
  5  refused: serial not newer or rolled back, file exists, unsafe action
  6  key file unsafe (readable by others), unreadable, or the wrong kind of key
  7  unhealthy: status found something wrong (firewall missing or altered, policy refused)
  8  integrity lost without a reboot (certaintyd dry run or alert)";

impl From<&VerifyError> for Exit {
    fn from(e: &VerifyError) -> Self {
        match e {
            VerifyError::Invalid(_) | VerifyError::Content { .. } => Exit::InvalidPolicy,
            _ => Exit::BadSignature,
        }
    }
}

impl From<&FileError> for Exit {
    fn from(e: &FileError) -> Self {
        match e {
            FileError::TooOpen { .. } | FileError::NotAFile { .. } => Exit::KeyFile,
            FileError::TooLarge { .. } => Exit::InvalidPolicy,
            FileError::Exists { .. } => Exit::Refused,
            _ => Exit::Runtime,
        }
    }
}

impl From<&LoadError> for Exit {
    fn from(e: &LoadError) -> Self {
        match e {
            LoadError::File(e) => e.into(),
            LoadError::Verify(e) => e.into(),
            LoadError::Trust { .. } | LoadError::Unsigned(_) => Exit::BadSignature,
        }
    }
}

impl From<&crate::keys::SecretKeyError> for Exit {
    fn from(e: &crate::keys::SecretKeyError) -> Self {
        match e {
            crate::keys::SecretKeyError::File(e) => e.into(),
            crate::keys::SecretKeyError::Key { .. } => Exit::KeyFile,
        }
    }
}

impl From<&crate::in_force::Refusal> for Exit {
    fn from(e: &crate::in_force::Refusal) -> Self {
        match e {
            crate::in_force::Refusal::Load(e) => e.into(),
            crate::in_force::Refusal::Store { source, .. } => source.into(),
        }
    }
}

impl From<&StoreError> for Exit {
    fn from(e: &StoreError) -> Self {
        match e {
            StoreError::Read { .. } | StoreError::Write(_) => Exit::Runtime,
            StoreError::Expired(_) => Exit::InvalidPolicy,
            _ => Exit::Refused,
        }
    }
}

/// A failure at a binary's edge: one line for stderr, and its code from the shared set.
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

impl From<crate::parse::Invalid> for Failure {
    fn from(e: crate::parse::Invalid) -> Self {
        Self::new(Exit::InvalidPolicy, e.to_string())
    }
}

impl From<VerifyError> for Failure {
    fn from(e: VerifyError) -> Self {
        Self::new((&e).into(), e.to_string())
    }
}

impl From<FileError> for Failure {
    fn from(e: FileError) -> Self {
        Self::new((&e).into(), e.to_string())
    }
}

impl From<LoadError> for Failure {
    fn from(e: LoadError) -> Self {
        Self::new((&e).into(), e.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::new((&e).into(), e.to_string())
    }
}

impl From<crate::edit::EditError> for Failure {
    fn from(e: crate::edit::EditError) -> Self {
        let exit = match &e {
            crate::edit::EditError::File(_)
            | crate::edit::EditError::NoSuchNode(_)
            | crate::edit::EditError::NoSuchAdmission(_) => Exit::Runtime,
            crate::edit::EditError::SerialOverflow => Exit::Refused,
            crate::edit::EditError::NotUtf8 { .. }
            | crate::edit::EditError::Toml { .. }
            | crate::edit::EditError::NodesNotTables
            | crate::edit::EditError::Invalid(_) => Exit::InvalidPolicy,
        };
        if let crate::edit::EditError::File(f) = e {
            return f.into();
        }
        Failure::new(exit, e.to_string())
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::new(Exit::Runtime, message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Self::new(Exit::Runtime, message)
    }
}

/// Ends a binary: `program: message` on stderr and the failure's code, or success.
pub fn finish(program: &str, result: Result<(), Failure>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{program}: {}", f.message);
            f.exit.into()
        }
    }
}
