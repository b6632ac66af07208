#!/usr/bin/env bash
# clusterd benchmark (needs root): MEMBERS (default 50) members in network namespaces, each
# with netguard (one wireguard-go each), clusterd and a stand-in certaintyd; prints the time
# for a new serial to reach every member, tamper-to-quarantine on every peer, and the idle
# cost per member. Then the 1000-node simulation (the same protocol code over a simulated
# network with 5% loss). Everything it creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-cluster: needs root" >&2; exit 1; }
members=${1:-50}
# The kernel's neighbour tables are shared by every network namespace: 50 members with a LAN
# neighbour and a tunnel neighbour per peer need about 2*50*49 entries, over the default
# hard limit of 1024 (the kernel then drops datagrams: "neighbor table overflow"). Raised for
# the run, put back on exit.
saved=()
for v in 4 6; do
  for t in 1 2 3; do
    k=net.ipv$v.neigh.default.gc_thresh$t
    saved+=("$k=$(sysctl -n "$k")")
  done
done
restore() { for kv in "${saved[@]}"; do sysctl -q -w "$kv"; done; }
trap restore EXIT
need=$((4 * members * members + 1024))
for v in 4 6; do
  sysctl -q -w net.ipv$v.neigh.default.gc_thresh1=$((need / 8)) \
    net.ipv$v.neigh.default.gc_thresh2=$((need / 2)) net.ipv$v.neigh.default.gc_thresh3=$need
done
cargo build --quiet --release -p netguard -p clusterd -p tyd --bins
cargo build --quiet --release -p clusterd --example bench_cluster --example simulate
"${CARGO_TARGET_DIR:-target}"/release/examples/bench_cluster "$members"
"${CARGO_TARGET_DIR:-target}"/release/examples/simulate 1000 0.05 1 5
