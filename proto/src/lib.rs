//! The contracts between the tyd processes, defined once and typed: what one daemon writes to a
//! socket or a file and another reads. No runtime (no tokio, no nix): the CLI and every daemon
//! link it without linking each other.
//!
//! `certainty`: certaintyd's control socket (the request, the response, the status with its
//! state as an enum, and the one blocking client, with timeouts and a size cap). `cluster`: the
//! heartbeat (with `attest`, its TPM quote and challenge) and the offer clusterd sends its peers. `maintenance`: the signed request for a
//! maintenance window or a stop. `quarantine`: the list clusterd writes
//! and netguard enforces, the reason an enum. `view`: the cluster view clusterd writes
//! and `tyd status --cluster` and joind read. `paths`: the default place of each.

pub mod attest;
pub mod certainty;
pub mod cluster;
pub mod maintenance;
pub mod paths;
pub mod quarantine;
pub mod view;
