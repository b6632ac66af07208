//! Joining a cluster with one command (CHAOS's `tyd -m <ip>`), without a shared secret.
//!
//! `admit`: what a master decides about a request (pure). `token`: join tokens (`<id>.<secret>`), and the master's store of them (derived keys only,
//! uses, expiry, roles, revocation). `wire`: the exchange on the wire, a Noise `NNpsk0`
//! handshake keyed by the token (the `snow` crate), then the request and the answer.

pub mod admit;
pub mod token;
pub mod wire;
