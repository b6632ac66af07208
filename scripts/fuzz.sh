#!/usr/bin/env bash
# Fuzzes the policy entry point ("bytes + signature in, verified policy or error out") for
# SECONDS (default 30). New inputs go to a scratch directory, so the committed corpus only
# changes when someone copies findings in on purpose. Crashes land in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-30}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch" "$scratch.log"' EXIT
# -s none: this stable toolchain has no sanitizers; Rust's own checks and the harness's
# assertions are the oracle.
# The fuzzer's own exit status decides (a target that fails to build, or a crash, fails the
# run); the filter only keeps the summary lines readable.
status=0
cargo fuzz run -s none verify_policy "$scratch" corpus/verify_policy -- \
  -max_total_time="$seconds" -rss_limit_mb=2048 >"$scratch.log" 2>&1 || status=$?
grep -E '^(#[0-9]+ +DONE|Done|INFO: seed corpus)|panicked|ERROR' "$scratch.log" || true
if [ "$status" -ne 0 ]; then
  tail -n 40 "$scratch.log" >&2
  rm -f "$scratch.log"
  echo "fuzz: cargo fuzz failed (exit $status)" >&2
  exit 1
fi
rm -f "$scratch.log"
test ! -d artifacts/verify_policy || test -z "$(ls -A artifacts/verify_policy)" || {
  echo "fuzz: crash inputs in fuzz/artifacts/verify_policy" >&2
  exit 1
}
echo "fuzz: verify_policy ran ${seconds}s without a crash"
