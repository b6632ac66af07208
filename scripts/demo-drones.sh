#!/usr/bin/env bash
# Drones as CHAOS booted them, in VMs: builds one image per drone (drone build), boots three
# under qemu on a bridge in a private network namespace, shows the mesh, tyd status and
# tyd status --cluster, then writes under /bin on one drone and shows its peer quarantine it,
# and it reboot, rejoin and be readmitted. Removes what it made on exit.
# Needs root; installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --runtime
exec cargo run --release --quiet -p vm-tests --example drone-cluster
