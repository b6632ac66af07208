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
cargo build --quiet --release -p netguard -p clusterd -p tyd --bins
cargo build --quiet --release -p clusterd --example bench_cluster --example simulate
./target/release/examples/bench_cluster "$members"
./target/release/examples/simulate 1000 0.05 1 5
