#!/usr/bin/env bash
# Runs every test: formatting, lints, unit, integration and property tests, the fuzz corpus
# and the drone VM tests (all inside cargo test), the README's install on real systemd
# machines (systemd-nspawn), and a short fuzz run. Installs what it needs
# first (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Incremental state is for edit-compile loops; a full run would only store it (5 GB of 18 in a
# clean clone). Set CARGO_INCREMENTAL=1 to keep it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --all --check
scripts/check-threat-model.sh
scripts/check-units.sh
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
scripts/check-deb.sh
scripts/test-systemd.sh
scripts/check-metrics.sh
scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
