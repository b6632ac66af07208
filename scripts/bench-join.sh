#!/usr/bin/env bash
# Joining benchmark (needs root): tyd init and three tyd join in network namespaces, each
# timed from the command to tunnels up and services open with every member; then ten joins
# at once. Prints the times with a reference measured in the same run. Everything it
# creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-join: needs root" >&2; exit 1; }
cargo build --quiet --release -p netguard -p clusterd -p tyd -p join --bins
cargo build --quiet --release -p clusterd --example bench_join
"${CARGO_TARGET_DIR:-target}"/release/examples/bench_join
