//! Logging for every tyd program, set up one way: events to stderr, filtered by the
//! program's own environment variable (`NETGUARD_LOG=debug`...), colours only on a terminal.
//! Under systemd (`JOURNAL_STREAM` set, stderr connected to the journal) lines carry no
//! timestamp of their own, since journald stamps each one. `--log-json` gives one JSON object
//! per event, with its fields flattened.

use std::io::IsTerminal;

/// How events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text with a timestamp (a terminal, a file, a serial console).
    Text,
    /// Text without a timestamp: journald adds its own.
    Journal,
    Json,
}

/// The format for `json` requested on the command line and the `JOURNAL_STREAM` value.
pub fn format(json: bool, journal_stream: Option<&std::ffi::OsStr>) -> Format {
    match (json, journal_stream) {
        (true, _) => Format::Json,
        (false, Some(v)) if !v.is_empty() => Format::Journal,
        _ => Format::Text,
    }
}

/// Installs the global subscriber: `env_var` filters (default `info`).
pub fn init(env_var: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env_var)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format(json, std::env::var_os("JOURNAL_STREAM").as_deref()) {
        Format::Json => b.json().flatten_event(true).init(),
        Format::Journal => b.without_time().with_ansi(false).init(),
        Format::Text => b.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_journal_gets_no_second_timestamp_and_json_wins() {
        assert_eq!(format(false, None), Format::Text);
        assert_eq!(format(false, Some(OsStr::new("8:1234"))), Format::Journal);
        assert_eq!(format(false, Some(OsStr::new(""))), Format::Text);
        assert_eq!(format(true, Some(OsStr::new("8:1234"))), Format::Json);
    }
}
