#!/usr/bin/env bash
# Builds the Debian packages `tyd` (the CLI, the four daemons and their units) and `tyd-drone`
# (the image builder and boot server) into $CARGO_TARGET_DIR/debian (default target/debian).
# Man pages, completions and the example policy are made first from the programs' command
# lines (gendocs). Needs cargo-deb (scripts/install-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "build-deb: cargo-deb missing (scripts/install-deps.sh)" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-$PWD/target}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
cargo build -q --release --locked -p tyd -p netguard -p clusterd -p join -p certaintyd \
  -p drone -p drone-boot -p gendocs
rm -rf packaging/generated
"$target/release/gendocs" packaging/generated
gzip -9n packaging/generated/man/man*/*
mkdir -p "$target/debian"
for p in tyd drone; do
  cargo deb -q -p "$p" --no-build --locked --output "$target/debian/" >/dev/null
done
ls "$target/debian"/*.deb
