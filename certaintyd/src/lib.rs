//! certaintyd: the integrity of a RAM-resident root filesystem.
//!
//! After a grace period it takes a baseline (a Merkle tree of every entry's metadata and
//! BLAKE3 content hash), then verifies against it on every filesystem event and in full every
//! interval. Any difference, and anything that makes certainty impossible (event overflow, a
//! missed deadline, a dead watcher, a stop signal), is a loss of integrity: the node reboots.
//!
//! Pure parts (entries, manifest, verdict, maintenance requests, mount table diff) are
//! unit-tested without root; the parts that touch the kernel (walk, hashing, inotify, reboot,
//! watchdog, self-protection) are thin and tested in namespaces and VMs.

pub mod action;
pub mod cli;
pub mod control;
pub mod daemon;
pub use ::manifest::entry;
pub mod hashing;
pub mod maintenance;
pub use ::manifest;
pub mod metrics;
pub mod mounts;
pub mod preflight;
pub mod protect;
pub mod verdict;
pub mod walk;
pub mod watch;
