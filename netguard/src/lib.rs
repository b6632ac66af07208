//! netguard: one WireGuard peer per authenticated node and an nftables ruleset, kept in step
//! with the signed node map, so cluster traffic only flows between authenticated nodes,
//! through the tunnels.
//!
//! Pure core: `desired` (what should be), `peers` (the peer plan), `ruleset` (the firewall as
//! data). Thin shell: `wg` (device, interface, addresses), `nft` (apply and read back),
//! `nfnl` (set-element edits in-process over netlink),
//! `routes` (tunnel addresses and routes on
//! other interfaces), `neighbours` (the kernel's neighbour table sized for the map), `reconcile` (one pass), `daemon` (the loop), `status` (for `tyd status`).

pub mod cli;
pub mod daemon;
pub mod desired;
pub mod link;
pub mod metrics;
pub mod neighbours;
pub mod nfnl;
pub mod nft;
pub mod peers;
pub mod reconcile;
pub mod routes;
pub mod ruleset;
pub mod status;
pub mod wg;
