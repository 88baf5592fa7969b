#!/usr/bin/env bash
# The knockgate_agent role against a real systemd host, with molecule (root, Debian 12).
#
#   KNOCKGATE_BIN_DIR=target/debug [KGT_ANS_INSTALL=deb|binary] deploy/ansible/test.sh
#
# - ansible-lint --profile production on the role, the playbook and the scenario;
# - a controller in network namespace kgt-ans-ctl (10.240.77.1), a client in kgt-ans-cli
#   (10.240.77.3) and a systemd host in kgt-ans-gw (10.240.77.2): an overlay on the cached
#   Debian 12 root (deploy/test/debian-root.sh) booted with systemd-nspawn; the three joined
#   by bridge kgtansbr0, which lives in namespace kgt-ans-br: nothing here touches the
#   machine's own network namespace, and nothing is routed anywhere;
# - the agent registered with `knockadm agent add gw-ansible` and given a policy protecting
#   tcp/22 behind the knock sequence tcp/7000,tcp/8000,tcp/9000;
# - molecule: converge (install, enrol, start: by default the knockgate-agent package built
#   here from those binaries with deploy/build-debs.sh, as operators install it;
#   KGT_ANS_INSTALL=binary copies the binary instead), idempotence (changed=0), verify (unit
#   active, agent connected with its config applied, tcp/22 closed from the client, open
#   after a knock); check mode before (must not fail) and after (changed=0) converging.
# Everything it makes is removed on exit, also on failure.
#
# Environment: KNOCKGATE_BIN_DIR (default target/debug, relative to the repository):
# knockgate-agent, knockgate-controller, knockadm, knocker. KNOCKGATE_CACHE (default
# /var/cache/knockgate-test): the cached Debian root and the Ansible venv (requirements.txt),
# both reused.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${KNOCKGATE_CACHE:-/var/cache/knockgate-test}
venv=$cache/ansible-venv
# The tools, pinned with their dependencies (ansible 12.3.0 = ansible-core 2.19).
requirements=$here/requirements.txt

net=10.240.77
ns_br=kgt-ans-br ns_ctl=kgt-ans-ctl ns_cli=kgt-ans-cli ns_gw=kgt-ans-gw
bridge=kgtansbr0
agent=gw-ansible

start=$SECONDS
mark=$SECONDS
say() { printf '\n== %s\n' "$*"; }
timing() { printf -- '-- %s: %ds (total %ds)\n' "$1" $((SECONDS - mark)) $((SECONDS - start)); mark=$SECONDS; }
die() { echo "test.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces, systemd-nspawn)"
cd "$repo"
bin=$(realpath -m "${KNOCKGATE_BIN_DIR:-target/debug}")
install=${KGT_ANS_INSTALL:-deb}
case $install in deb|binary) ;; *) echo "test.sh: KGT_ANS_INSTALL must be deb or binary, not '$install'" >&2; exit 64 ;; esac
for b in knockgate-agent knockgate-controller knockadm knocker; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing: build the binaries (cargo build --workspace --bins) or set KNOCKGATE_BIN_DIR"
done
for n in $ns_br $ns_ctl $ns_cli $ns_gw; do
  [ ! -e "/run/netns/$n" ] || die "network namespace $n exists: another run is going on, or one was killed (ip netns del $n)"
done

# --- the cached Debian root and the venv --------------------------------------------------
say "Debian 12 root"
root=$(bash "$repo/deploy/test/debian-root.sh" | tail -n1)
[ -x "$root/lib/systemd/systemd" ] || die "no Debian root at $root"
timing "debian root"

say "Ansible venv ($venv)"
mkdir -p "$cache"
exec 8>"$cache/.ansible-venv.lock"
flock 8
# .requirements is written last: a venv without it (an interrupted install) is made again.
if ! cmp -s "$requirements" "$venv/.requirements"; then
  python=/usr/bin/python3
  "$python" -c 'import ensurepip, venv' 2>/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  }
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.requirements"
fi
exec 8>&-
export PATH="$venv/bin:$PATH"
v=$(ansible --version) && echo "${v%%$'\n'*}"
timing "venv"

# --- lint ---------------------------------------------------------------------------------
say "ansible-lint --profile production"
(cd "$here" && ansible-lint --profile production --offline site.yml roles/knockgate_agent molecule/default)
timing "lint"

# --- everything below is removed on exit --------------------------------------------------
work=$(mktemp -d /tmp/kgt-ans.XXXXXX)
# shellcheck source-path=SCRIPTDIR source=../test/nspawn.sh
. "$repo/deploy/test/nspawn.sh"
ctl_pid='' host_mounted=''
cleanup() {
  local rc=$?
  set +e
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    if [ "$rc" -ne 0 ] && [ -n "${init_pid:-}" ]; then
      echo "--- journal of knockgate-agent in the host" >&2
      nsenter --target="$init_pid" --mount --pid -- journalctl -u knockgate-agent --no-pager -n 60 >&2
    fi
    stop_host
  fi
  if [ -n "$ctl_pid" ]; then
    [ "$rc" -ne 0 ] && { echo "--- controller log (tail)" >&2; tail -n 30 "$work/controller.log" >&2; }
    kill -TERM "$ctl_pid" 2>/dev/null
    wait "$ctl_pid" 2>/dev/null
  fi
  for n in $ns_gw $ns_cli $ns_ctl $ns_br; do
    [ -e "/run/netns/$n" ] && ip netns del "$n"
  done
  [ -n "$host_mounted" ] && umount "$work/host"
  # The container's processes died with its PID namespace; its mounts with its mount namespace.
  if grep -q " $work/" /proc/self/mounts; then
    echo "test.sh: mounts left under $work, not removing it" >&2
  else
    rm -rf --one-file-system "$work"
  fi
  if [ "$rc" -eq 0 ]; then
    echo "test.sh: PASS ($((SECONDS - start))s)"
  else
    echo "test.sh: FAIL (exit $rc)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "network: namespaces $ns_ctl ($net.1) $ns_gw ($net.2) $ns_cli ($net.3) on bridge $bridge"
ip netns add $ns_br
ip -n $ns_br link set lo up
ip -n $ns_br link add $bridge type bridge
ip -n $ns_br link set $bridge up
i=0
for n in $ns_ctl $ns_gw $ns_cli; do
  i=$((i + 1))
  ip netns add "$n"
  ip -n "$n" link set lo up
  ip -n $ns_br link add "p$i" type veth peer name eth0 netns "$n"
  ip -n $ns_br link set "p$i" master $bridge up
  ip -n "$n" addr add "$net.$i/24" dev eth0
  ip -n "$n" link set eth0 up
done
timing "network"

# --- controller ---------------------------------------------------------------------------
say "controller in $ns_ctl"
ctl_dir=$work/controller
ip netns exec $ns_ctl "$bin/knockgate-controller" init --data-dir "$ctl_dir" --san "$net.1" >"$work/init.out"
cat "$work/init.out"
ca_sha256=$(sed -n 's/^ca sha256: *//p' "$work/init.out")
[ -n "$ca_sha256" ] || die "no 'ca sha256:' in the output of knockgate-controller init"
ip netns exec $ns_ctl "$bin/knockgate-controller" run --data-dir "$ctl_dir" --listen "$net.1:7443" \
  >"$work/controller.log" 2>&1 &
ctl_pid=$!
knockadm() {
  KNOCKADM_CONTROLLER="https://$net.1:7443" KNOCKADM_IDENTITY="$ctl_dir/admin.pem" \
    ip netns exec $ns_ctl "$bin/knockadm" "$@"
}
for _ in $(seq 1 100); do
  knockadm agent list >/dev/null 2>&1 && break
  kill -0 "$ctl_pid" 2>/dev/null || die "the controller exited"
  sleep 0.1
done
knockadm agent list >/dev/null || die "the controller does not answer"
token=$(knockadm --output json agent add $agent --label role=ansible-test |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
[ -n "$token" ] || die "no token from knockadm agent add"
knockadm policy add ssh --open tcp/22 --sequence tcp/7000,tcp/8000,tcp/9000 --agents role=ansible-test
knockadm policy list
timing "controller"

# --- the package -------------------------------------------------------------------------
deb=''
if [ "$install" = deb ]; then
  say "knockgate-agent package (deploy/build-debs.sh, binaries from $bin)"
  deb=$(KNOCKGATE_BIN_DIR=$bin bash "$repo/deploy/build-debs.sh" --fast --out "$work/debs" |
    grep '/knockgate-agent_.*\.deb$')
  [ -f "$deb" ] || die "build-debs.sh made no knockgate-agent package"
  echo "$deb"
  timing "package"
fi

# --- the systemd host ---------------------------------------------------------------------
say "systemd host in $ns_gw: an overlay on (or a copy of) $root"
# The cached root stays pristine: the host writes to an overlay's upper layer in $work.
mkdir -p "$work/host" "$work/upper" "$work/overlay-work"
if mount -t overlay kgt-ans-host -o "lowerdir=$root,upperdir=$work/upper,workdir=$work/overlay-work" \
  "$work/host" 2>/dev/null; then
  host_mounted=1
else
  echo "no overlayfs: copying the root"
  cp -a "$root/." "$work/host/"
fi
boot_host "$work/host" $agent "$work/console.log" --capability=CAP_NET_ADMIN \
  --network-namespace-path=/run/netns/$ns_gw || die "booting the host failed"
echo "host systemd (pid $init_pid): $host_state"
timing "boot"

# --- molecule -----------------------------------------------------------------------------
export KGT_ANS_INSTALL=$install KGT_ANS_DEB=$deb
export KGT_ANS_NSPAWN_PID=$init_pid KGT_ANS_BIN_DIR=$bin KGT_ANS_CA_SHA256=$ca_sha256 \
  KGT_ANS_CTL_DIR=$ctl_dir KGT_ANS_TOKEN=$token
export ANSIBLE_NOCOLOR=1 PY_COLORS=0 ANSIBLE_FORCE_COLOR=0
# Molecule's and Ansible's working files in $work, not under ~/.ansible.
export MOLECULE_EPHEMERAL_DIRECTORY=$work/molecule ANSIBLE_HOME=$work/ansible-home
cd "$here"

say "check mode on the fresh host (molecule check: must not fail)"
molecule check 2>&1 | tee "$work/check-fresh.log"
recap=$(grep -E "^$agent +:" "$work/check-fresh.log" | tail -n1)
echo "$recap" | grep -Eq 'failed=0' || die "check mode on the fresh host: $recap"
timing "check (fresh)"

say "molecule converge"
molecule converge 2>&1 | tee "$work/converge.log"
if grep -qF -- "$token" "$work/converge.log"; then die "the enrolment token is in the converge output"; fi
timing "converge"

say "molecule idempotence"
molecule idempotence
timing "idempotence"

say "molecule verify"
molecule verify
timing "verify"

say "check mode on the converged host (molecule check)"
molecule check 2>&1 | tee "$work/check.log"
recap=$(grep -E "^$agent +:" "$work/check.log" | tail -n1)
echo "$recap" | grep -Eq 'changed=0 .*failed=0' || die "check mode on the converged host: $recap"
timing "check (converged)"

echo
echo "host journal (knockgate-agent):"
in_host journalctl -u knockgate-agent --no-pager -n 15
