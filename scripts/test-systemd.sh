#!/usr/bin/env bash
# The README's install, run as a new operator would, on real systemd machines: two Debian 12
# machines booted with `systemd-nspawn -b` (systemd as PID 1), each in its own network
# namespace on a bridge inside a test namespace, and a rogue host on the same bridge.
#
# Steps (each timed where it matters; any failure stops the test with what it saw):
#  1. a Debian 12 minbase root (debootstrap, cached in $TYD_TEST_CACHE, default
#     /var/cache/tyd-test): systemd, dbus, netcat; deliberately without netbase, iproute2,
#     nftables, conntrack or wireguard-go, so the package's declared dependencies must
#     bring them;
#  2. `apt install ./tyd_*.deb` on both machines (dependencies from Debian, fetched into the
#     base's apt cache beforehand: the machines have no route out); nothing starts, no table;
#  3. machine 1: `tyd init --endpoint ADDR`; it prints the join line; its firewall is in force;
#  4. machine 2: exactly the printed `tyd join` line; `tyd status --cluster` all healthy on
#     both, `tyd status` exits 0 and names the node by its host name;
#  5. openMosix's port 4660 on machine 1: reachable from machine 2 through the tunnel,
#     refused to machine 2 outside the tunnel and to the rogue;
#  6. the README's edit step: an allow added to /etc/tyd/cluster.toml, `tyd policy sign ...
#     --bump` after init and a join: every node takes it (no replay of a taken serial);
#  7. a reboot of each machine: healthy again, the table in force after the boot;
#  8. `systemctl kill -s KILL` of each daemon: systemd restarts it, netguard's table in
#     force all the while;
#  9. no netlink warnings in netguard's journal; `systemd-analyze security` of each unit
#     (netguard, clusterd, joind at or below 5.0);
# 10. `tyd leave` on machine 2: removed on machine 1, its units stopped and disabled;
#     `apt remove` keeps the table and /etc/tyd; `apt purge` keeps the keys and /var/lib/tyd.
#
# Needs root, debootstrap and systemd-container (scripts/install-deps.sh) and the package
# (scripts/build-deb.sh). Run by scripts/test.sh. Every daemon runs inside the machines'
# own network namespaces, checked before each step; nothing touches this host's nftables.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  [ -n "${CI:-}" ] && { echo "test-systemd: must run as root in CI" >&2; exit 1; }
  echo "test-systemd: SKIP (not root)"; exit 0
fi
for t in debootstrap systemd-nspawn nsenter; do
  command -v "$t" >/dev/null || { echo "test-systemd: $t missing (scripts/install-deps.sh)" >&2; exit 1; }
done
target=${CARGO_TARGET_DIR:-$PWD/target}
deb=$(ls "$target"/debian/tyd_*_amd64.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || { echo "test-systemd: no tyd package in $target/debian (scripts/build-deb.sh)" >&2; exit 1; }

cache=${TYD_TEST_CACHE:-/var/cache/tyd-test}
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
# The recipe of the base root: a change here makes a new one.
recipe="bookworm minbase systemd,systemd-sysv,dbus,netcat-openbsd networkd v1"
base=$cache/base
ns=tydsys$$
run=$(mktemp -d /var/tmp/tyd-systemd.XXXXXX)
host_net=$(readlink /proc/self/ns/net)
declare -A wrapper=()

say() { printf 'test-systemd: %s\n' "$*"; }
fail() { printf 'test-systemd: FAIL: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }
since() { echo "$(( ($(now_ms) - $1) ))"; }

cleanup() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ]; then
    for m in "${!wrapper[@]}"; do
      leader "$m" >/dev/null 2>&1 || continue
      echo "--- $m: tyd status --cluster; tyd status; the daemons' journal (last 40 lines)" >&2
      on "$m" 'tyd status --cluster; tyd status; journalctl -n 40 -o short-monotonic -u netguard -u clusterd -u joind' >&2
    done
  fi
  for m in "${!wrapper[@]}"; do
    touch "$run/$m.stop"
    l=$(leader "$m" 2>/dev/null) && kill -RTMIN+4 "$l" 2>/dev/null   # poweroff
  done
  for m in "${!wrapper[@]}"; do
    for _ in $(seq 100); do kill -0 "${wrapper[$m]}" 2>/dev/null || break; sleep 0.1; done
    # A machine that did not power off in 10 s: its nspawn first (killing the wrapper
    # first would leave nspawn running, reparented away from it), then the wrapper.
    n=$(nspawn_pid "$m" 2>/dev/null) && kill -KILL "$n" 2>/dev/null
    kill -KILL "${wrapper[$m]}" 2>/dev/null
  done
  wait 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  ip netns del "${ns}r" 2>/dev/null
  rm -rf "$run"
}
trap cleanup EXIT
trap "exit 130" INT TERM

# 1. The base root, cached across runs.
if [ "$(cat "$base/.recipe" 2>/dev/null)" != "$recipe" ]; then
  say "making the Debian 12 base root in $base ($mirror)"
  rm -rf "$base.new" "$base"
  mkdir -p "$cache"
  t=$(now_ms)
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,netcat-openbsd \
    bookworm "$base.new" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
    tail -n 20 "$cache/debootstrap.log" >&2; fail "debootstrap"; }
  chroot "$base.new" systemctl enable systemd-networkd >/dev/null 2>&1
  rm -f "$base.new/etc/machine-id" "$base.new/var/lib/dbus/machine-id"
  echo "$recipe" >"$base.new/.recipe"
  mv "$base.new" "$base"
  say "base root made in $(since "$t") ms"
fi
# The package's dependencies, fetched into the base's apt cache (the machines cannot reach
# the mirror). What gets installed in the machines is decided by apt from the package.
cp "$deb" "$base/root/"
debname=$(basename "$deb")
[ -s "$base/var/lib/apt/lists/lock" ] || [ -n "$(ls "$base"/var/lib/apt/lists/*Packages* 2>/dev/null)" ] \
  || chroot "$base" apt-get update -qq
chroot "$base" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --download-only \
  "/root/$debname" >/dev/null || fail "fetching the package's dependencies"

# Network: a namespace with a bridge; the machines and a rogue on it.
ip netns add "$ns"
ip -n "$ns" link add br0 type bridge
ip -n "$ns" link set br0 up
ip -n "$ns" link set lo up
ip netns add "${ns}r"
ip link add "r$$" netns "$ns" type veth peer name eth0 netns "${ns}r"
ip -n "$ns" link set "r$$" master br0 up
ip -n "${ns}r" addr add 10.213.0.66/24 dev eth0
ip -n "${ns}r" link set eth0 up
ip -n "${ns}r" link set lo up

declare -A addr=([m1]=10.213.0.11 [m2]=10.213.0.12)

make_machine() { # name
  local m=$1 r=$run/$1
  cp -a "$base" "$r"
  echo "$m" >"$r/etc/hostname"
  # A throwaway machine: dpkg need not fsync every file it unpacks (as Debian's own
  # container images do); nothing else about the install changes.
  echo force-unsafe-io >"$r/etc/dpkg/dpkg.cfg.d/tyd-test-unsafe-io"
  printf '%s\n' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$r/etc/machine-id"
  mkdir -p "$r/etc/systemd/network"
  printf '[Match]\nName=host0\n[Network]\nAddress=%s/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
    "${addr[$m]}" >"$r/etc/systemd/network/10-host0.network"
}

boot() { # name: nspawn in the test namespace, restarted after a reboot (exit 133)
  local m=$1
  rm -f "$run/$m.stop"
  (
    while :; do
      # nsenter, not `ip netns exec`: that one remounts /sys, and nspawn then finds no
      # cgroup hierarchy.
      nsenter --net="/run/netns/$ns" systemd-nspawn -q -b -D "$run/$m" --machine="$m" --network-bridge=br0 \
        --register=no --keep-unit --console=read-only >>"$run/$m.console" 2>&1 && rc=0 || rc=$?
      [ "$rc" -eq 133 ] && [ ! -e "$run/$m.stop" ] || break
    done
  ) &
  wrapper[$m]=$!
}

nspawn_pid() { # the running systemd-nspawn of a machine
  local p
  for p in $(pgrep -f -- "--machine=$1 "); do
    [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$(readlink -f "$(command -v systemd-nspawn)")" ] && { echo "$p"; return 0; }
  done
  return 1
}

leader() { # the machine's PID 1, seen from here
  local n c
  n=$(nspawn_pid "$1") || return 1
  for c in $(cat /proc/"$n"/task/*/children 2>/dev/null); do
    [ "$(readlink "/proc/$c/ns/pid")" != "$(readlink /proc/self/ns/pid)" ] && { echo "$c"; return 0; }
  done
  return 1
}

# Runs a command in a machine, after checking it is in its own network namespace.
on() { # name command...
  local m=$1 l; shift
  l=$(leader "$m") || fail "$m is not running"
  [ "$(readlink "/proc/$l/ns/net")" != "$host_net" ] || fail "$m shares this host's network namespace: stopping"
  nsenter -t "$l" -m -u -i -n -p -C -r -w \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8 bash -c "$*"
}

wait_for() { # seconds description command...: polls every 100 ms
  local limit=$1 what=$2; shift 2
  local end=$(( $(now_ms) + limit * 1000 ))
  while [ "$(now_ms)" -lt "$end" ]; do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  "$@" || true
  fail "$what: not within $limit s"
}

booted() { on "$1" 'systemctl is-system-running 2>/dev/null | grep -qE "^(running|degraded)$"'; }
healthy() { # name count: tyd status --cluster exits 0 and shows count healthy nodes
  on "$1" "tyd status --cluster | grep -q ': $2 nodes, $2 healthy'"
}
table() { on "$1" 'nft list table inet netguard >/dev/null 2>&1'; }

start_machine() { # name: boot and wait for systemd
  local t
  t=$(now_ms)
  boot "$1"
  wait_for 60 "$1 leader" leader "$1"
  wait_for 60 "$1 booted" booted "$1"
  say "$1 booted in $(since "$t") ms"
}

for m in m1 m2; do make_machine "$m"; start_machine "$m"; done

# 2. Install, on both machines at once.
t=$(now_ms)
declare -A installing=()
for m in m1 m2; do
  on "$m" "DEBIAN_FRONTEND=noninteractive apt install -y -q /root/$debname >/root/apt.log 2>&1" &
  installing[$m]=$!
done
for m in m1 m2; do
  wait "${installing[$m]}" || { on "$m" 'tail -n 30 /root/apt.log' >&2; fail "$m: apt install"; }
done
say "apt install ./$debname on both machines in $(since "$t") ms"
for m in m1 m2; do
  on "$m" 'for u in netguard clusterd joind certaintyd; do s=$(systemctl is-enabled $u.service 2>&1 || true); [ "$s" = disabled ] || { echo "$u: $s"; exit 1; }; done' \
    || fail "$m: the package enabled a unit"
  ! table "$m" || fail "$m: a table exists before tyd init"
  on "$m" 'dpkg -s netbase iproute2 nftables conntrack wireguard-go >/dev/null' || fail "$m: a dependency was not installed"
done

# 3. tyd init on machine 1 (the README's step).
t=$(now_ms)
on m1 "tyd init --endpoint ${addr[m1]}" >"$run/init.out" 2>&1 || { cat "$run/init.out" >&2; fail "tyd init"; }
say "m1: tyd init in $(since "$t") ms"
cat "$run/init.out"
join_line=$(grep -E '^ +tyd join ' "$run/init.out" | sed 's/^ *//')
[ -n "$join_line" ] || fail "tyd init printed no join line"
table m1 || fail "m1: no table after tyd init"

# 4. The printed join line on machine 2.
t=$(now_ms)
on m2 "$join_line" >"$run/join.out" 2>&1 || { cat "$run/join.out" >&2; fail "tyd join"; }
cat "$run/join.out"
wait_for 60 "m1 sees 2 healthy" healthy m1 2
wait_for 60 "m2 sees 2 healthy" healthy m2 2
say "m2: join to all healthy in $(since "$t") ms"
on m1 'tyd status --cluster'
on m2 'tyd status' >"$run/status.out" 2>&1 || { cat "$run/status.out" >&2; fail "m2: tyd status exits $?"; }
grep -qE '^ +[0-9]+ +m2 +yes +self' "$run/status.out" || { cat "$run/status.out" >&2; fail "m2: not shown as itself, named m2"; }

# 5. The service port: through the tunnel only.
on m1 'systemd-run -q --unit=svc4660 nc -lk 4660' || fail "m1: cannot start a listener"
t1=$(on m1 "tyd showmap /etc/tyd/cluster.toml" | awk '$1 == 1 { print $2 }')
[ -n "$t1" ] || fail "m1's tunnel address not in the map"
wait_for 20 "m2 reaches m1:4660 through the tunnel" on m2 "nc -z -w 2 $t1 4660"
! on m2 "nc -z -w 2 ${addr[m1]} 4660" || fail "m2 reached 4660 outside the tunnel"
! ip netns exec "${ns}r" nc -z -w 2 "${addr[m1]}" 4660 || fail "the rogue reached 4660"
! ip netns exec "${ns}r" nc -z -w 2 "$t1" 4660 2>/dev/null || fail "the rogue reached the tunnel address"
say "4660: open through the tunnel, closed to the LAN and to the rogue"

# 6. The README's edit step: allow a port, sign with --bump; both take it.
before=$(on m1 "sed -n 's/^serial = \\([0-9]*\\)/\\1/p' /etc/tyd/cluster.toml")
on m1 "printf '\\n[firewall.allow.web]\\ntcp = [8080]\\n' >>/etc/tyd/cluster.toml"
on m1 'tyd policy sign /etc/tyd/cluster.toml --key /etc/tyd/operator.key --bump --yes' \
  || fail "tyd policy sign --bump"
after=$(on m1 "sed -n 's/^serial = \\([0-9]*\\)/\\1/p' /etc/tyd/cluster.toml")
[ "$after" -gt "$before" ] || fail "--bump left serial $before"
for m in m1 m2; do
  wait_for 20 "$m takes serial $after" on "$m" "tyd status --json | grep -q '\"serial\": $after'"
done
on m1 'tyd status >/dev/null' || fail "m1: tyd status after the signed edit"
say "signed edit: serial $before -> $after on both"

# 7. Reboots.
for m in m1 m2; do
  old=$(leader "$m")
  t=$(now_ms)
  on "$m" 'systemctl reboot' || true
  for _ in $(seq 600); do l=$(leader "$m" 2>/dev/null) && [ "$l" != "$old" ] && break; sleep 0.1; done
  wait_for 60 "$m booted again" booted "$m"
  wait_for 60 "$m: table after the reboot" table "$m"
  wait_for 60 "m1 healthy after $m's reboot" healthy m1 2
  wait_for 60 "m2 healthy after $m's reboot" healthy m2 2
  say "$m: reboot to all healthy in $(since "$t") ms"
done

# 8. Each daemon killed: back by Restart=, table in force meanwhile.
for d in netguard clusterd joind; do
  n0=$(on m1 "systemctl show -p NRestarts --value $d")
  t=$(now_ms)
  on m1 "systemctl kill -s KILL $d.service" 2>/dev/null || true
  gaps=0
  for _ in $(seq 100); do
    table m1 || gaps=$((gaps + 1))
    n=$(on m1 "systemctl show -p NRestarts --value $d")
    [ "$n" -gt "$n0" ] && on m1 "systemctl is-active -q $d" && break
    sleep 0.05
  done
  [ "$n" -gt "$n0" ] || fail "$d was not restarted"
  [ "$gaps" -eq 0 ] || fail "netguard's table was missing $gaps times while $d restarted"
  say "m1: $d killed, back in $(since "$t") ms, table in force throughout"
done
wait_for 30 "healthy after the kills" healthy m1 2

# 9. The journal and the units' exposure.
warns=$(on m1 'journalctl -u netguard -o cat | grep -c "netlink_packet" || true')
[ "$warns" -eq 0 ] || fail "netguard's journal has $warns netlink warnings"
for u in netguard clusterd joind certaintyd; do
  score=$(on m1 "systemd-analyze security --no-pager $u.service 2>/dev/null | tail -n 1" | grep -oE '[0-9]+\.[0-9]+' | head -n 1)
  say "systemd-analyze security $u.service: ${score:-?}"
  case $u in certaintyd) ;; *) awk -v s="${score:-99}" 'BEGIN { exit !(s <= 5.0) }' || fail "$u exposure $score > 5.0" ;; esac
done

# 10. Leave, remove, purge.
t=$(now_ms)
on m2 'tyd leave' || fail "tyd leave"
wait_for 10 "m1 drops m2" on m1 "! grep -q '^name = \"m2\"' /etc/tyd/cluster.toml"
say "m2: tyd leave, removed on m1 in $(since "$t") ms"
for u in netguard clusterd joind; do
  on m2 "! systemctl is-active -q $u && ! systemctl is-enabled -q $u" || fail "m2: $u still active or enabled after leave"
done
on m2 '[ ! -e /run/tyd/cluster-status.json ] && [ -e /etc/tyd/cluster.toml.left ]' || fail "m2: view or policy left in place"
on m2 'DEBIAN_FRONTEND=noninteractive apt remove -y -q tyd >/dev/null 2>&1' || fail "apt remove"
table m2 || fail "m2: table gone after apt remove"
on m2 '[ -e /etc/tyd/node.key ] && [ -e /etc/tyd/operator.pub ]' || fail "m2: apt remove took /etc/tyd"
on m2 'DEBIAN_FRONTEND=noninteractive apt purge -y -q tyd >/dev/null 2>&1' || fail "apt purge"
on m2 '[ -e /etc/tyd/node.key ] && [ -d /var/lib/tyd ] && ! command -v tyd' || fail "m2: purge lost the keys or kept the program"
say "m2: apt remove kept the table and /etc/tyd; purge kept the keys and /var/lib/tyd"
say "passed"
