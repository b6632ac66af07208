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

/// The filter when the program's variable is unset: `info`, except the netlink parsing
/// crates, which warn on every read of a link whose kernel is newer than they are (three
/// `IFLA_INET6_CONF ... holds more data` lines per drift check on 6.18): their own
/// failures still come through as errors, and every decision of ours is logged by us.
pub const DEFAULT_FILTER: &str = "info,netlink_packet_route=error,netlink_packet_utils=error";

/// Installs the global subscriber: `env_var` filters (default [`DEFAULT_FILTER`]).
pub fn init(env_var: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env_var)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
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

    /// Attack (noise): a newer kernel makes netlink_packet_route warn on every link read, so
    /// netguard's journal was 36 lines a minute of a library's complaint, burying its own.
    /// Steps: a subscriber with the default filter writing into a buffer; the library warns
    /// (target as it logs it) and errors, netguard logs an info line; only the library's
    /// warning is gone.
    #[test]
    fn a_newer_kernel_does_not_flood_the_journal_with_netlink_warnings() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(DEFAULT_FILTER))
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(target: "netlink_packet_route::link::buffer_tool", "IFLA_INET6_CONF holds more");
            tracing::error!(target: "netlink_packet_route::link", "cannot parse link");
            tracing::info!(target: "netguard::daemon", "drift found");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(!out.contains("IFLA_INET6_CONF"), "{out}");
        assert!(out.contains("cannot parse link"), "{out}");
        assert!(out.contains("drift found"), "{out}");
    }
}
