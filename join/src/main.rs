//! joind: the join endpoint (`tyd join` talks to it). On a master (given the operator key) it
//! admits nodes that hold a join token; on any other member it relays the connection to a
//! master through the tunnels. It listens on the policy's `[join] port` on every address.
//!
//! Signals: SIGTERM and SIGINT stop it (joins under way finish first, within their timeout):
//! they are blocked and read from a signalfd that `join::daemon::run` waits on with its
//! sockets. Exit codes: the shared set (`policy::exit`).

use std::os::fd::AsFd;
use std::process::ExitCode;

use clap::Parser;
use join::cli::Args;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use policy::exit::Exit;
use tracing::error;

fn main() -> ExitCode {
    let args = Args::parse();
    logsetup::init("JOIND_LOG", args.log_json);
    // Blocked here, before any thread starts, so every thread inherits the mask and the
    // signals wait in the signalfd.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    let shutdown = mask
        .thread_block()
        .and_then(|()| SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC));
    let shutdown = match shutdown {
        Ok(fd) => fd,
        Err(e) => {
            error!(cause = %e, "cannot take SIGTERM and SIGINT");
            return Exit::Runtime.into();
        }
    };
    match join::daemon::run(args, shutdown.as_fd()) {
        Ok(()) => ExitCode::SUCCESS,
        Err((exit, reason)) => {
            error!(reason = %reason, "refusing to start");
            exit.into()
        }
    }
}
