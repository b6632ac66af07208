#!/usr/bin/env bash
# A whole cluster on one machine (needs root): three drone namespaces and one rogue on a
# bridge. drone1 starts the cluster (tyd -f init), drone2 joins through it (tyd -m), drone3
# finds a member by broadcast (tyd -m any); each runs netguard (userspace WireGuard), clusterd
# and joind. Shows the tunnels up, `tyd status --cluster`, TCP 4660 (openMosix) working
# between members through the tunnels and refused to the rogue, then drone3 leaves (tyd
# leave) and is cut off, established flow included, while drone2 gets the new policy from
# its peer.
# Everything it creates is removed on exit, Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo-cluster: needs root (network namespaces)" >&2; exit 1; }
scripts/install-deps.sh --runtime
cargo build --quiet --release -p tyd -p netguard -p clusterd -p join
bin="$(realpath -m "${CARGO_TARGET_DIR:-target}")/release"
id=$$
br="tydbr$id"; nss=("tyd${id}n1" "tyd${id}n2" "tyd${id}n3"); rogue="tyd${id}rg"
work=$(mktemp -d)
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  # netguard leaves its wireguard-go running on purpose (a restart adopts it): kill it by
  # PID, found through the namespaces this script made, never by name.
  for ns in "${nss[@]}" "$rogue"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null; done
  done
  for ns in "${nss[@]}" "$rogue" "$br"; do ip netns del "$ns" 2>/dev/null; done
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS"
    for i in 1 2 3; do
      for f in netguard clusterd joind; do cp "$work/n$i/$f.log" "$KEEP_LOGS/drone$i-$f.log" 2>/dev/null; done
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Background processes are started with `ip netns exec` directly (it execs), never through a
# shell function, so that $! is the process itself and cleanup can stop it.
step() { printf '\n== %s\n' "$*"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
tcp_try() { # ns host port [message]: succeeds if an echo server answers
  in_ns "$1" python3 - "$2" "$3" "${4:-hello}" <<'PY'
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    s.sendall(sys.argv[3].encode()); s.settimeout(2)
    sys.exit(0 if s.recv(100) == sys.argv[3].encode() else 1)
except OSError:
    sys.exit(1)
PY
}

step "LAN: a bridge with three drones (198.18.0.1-3) and a rogue (198.18.0.99)"
ip netns add "$br"
ip -n "$br" link add br0 type bridge; ip -n "$br" link set br0 up
i=0
for ns in "${nss[@]}" "$rogue"; do
  i=$((i + 1)); addr="198.18.0.$i"; [ "$ns" = "$rogue" ] && addr=198.18.0.99
  ip netns add "$ns"
  ip -n "$ns" link add eth0 type veth peer name "p$i" netns "$br"
  ip -n "$br" link set "p$i" master br0 up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
done

cd "$work"
mkdir -p n1 n2 n3
start_node() { # i, and "master" for drone1: netguard, clusterd and joind in drone i
  local i=$1 ns=${nss[$(($1 - 1))]}
  ip netns exec "$ns" "$bin/netguard" --policy "n$i/cluster.toml" --trust "n$i/operator.pub" \
    --key "n$i/node.key" --state "n$i/accepted.json" --interface "tyd${id}w$i" \
    --quarantine "n$i/quarantine.json" --backend userspace --drift 1s 2> "n$i/netguard.log" &
  pids+=($!)
  ip netns exec "$ns" "$bin/clusterd" --policy "n$i/cluster.toml" --trust "n$i/operator.pub" \
    --key "n$i/node.key" --state "n$i/clusterd.json" --certainty-socket none \
    --quarantine "n$i/quarantine.json" --view "n$i/cluster-status.json" 2> "n$i/clusterd.log" &
  pids+=($!)
  local master=()
  [ "${2:-}" = master ] && master=(--operator-key "n$i/operator.key")
  ip netns exec "$ns" "$bin/joind" --policy "n$i/cluster.toml" --trust "n$i/operator.pub" \
    --key "n$i/node.key" --tokens "n$i/tokens.json" --state "n$i/joind.json" "${master[@]}" 2> "n$i/joind.log" &
  pids+=($!)
}

step "drone1: tyd -f init (the operator key, a signed policy with drone1 as master, a token)"
in_ns "${nss[0]}" "$bin/tyd" -f init --endpoint 198.18.0.1 --cluster demo --name drone1 --dir n1 \
  --tokens n1/tokens.json --uses 2 | tee n1/init.out
token=$(grep -o -- '--token [a-z0-9.]*' n1/init.out | cut -d' ' -f2)
fingerprint=$(grep -o -- '--operator blake3:[0-9a-f]*' n1/init.out | cut -d' ' -f2)
# These namespaces run no certaintyd (it guards a RAM root: see the drone demo), so the demo
# policy does not require one; clusterd still quarantines nodes that fall silent.
sed -i 's/^require_certainty = .*/require_certainty = false/' n1/cluster.toml
"$bin/tyd" policy sign n1/cluster.toml --key n1/operator.key --bump >/dev/null
start_node 1 master
sleep 0.5

step "drone2: tyd -m 198.18.0.1 (join through a member); drone3: tyd -m any (find one by broadcast)"
in_ns "${nss[1]}" "$bin/tyd" -m 198.18.0.1 --token "$token" --operator "$fingerprint" --dir n2 --name drone2
start_node 2
in_ns "${nss[2]}" "$bin/tyd" -m any --token "$token" --operator "$fingerprint" --dir n3 --name drone3
start_node 3
for t in $(seq 1 100); do
  in_ns "${nss[0]}" ping -c1 -W1 10.77.0.2 >/dev/null 2>&1 && in_ns "${nss[0]}" ping -c1 -W1 10.77.0.3 >/dev/null 2>&1 && break
  sleep 0.2
done
in_ns "${nss[0]}" "$bin/tyd" status --policy n1/cluster.toml --trust n1/operator.pub --interface "tyd${id}w1" --key n1/node.key
cluster_status() { # drone i, and what the summary must say
  for t in $(seq 1 100); do
    "$bin/tyd" status --cluster --view "n$1/cluster-status.json" 2>/dev/null | grep -q "$2" && break
    sleep 0.2
  done
  "$bin/tyd" status --cluster --view "n$1/cluster-status.json" || true
}
step "tyd status --cluster on drone1 (clusterd's heartbeats through the tunnels)"
cluster_status 1 "3 healthy"

step "openMosix's tcp 4660 on every drone (an echo server)"
for i in 1 2 3; do
  ip netns exec "${nss[$((i - 1))]}" python3 -c '
import socket, threading
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(("::", 4660)); s.listen()
def serve(c):
    while (d := c.recv(100)): c.sendall(d)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()' &
  pids+=($!)
done
sleep 0.5
tcp_try "${nss[0]}" 10.77.0.2 4660 && echo "drone1 -> drone2 10.77.0.2:4660 through the tunnel: connected"
if tcp_try "$rogue" 198.18.0.2 4660; then echo "FAIL: rogue reached drone2" >&2; exit 1; fi
echo "rogue -> drone2 198.18.0.2:4660 on the LAN: refused (dropped, counted)"
if tcp_try "${nss[0]}" 198.18.0.2 4660; then echo "FAIL: drone1 reached drone2 outside the tunnel" >&2; exit 1; fi
echo "drone1 -> drone2 198.18.0.2:4660 outside the tunnel: refused"

step "an established flow from drone3, then drone3 leaves the cluster (tyd leave)"
ip netns exec "${nss[2]}" python3 - <<'PY' &
import socket, time, sys
s = socket.create_connection(("10.77.0.2", 4660), timeout=2)
s.sendall(b"before"); print("drone3 flow: before removal:", s.recv(100).decode(), flush=True)
time.sleep(4)
try:
    s.sendall(b"after"); s.settimeout(3); d = s.recv(100)
    print("drone3 flow: after removal:", d.decode() if d else "closed", flush=True)
except OSError as e:
    print("drone3 flow: after removal: cut off (%s)" % e, flush=True)
PY
flow=$!
sleep 1
# drone3 leaves: it asks the master through its tunnel; clusterd carries the new policy on.
in_ns "${nss[2]}" "$bin/tyd" leave --dir n3
for t in $(seq 1 50); do grep -q "node 3 (drone3) removed" n2/netguard.log && break; sleep 0.1; done
echo "drone2 got the new policy from its peer: $(grep -o 'policy accepted source=peer:[0-9]* cluster=[a-z]* serial=[0-9]*' n2/clusterd.log | tail -n 1)"
wait "$flow" || true
if tcp_try "${nss[2]}" 10.77.0.2 4660; then echo "FAIL: removed drone3 still connects" >&2; exit 1; fi
echo "drone3 -> drone2 new connection: refused"
tcp_try "${nss[0]}" 10.77.0.2 4660 && echo "drone1 -> drone2: still connected"
in_ns "${nss[1]}" "$bin/tyd" status --policy n2/cluster.toml --trust n2/operator.pub --interface "tyd${id}w2" --key n2/node.key
step "tyd status --cluster on drone2"
cluster_status 2 "2 nodes, 2 healthy"
printf '\ndemo-cluster: done; namespaces and files are removed now\n'
