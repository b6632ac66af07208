#!/usr/bin/env bash
# Installs what the project's builds and tests need, idempotently: quick when all is present.
# With --runtime, only what the daemons and demos need (no cargo-fuzz). Needs root for apt-get. The Rust toolchain (1.95 or newer: tpm2-protocol, the TPM marshaller, needs it) must already be
# installed; Debian 12's own rustc is too old.
set -euo pipefail

packages=(
  nftables          # nft: netguard's ruleset
  libnftnl-dev      # netguard's in-process set edits (the nftnl crate links libnftnl)
  libmnl-dev        # ... and libmnl (the mnl crate)
  pkg-config        # how those crates find the two libraries
  wireguard-tools   # wg: status and the naive-approach benchmark
  wireguard-go      # userspace WireGuard where the kernel has no module
  iproute2          # ip netns/link for namespace tests
  conntrack         # killing a removed node's flows
  iputils-ping      # tunnel checks in namespace tests and the demo
  python3           # demo-cluster echo servers, the VM join test's master service, benchmark tree builder
  b3sum             # certaintyd benchmark reference
  aide              # certaintyd benchmark reference (the classic tool)
  busybox-static    # drone images (and udhcpd in the VM tests)
  qemu-system-x86   # drone VMs
  ipxe-qemu         # qemu's NIC boot ROMs (iPXE): drones booted from the network in the VM tests
  ipxe              # undionly.kpxe and snponly.efi, served by drone pxe to real PXE ROMs
  dnsmasq-base      # drone pxe's boot server (proxy DHCP + TFTP); -base: no system service
  kmod              # depmod -b on the unpacked kernel package
  systemd           # systemd-analyze: checking the units in packaging/systemd
  bc                # benchmark arithmetic
  lintian           # checking the Debian packages (scripts/check-deb.sh)
  dpkg-dev          # dpkg-shlibdeps: cargo-deb's automatic package dependencies
  debootstrap       # the Debian 12 root of the systemd system test (scripts/test-systemd.sh)
  systemd-container # systemd-nspawn: that test's machines, booted with systemd as PID 1
  swtpm             # software TPMs: the attestation tests (one per node) and the TPM drones
  swtpm-tools       # swtpm_setup: a TPM state with its endorsement hierarchy
  ovmf              # UEFI firmware with TPM measurement: the measured drone VMs
  systemd-boot-efi  # linuxx64.efi.stub: drone build --uki makes one signed-off PE of kernel+initrd+cmdline
  binutils          # objcopy: adding the UKI's sections to the stub
)

missing=()
for p in "${packages[@]%%#*}"; do
  p=${p// /}
  [ -n "$p" ] || continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found; install a Rust toolchain 1.95 or newer (rustup)" >&2
  exit 1
fi
rustc_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "${rustc_minor:-0}" -lt 95 ]; then
  echo "install-deps: $(rustc --version) is too old; the code needs 1.95 or newer (tpm2-protocol)" >&2
  exit 1
fi

if [ "${1:-}" = "--runtime" ]; then
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "install-deps: installing cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz
fi
# The Debian packages (scripts/build-deb.sh); a pinned release, built without liblzma-dev.
if ! cargo deb --version 2>/dev/null | grep -q ' 3\.'; then
  echo "install-deps: installing cargo-deb"
  cargo install --locked --quiet cargo-deb --version '^3.6'
fi
