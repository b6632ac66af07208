//! The signals a daemon acts on, as values: `main` installs the handlers ([`install`]) and
//! passes the receiver into the daemon's `run`, so `run` installs nothing and a test stops a
//! daemon by sending [`Signal::Terminate`] on a [`channel`], with no process signal.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// A signal a daemon was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM.
    Terminate,
    /// SIGINT.
    Interrupt,
    /// SIGHUP.
    Hangup,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
            Signal::Hangup => "SIGHUP",
        }
    }
}

/// What a daemon's `run` receives its signals on.
pub type Signals = mpsc::Receiver<Signal>;

/// A sender and the receiver to pass into `run` (tests; [`install`] uses one too).
pub fn channel() -> (mpsc::Sender<Signal>, Signals) {
    mpsc::channel(8)
}

/// Installs handlers for SIGTERM, SIGINT and SIGHUP that forward each signal to the
/// receiver returned. Call it inside the daemon's runtime, before anything else can fail
/// slowly: from here on these signals no longer kill the process.
pub fn install() -> std::io::Result<Signals> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = channel();
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                Some(()) = term.recv() => Signal::Terminate,
                Some(()) = int.recv() => Signal::Interrupt,
                Some(()) = hup.recv() => Signal::Hangup,
                else => return,
            };
            if tx.send(s).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A process signal arrives as its value, in order.
    #[test]
    fn a_signal_sent_to_the_process_arrives_as_a_value() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut rx = install().unwrap();
            nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .unwrap();
            assert_eq!(got, Some(Signal::Hangup));
        });
    }
}
