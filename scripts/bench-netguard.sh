#!/usr/bin/env bash
# netguard convergence benchmark (needs root). Two namespaces on a veth: "bench" runs the
# benchmark as node 1 with maps of 10 to 10,000 nodes; "peer" is node 2, a real WireGuard
# peer pinged all along, so a disturbed session would show. Removed on exit.
# BENCH_NODES="1000 10000" runs those rows only (default: 10 100 1000 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-netguard: needs root" >&2; exit 1; }
cargo build --quiet --release -p netguard --example converge
bin="$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/examples/converge"
a="ngbench$$a"; b="ngbench$$b"; work=$(mktemp -d); pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  # What netguard started (wireguard-go) lives on in the namespaces: kill it by PID, found
  # through the namespaces this script made, never by name.
  for ns in "$a" "$b"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null; done
  done
  ip netns del "$a" 2>/dev/null; ip netns del "$b" 2>/dev/null; rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$a"; ip netns add "$b"
ip -n "$a" link add eth0 type veth peer name eth0 netns "$b"
ip -n "$a" addr add 198.18.0.1/24 dev eth0; ip -n "$b" addr add 198.18.0.2/24 dev eth0
for ns in "$a" "$b"; do ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up; done
wg genkey > "$work/me.key"; wg genkey > "$work/peer.key"
me_pub=$(wg pubkey < "$work/me.key"); peer_pub=$(wg pubkey < "$work/peer.key")
ip netns exec "$b" wireguard-go -f "ngb$$p" >/dev/null 2>&1 & pids+=($!)
# Its control socket can take longer than half a second on a busy machine.
for _ in $(seq 100); do ip netns exec "$b" wg show "ngb$$p" >/dev/null 2>&1 && break; sleep 0.05; done
ip netns exec "$b" wg set "ngb$$p" private-key "$work/peer.key" listen-port 51820 \
  peer "$me_pub" allowed-ips 10.0.0.2/32 endpoint 198.18.0.1:51820 persistent-keepalive 1
ip -n "$b" addr add 10.0.0.3/16 dev "ngb$$p"; ip -n "$b" link set "ngb$$p" up
ip netns exec "$b" ping -q -i 0.2 10.0.0.2 >/dev/null 2>&1 & pids+=($!)
ip netns exec "$a" "$bin" "ngb$$m" "$peer_pub" 198.18.0.2 "$work"
