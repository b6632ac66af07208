#!/usr/bin/env bash
# Checks that node_exporter's textfile collector reads netguard's and certaintyd's metrics
# files (prometheus-client writes OpenMetrics text; node_exporter expects the Prometheus text
# format). Debian's prometheus-node-exporter is downloaded and unpacked into the target
# directory, never installed (its package would start a service listening on every
# interface); it runs in a private network namespace on its loopback, with only the textfile
# collector. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$PWD/target}
fail() { echo "check-metrics: $*" >&2; exit 1; }

cache="$target/node-exporter"
bin="$cache/usr/bin/prometheus-node-exporter"
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  (cd "$cache" && apt-get download -q prometheus-node-exporter >/dev/null 2>&1 &&
    dpkg-deb -x prometheus-node-exporter_*.deb .) || fail "cannot fetch prometheus-node-exporter"
fi

dir=$(mktemp -d)
ns="tydmetrics-$$"
pid=
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
chmod 755 "$dir"
cargo run -q --locked -p netguard --example sample_metrics >"$dir/netguard.prom"
cargo run -q --locked -p certaintyd --example metrics_sample >"$dir/certaintyd.prom"

ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" "$bin" --collector.disable-defaults --collector.textfile \
  --collector.textfile.directory="$dir" --web.listen-address=127.0.0.1:9100 \
  >"$dir.log" 2>&1 &
pid=$!
scrape() {
  ip netns exec "$ns" python3 -c 'import urllib.request,sys
sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:9100/metrics", timeout=2).read().decode())'
}
out=
for _ in $(seq 50); do
  out=$(scrape 2>/dev/null) && break
  sleep 0.1
done
[ -n "$out" ] || { cat "$dir.log" >&2; fail "node_exporter did not answer"; }
rm -f "$dir.log"
grep -qx 'node_textfile_scrape_error 0' <<<"$out" ||
  { grep -i textfile <<<"$out" >&2; fail "node_exporter could not parse the files"; }
for want in \
  'netguard_policy_serial 12' \
  'netguard_peer_quarantined{name="drone3",node="3"} 1' \
  'netguard_peer_received_bytes_total{name="drone2",node="2"} 8192' \
  'netguard_reconciles_total{result="failed",trigger="policy change"} 1' \
  'netguard_dropped_packets_total{service="openmosix"} 17' \
  'netguard_reconcile_duration_seconds_count 3' \
  'certaintyd_state{state="verifying"} 1' \
  'certaintyd_verifications_total 3' \
  'certaintyd_violations_total{cause="event"} 1'; do
  grep -qxF "$want" <<<"$out" || { echo "$out" | grep -E '^(netguard|certaintyd)' >&2; fail "no line: $want"; }
done
n=$(grep -cE '^(netguard|certaintyd)_' <<<"$out")
echo "check-metrics: node_exporter $("$bin" --version 2>&1 | head -n 1 | awk '{print $3}') read both files: $n series, no parse error"
