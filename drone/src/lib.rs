//! Drone images: a kernel and an initramfs that boot a RAM-resident cluster node running
//! netguard and certaintyd, as CHAOS drones booted from the network or a CD; and the small
//! jobs the drone's init hands to Rust (network from `ip=`, hardening from the policy).
//!
//! Pure core: [`tree`] decides every byte of the image and the root hash certaintyd will
//! see; [`kernel`], [`elf`] and [`build`] read the host; `main` writes.

pub mod build;
pub mod elf;
pub mod harden;
pub mod kernel;
pub mod netcfg;
pub mod tree;
