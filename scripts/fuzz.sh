#!/usr/bin/env bash
# Fuzzes every parser that a member or the LAN can reach, each from its committed corpus:
#   verify_policy    bytes + signature in, verified policy or error out (SECONDS, default 30);
#   verify_membership a master's membership + signature in, verified under a policy or refused;
#   join_wire        the join port: hello, Noise handshake and frames (with and without a token);
#   cluster_message  clusterd's UDP messages (heartbeats, offers);
#   policy_transfer  the TCP framing of a fetched policy;
#   state_files      the quarantine list and the cluster view (files one daemon reads from another);
#   verify_quote     a member's TPM quote (parser, signature, nonce, PCRs);
# the six others SECONDS/3 each (at least 10 s). New inputs go to a scratch directory, so the
# committed corpus only changes when someone copies findings in on purpose. Crashes land in
# fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-30}
others=$(( seconds / 3 < 10 ? 10 : seconds / 3 ))
scratch=$(mktemp -d)
trap 'rm -rf "$scratch" "$scratch.log"' EXIT
run() { # target seconds
  local target=$1 secs=$2 status=0
  mkdir -p "$scratch/$target"
  # -s none: this stable toolchain has no sanitizers; Rust's own checks and the harness's
  # assertions are the oracle. The fuzzer's own exit status decides (a target that fails to
  # build, or a crash, fails the run); the filter only keeps the summary lines readable.
  cargo fuzz run -s none "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 >"$scratch.log" 2>&1 || status=$?
  grep -E '^(#[0-9]+ +DONE|Done|INFO: seed corpus)|panicked|ERROR' "$scratch.log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$scratch.log" >&2
    echo "fuzz: cargo fuzz $target failed (exit $status)" >&2
    exit 1
  fi
  test ! -d "artifacts/$target" || test -z "$(ls -A "artifacts/$target")" || {
    echo "fuzz: crash inputs in fuzz/artifacts/$target" >&2
    exit 1
  }
  echo "fuzz: $target ran ${secs}s without a crash"
}
run verify_policy "$seconds"
for t in verify_membership join_wire cluster_message policy_transfer state_files verify_quote; do
  run "$t" "$others"
done
