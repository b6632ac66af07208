//! What can go wrong at the CLI's edge, as one line and a documented exit code: the shared
//! [`Failure`] of every binary.

pub use policy::exit::{EXIT_CODES_HELP, Exit, Failure};

pub type CliResult<T = ()> = Result<T, Failure>;

/// A command-line value that is not what its option takes (clap shows it with the option).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error(
        "{} is not a duration such as \"90d\", \"12h\" or \"2w\" (units s, m, h, d, w; for a year write 365d)",
        policy::parse::shown(.0)
    )]
    Span(String),
    #[error("{} must be a positive duration", policy::parse::shown(.0))]
    NotPositive(String),
    #[error("a node id is a number from 1 to 65535")]
    NodeId,
    #[error(
        "an endpoint is an IP address and a port, e.g. 192.0.2.10:51820 or [2001:db8::10]:51820 (host names are not resolved)"
    )]
    Endpoint,
}
