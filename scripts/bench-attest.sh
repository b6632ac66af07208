#!/usr/bin/env bash
# TPM quotes between peers (issue 29), against references measured in the same run: the bytes
# per second one member sends at MEMBERS (default 50) with challenges and quotes against
# without (target under 2x), and the time a peer spends checking one quote (target under
# 1 ms) against an ed25519 check of the same size. No root needed: the protocol code over a
# simulated network, quotes made in software as a TPM makes them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p clusterd --example attest_cost
"${CARGO_TARGET_DIR:-target}"/release/examples/attest_cost "${1:-50}"
