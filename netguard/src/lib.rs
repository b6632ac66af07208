//! netguard: WireGuard peers and nftables in step with the node map. Not yet built: see issue 4.
