//! Drone images: a kernel and an initramfs that boot a RAM-resident cluster node running
//! netguard and certaintyd, as CHAOS drones booted from the network or a CD, and the boot
//! tree that serves them by PXE ([`pxe`]). What runs on a drone at boot is `drone-boot`.
//!
//! Pure core: [`tree`] decides every byte of the image and the root hash certaintyd will
//! see; [`kernel`], [`elf`] and [`build`] read the host; `main` writes.

pub mod build;
pub mod cli;
pub mod elf;
pub mod kernel;
pub mod pxe;
pub mod tree;
pub mod uki;
