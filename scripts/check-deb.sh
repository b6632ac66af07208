#!/usr/bin/env bash
# Checks the Debian packages: they build (scripts/build-deb.sh), lintian finds no error, and
# they install into a scratch root with dpkg (maintainer scripts run against that root through
# DPKG_ROOT, as dpkg's chrootless mode does; nothing on this machine is installed, enabled or
# started). Then: every program, link, unit, man page, completion and conffile is in place,
# the units verify with their man pages, nothing was started, the package opened no port, and
# removing and purging keep the cluster's keys and state. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$PWD/target}
fail() { echo "check-deb: $*" >&2; exit 1; }

scripts/build-deb.sh >/dev/null
tyd_deb=$(ls -t "$target"/debian/tyd_*.deb | head -n 1)
drone_deb=$(ls -t "$target"/debian/tyd-drone_*.deb | head -n 1)

# lintian: errors fail the check; warnings are printed.
tyd_version=$(dpkg-deb -f "$tyd_deb" Version)
dpkg-deb -f "$drone_deb" Depends | grep -q "tyd (= $tyd_version)" ||
  fail "tyd-drone does not depend on tyd $tyd_version (drone/Cargo.toml)"
lint=$(lintian --fail-on error --tag-display-limit 0 "$tyd_deb" "$drone_deb" 2>&1 | { grep -v 'running with root privileges' || true; }) || {
  echo "$lint" >&2; fail "lintian reports errors"; }
errors=$(grep -c '^E:' <<<"$lint" || true)
warnings=$(grep -c '^W:' <<<"$lint" || true)

root=$(mktemp -d)
host_units=$(ls -la /etc/systemd/system 2>/dev/null | md5sum)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers" \
  "$root/etc/systemd/system" "$root/var/lib/systemd"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
dpkg_root() {
  dpkg --root="$root" --force-script-chrootless --force-depends --force-not-root \
    --log=/dev/null "$@"
}
dpkg_root -i "$tyd_deb" "$drone_deb" >/dev/null 2>"$root.err" || { cat "$root.err" >&2; fail "dpkg -i failed"; }
rm -f "$root.err"

for f in usr/lib/tyd/{tyd,netguard,clusterd,joind,certaintyd,drone,drone-boot}; do
  [ -x "$root/$f" ] || fail "$f missing or not executable"
done
for l in usr/bin/tyd usr/bin/drone usr/sbin/netguard usr/sbin/clusterd usr/sbin/joind usr/sbin/certaintyd; do
  t=$(readlink -f "$root/$l") || fail "$l missing"
  [ -x "$t" ] && [[ "$t" == "$root/usr/lib/tyd/"* ]] || fail "$l does not lead to /usr/lib/tyd"
done
"$root/usr/bin/tyd" --version >/dev/null || fail "the installed tyd does not run"
for u in netguard clusterd joind certaintyd; do
  [ -f "$root/lib/systemd/system/$u.service" ] || [ -f "$root/usr/lib/systemd/system/$u.service" ] ||
    fail "$u.service not installed"
  [ -e "$root/etc/systemd/system/multi-user.target.wants/$u.service" ] && fail "$u.service enabled on install"
done
for m in man1/tyd.1 man1/tyd-policy-sign.1 man1/tyd-join.1 man1/drone.1 man1/drone-pxe.1 \
         man8/netguard.8 man8/clusterd.8 man8/joind.8 man8/certaintyd.8 man8/drone-boot.8; do
  [ -f "$root/usr/share/man/$m.gz" ] || fail "man page $m missing"
done
zcat "$root/usr/share/man/man8/netguard.8.gz" | grep -q -- 'policy' || fail "netguard.8 lacks its options"
MANWIDTH=80 man -l "$root/usr/share/man/man1/tyd.1.gz" 2>&1 >/dev/null | grep . && fail "man warns about tyd.1"
for c in bash-completion/completions/tyd zsh/vendor-completions/_tyd fish/vendor_completions.d/tyd.fish \
         bash-completion/completions/drone; do
  [ -s "$root/usr/share/$c" ] || fail "completion $c missing"
done
bash -c "source '$root/usr/share/bash-completion/completions/tyd'; complete -p tyd" >/dev/null ||
  fail "the bash completion does not load"
conffiles=$(cat "$root/var/lib/dpkg/info/tyd.conffiles")
for c in /etc/tyd/netguard.env /etc/tyd/clusterd.env /etc/tyd/joind.env; do
  grep -qx "$c" <<<"$conffiles" || fail "$c is not a conffile"
done
[ "$(stat -c %a "$root/var/lib/tyd")" = 700 ] || fail "/var/lib/tyd is not mode 0700"
[ -f "$root/usr/share/doc/tyd/examples/cluster.toml" ] || fail "example policy missing"
"$root/usr/bin/tyd" policy check "$root/usr/share/doc/tyd/examples/cluster.toml" >/dev/null 2>&1 ||
  fail "the example policy does not check"

# The units, now with their man pages, as systemd would load them from the installed tree.
mkdir -p "$root/lib/systemd/system" "$root/bin"
cp -rn /lib/systemd/system/. "$root/lib/systemd/system/"
cp /bin/sh "$root/bin/sh"
# Documentation=man:... is looked up with man(1) on the installed pages.
out=$(MANPATH="$root/usr/share/man" systemd-analyze verify --root="$root" --man=yes "$root"/lib/systemd/system/{netguard,clusterd,joind,certaintyd}.service 2>&1) ||
  { echo "$out" >&2; fail "systemd-analyze verify failed"; }
[ -z "$out" ] || { echo "$out" >&2; fail "systemd-analyze verify complains"; }

# Nothing on this machine changed, and the package opened nothing: its scripts run no nft.
[ "$(ls -la /etc/systemd/system 2>/dev/null | md5sum)" = "$host_units" ] || fail "the host's units changed"
for s in postinst prerm postrm preinst; do
  f="$root/var/lib/dpkg/info/tyd.$s"
  [ -f "$f" ] && grep -v '^[[:space:]]*#' "$f" | grep -Eq '\bnft\b|iptables|netguard --' &&
    fail "tyd.$s touches the firewall"
done

# Removing and purging: programs go, the cluster's files stay.
echo "secret" >"$root/etc/tyd/operator.key"; echo "{}" >"$root/var/lib/tyd/tokens.json"
dpkg_root -r tyd-drone tyd >/dev/null 2>&1 || fail "dpkg -r failed"
[ ! -e "$root/usr/lib/tyd/tyd" ] || fail "tyd still installed after removal"
dpkg_root -P tyd >/dev/null 2>&1 || fail "dpkg -P failed"
[ -f "$root/etc/tyd/operator.key" ] && [ -f "$root/var/lib/tyd/tokens.json" ] ||
  fail "purging removed the cluster's keys or state"
[ ! -e "$root/etc/tyd/joind.env" ] || fail "purging left a conffile"

size=$(du -k "$tyd_deb" | cut -f1); dsize=$(du -k "$drone_deb" | cut -f1)
echo "check-deb: $(basename "$tyd_deb") ${size} KiB, $(basename "$drone_deb") ${dsize} KiB; lintian: $errors errors, $warnings warnings; installed, verified, removed and purged in a scratch root"
[ "$warnings" -eq 0 ] || grep '^W:' <<<"$lint" | sed 's/^/check-deb: lintian /'
