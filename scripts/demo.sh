#!/usr/bin/env bash
# The main job on an embedded default: an operator key, a three-drone cluster policy with
# CHAOS's openMosix defaults, signed, verified, shown, and exported as an openMosix map.
# Then a node is removed and the old policy is shown to be refused as a rollback.
# Everything happens in a scratch directory (kept with --keep DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

keep=""
if [ "${1:-}" = "--keep" ]; then keep=${2:?--keep needs a directory}; fi

cargo build --quiet --release -p tyd
tyd="$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/tyd"

if [ -n "$keep" ]; then
  mkdir -p "$keep"; work=$(cd "$keep" && pwd)
else
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
fi
cd "$work"
step() { printf '\n== %s\n' "$*"; }
run() { printf '$ tyd %s\n' "$*"; "$tyd" "$@"; }

step "operator signing key (ed25519)"
run keygen operator --out operator.key

step "cluster policy with CHAOS's defaults (openMosix tcp 723, 4660, udp 5000-5700)"
run policy init --name demo --out cluster.toml

step "three drones, each with its own WireGuard key"
for i in 1 2 3; do
  run keygen node --out "drone$i.key"
  run node add cluster.toml --id "$i" --name "drone$i" --public-key-file "drone$i.key.pub" \
    --endpoint "192.0.2.$i:51820"
done

step "sign and verify"
run policy sign cluster.toml --key operator.key
run policy verify cluster.toml --trust operator.key.pub
cp cluster.toml old.toml; cp cluster.toml.sig old.toml.sig

step "the policy as a node sees it"
run policy show cluster.toml --trust operator.key.pub

step "openMosix map (tunnel addresses: migration traffic goes through the tunnels)"
run showmap cluster.toml --trust operator.key.pub

step "remove drone2, re-sign"
run node remove cluster.toml drone2
run policy sign cluster.toml --key operator.key
run showmap cluster.toml --trust operator.key.pub

step "a tampered policy is refused"
sed 's/drone3/drone9/' cluster.toml > tampered.toml; cp cluster.toml.sig tampered.toml.sig
if run policy verify tampered.toml --trust operator.key.pub; then
  echo "demo: tampered policy was accepted" >&2; exit 1
fi

step "re-signing the old serial is refused (rollback)"
cp old.toml replay.toml
if run policy sign replay.toml --key operator.key; then
  echo "demo: old serial was signed again" >&2; exit 1
fi

printf '\ndemo: done (files in %s%s)\n' "$work" "$([ -n "$keep" ] || echo ', removed on exit')"
