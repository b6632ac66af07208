//! netguard: one WireGuard peer per authenticated node and an nftables ruleset, kept in step
//! with the signed node map, so cluster traffic only flows between authenticated nodes,
//! through the tunnels.
//!
//! Pure core: `desired` (what should be), `peers` (the peer plan), `ruleset` (the firewall as
//! data). Thin shell: `wg` and `link` (device, interface, addresses), `nft` (apply and read
//! back), `nfnl` (set-element edits in-process over netlink), `routes` (tunnel addresses and
//! routes on other interfaces), `neighbours` (the kernel's neighbour table sized for the
//! map), `reconcile` (one pass), `daemon` (the loop), `status` (for `tyd status`).

#[cfg(feature = "daemon")]
pub mod cli;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod desired;
pub mod link;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod neighbours;
#[cfg(feature = "daemon")]
pub mod nfnl;
pub mod nft;
pub mod peers;
#[cfg(feature = "daemon")]
pub mod reconcile;
#[cfg(feature = "daemon")]
pub mod routes;
pub mod ruleset;
pub mod status;
pub mod wg;
