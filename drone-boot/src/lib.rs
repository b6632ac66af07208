//! The jobs a drone's init hands to Rust at boot: the LAN from the kernel's `ip=` ([`netcfg`])
//! and the policy's hardening ([`harden`]). Kept apart from the image builder (`drone`), so an
//! image carries none of the builder's code (package download, unpacking, archive writing).

pub mod cli;
pub mod harden;
pub mod netcfg;
