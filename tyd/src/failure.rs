//! What can go wrong at the CLI's edge, as one line and a documented exit code: the shared
//! [`Failure`] of every binary.

pub use policy::exit::{EXIT_CODES_HELP, Exit, Failure};

pub type CliResult<T = ()> = Result<T, Failure>;
