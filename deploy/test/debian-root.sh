#!/usr/bin/env bash
# A pristine Debian 12 root for tests that need a real systemd host (booted with
# systemd-nspawn): made once with `debootstrap bookworm`, cached, and reused.
#
#   root=$(deploy/test/debian-root.sh | tail -n1)
#   cp -a "$root" "$work/host"        # tests work on a copy (or an overlay), NEVER on the cache
#
# Prints the path of the cached root as the last line of stdout (progress goes to stderr):
# ${KNOCKGATE_CACHE:-/var/cache/knockgate-test}/bookworm. Built in a temporary directory and
# renamed into place, so the path exists only when the root is complete; a lock serialises
# concurrent callers. A root made with another package list is replaced.
# Root only; installs debootstrap and systemd-container (systemd-nspawn) with apt if missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

cache=${KNOCKGATE_CACHE:-/var/cache/knockgate-test}
root=$cache/bookworm
mirror=${KNOCKGATE_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# What an agent host needs, and nothing more (on top of debootstrap's minbase):
#   systemd, systemd-sysv, dbus  boot it as a real systemd host (nspawn -b), systemctl works
#   libpcap0.8                   the agent's captures (knockgate-agent links libpcap.so.0.8)
#   nftables, iproute2           nft and ip, to look at and debug the host's firewall and links
#   ca-certificates              a sane TLS trust store
#   python3, python3-apt         Ansible modules (apt needs python3-apt to install a .deb)
packages=(systemd systemd-sysv dbus python3 python3-apt iproute2 nftables libpcap0.8 ca-certificates)
include=$(IFS=,; echo "${packages[*]}")
stamp=.knockgate-test-root   # in the root's /: what the root was made with
# Bump the revision when the root's own setup below changes: the cache is then made again.
want="r2: debootstrap --variant=minbase --include=$include bookworm"

log() { echo "debian-root: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 1; }

need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$cache"
exec 9>"$cache/.bookworm.lock"
flock 9

if [ -d "$root" ] && [ "$(cat "$root/$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$root"
  exit 0
fi

tmp=$(mktemp -d "$cache/.bookworm.new.XXXXXX")
trap 'rm -rf --one-file-system "$tmp"' EXIT
log "building $root with: $want (about a minute)"
start=$SECONDS
# keyring: the host's (Debian 12 itself), so the archive is verified.
debootstrap --variant=minbase --include="$include" \
  --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
  bookworm "$tmp/root" "$mirror" >"$tmp/debootstrap.log" 2>&1 || {
  tail -n 30 "$tmp/debootstrap.log" >&2
  log "debootstrap failed"
  exit 1
}
chroot "$tmp/root" apt-get clean
rm -rf "$tmp/root/var/lib/apt/lists/"* "$tmp/root/var/log/"*.log
# Nothing of the machine that built it: every copy boots with a fresh machine id (systemd's
# "first boot" when the file is empty) and takes its hostname from systemd-nspawn -M.
: >"$tmp/root/etc/machine-id"
rm -f "$tmp/root/var/lib/dbus/machine-id" "$tmp/root/etc/hostname"
: >"$tmp/root/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$tmp/root/etc/hosts"
printf '%s\n' "$want" >"$tmp/root/$stamp"

if [ -e "$root" ]; then
  log "replacing a root made with: $(cat "$root/$stamp" 2>/dev/null || echo unknown)"
  mv -T "$root" "$tmp/old"
fi
mv -T "$tmp/root" "$root"
log "built in $((SECONDS - start))s"
echo "$root"
