//! clusterd: the cluster acting as one. Every member serves its signed policy to its peers
//! through the tunnels, offers a newer one to a few random peers at once (push) and fetches a
//! newer one it hears of in a heartbeat (pull, so a node that missed a push catches up). Each
//! node tells every peer, directly, its own state (policy serial, integrity, load): accepted
//! only from that node's tunnel address, which WireGuard authenticates. A node that reports
//! lost integrity, an unreachable certaintyd or a wrong root, or that falls silent, is
//! quarantined: netguard withholds the services from it, its tunnel stays.
//!
//! Pure core: `core` (what to send, accept, fetch, quarantine), `view` (the cluster view
//! made from it). The messages and the view's format are `proto::cluster` and `proto::view`. Thin shell: `probe` (local facts), `transfer` (the
//! policy over TCP), `policy_file` (a fetched policy written only over an older one),
//! `daemon` (sockets and the loop).
//!
//! Why heartbeats go node to node and not through a gossip library (chitchat, foca): those
//! relay state about third parties, and a relayed "node C lost integrity" cannot be checked
//! against C's tunnel address, so one member could get another quarantined. The policy itself
//! is signed by the operator, so it may travel any path.

pub mod cli;
pub mod core;
pub mod daemon;
pub mod policy_file;
pub mod probe;
pub mod transfer;
pub mod view;
