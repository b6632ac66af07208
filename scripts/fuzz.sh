#!/usr/bin/env bash
# Fuzzes the policy entry point ("bytes + signature in, verified policy or error out") for
# SECONDS (default 30). New inputs go to a scratch directory, so the committed corpus only
# changes when someone copies findings in on purpose. Crashes land in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-30}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# -s none: this stable toolchain has no sanitizers; Rust's own checks and the harness's
# assertions are the oracle.
cargo fuzz run -s none verify_policy "$scratch" corpus/verify_policy -- \
  -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 | grep -E '^(#[0-9]+ +DONE|Done|INFO: seed corpus)|panicked|ERROR' || true
test ! -d artifacts/verify_policy || test -z "$(ls -A artifacts/verify_policy)" || {
  echo "fuzz: crash inputs in fuzz/artifacts/verify_policy" >&2
  exit 1
}
echo "fuzz: verify_policy ran ${seconds}s without a crash"
