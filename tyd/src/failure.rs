//! What can go wrong at the CLI's edge, as one line and a documented exit code.

use std::fmt;

use policy::fsutil::FileError;
use policy::{Invalid, LoadError, StoreError, VerifyError};

pub use policy::exit::{EXIT_CODES_HELP, Exit};

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

pub type CliResult<T = ()> = Result<T, Failure>;
