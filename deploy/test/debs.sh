#!/usr/bin/env bash
# The Debian packages on a fresh Debian 12 host (root):
#
#   KNOCKGATE_BIN_DIR=target/debug deploy/test/debs.sh
#
# - builds them (deploy/build-debs.sh, from the binaries in KNOCKGATE_BIN_DIR);
# - installs them with dpkg into a copy of the cached Debian root (deploy/test/debian-root.sh):
#   every binary answers --version, units, man pages, completions and the example config
#   are where Debian puts them, the `knockgate` system user exists and owns the controller's
#   data dir;
# - boots that host with systemd-nspawn (no network but its own loopback) and checks, under
#   a real systemd: `systemd-analyze verify` is clean on both units; the controller, its data
#   dir made by the documented `runuser -u knockgate -- knockgate-controller init`, becomes
#   active (Type=notify: only once it is ready) and answers /readyz; the agent, with a
#   standalone config, becomes active with its nftables table installed, still runs
#   sandboxed by the unit (capabilities, seccomp), and after `systemctl stop` the table and
#   its drop rules are still there (fail closed);
# - removes the packages (dpkg --purge): binaries gone, the agent's table still in place.
# Everything it makes is removed on exit, also on failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
start=$SECONDS
die() { echo "debs.sh: FAILED: $*" >&2; exit 1; }
ok() { echo "debs.sh: ok: $*"; }
[ "$(id -u)" -eq 0 ] || die "run as root (chroot, systemd-nspawn)"

# shellcheck source-path=SCRIPTDIR source=nspawn.sh
. "$here/nspawn.sh"
work=$(mktemp -d /var/tmp/kgt-debs.XXXXXX)
cleanup() {
  rc=$?
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    if [ "$rc" -ne 0 ] && [ -n "${init_pid:-}" ]; then
      nsenter --target="$init_pid" --mount --pid -- journalctl --no-pager -n 60 \
        -u knockgate-agent -u knockgate-controller >&2 || true
    fi
    stop_host
  fi
  umount -R "$work/host/proc" 2>/dev/null || true
  rm -rf --one-file-system "$work"
  exit "$rc"
}
trap cleanup EXIT

KNOCKGATE_BIN_DIR=${KNOCKGATE_BIN_DIR:-target/debug} bash deploy/build-debs.sh --fast --out "$work/debs"
root=$(bash deploy/test/debian-root.sh | tail -n1)
cp -a "$root" "$work/host"
h=$work/host
cp "$work"/debs/*.deb "$h/tmp/"

# --- install ------------------------------------------------------------------------------
mount -t proc proc "$h/proc"
debs=()
for f in "$h"/tmp/*.deb; do debs+=("/tmp/$(basename "$f")"); done
chroot "$h" dpkg -i "${debs[@]}" \
  >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; die "dpkg -i"; }
ok "dpkg -i of the three packages"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
for b in knockgate-agent knockgate-controller knockadm knocker; do
  got=$(chroot "$h" "/usr/bin/$b" --version) || die "$b --version failed"
  [ "$got" = "$b $version" ] || die "$b --version: expected '$b $version', got '$got'"
  [ -s "$h/usr/share/man/man1/$b.1.gz" ] || die "no man page for $b"
  [ -s "$h/usr/share/bash-completion/completions/$b" ] || die "no bash completion for $b"
  [ -s "$h/usr/share/zsh/vendor-completions/_$b" ] || die "no zsh completion for $b"
  [ -s "$h/usr/share/fish/vendor_completions.d/$b.fish" ] || die "no fish completion for $b"
done
ok "every binary answers --version $version and has its man page and completions"
for page in knockadm-policy-add knockgate-agent-enroll knockgate-controller-run knocker-open; do
  [ -s "$h/usr/share/man/man1/$page.1.gz" ] || die "no man page $page(1)"
done
zcat "$h/usr/share/man/man1/knockgate-controller-run.1.gz" | grep -c -- 'health\\-listen' >/dev/null ||
  die "knockgate-controller-run(1) does not document --health-listen"
for f in lib/systemd/system/knockgate-agent.service lib/systemd/system/knockgate-controller.service \
  usr/share/doc/knockgate-agent/examples/agent.toml etc/knockgate/controller.env; do
  [ -s "$h/$f" ] || die "/$f is missing"
done
[ "$(stat -c %a "$h/etc/knockgate/controller.env")" = 600 ] || die "controller.env is not 0600"
user=$(chroot "$h" getent passwd knockgate) || die "no knockgate user"
case $user in knockgate:x:*:*:*:/var/lib/knockgate-controller:/usr/sbin/nologin) ;; *) die "knockgate user: $user" ;; esac
[ "$(chroot "$h" stat -c "%U %a" /var/lib/knockgate-controller)" = "knockgate 700" ] ||
  die "/var/lib/knockgate-controller: $(chroot "$h" stat -c "%U %a" /var/lib/knockgate-controller)"
ok "units, example config, controller.env (0600), the knockgate user and its data dir"

chroot "$h" runuser -u knockgate -- knockgate-controller init \
  --data-dir /var/lib/knockgate-controller >"$work/init.log" || die "controller init as knockgate"
cat >"$h/etc/knockgate/agent.toml" <<'TOML'
[agent]
name = "gw-deb"
interfaces = ["lo"]

[[policy]]
name = "ssh"
open = ["tcp/22"]
timeout = "30s"
sequence = ["tcp/7000", "tcp/8000"]
TOML
umount "$h/proc"

# --- boot it ------------------------------------------------------------------------------
boot_host "$h" kgt-debs "$work/console.log" --private-network || die "booting the host failed"
ok "the host booted ($host_state)"

verify=$(in_host systemd-analyze verify --man=no /lib/systemd/system/knockgate-agent.service \
  /lib/systemd/system/knockgate-controller.service 2>&1) || die "systemd-analyze verify: $verify"
[ -z "$verify" ] || die "systemd-analyze verify warns: $verify"
ok "systemd-analyze verify: clean on both units (--man=no: no man-db here; the pages are checked above)"

# Enabled by the packages; the agent's ConditionPathExists held it back at boot only if
# the config was missing, which it is not: both start now (or started at boot).
in_host systemctl start knockgate-controller.service knockgate-agent.service ||
  die "systemctl start"
for unit in knockgate-controller knockgate-agent; do
  [ "$(in_host systemctl is-enabled $unit)" = enabled ] || die "$unit is not enabled"
  [ "$(in_host systemctl is-active $unit)" = active ] || die "$unit is not active"
  [ "$(in_host systemctl show -P Type $unit)" = notify ] || die "$unit is not Type=notify"
done
ok "both units enabled and active (Type=notify: they said READY=1)"

ready=$(in_host bash -c 'exec 3<>/dev/tcp/127.0.0.1/7444; printf "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n" >&3; head -n1 <&3' | tr -d '\r')
[ "$ready" = "HTTP/1.1 200 OK" ] || die "controller /readyz: $ready"
main=$(in_host systemctl show -P MainPID knockgate-controller)
# shellcheck disable=SC2016 # awk's $2, not the shell's
uid=$(in_host awk '/^Uid:/ {print $2}' "/proc/$main/status")
[ "$uid" = "$(in_host id -u knockgate)" ] || die "the controller runs as uid $uid, not as knockgate"
caps=$(in_host grep CapEff "/proc/$main/status" | awk '{print $2}')
[ "$caps" = 0000000000000000 ] || die "the controller has capabilities $caps"
ok "controller: /readyz 200, runs as knockgate with no capabilities"

main=$(in_host systemctl show -P MainPID knockgate-agent)
caps=$(in_host grep CapBnd "/proc/$main/status" | awk '{print $2}')
[ "$caps" = 0000000000003000 ] || die "agent bounding set $caps (want CAP_NET_ADMIN|CAP_NET_RAW = 0x3000)"
seccomp=$(in_host grep '^Seccomp:' "/proc/$main/status" | awk '{print $2}')
[ "$seccomp" = 2 ] || die "the agent runs without a seccomp filter ($seccomp)"
# tcp/22 (proto 6) in the protected set, and the rule that drops it for the ungranted.
# (Read whole, then matched: `grep -q` in a pipe would SIGPIPE nft under pipefail.)
protected() {
  local set chain
  set=$(in_host nft list set inet knockgate protected) &&
    chain=$(in_host nft list chain inet knockgate input) &&
    grep -q 'elements = { 6 \. 22 }' <<<"$set" &&
    grep -q '@protected ip saddr .* != @grants4 drop' <<<"$chain"
}
protected || { in_host nft list table inet knockgate >&2 || true; die "tcp/22 not protected"; }
ok "agent: CAP_NET_ADMIN and CAP_NET_RAW only, seccomp on, table installed with tcp/22 protected"

in_host systemctl stop knockgate-agent.service
protected || die "systemctl stop removed the protection of tcp/22"
ok "systemctl stop: the table and tcp/22's protection stay"

in_host dpkg --purge knockgate-agent knockgate-controller knockgate-cli >"$work/purge.log" 2>&1 ||
  { cat "$work/purge.log" >&2; die "dpkg --purge"; }
for b in knockgate-agent knockgate-controller knockadm knocker; do
  [ ! -e "$h/usr/bin/$b" ] || die "/usr/bin/$b is still there after purge"
done
in_host nft list table inet knockgate >/dev/null || die "purging the agent removed the table"
ok "dpkg --purge: binaries gone, the table stays (knockgate-agent uninstall removes it)"
echo "debs.sh: OK in $((SECONDS - start))s"
