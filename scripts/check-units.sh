#!/usr/bin/env bash
# Checks the systemd units in packaging/systemd: `systemd-analyze verify` accepts them in a
# scratch root (the host's own units for targets, stand-in executables at the ExecStart paths;
# nothing is installed or started on this machine), `systemd-analyze security` prints each
# daemon's exposure, and certaintyd's unit skips itself where / is not a RAM filesystem.
# Run by scripts/test.sh. The Documentation= man pages are checked on the installed package
# (scripts/check-deb.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "check-units: systemd-analyze missing" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/sbin" "$root/bin" "$root/etc/systemd/system" "$root/lib/systemd"
cp -r /lib/systemd/system "$root/lib/systemd/"
for b in netguard clusterd joind certaintyd; do cp /bin/true "$root/usr/sbin/$b"; done
cp /bin/sh "$root/bin/sh"
cp packaging/systemd/*.service "$root/etc/systemd/system/"
out=$(systemd-analyze verify --man=no --root="$root" "$root"/etc/systemd/system/*.service 2>&1) || {
  echo "check-units: systemd-analyze verify failed:" >&2; echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
  echo "check-units: systemd-analyze verify complains:" >&2; echo "$out" >&2; exit 1
fi
for u in netguard clusterd joind certaintyd; do
  systemd-analyze security --offline=yes --root="$root" "$root/etc/systemd/system/$u.service" 2>&1 | tail -n 1
done
# certaintyd's ExecCondition, run as systemd would (%% is %): skip, with a reason, on a
# disk-backed root; go on where / is tmpfs or ramfs.
cond=$(sed -n "s/^ExecCondition=\/bin\/sh -c '\(.*\)'$/\1/p" packaging/systemd/certaintyd.service | sed 's/%%/%/g')
[ -n "$cond" ] || { echo "check-units: certaintyd.service has no ExecCondition" >&2; exit 1; }
fs=$(stat -f -c %T /)
if msg=$(sh -c "$cond"); then
  case "$fs" in tmpfs|ramfs) ;; *) echo "check-units: certaintyd would start on a $fs root" >&2; exit 1 ;; esac
else
  case "$msg" in *"not a RAM filesystem"*) ;; *) echo "check-units: no reason given: $msg" >&2; exit 1 ;; esac
fi
# And on a RAM root: the same condition in a chroot on a fresh tmpfs (private mount namespace).
if command -v unshare >/dev/null && [ -x /bin/busybox ]; then
  unshare -m sh -c '
    d=$(mktemp -d); mount -t tmpfs ramroot "$d"; mkdir "$d/bin"; cp /bin/busybox "$d/bin/"
    for a in sh stat echo; do ln -s busybox "$d/bin/$a"; done
    chroot "$d" /bin/sh -c "$1"; rc=$?; umount "$d"; rmdir "$d"; exit $rc' _ "$cond" || {
    echo "check-units: certaintyd would not start on a tmpfs root" >&2; exit 1; }
fi
echo "check-units: 4 units verified; certaintyd on this $fs root: ${msg:-would start}; on a tmpfs root: starts"
