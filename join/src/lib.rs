//! Joining a cluster with one command (CHAOS's `tyd -m <ip>`), without a shared secret.
//!
//! `daemon`: joind's shell (sockets, threads, limits, the log; shutdown passed in).
//! `statefile`: the master's JSON state files (tokens, waiting joins, the journal).
//! `admit`: what a master decides about a request (pure). `guard`: connection limits and
//! per-source back-off (pure). `deadline`: one deadline for all of a connection's reads. `pending`: joins without a token waiting for approval.
//! `lost`: which nodes the master's cluster view has lost (an ephemeral drone's entry may then
//! go to its new key). `service`: the master's admission and a member's relay.
//! `client`: the joiner's side, checking what comes back. `discover`: `tyd join any`. `token`: join tokens (`<id>.<secret>`), and the master's store of them (derived keys only,
//! uses, expiry, roles, revocation). `wire`: the exchange on the wire, a Noise `NNpsk0`
//! handshake keyed by the token (the `snow` crate), then the request and the answer.

pub mod admit;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod deadline;
pub mod discover;
pub mod fork;
pub mod guard;
pub mod lost;
pub mod pending;
pub mod service;
pub mod statefile;
pub mod token;
pub mod wire;
